"""Native media work: discovery, metadata stripping, conversion, video remux/transcode.

Everything here runs outside the server process: exiftool (one long-lived ``-stay_open``
process), ffprobe/ffmpeg (one process per call, video only), and the libvips engine (a pool
of long-lived worker processes). All of it is reached through ``MediaTools``, which
``open_media_tools`` starts and supervises inside the caller's nursery.
"""

from __future__ import annotations

import msgspec

from pictrs_trio.formats import Fmt, MediaFormat


class Discovery(msgspec.Struct, frozen=True, kw_only=True):
    """What a file is, found from its bytes (headers only wherever possible)."""

    format: MediaFormat
    width: int
    height: int
    frames: int | None  # None for stills and single-frame media
    orientation: int | None = None  # EXIF orientation 1..8 when the file has the tag
    video_codec: str | None = None  # ffprobe codec_name, videos only
    audio_codec: str | None = None  # recognised audio codec kept by pict-rs's rules, or None
    has_alpha: bool = False  # VP8/VP9 pixel format with alpha (affects transcode)


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """How ingest turns an accepted upload into the bytes we store (see policy.decide)."""

    action: str  # "strip" (lossless metadata removal), "convert" (engine re-encode), "video"
    output: MediaFormat
    autorot: bool = False  # apply EXIF orientation while converting
    quality: int | None = None  # encoder quality for "convert"
    # "video" plans (pict-rs's decision table, see policy.decide):
    video_codec: str | None = None  # h264, h265, av1, vp8, vp9 to encode; None = stream copy
    crf: int | None = None  # with video_codec
    keep_audio: bool = False  # False: no audio track in the output
    audio_codec: str | None = None  # aac, opus, vorbis to encode; None = copy (if kept)


__all__ = ["Discovery", "Fmt", "MediaFormat", "Plan"]
