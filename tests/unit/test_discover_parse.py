"""Pure parts of media.discover: recorded ffprobe/jxlinfo output and structure checks."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from pictrs_trio.media.discover import (
    bmff_problem,
    inspect_bytes,
    parse_ffprobe,
    parse_ffprobe_avif,
    parse_jxlinfo,
    parse_packet_count,
)
from pictrs_trio.rules.errors import UnsupportedMedia
from pictrs_trio.rules.formats import Fmt, Kind, Sniffed

FIXTURES = Path(__file__).parents[1] / "fixtures"


def recorded(name: str) -> bytes:
    return (FIXTURES / "ffprobe" / f"{name}.json").read_bytes()


def test_mp4_h264() -> None:
    d, count = parse_ffprobe(recorded("mp4_h264"))
    assert (d.format.kind, d.format.fmt, d.width, d.height, d.frames) == (
        Kind.VIDEO, Fmt.MP4, 96, 64, 10,
    )  # fmt: skip
    assert (d.video_codec, d.audio_codec, count) == ("h264", None, False)


def test_mp4_with_aac() -> None:
    d, _ = parse_ffprobe(recorded("mp4_aac"))
    assert (d.video_codec, d.audio_codec) == ("h264", "aac")


def test_webm_needs_packet_count() -> None:
    d, count = parse_ffprobe(recorded("webm_vp9"))
    assert (d.format.fmt, d.video_codec, d.audio_codec, d.frames, count) == (
        Fmt.WEBM, "vp9", "opus", None, True,
    )  # fmt: skip
    assert parse_packet_count(recorded("webm_vp9_count")) == 10


def test_vp8_alpha_from_tag() -> None:
    d, _ = parse_ffprobe(recorded("webm_vp8_alpha"))
    assert (d.video_codec, d.has_alpha) == ("vp8", True)


def test_unsupported_video_codec() -> None:
    with pytest.raises(UnsupportedMedia, match="mpeg4"):
        parse_ffprobe(recorded("mp4_mpeg4"))


def test_garbage_ffprobe_output() -> None:
    with pytest.raises(UnsupportedMedia):
        parse_ffprobe(b"not json")


def test_avif_sequence() -> None:
    d = parse_ffprobe_avif(recorded("avif_anim"))
    assert d is not None
    assert (d.format.kind, d.format.fmt, d.width, d.height, d.frames) == (
        Kind.ANIMATION, Fmt.AVIF, 64, 64, 4,
    )  # fmt: skip


def test_jxlinfo() -> None:
    assert parse_jxlinfo((FIXTURES / "jxlinfo" / "still.txt").read_text()) == (640, 360, None)
    assert parse_jxlinfo((FIXTURES / "jxlinfo" / "rot6.txt").read_text()) == (1200, 1387, 6)
    with pytest.raises(UnsupportedMedia):
        parse_jxlinfo("Decoder error\nError reading file: x.jxl\n")


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


SIG = b"\x89PNG\r\n\x1a\n"
IHDR = chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 6, 0, 0, 0))
IDAT = chunk(b"IDAT", zlib.compress(b"\x00" * 80))
IEND = chunk(b"IEND", b"")


def test_png_apng_detection() -> None:
    assert inspect_bytes(SIG + IHDR + IDAT + IEND).apng_frames is None
    actl = chunk(b"acTL", struct.pack(">II", 3, 0))
    facts = inspect_bytes(SIG + IHDR + actl + IDAT + IEND)
    assert (facts.complete, facts.apng_frames) == (True, 3)
    # acTL after the first IDAT does not make an APNG
    assert inspect_bytes(SIG + IHDR + IDAT + actl + IEND).apng_frames is None


def test_png_truncation() -> None:
    whole = SIG + IHDR + IDAT + IEND
    assert inspect_bytes(whole + b"trailing").complete
    for cut in (len(SIG) + 4, len(SIG + IHDR) + 10, len(whole) - 1):
        assert not inspect_bytes(whole[:cut]).complete


def test_jpeg_needs_eoi_after_sos() -> None:
    head = b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00" + b"\xff\xd9" + b"\xff\xda\x00\x08scan"
    assert not inspect_bytes(head + b"\x12\x34").complete  # the thumbnail's EOI does not count
    assert inspect_bytes(head + b"\x12\x34\xff\xd9").complete


def test_webp_flags_and_size() -> None:
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([0x02]) + b"\x00" * 9
    riff = b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x
    assert inspect_bytes(riff).webp_animated
    assert not inspect_bytes(riff[:-3]).complete


def test_bmff_boxes() -> None:
    ftyp = struct.pack(">I", 16) + b"ftypavis" + b"\x00\x00\x00\x00"
    mdat = struct.pack(">I", 12) + b"mdat" + b"1234"
    assert bmff_problem(ftyp + mdat) == ""
    assert "mdat" in bmff_problem(ftyp + mdat[:-1])
    facts = inspect_bytes(ftyp + mdat)
    assert (facts.sniffed, facts.avif_sequence, facts.complete) == (Sniffed.AVIF, True, True)


def test_refused_formats_are_named() -> None:
    assert inspect_bytes(b"<svg xmlns='x'/>").sniffed is Sniffed.SVG
    assert not inspect_bytes(b"II*\x00" + b"\x00" * 20).complete
    assert inspect_bytes(b"\x00" * 32).sniffed is Sniffed.UNKNOWN
