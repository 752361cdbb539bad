"""What is this file? Sniff, check structure, then ask the cheapest tool that knows.

``inspect_file`` (sync, one thread hop) reads only headers and container structure: magic
bytes, PNG chunks (APNG = ``acTL`` before the first ``IDAT``), the WebP VP8X flags, ISO-BMFF
top-level boxes, the EBML segment size, JPEG/GIF trailers. That rejects refused formats and
most truncated files before any decoder runs. Then:

* JPEG, PNG, GIF, WebP, AVIF: the engine worker's header probe (dims, pages, orientation);
* JPEG XL: ``jxlinfo`` (header only; pyvips has no JPEG XL);
* MP4/WebM (and AVIF sequences): ``ffprobe -show_streams -show_format`` (no ``-count_frames``;
  packets are counted only when the container has no frame count).

The parsers (``parse_ffprobe``, ``parse_jxlinfo`` and the structure checks) are pure and
tested against recorded output. Raises UnsupportedMedia (400) for anything refused or broken.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import msgspec
import trio

from pictrs_trio.media.ffmpeg import count_packets_argv, ffprobe_argv
from pictrs_trio.media.protocol import Probe, ProbeResult
from pictrs_trio.media.vips import EnginePool
from pictrs_trio.rules.errors import ErrorCode, MediaToolError, UnsupportedMedia
from pictrs_trio.rules.formats import ACCEPTED, SNIFF_BYTES, Fmt, Kind, MediaFormat, Sniffed, sniff
from pictrs_trio.rules.policy import Discovery

Runner = Callable[[Sequence[str | Path]], Awaitable[bytes]]

NAMES: dict[Sniffed, str] = {
    Sniffed.HEIC: "HEIC/HEIF",
    Sniffed.TIFF: "TIFF",
    Sniffed.BMP: "BMP",
    Sniffed.SVG: "SVG",
    Sniffed.PDF: "PDF",
    Sniffed.ICO: "ICO",
    Sniffed.UNKNOWN: "unknown data",
}


class Facts(msgspec.Struct, frozen=True, kw_only=True):
    """What the bytes say before any tool runs."""

    sniffed: Sniffed
    complete: bool = True  # container structure reaches its end (not truncated)
    problem: str = ""  # why not complete
    apng_frames: int | None = None  # set when a PNG has acTL before IDAT
    webp_animated: bool = False
    avif_sequence: bool = False  # 'avis' brand: an image sequence
    jxl_container: bool = False
    screen: tuple[int, int] | None = None  # a GIF's logical screen (width, height)


# ---------------------------------------------------------------------------- structure


def _png(f: mmap.mmap | bytes) -> Facts:
    """Walk chunks (lengths only) to IEND; APNG iff acTL precedes the first IDAT."""
    pos, size, frames = 8, len(f), None
    seen_idat = False
    while pos + 8 <= size:
        length = int.from_bytes(f[pos : pos + 4], "big")
        kind = bytes(f[pos + 4 : pos + 8])
        end = pos + 12 + length
        if length > 0x7FFFFFFF or end > size:
            return Facts(sniffed=Sniffed.PNG, complete=False, problem=f"PNG chunk {kind!r} cut off")
        if pos == 8 and kind != b"IHDR":
            return Facts(sniffed=Sniffed.PNG, complete=False, problem="PNG without IHDR")
        if kind == b"acTL" and not seen_idat and length >= 8:
            frames = int.from_bytes(f[pos + 8 : pos + 12], "big")
        elif kind == b"IDAT":
            seen_idat = True
        elif kind == b"IEND":
            if not seen_idat:
                break
            return Facts(sniffed=Sniffed.PNG, apng_frames=frames)
        pos = end
    return Facts(sniffed=Sniffed.PNG, complete=False, problem="PNG ends before IEND")


def _jpeg(f: mmap.mmap | bytes) -> Facts:
    # In entropy-coded data 0xFF is always followed by 0x00 or RSTn, so an FFD9 after the
    # first SOS can only be the real EOI. (An EXIF thumbnail's EOI sits before the SOS.)
    sos = f.find(b"\xff\xda")
    if sos < 0 or f.rfind(b"\xff\xd9") < sos:
        return Facts(sniffed=Sniffed.JPEG, complete=False, problem="JPEG without end of image")
    return Facts(sniffed=Sniffed.JPEG)


def _gif(f: mmap.mmap | bytes) -> Facts:
    tail = bytes(f[-64:]).rstrip(b"\x00\r\n ")
    if len(f) < 10 or not tail.endswith(b";"):
        return Facts(sniffed=Sniffed.GIF, complete=False, problem="GIF without trailer")
    # The logical screen every frame is drawn on (what a browser shows), from the header:
    # libvips reports the first frame's size, which a hostile file makes 1x1.
    screen = (int.from_bytes(f[6:8], "little"), int.from_bytes(f[8:10], "little"))
    return Facts(sniffed=Sniffed.GIF, screen=screen)


def _webp(f: mmap.mmap | bytes) -> Facts:
    riff = int.from_bytes(f[4:8], "little")
    if riff + 8 > len(f) or len(f) < 30:
        return Facts(sniffed=Sniffed.WEBP, complete=False, problem="WebP RIFF cut off")
    animated = bytes(f[12:16]) == b"VP8X" and bool(f[20] & 0x02)
    return Facts(sniffed=Sniffed.WEBP, webp_animated=animated)


def bmff_problem(f: mmap.mmap | bytes) -> str:
    """'' when the ISO-BMFF top-level boxes tile the file, else what is wrong."""
    pos, size = 0, len(f)
    while pos < size:
        if pos + 8 > size:
            return "trailing bytes after the last box"
        box = int.from_bytes(f[pos : pos + 4], "big")
        header = 8
        if box == 1:
            if pos + 16 > size:
                return "box header cut off"
            box, header = int.from_bytes(f[pos + 8 : pos + 16], "big"), 16
        elif box == 0:
            return ""  # extends to the end of the file
        if box < header or pos + box > size:
            return f"box {bytes(f[pos + 4 : pos + 8])!r} cut off"
        pos += box
    return ""


def _brands(f: mmap.mmap | bytes) -> set[bytes]:
    box = min(int.from_bytes(f[0:4], "big"), len(f), 256)
    return {bytes(f[8:12])} | {bytes(f[i : i + 4]) for i in range(16, box - 3, 4)}


def _ebml_vint(f: mmap.mmap | bytes, pos: int) -> tuple[int, int, bool]:
    """(value, length, unknown) of an EBML variable-size integer at ``pos``."""
    first = f[pos]
    length = 1
    while length <= 8 and not first & (0x80 >> (length - 1)):
        length += 1
    if length > 8 or pos + length > len(f):
        raise ValueError("bad EBML size")
    value = first & (0xFF >> length)
    for b in f[pos + 1 : pos + length]:
        value = (value << 8) | b
    return value, length, value == (1 << (7 * length)) - 1


def _webm(f: mmap.mmap | bytes) -> Facts:
    try:
        size, n, _ = _ebml_vint(f, 4)
        pos = 4 + n + size  # past the EBML header element
        if f[pos : pos + 4] != b"\x18\x53\x80\x67":
            return Facts(sniffed=Sniffed.WEBM, complete=False, problem="no Segment after EBML")
        size, n, unknown = _ebml_vint(f, pos + 4)
        if not unknown and pos + 4 + n + size > len(f):
            return Facts(sniffed=Sniffed.WEBM, complete=False, problem="WebM Segment cut off")
    except (ValueError, IndexError):
        return Facts(sniffed=Sniffed.WEBM, complete=False, problem="bad EBML header")
    return Facts(sniffed=Sniffed.WEBM)


def inspect_bytes(data: mmap.mmap | bytes) -> Facts:
    """Pure structure check over the whole file's bytes (an mmap in production)."""
    sniffed = sniff(bytes(data[:SNIFF_BYTES]))
    if sniffed not in ACCEPTED:
        return Facts(sniffed=sniffed, complete=False, problem=f"{NAMES[sniffed]} is not accepted")
    if sniffed is Sniffed.PNG:
        return _png(data)
    if sniffed is Sniffed.JPEG:
        return _jpeg(data)
    if sniffed is Sniffed.GIF:
        return _gif(data)
    if sniffed is Sniffed.WEBP:
        return _webp(data)
    if sniffed is Sniffed.WEBM:
        return _webm(data)
    if sniffed is Sniffed.JXL and bytes(data[:2]) == b"\xff\x0a":
        return Facts(sniffed=sniffed)  # bare codestream: jxlinfo reads the header
    problem = bmff_problem(data)
    return Facts(
        sniffed=sniffed,
        complete=not problem,
        problem=problem,
        avif_sequence=sniffed is Sniffed.AVIF and b"avis" in _brands(data),
        jxl_container=sniffed is Sniffed.JXL,
    )


