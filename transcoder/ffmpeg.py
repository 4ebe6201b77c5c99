"""ffmpeg and ffprobe command lines for the preview set, and parsing of what they print.

Pure logic: arguments in, argument lists out. The worker runs them.

The preview set of an asset, under `assets/<id>/` in the previews bucket:
    preview.mp4        H.264/AAC proxy, at most 720 lines, keyframes every 2 s, faststart
    hls/index.m3u8     HLS VOD playlist, 4 s segments cut from the proxy without re-encoding
    hls/seg_NNNNN.ts
    poster.jpg         one frame
    sprite.jpg         up to 100 thumbnails in a 10x10 grid, for scrubbing
    sprite.vtt         WebVTT cues pointing into the sprite (#xywh=)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "Encoder",
    "Probe",
    "hls_args",
    "nvenc_probe_args",
    "parse_probe",
    "parse_progress",
    "poster_args",
    "probe_args",
    "proxy_args",
    "sprite_args",
    "sprite_layout",
    "sprite_vtt",
]

MAX_HEIGHT = 720
KEYFRAME_S = 2
HLS_SEGMENT_S = 4
THUMB_WIDTH = 160
SPRITE_COLUMNS = 10
SPRITE_MAX_THUMBS = 100


class Encoder(Enum):
    CPU = "libx264"
    NVENC = "h264_nvenc"


class ProbeError(ValueError):
    """ffprobe's answer does not describe a playable video."""


@dataclass(frozen=True, slots=True)
class Probe:
    duration_s: float
    width: int
    height: int
    has_audio: bool


def _ffmpeg(ffmpeg: str) -> list[str]:
    """The start every ffmpeg command line shares: quiet, no stdin, overwrite outputs."""
    return [ffmpeg, "-hide_banner", "-nostdin", "-v", "error", "-y"]


def probe_args(ffprobe: str, source: str) -> list[str]:
    return [
        ffprobe,
        "-v",
        "error",
        "-print_format",
        "json",
        "-show_format",
        "-show_streams",
        source,
    ]


