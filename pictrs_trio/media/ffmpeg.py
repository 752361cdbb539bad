"""Command lines for ffprobe/ffmpeg/cjxl/djxl. Pure: callers run them with ``run.run_tool``.

Only our own temp paths and fixed options go on these command lines; nothing a client sent.
"""

from __future__ import annotations

import os
from pathlib import Path

from pictrs_trio.rules.formats import Fmt
from pictrs_trio.rules.policy import Plan

FFMPEG = ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-y"]
# Every kind of metadata ffmpeg would otherwise carry over from the input.
NO_METADATA = ["-map_metadata", "-1", "-map_chapters", "-1", "-sn", "-dn"]

VIDEO_ENCODERS = {
    "h264": ["-c:v", "libx264", "-preset", "veryfast"],
    "h265": ["-c:v", "libx265", "-preset", "veryfast"],
    "av1": ["-c:v", "libaom-av1", "-cpu-used", "8", "-row-mt", "1"],
    "vp8": ["-c:v", "libvpx"],
    "vp9": ["-c:v", "libvpx-vp9", "-row-mt", "1", "-deadline", "realtime", "-cpu-used", "8"],
}
AUDIO_ENCODERS = {"aac": "aac", "opus": "libopus", "vorbis": "libvorbis"}


def _p(path: Path) -> str:
    text = os.fspath(path)
    if text.startswith("-"):  # never read as an option
        text = "./" + text
    return text


def ffprobe_argv(path: Path) -> list[str]:
    return ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", _p(path)]


def count_packets_argv(path: Path) -> list[str]:
    """Packets, not frames: counting them reads the container without decoding."""
    return [
        "ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets",
        "-show_entries", "stream=nb_read_packets", "-of", "json", _p(path),
    ]  # fmt: skip


def video_argv(src: Path, dst: Path, plan: Plan, *, has_alpha: bool = False) -> list[str]:
    """Remux (stream copy) or transcode per ``plan``; all metadata removed."""
    argv = [*FFMPEG, "-i", _p(src), "-map", "0:v:0"]
    if plan.keep_audio:
        argv += ["-map", "0:a:0"]
    if plan.video_codec is None:
        argv += ["-c:v", "copy"]
    else:
        alpha = has_alpha and plan.video_codec in ("vp8", "vp9")
        argv += [
            "-pix_fmt", "yuva420p" if alpha else "yuv420p",
            "-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2",
            *VIDEO_ENCODERS[plan.video_codec],
            "-crf", str(plan.crf if plan.crf is not None else 32),
        ]  # fmt: skip
        if plan.video_codec == "vp9":
            argv += ["-b:v", "0"]
    if not plan.keep_audio:
        argv += ["-an"]
    elif plan.audio_codec is None:
        argv += ["-c:a", "copy"]
    else:
        argv += ["-c:a", AUDIO_ENCODERS[plan.audio_codec]]
    argv += NO_METADATA
    if plan.output.fmt is Fmt.MP4:
        argv += ["-movflags", "+faststart", "-f", "mp4"]
    else:
        argv += ["-f", "webm"]
    return [*argv, _p(dst)]


def animation_argv(
    src: Path, dst: Path, *, src_fmt: Fmt, out: Fmt, quality: int | None
) -> list[str]:
    """ffmpeg conversions between animations the engine cannot read or write (APNG, AVIF)."""
    argv = [*FFMPEG]
    if src_fmt is Fmt.APNG:
        argv += ["-f", "apng"]
    argv += ["-i", _p(src), "-map", "0:v:0", *NO_METADATA]
    if out is Fmt.GIF:
        palette = "split[a][b];[a]palettegen=stats_mode=diff[p];[b][p]paletteuse"
        argv += ["-filter_complex", palette, "-loop", "0", "-f", "gif"]
    elif out is Fmt.APNG:
        argv += ["-c:v", "apng", "-plays", "0", "-f", "apng"]
    elif out is Fmt.WEBP:
        argv += ["-c:v", "libwebp_anim", "-loop", "0", "-q:v", str(quality or 75), "-f", "webp"]
    elif out is Fmt.AVIF:
        crf = str(max(0, min(63, round(63 - (quality if quality is not None else 50) * 0.63))))
        argv += [
            "-pix_fmt", "yuv420p", "-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2",
            *VIDEO_ENCODERS["av1"], "-crf", crf, "-f", "avif",
        ]  # fmt: skip
    else:
        raise ValueError(f"not an animation output: {out}")
    return [*argv, _p(dst)]


def djxl_argv(src: Path, dst_png: Path) -> list[str]:
    """Decode JPEG XL to PNG; djxl applies the orientation to the pixels."""
    return ["djxl", _p(src), _p(dst_png)]


def cjxl_argv(src_png: Path, dst: Path, quality: int | None) -> list[str]:
    argv = ["cjxl", _p(src_png), _p(dst)]
    if quality is not None:
        argv += ["-q", str(quality)]
    return argv


# Still formats of a video's first frame (pict-rs ``src/generate.rs``): encoder options and muxer.
STILL_CODECS: dict[Fmt, list[str]] = {
    Fmt.JPEG: ["-c:v", "mjpeg", "-f", "image2", "-update", "1"],
    Fmt.PNG: ["-c:v", "png", "-f", "image2", "-update", "1"],
    Fmt.WEBP: ["-c:v", "libwebp", "-f", "webp"],
}


def still_argv(
    src: Path, dst: Path, *, out: Fmt, quality: int | None = None, src_fmt: Fmt | None = None
) -> list[str]:
    """The first frame of a video (or an animation ffmpeg reads) as a JPEG, PNG or WebP."""
    argv = [*FFMPEG]
    if src_fmt is Fmt.APNG:
        argv += ["-f", "apng"]
    argv += ["-i", _p(src), "-map", "0:v:0", "-frames:v", "1", *NO_METADATA, "-an"]
    if out is Fmt.JPEG:
        # mjpeg's default rate control is meant for video; 2..31, lower is better.
        q = 2 if quality is None else max(2, min(31, round(31 - quality * 0.29)))
        argv += ["-q:v", str(q)]
    elif out is Fmt.WEBP:
        argv += ["-quality", str(80 if quality is None else quality)]
    return [*argv, *STILL_CODECS[out], _p(dst)]


def lossless_webp_argv(src: Path, dst: Path, *, src_fmt: Fmt) -> list[str]:
    """An animation the engine cannot read (APNG, animated AVIF) as a lossless animated
    WebP it can: frame timing is kept, pixels are not touched."""
    argv = [*FFMPEG]
    if src_fmt is Fmt.APNG:
        argv += ["-f", "apng"]
    argv += ["-i", _p(src), "-map", "0:v:0", *NO_METADATA, "-an"]
    argv += ["-c:v", "libwebp_anim", "-lossless", "1", "-compression_level", "0"]
    return [*argv, "-loop", "0", "-f", "webp", _p(dst)]
