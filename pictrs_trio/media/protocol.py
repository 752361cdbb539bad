"""Wire protocol between the server and its engine workers (``vips_worker``).

Frames are a 4-byte big-endian length followed by msgpack. Requests and replies are tagged
unions of frozen Structs so new job kinds (thumbnails, resizes) are new Structs, nothing more.
Imports nothing heavy: the worker loads this before libvips, the server never loads libvips.
"""

from __future__ import annotations

import struct

import msgspec

from pictrs_trio.rules.variants import Op

HEADER = struct.Struct(">I")
MAX_FRAME = 16 * 1024 * 1024  # replies are small; a bigger length means a broken stream

Frozen = {"frozen": True, "kw_only": True, "tag_field": "op"}

LIMITS_ENV = "PICTRS_ENGINE_LIMITS"  # EngineLimits as JSON, in each worker's environment


class EngineLimits(msgspec.Struct, frozen=True, kw_only=True):
    """What bounds every engine worker, from ``[media.magick]`` (``media.tools.engine_limits``;
    docs/processing.md). The worker applies them before it loads libvips."""

    max_width: int = 10_000  # a frame wider than this is not decoded (magick.max_width)
    max_height: int = 10_000  # ... nor one taller (magick.max_height)
    address_space_mb: int = 1024  # RLIMIT_AS (magick.memory + magick.map + a base)
    in_memory_mb: int = 256  # a full decode above this goes to a temporary file (magick.memory)
    file_mb: int = 1024  # RLIMIT_FSIZE: the largest file the worker may write (magick.disk)


class Probe(msgspec.Struct, tag="probe", **Frozen):
    """Header-only look at a file with the loader for its sniffed type (no pixel decode)."""

    path: str
    sniffed: str  # formats.Sniffed value: jpeg, png, gif, webp, avif


class Render(msgspec.Struct, tag="render", **Frozen):
    """Apply ``ops`` (``variants.Op``) to ``src`` and save ``dst`` without metadata. With no
    operations it is a conversion (ingest's re-encode to the configured format).

    ``out_fmt`` is one the worker writes itself: jpeg, png, webp, avif (still), gif, apng.
    ``animated`` loads every page and keeps the animation (gif/webp/apng output); otherwise
    only the first page is read. ``autorot`` applies the EXIF orientation first. ``strict``
    refuses an input libvips reports any error for (ingest), where a variant of a stored file
    tolerates what decodes. Animations above ``max_pixels`` (frames x width x height of the
    input) are refused as too much work.
    """

    src: str
    sniffed: str
    dst: str
    ops: list[Op]
    out_fmt: str
    quality: int | None = None
    animated: bool = False
    autorot: bool = False
    strict: bool = False
    max_pixels: int = 200_000_000


class Blurhash(msgspec.Struct, tag="blurhash", **Frozen):
    """The BlurHash of ``src``'s first frame (``rules.blurhash``), computed from the image
    shrunk to at most ``rules.blurhash.SIDE`` pixels a side (libvips has no BlurHash)."""

    src: str
    sniffed: str


class Sleep(msgspec.Struct, tag="sleep", **Frozen):
    """Test aid: a job that takes ``seconds`` (proves time limits and kill-on-timeout)."""

    seconds: float


Request = Probe | Render | Blurhash | Sleep


class ProbeResult(msgspec.Struct, tag="probe_result", **Frozen):
    width: int
    height: int
    pages: int
    orientation: int | None
    loader: str
    has_alpha: bool


class RenderResult(msgspec.Struct, tag="render_result", **Frozen):
    """The saved output as a header probe of ``dst`` sees it, plus how it was made."""

    width: int
    height: int
    pages: int  # frames written (APNG: from its acTL)
    has_alpha: bool
    shrink: float  # reduction the decoder applied at load (JPEG 1/2/4/8, WebP any; 1 = none)


class BlurhashResult(msgspec.Struct, tag="blurhash_result", **Frozen):
    blurhash: str


class Slept(msgspec.Struct, tag="slept", **Frozen):
    pass


class Ready(msgspec.Struct, tag="ready", **Frozen):
    """Sent once by a worker when libvips is loaded and warmed up."""


class Failed(msgspec.Struct, tag="failed", **Frozen):
    """The job failed; ``media`` says whether the input (not the engine) was at fault."""

    message: str
    media: bool


Reply = ProbeResult | RenderResult | BlurhashResult | Slept | Ready | Failed


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload
