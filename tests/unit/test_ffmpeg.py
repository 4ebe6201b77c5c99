from __future__ import annotations

import json

import pytest

from transcoder import ffmpeg
from transcoder.ffmpeg import Encoder, Probe, ProbeError

HD = Probe(duration_s=95.5, width=1920, height=1080, has_audio=True)


def probe_json(streams: list[dict[str, object]], duration: str | None = "12.5") -> str:
    return json.dumps({"streams": streams, "format": {"duration": duration}})


def test_parse_probe() -> None:
    out = probe_json(
        [{"codec_type": "video", "width": 640, "height": 360}, {"codec_type": "audio"}]
    )
    assert ffmpeg.parse_probe(out) == Probe(12.5, 640, 360, True)
    silent = probe_json([{"codec_type": "video", "width": 640, "height": 360}])
    assert ffmpeg.parse_probe(silent).has_audio is False


@pytest.mark.parametrize(
    "out",
    [
        "not json",
        probe_json([{"codec_type": "audio"}]),
        probe_json([{"codec_type": "video", "width": 640}]),
        probe_json([{"codec_type": "video", "width": 640, "height": 360}], duration=None),
        probe_json([{"codec_type": "video", "width": 640, "height": 360}], duration="0"),
        probe_json([{"codec_type": "video", "width": 0, "height": 360}]),
    ],
)
def test_unusable_probes(out: str) -> None:
    with pytest.raises(ProbeError):
        ffmpeg.parse_probe(out)


def test_cpu_proxy_arguments() -> None:
    args = ffmpeg.proxy_args("ffmpeg", "in", "out.mp4", HD, Encoder.CPU)
    assert args[args.index("-c:v") + 1] == "libx264"
    assert "scale=-2:'min(720,ih)',format=yuv420p" in args
    assert args[args.index("-force_key_frames") + 1] == "expr:gte(t,n_forced*2)"
    assert args[args.index("-map", args.index("-map") + 1) :][:2] == ["-map", "0:a:0"]
    assert args[-1] == "out.mp4"
    assert "+faststart" in args


def test_nvenc_proxy_keeps_frames_on_the_gpu() -> None:
    args = ffmpeg.proxy_args("ffmpeg", "in", "out.mp4", HD, Encoder.NVENC)
    assert args[args.index("-hwaccel") + 1] == "cuda"
    assert args[args.index("-hwaccel_output_format") + 1] == "cuda"
    assert "scale_cuda=-2:720" in args
    assert args[args.index("-c:v") + 1] == "h264_nvenc"
    assert args.index("-hwaccel") < args.index("-i")


def test_no_audio_no_audio_map() -> None:
    args = ffmpeg.proxy_args("ffmpeg", "in", "out.mp4", Probe(5, 320, 240, False), Encoder.CPU)
    assert "0:a:0" not in args
    assert "-c:a" not in args


def test_sprite_layout_and_vtt() -> None:
    layout = ffmpeg.sprite_layout(HD)
    assert layout.count == 96  # one per second for 95.5 s
    assert (layout.thumb_width, layout.thumb_height) == (160, 90)
    assert (layout.columns, layout.rows) == (10, 10)
    vtt = ffmpeg.sprite_vtt(layout, HD.duration_s)
    lines = vtt.splitlines()
    assert lines[0] == "WEBVTT"
    assert lines[2:4] == ["00:00:00.000 --> 00:00:01.000", "sprite.jpg#xywh=0,0,160,90"]
    assert "00:00:11.000 --> 00:00:12.000" in vtt
    assert "sprite.jpg#xywh=160,90,160,90" in vtt  # thumbnail 11: row 1, column 1
    assert lines[-2:] == ["00:01:35.000 --> 00:01:35.500", "sprite.jpg#xywh=800,810,160,90"]


def test_long_videos_keep_at_most_100_thumbnails() -> None:
    layout = ffmpeg.sprite_layout(Probe(3600, 640, 480, False))
    assert layout.count == 100
    assert layout.interval_s == 36
    assert layout.thumb_height == 120


def test_progress_lines() -> None:
    assert ffmpeg.parse_progress("out_time_us=5000000", 10) == 0.5
    assert ffmpeg.parse_progress("out_time_ms=20000000\n", 10) == 1.0
    assert ffmpeg.parse_progress("frame=12", 10) is None
    assert ffmpeg.parse_progress("out_time_us=N/A", 10) is None
    assert ffmpeg.parse_progress("out_time_us=1", 0) is None
