"""Signed, slice-cached HTTP edge for video previews stored in an S3-compatible bucket."""

__version__ = "0.1.0"