def parse_probe(output: str) -> Probe:
    """Duration, video size and audio presence; ProbeError when there is no usable video."""
    try:
        data = json.loads(output)
    except ValueError as exc:
        raise ProbeError("ffprobe printed no JSON") from exc
    streams = data.get("streams") or []
    video = next((s for s in streams if s.get("codec_type") == "video"), None)
    if video is None:
        raise ProbeError("no video stream")
    try:
        width, height = int(video["width"]), int(video["height"])
        duration = float(data.get("format", {}).get("duration") or video.get("duration"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ProbeError("video size or duration unknown") from exc
    if width <= 0 or height <= 0 or not math.isfinite(duration) or duration <= 0:
        raise ProbeError("video has no frames")
    has_audio = any(s.get("codec_type") == "audio" for s in streams)
    return Probe(duration_s=duration, width=width, height=height, has_audio=has_audio)


def nvenc_probe_args(ffmpeg: str) -> list[str]:
    """A one-frame NVENC encode: listing the encoder proves nothing (A100/H100 have no NVENC)."""
    return [
        ffmpeg,
        "-hide_banner",
        "-v",
        "error",
        "-f",
        "lavfi",
        "-i",
        "color=black:s=256x256:d=0.1",
        "-frames:v",
        "1",
        "-c:v",
        "h264_nvenc",
        "-f",
        "null",
        "-",
    ]


def proxy_args(ffmpeg: str, source: str, target: str, probe: Probe, encoder: Encoder) -> list[str]:
    """The MP4 proxy, with `-progress` on stdout for the worker to follow."""
    args = _ffmpeg(ffmpeg)
    if encoder is Encoder.NVENC:
        # Decode, scale and encode on the GPU: frames never cross PCIe as raw pictures.
        args += ["-hwaccel", "cuda", "-hwaccel_output_format", "cuda", "-i", source]
        height = min(MAX_HEIGHT, probe.height)
        args += ["-vf", f"scale_cuda=-2:{height}", "-c:v", "h264_nvenc", "-preset", "p4"]
        args += ["-rc", "vbr", "-cq", "23", "-b:v", "0"]
    else:
        args += ["-i", source, "-vf", f"scale=-2:'min({MAX_HEIGHT},ih)',format=yuv420p"]
        args += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23"]
    args += ["-force_key_frames", f"expr:gte(t,n_forced*{KEYFRAME_S})"]
    args += ["-map", "0:v:0"]
    if probe.has_audio:
        args += ["-map", "0:a:0", "-c:a", "aac", "-b:a", "128k", "-ac", "2"]
    args += ["-movflags", "+faststart", "-progress", "pipe:1", "-nostats", target]
    return args


def hls_args(ffmpeg: str, proxy: str, playlist: str, segment_pattern: str) -> list[str]:
    """Cut the proxy into HLS segments without re-encoding (its keyframes fall every 2 s)."""
    return [
        *_ffmpeg(ffmpeg),
        "-i",
        proxy,
        "-c",
        "copy",
        "-f",
        "hls",
        "-hls_time",
        str(HLS_SEGMENT_S),
        "-hls_playlist_type",
        "vod",
        "-hls_segment_filename",
        segment_pattern,
        playlist,
    ]


def poster_args(ffmpeg: str, source: str, target: str, probe: Probe) -> list[str]:
    at = min(1.0, probe.duration_s / 10)
    return [
        *_ffmpeg(ffmpeg),
        "-ss",
        f"{at:.3f}",
        "-i",
        source,
        "-frames:v",
        "1",
        "-vf",
        f"scale=-2:'min({MAX_HEIGHT},ih)'",
        "-q:v",
        "3",
        target,
    ]


@dataclass(frozen=True, slots=True)
class SpriteLayout:
    interval_s: float
    count: int
    thumb_width: int
    thumb_height: int
    columns: int
    rows: int


def sprite_layout(probe: Probe) -> SpriteLayout:
    """One thumbnail per interval, at most 100; thumbnails keep the video's aspect ratio."""
    interval = max(1.0, probe.duration_s / SPRITE_MAX_THUMBS)
    count = max(1, min(SPRITE_MAX_THUMBS, math.ceil(probe.duration_s / interval)))
    height = max(2, round(THUMB_WIDTH * probe.height / probe.width / 2) * 2)
    columns = min(SPRITE_COLUMNS, count)
    return SpriteLayout(interval, count, THUMB_WIDTH, height, columns, math.ceil(count / columns))


def sprite_args(ffmpeg: str, source: str, target: str, layout: SpriteLayout) -> list[str]:
    tiles = f"tile={layout.columns}x{layout.rows}"
    scale = f"scale={layout.thumb_width}:{layout.thumb_height}"
    return [
        *_ffmpeg(ffmpeg),
        "-i",
        source,
        "-vf",
        f"fps=1/{layout.interval_s:.6f},{scale},{tiles}",
        "-frames:v",
        "1",
        "-q:v",
        "4",
        target,
    ]


def _vtt_time(seconds: float) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}"


def sprite_vtt(layout: SpriteLayout, duration_s: float, sprite_name: str = "sprite.jpg") -> str:
    """WebVTT thumbnails track: each cue names its tile in the sprite with #xywh."""
    lines = ["WEBVTT", ""]
    for index in range(layout.count):
        start = index * layout.interval_s
        end = min((index + 1) * layout.interval_s, duration_s)
        if end <= start:
            break
        x = (index % layout.columns) * layout.thumb_width
        y = (index // layout.columns) * layout.thumb_height
        lines += [
            f"{_vtt_time(start)} --> {_vtt_time(end)}",
            f"{sprite_name}#xywh={x},{y},{layout.thumb_width},{layout.thumb_height}",
            "",
        ]
    return "\n".join(lines)


def parse_progress(line: str, duration_s: float) -> float | None:
    """Fraction done from one `-progress` line (`out_time_us=…`), else None."""
    key, _, value = line.strip().partition("=")
    if key not in ("out_time_us", "out_time_ms") or not value.isdigit() or duration_s <= 0:
        return None
    # Both keys carry microseconds (out_time_ms is misnamed in ffmpeg).
    return max(0.0, min(1.0, int(value) / 1_000_000 / duration_s))
