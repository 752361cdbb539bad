"""The ingest decision: given what an upload is and the media config, what do we store?

Pure (no I/O). Follows pict-rs's output-format rules (``src/formats.rs``) with two
deliberate deviations, both documented on ``decide``.
"""

from __future__ import annotations

import msgspec

from pictrs_trio.config import Media, VideoQuality
from pictrs_trio.rules.formats import Fmt, Kind, MediaFormat


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


MAX_QUALITY = 100
MAX_CRF = 63
CRF_CUTOFFS = (240, 360, 480, 720, 1080, 1440, 2160)

_MP4_CODECS = {"h264": "h264", "h265": "hevc"}  # config name -> ffprobe codec_name
_WEBM_CODECS = {"vp8": "vp8", "vp9": "vp9", "av1": "av1"}


def _clamp(quality: int | None) -> int | None:
    return min(quality, MAX_QUALITY) if quality is not None else None


def crf_for(width: int, height: int, quality: VideoQuality) -> int:
    """First configured crf_<cutoff> at or above the smaller side's cutoff, else crf_max."""
    side = min(width, height)
    configured = {
        240: quality.crf_240,
        360: quality.crf_360,
        480: quality.crf_480,
        720: quality.crf_720,
        1080: quality.crf_1080,
        1440: quality.crf_1440,
        2160: quality.crf_2160,
    }
    for cutoff in CRF_CUTOFFS:
        value = configured[cutoff]
        if cutoff >= side and value is not None:
            return min(value, MAX_CRF)
    return min(quality.crf_max, MAX_CRF)


def decide(d: Discovery, media: Media) -> Plan:
    """The Plan for an accepted upload.

    Images: output is ``media.image.format`` or the input format; re-encode (with autorot)
    when the format changes or the orientation must be applied, else strip metadata only.
    *Deviation from pict-rs:* pict-rs re-encodes whenever an orientation tag exists, even
    orientation 1 (upright); we treat orientation 1 like no tag and only strip, so upright
    camera JPEGs keep their original pixels. Orientation 2..8 is applied by re-encoding.

    Animations: convert when ``media.animation.format`` is set and differs, else strip.

    Videos: always ffmpeg (action "video"), per pict-rs's decision table (``src/formats/video.rs``).
    *Deviation from pict-rs:* with ``video_codec`` unset, ``allow_audio = false`` drops the
    audio track (pict-rs copies it anyway, contrary to its documented intent).
    """
    kind = d.format.kind
    if kind is Kind.IMAGE:
        target = Fmt(media.image.format) if media.image.format else d.format.fmt
        reorient = d.orientation is not None and d.orientation != 1
        output = MediaFormat(kind=Kind.IMAGE, fmt=target)
        if target != d.format.fmt or reorient:
            quality = getattr(media.image.quality, target.value, None)
            return Plan(action="convert", output=output, autorot=True, quality=_clamp(quality))
        return Plan(action="strip", output=output)
    if kind is Kind.ANIMATION:
        configured = media.animation.format
        if configured is not None and Fmt(configured) != d.format.fmt:
            target = Fmt(configured)
            quality = getattr(media.animation.quality, target.value, None)
            output = MediaFormat(kind=Kind.ANIMATION, fmt=target)
            return Plan(action="convert", output=output, quality=_clamp(quality))
        return Plan(action="strip", output=d.format)
    return _video_plan(d, media)


def _video_plan(d: Discovery, media: Media) -> Plan:
    video = media.video
    has_audio = video.allow_audio and d.audio_codec is not None
    codec = video.video_codec
    if codec is None:
        return Plan(action="video", output=d.format, keep_audio=has_audio)
    if codec in _MP4_CODECS:
        out = Fmt.MP4
        same = d.format.fmt is Fmt.MP4 and d.video_codec == _MP4_CODECS[codec]
        audio = None if d.audio_codec == "aac" else "aac"
    else:
        out = Fmt.WEBM
        if codec == "av1":
            same = d.video_codec == "av1"  # MP4/AV1 is only re-muxed
        else:
            same = d.format.fmt is Fmt.WEBM and d.video_codec == codec
        wanted = video.audio_codec if video.audio_codec in ("opus", "vorbis") else None
        if wanted is not None:
            audio = None if d.audio_codec == wanted else wanted
        elif d.format.fmt is Fmt.WEBM and d.audio_codec in ("opus", "vorbis"):
            audio = None
        else:
            audio = "opus"
    return Plan(
        action="video",
        output=MediaFormat(kind=Kind.VIDEO, fmt=out),
        video_codec=None if same else codec,
        crf=None if same else crf_for(d.width, d.height, video.quality),
        keep_audio=has_audio,
        audio_codec=audio if has_audio else None,
    )
