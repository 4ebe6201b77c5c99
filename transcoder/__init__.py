"""The preview worker: jobs from Redis Streams, ffmpeg (NVENC when present), previews to S3."""
