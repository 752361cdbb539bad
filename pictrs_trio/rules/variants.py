"""Processing operations (``/image/process.{ext}``, upload preprocessing): parsing, the
variant key, the output format, and the pixel geometry each operation produces.

Pure: no I/O. Parsing and keys follow pict-rs (``src/processor.rs``) exactly, so variant
records can be shared with pict-rs data; the geometry follows ImageMagick's rules for the
commands pict-rs runs (``-sample NxN>``, ``-resize NxN>``, ``-resize N@>``,
``-gravity center -crop W:H``), so a variant has the same pixel size as pict-rs makes.
The engine worker (``media.vips_process``) turns the ``Step`` list into libvips calls.

Limits pict-rs does not have (it hands any number to ImageMagick), each a 400
``invalid-process-path``: sizes 0 or above 65535, areas above 65535², blur sigma negative,
not finite or above 100 (a Gaussian kernel grows with sigma: a huge one is a cheap DoS).
"""

from __future__ import annotations

import decimal
import functools
import math
import re
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

import msgspec

from pictrs_trio.rules.errors import InvalidFileExtension, InvalidProcessPath
from pictrs_trio.rules.formats import Fmt, Kind, MediaFormat

if TYPE_CHECKING:  # engine workers import this module: not the whole configuration
    from pictrs_trio.config import Media

MAX_SIZE = 65535
MAX_AREA = MAX_SIZE * MAX_SIZE
MAX_SIGMA = 100.0
MAX_CROP_PART = 20
# Operations in one chain. pict-rs sets no bound; a thousand chained blurs would hold an
# engine worker past its time limit, and no client needs more than a few.
MAX_OPERATIONS = 32
SOURCE_KEYS = frozenset({"src", "alias", "proxy"})

DEFAULT_FILTER = "Lanczos2"

# ImageMagick filter -> libvips kernel (docs/processing.md explains each choice).
KERNELS: dict[str, str] = {
    "Lanczos": "lanczos3",
    "LanczosSharp": "lanczos3",
    "Lanczos2": "lanczos2",
    "Lanczos2Sharp": "lanczos2",
    "Mitchell": "mitchell",
    "RobidouxSharp": "mitchell",
}
# Lower-case spelling -> canonical (ImageMagick) spelling.
FILTERS: dict[str, str] = {name.lower(): name for name in KERNELS}
NEAREST = "nearest"

_OP = {"frozen": True, "kw_only": True, "tag_field": "op"}


class Identity(msgspec.Struct, tag="identity", **_OP):
    """Does nothing; adds nothing to the key."""


class Thumbnail(msgspec.Struct, tag="thumbnail", **_OP):
    """Nearest-neighbour shrink to fit ``size``×``size`` (never enlarges)."""

    size: int


class Resize(msgspec.Struct, tag="resize", frozen=True, kw_only=True, tag_field="op"):
    # (the _OP options spelled out: type checkers read kw_only only from the class line)
    """Filtered shrink to fit ``size``×``size``, or (``area``) to at most ``size`` pixels.

    ``filter`` is the canonical name when the query named a known filter, else None: the
    default (Lanczos2) is used and, as in pict-rs, the key carries no filter name.
    """

    filter: str | None = None
    size: int
    area: bool = False

    @property
    def kernel(self) -> str:
        return KERNELS[self.filter or DEFAULT_FILTER]


class Crop(msgspec.Struct, tag="crop", **_OP):
    """Largest centred region with aspect ``w``:``h``."""

    w: int
    h: int


class Blur(msgspec.Struct, tag="blur", **_OP):
    """Gaussian blur with standard deviation ``sigma`` (pixels of the image at that point)."""

    sigma: float


Op = Identity | Thumbnail | Resize | Crop | Blur


# ----------------------------------------------------------------------------- parsing

# Rust's integer and float grammars (no whitespace, no '_', ASCII digits only).
_UINT = re.compile(r"\+?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_MAX_DIGITS = 20  # more significant digits than any accepted value: refuse before int()


def _uint(text: str, what: str) -> int:
    if _UINT.fullmatch(text) is None:
        raise InvalidProcessPath(f"{what}: {text[:40]!r} is not an unsigned integer")
    digits = text.lstrip("+").lstrip("0") or "0"
    if len(digits) > _MAX_DIGITS:
        raise InvalidProcessPath(f"{what}: number too large")
    return int(digits)


def _size(text: str, what: str) -> int:
    value = _uint(text, what)
    if not 1 <= value <= MAX_SIZE:
        raise InvalidProcessPath(f"{what}: size must be between 1 and {MAX_SIZE}")
    return value


def _resize(value: str) -> Resize:
    if "." not in value:
        return Resize(size=_size(value, "resize"))
    name, _, kind = value.partition(".")
    canonical = FILTERS.get(name.lower())  # unknown names fall back to the default
    if kind.startswith("a"):
        area = _uint(kind.lstrip("a"), "resize area")  # pict-rs strips every leading 'a'
        if not 1 <= area <= MAX_AREA:
            raise InvalidProcessPath(f"resize area must be between 1 and {MAX_AREA}")
        return Resize(filter=canonical, size=area, area=True)
    return Resize(filter=canonical, size=_size(kind, "resize"))


def _crop(value: str) -> Crop:
    parts = value.split("x")
    if len(parts) < 2:
        raise InvalidProcessPath("crop: expected WxH")
    w, h = _uint(parts[0], "crop"), _uint(parts[1], "crop")  # further parts are ignored
    if not (1 <= w <= MAX_CROP_PART and 1 <= h <= MAX_CROP_PART):
        raise InvalidProcessPath(f"crop: both parts must be between 1 and {MAX_CROP_PART}")
    return Crop(w=w, h=h)


def _blur(value: str) -> Blur:
    if _FLOAT.fullmatch(value) is None:
        raise InvalidProcessPath(f"blur: {value[:40]!r} is not a number")
    sigma = float(value)
    if not math.isfinite(sigma) or math.copysign(1.0, sigma) < 0 or sigma > MAX_SIGMA:
        raise InvalidProcessPath(f"blur: sigma must be between 0 and {MAX_SIGMA:g}")
    return Blur(sigma=sigma)


def parse_operation(key: str, value: str) -> Op:
    """One (lower-case key, value) pair. Raises InvalidProcessPath."""
    if key == "identity":
        return Identity()
    if key == "thumbnail":
        return Thumbnail(size=_size(value, "thumbnail"))
    if key == "resize":
        return _resize(value)
    if key == "crop":
        return _crop(value)
    if key == "blur":
        return _blur(value)
    raise InvalidProcessPath(f"unknown operation {key[:40]!r}")


@functools.lru_cache(maxsize=4)
def parse_steps(text: str) -> tuple[Op, ...]:
    """``media.preprocess_steps`` (query syntax), parsed once: checked at start-up, applied
    to every upload that names no operations. Raises InvalidProcessPath."""
    return tuple(parse_operations(parse_qsl(text, keep_blank_values=True), allowed=None))


def parse_operations(
    pairs: Iterable[tuple[str, str]], *, allowed: Collection[str] | None
) -> list[Op]:
    """Operations from query pairs, in query order (duplicates kept).

    Keys are lower-cased. With ``allowed`` (``media.filters``, the process routes) pairs
    whose key is not in it, and the source keys ``src``/``alias``/``proxy``, are dropped
    silently; with ``allowed=None`` (upload preprocessing) every pair must be an operation.
    Raises InvalidProcessPath (400) for an unknown key, a bad value, or more than
    MAX_OPERATIONS operations.
    """
    ops: list[Op] = []
    for raw_key, value in pairs:
        key = raw_key.lower()
        if allowed is not None and (key in SOURCE_KEYS or key not in allowed):
            continue
        if len(ops) == MAX_OPERATIONS:
            raise InvalidProcessPath(f"too many operations: at most {MAX_OPERATIONS}")
        ops.append(parse_operation(key, value))
    return ops


# ----------------------------------------------------------------------------- keys


def render_float(value: float) -> str:
    """Rust's ``f64`` Display: shortest round-trip digits, never an exponent, no ``.0``."""
    text = repr(value)
    if "e" in text or "E" in text:
        text = format(decimal.Decimal(text), "f")
    if text.endswith(".0"):
        text = text[:-2]
    return text


def _segments(op: Op) -> list[str]:
    if isinstance(op, Thumbnail):
        return ["thumbnail", str(op.size)]
    if isinstance(op, Resize):
        name = op.filter or ""
        if op.area:
            return ["resize", f"{name}.a{op.size}"]
        return ["resize", f"{name}.{op.size}" if name else str(op.size)]
    if isinstance(op, Crop):
        return ["crop", f"{op.w}x{op.h}"]
    if isinstance(op, Blur):
        return ["blur", render_float(op.sigma)]
    return []


def variant_key(ops: Iterable[Op], ext: Fmt) -> str:
    """pict-rs's variant key: op segments in order, then the extension (``resize/200/webp``)."""
    return "/".join([*(s for op in ops for s in _segments(op)), ext.value])


# ----------------------------------------------------------------------------- formats

PROCESS_EXTENSIONS: dict[str, Fmt] = {
    "apng": Fmt.APNG,
    "avif": Fmt.AVIF,
    "gif": Fmt.GIF,
    "jpeg": Fmt.JPEG,
    "jpg": Fmt.JPEG,
    "jxl": Fmt.JXL,
    "png": Fmt.PNG,
    "webp": Fmt.WEBP,
}
_STILL_ONLY = frozenset({Fmt.JPEG, Fmt.JXL, Fmt.PNG})
_ALWAYS_ANIMATION = frozenset({Fmt.APNG, Fmt.GIF})


def parse_ext(ext: str) -> Fmt:
    """The ``{ext}`` of ``process.{ext}``. Raises InvalidFileExtension (400)."""
    fmt = PROCESS_EXTENSIONS.get(ext)
    if fmt is None:
        raise InvalidFileExtension(f"unsupported process extension {ext[:20]!r}")
    return fmt


def output_format(input_kind: Kind, ext: Fmt) -> MediaFormat:
    """What ``ext`` means for an input of ``input_kind`` (pict-rs ``src/formats.rs``).

    APNG and GIF are recorded as animations even with one frame (as discovery finds them);
    JPEG/JXL/PNG are always stills; AVIF/WebP follow the input. Videos count as stills.
    """
    if ext in _ALWAYS_ANIMATION or (input_kind is Kind.ANIMATION and ext not in _STILL_ONLY):
        return MediaFormat(kind=Kind.ANIMATION, fmt=ext)
    return MediaFormat(kind=Kind.IMAGE, fmt=ext)


def needs_still(original: MediaFormat, ext: Fmt) -> bool:
    """Whether the input is the file's motion still rather than the original (pict-rs
    ``src/generate.rs``)."""
    if original.kind is Kind.VIDEO:
        return True
    return original.kind is Kind.ANIMATION and ext in _STILL_ONLY


def quality_for(media: Media, output: MediaFormat) -> int | None:
    """``media.image.quality.<fmt>`` for stills, ``media.animation.quality.<fmt>`` for
    animations (GIF has none); None lets the encoder use our default."""
    table = media.animation.quality if output.kind is Kind.ANIMATION else media.image.quality
    value = getattr(table, output.fmt.value, None)
    return value if isinstance(value, int) else None


# ----------------------------------------------------------------------------- geometry

_STEP = {"frozen": True, "kw_only": True, "tag_field": "step"}


class CropBox(msgspec.Struct, tag="crop", **_STEP):
    left: int
    top: int
    width: int
    height: int


class ScaleTo(msgspec.Struct, tag="scale", **_STEP):
    width: int
    height: int
    kernel: str  # libvips kernel name; "nearest" for thumbnail


class BlurBy(msgspec.Struct, tag="blur", **_STEP):
    sigma: float


Step = CropBox | ScaleTo | BlurBy


def fit_size(width: int, height: int, box: int) -> tuple[int, int]:
    """ImageMagick ``NxN>``: shrink-only, aspect kept, each side rounded half up."""
    if width <= box and height <= box:
        return width, height
    scale = min(box / width, box / height)
    return max(1, math.floor(width * scale + 0.5)), max(1, math.floor(height * scale + 0.5))


def area_size(width: int, height: int, area: int) -> tuple[int, int]:
    """ImageMagick ``N@>``: shrink-only to at most ``area`` pixels, sides truncated."""
    if width * height <= area:
        return width, height
    # ImageMagick adds sqrt(MagickEpsilon) to the area before taking the root.
    factor = math.sqrt(area + 1e-6) / math.sqrt(width * height)
    return (
        min(width, max(1, math.floor(width * factor))),
        min(height, max(1, math.floor(height * factor))),
    )


def crop_box(width: int, height: int, w: int, h: int) -> CropBox:
    """ImageMagick ``-gravity center -crop W:H+0+0``: the largest centred W:H region."""
    wanted, have = w / h, width / height
    if wanted >= have:
        cw, ch = width, math.floor(height * have / wanted + 0.5)
    else:
        cw, ch = math.floor(width * wanted / have + 0.5), height
    cw, ch = min(width, max(1, cw)), min(height, max(1, ch))
    # ImageMagick centres with integer halves of each size, not half the difference.
    return CropBox(left=width // 2 - cw // 2, top=height // 2 - ch // 2, width=cw, height=ch)


def plan(width: int, height: int, ops: Iterable[Op]) -> list[Step]:
    """The concrete steps for an image of ``width``×``height``; no-op steps are left out."""
    steps: list[Step] = []
    for op in ops:
        if isinstance(op, Thumbnail | Resize):
            if isinstance(op, Resize) and op.area:
                size = area_size(width, height, op.size)
            else:
                size = fit_size(width, height, op.size)
            if size != (width, height):
                kernel = NEAREST if isinstance(op, Thumbnail) else op.kernel
                steps.append(ScaleTo(width=size[0], height=size[1], kernel=kernel))
                width, height = size
        elif isinstance(op, Crop):
            box = crop_box(width, height, op.w, op.h)
            if (box.width, box.height) != (width, height):
                steps.append(box)
                width, height = box.width, box.height
        elif isinstance(op, Blur) and op.sigma > 0:
            steps.append(BlurBy(sigma=op.sigma))
    return steps


def final_size(width: int, height: int, steps: Iterable[Step]) -> tuple[int, int]:
    for step in steps:
        if isinstance(step, CropBox | ScaleTo):
            width, height = step.width, step.height
    return width, height


def load_reduction(width: int, height: int, steps: Iterable[Step]) -> float:
    """How much smaller than ``width``×``height`` the decoder may deliver the image.

    Only a leading run of crops followed by a scale can use it (a blur first needs every
    pixel). Nearest sampling may go down to the target itself; a filter kernel keeps a
    factor of two above the target so it still has data to work with (libvips' own rule).
    """
    for step in steps:
        if isinstance(step, CropBox):
            width, height = step.width, step.height
            continue
        if isinstance(step, ScaleTo):
            factor = min(width / step.width, height / step.height)
            margin = 1.0 if step.kernel == NEAREST else 2.0
            return max(1.0, factor / margin)
        return 1.0
    return 1.0