def inspect_file(path: Path) -> Facts:
    """``inspect_bytes`` over a memory map: only the pages the checks touch are read."""
    with path.open("rb") as f:
        if os.fstat(f.fileno()).st_size < 12:
            return inspect_bytes(f.read())
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return inspect_bytes(data)


# ---------------------------------------------------------------------------- tool output

VIDEO_CODECS = frozenset({"h264", "hevc", "av1", "vp8", "vp9"})
AUDIO_FOR: dict[Fmt, frozenset[str]] = {
    Fmt.MP4: frozenset({"aac"}),
    Fmt.WEBM: frozenset({"opus", "vorbis"}),
}
ALPHA_PIX_FMTS = frozenset(
    {"yuva420p", "yuva422p", "yuva444p", "rgba", "bgra", "argb", "abgr", "ya8", "gbrap"}
)


class FfStream(msgspec.Struct, kw_only=True):
    codec_type: str = ""
    codec_name: str = ""
    width: int = 0
    height: int = 0
    nb_frames: str | None = None
    nb_read_packets: str | None = None
    pix_fmt: str | None = None
    tags: dict[str, str] = msgspec.field(default_factory=dict)


class FfFormat(msgspec.Struct, kw_only=True):
    format_name: str = ""


class FfProbe(msgspec.Struct, kw_only=True):
    streams: list[FfStream] = msgspec.field(default_factory=list)
    format: FfFormat = msgspec.field(default_factory=FfFormat)


_ffprobe_decoder = msgspec.json.Decoder(FfProbe)


def _frames(text: str | None) -> int | None:
    """pict-rs: counts of one or less mean 'no frame count'."""
    try:
        n = int(text) if text is not None else 0
    except ValueError:
        return None
    return n if n > 1 else None


def parse_ffprobe(raw: bytes) -> tuple[Discovery, bool]:
    """Discovery of a video from ffprobe JSON, and whether the frame count must be counted.

    Container follows the codec as in pict-rs: H.264/H.265 -> MP4, VP8/VP9 -> WebM, AV1 by
    the container. Audio is kept only when it fits the output container.
    """
    try:
        probe = _ffprobe_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise UnsupportedMedia(f"unreadable ffprobe output: {exc}") from None
    video = next(
        (s for s in probe.streams if s.codec_type == "video" and s.codec_name in VIDEO_CODECS),
        None,
    )
    if video is None:
        names = sorted({s.codec_name for s in probe.streams if s.codec_type == "video"})
        raise UnsupportedMedia(f"no supported video stream (found: {', '.join(names) or 'none'})")
    if video.width <= 0 or video.height <= 0:
        raise UnsupportedMedia("video stream without dimensions")
    if video.codec_name in ("h264", "hevc"):
        fmt = Fmt.MP4
    elif video.codec_name in ("vp8", "vp9"):
        fmt = Fmt.WEBM
    else:
        fmt = Fmt.MP4 if "mp4" in probe.format.format_name else Fmt.WEBM
    audio = next(
        (
            s.codec_name
            for s in probe.streams
            if s.codec_type == "audio" and s.codec_name in AUDIO_FOR[fmt]
        ),
        None,
    )
    has_alpha = video.codec_name in ("vp8", "vp9") and (
        video.pix_fmt in ALPHA_PIX_FMTS
        or video.tags.get("alpha_mode", video.tags.get("ALPHA_MODE")) == "1"
    )
    discovery = Discovery(
        format=MediaFormat(kind=Kind.VIDEO, fmt=fmt),
        width=video.width,
        height=video.height,
        frames=_frames(video.nb_frames),
        video_codec=video.codec_name,
        audio_codec=audio,
        has_alpha=has_alpha,
    )
    return discovery, video.nb_frames is None


def parse_packet_count(raw: bytes) -> int | None:
    probe = _ffprobe_decoder.decode(raw)
    return _frames(probe.streams[0].nb_read_packets) if probe.streams else None


def parse_jxlinfo(text: str) -> tuple[int, int, int | None]:
    """(width, height, orientation) from ``jxlinfo`` text. It exits 0 even on garbage, so a
    missing 'JPEG XL image, WxH' line is the failure signal."""
    width = height = 0
    orientation = None
    for line in text.splitlines():
        if line.startswith(("JPEG XL image, ", "JPEG XL animation, ")):
            dims = line.split(",")[1].strip()
            w, _, h = dims.partition("x")
            if w.isdigit() and h.isdigit():
                width, height = int(w), int(h)
        elif line.startswith("Orientation: "):
            value = line.split()[1]
            orientation = int(value) if value.isdigit() else None
    if width <= 0 or height <= 0:
        raise UnsupportedMedia("not a readable JPEG XL image")
    return width, height, orientation


# ---------------------------------------------------------------------------- discovery

_STILL: dict[Sniffed, Fmt] = {
    Sniffed.JPEG: Fmt.JPEG,
    Sniffed.PNG: Fmt.PNG,
    Sniffed.WEBP: Fmt.WEBP,
    Sniffed.AVIF: Fmt.AVIF,
}


async def _ffprobe(path: Path, run: Runner) -> bytes:
    try:
        return await run(ffprobe_argv(path))
    except MediaToolError as exc:
        if exc.code is ErrorCode.COMMAND_FAILURE:
            raise UnsupportedMedia(f"ffprobe rejected the file: {exc.msg}") from None
        raise


async def _video(path: Path, run: Runner) -> Discovery:
    discovery, count = parse_ffprobe(await _ffprobe(path, run))
    if count:
        frames = parse_packet_count(await run(count_packets_argv(path)))
        discovery = msgspec.structs.replace(discovery, frames=frames)
    return discovery


async def discover(path: Path, *, engine: EnginePool, run: Runner) -> Discovery:
    """Discovery of the file at ``path`` (see module docstring). Raises UnsupportedMedia."""
    facts = await trio.to_thread.run_sync(inspect_file, path)
    if facts.sniffed not in ACCEPTED:
        raise UnsupportedMedia(f"unsupported media type: {NAMES[facts.sniffed]}")
    if not facts.complete:
        raise UnsupportedMedia(f"corrupt or truncated {facts.sniffed.value}: {facts.problem}")
    if facts.sniffed in (Sniffed.MP4, Sniffed.WEBM):
        return await _video(path, run)
    if facts.sniffed is Sniffed.JXL:
        width, height, orientation = parse_jxlinfo(
            (await run(["jxlinfo", path])).decode("utf-8", "replace")
        )
        return Discovery(
            format=MediaFormat(kind=Kind.IMAGE, fmt=Fmt.JXL),
            width=width,
            height=height,
            frames=None,
            orientation=orientation,
        )
    if facts.avif_sequence:
        seq = parse_ffprobe_avif(await _ffprobe(path, run))
        if seq is not None:
            return seq
    probe = await engine.submit(Probe(path=os.fspath(path), sniffed=facts.sniffed.value))
    assert isinstance(probe, ProbeResult)
    return _from_probe(facts, probe)


def parse_ffprobe_avif(raw: bytes) -> Discovery | None:
    """An AVIF image sequence as ffprobe sees it; None when it has a single frame."""
    probe = _ffprobe_decoder.decode(raw)
    video = next((s for s in probe.streams if s.codec_name == "av1" and s.width > 0), None)
    frames = _frames(video.nb_frames) if video is not None else None
    if video is None or frames is None:
        return None
    fmt = MediaFormat(kind=Kind.ANIMATION, fmt=Fmt.AVIF)
    return Discovery(format=fmt, width=video.width, height=video.height, frames=frames)


def _from_probe(facts: Facts, probe: ProbeResult) -> Discovery:
    frames = probe.pages if probe.pages > 1 else None
    sniffed = facts.sniffed
    if sniffed is Sniffed.GIF:
        fmt = MediaFormat(kind=Kind.ANIMATION, fmt=Fmt.GIF)  # even a single frame
    elif sniffed is Sniffed.PNG and facts.apng_frames is not None:
        fmt = MediaFormat(kind=Kind.ANIMATION, fmt=Fmt.APNG)
        frames = facts.apng_frames if facts.apng_frames > 1 else None
    elif (sniffed is Sniffed.WEBP and facts.webp_animated) or (
        sniffed is Sniffed.AVIF and frames is not None
    ):
        fmt = MediaFormat(kind=Kind.ANIMATION, fmt=_STILL[sniffed])
    else:
        fmt = MediaFormat(kind=Kind.IMAGE, fmt=_STILL[sniffed])
        frames = None
    width, height = probe.width, probe.height
    if facts.screen is not None:  # a GIF: its frames are drawn on the logical screen
        width, height = max(width, facts.screen[0]), max(height, facts.screen[1])
    return Discovery(
        format=fmt,
        width=width,
        height=height,
        frames=frames,
        orientation=probe.orientation if fmt.kind is Kind.IMAGE else None,
        has_alpha=probe.has_alpha,
    )
