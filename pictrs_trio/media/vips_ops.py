"""libvips side of the engine worker: the one-loader-per-type rule and processing jobs.

Runs only inside ``vips_worker`` processes; pyvips is imported lazily so that the server,
which imports the protocol and this module's names indirectly, never loads libvips.

Rendering (``media.protocol.Render``) follows ``variants.plan``: the steps are computed at
the input's full size (ImageMagick's geometry), then executed on whatever the decoder hands
us. When the chain starts by shrinking, the decoder shrinks already: JPEG by 2/4/8 in the
DCT, WebP by any factor, never below what ``variants.load_reduction`` allows. Later steps
get the exact sizes computed at full size, so shrink-on-load never changes the output size.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pictrs_trio.media import apng, turbojpeg
from pictrs_trio.media.protocol import (
    Blurhash,
    BlurhashResult,
    EngineLimits,
    Render,
    RenderResult,
)
from pictrs_trio.rules import blurhash as bh
from pictrs_trio.rules.variants import (
    NEAREST,
    BlurBy,
    CropBox,
    Resize,
    ScaleTo,
    Step,
    load_reduction,
    plan,
)

if TYPE_CHECKING:
    import pyvips

# sniffed type -> the one loader allowed for it. AVIF goes through libheif.
LOADERS: dict[str, str] = {
    "jpeg": "jpegload",
    "png": "pngload",
    "gif": "gifload",
    "webp": "webpload",
    "avif": "heifload",
}
MULTI_PAGE = frozenset({"gif", "webp", "avif"})
# how the worker reads back what it wrote (APNG: its default image, like discovery does)
READ_BACK = {"apng": "png"} | {f: f for f in ("jpeg", "png", "webp", "avif", "gif")}

# Encoder defaults when the configuration sets no quality (docs/processing.md).
DEFAULT_QUALITY = {"jpeg": 85, "webp": 80, "avif": 50}
# Encoder effort below libvips' defaults (4): measured on 256-1000 px variants, WebP effort
# 2 is ~2x faster than 4 for ~3 % larger files; AVIF effort 2 is ~6x faster than 4.
WEBP_EFFORT = 2
AVIF_EFFORT = 2
# A Gaussian cut where it falls below 0.5 % of its peak: close to ImageMagick's full kernel
# (libvips' default 0.2 truncates visibly), still a bounded cost.
BLUR_MIN_AMPL = 0.005
JPEG_SHRINKS = (8, 4, 2)


class MediaFault(Exception):
    """The input is bad (wrong type, corrupt, too big to process): the server maps it to 400."""


def load(vips: type[pyvips.Image], path: str, sniffed: str, **options: object) -> pyvips.Image:
    loader = LOADERS.get(sniffed)
    if loader is None:
        raise MediaFault(f"no loader allowed for {sniffed!r}")
    image: pyvips.Image = getattr(vips, loader)(path, **options)
    got = image.get("vips-loader")
    if got != loader:
        raise MediaFault(f"loader mismatch: wanted {loader}, libvips used {got}")
    return image


def field(image: pyvips.Image, name: str) -> object | None:
    return image.get(name) if image.get_typeof(name) != 0 else None


def pages_of(image: pyvips.Image) -> int:
    pages = field(image, "n-pages")
    return pages if isinstance(pages, int) and pages > 0 else 1


# ----------------------------------------------------------------------------- loading


def _open(
    vips: type[pyvips.Image], job: Render, limits: EngineLimits
) -> tuple[pyvips.Image, int, int, float]:
    """(image, frame width, frame height, load reduction) with shrink-on-load applied.
    Refuses a frame over the engine's width or height limit before any pixel is decoded."""
    animated = job.animated and job.sniffed in MULTI_PAGE
    # Rotating needs random access; without it, a sequential decode streams to the saver.
    access = "random" if job.autorot and not animated else "sequential"
    options: dict[str, object] = {
        "access": access,
        "fail_on": "error" if job.strict else "truncated",
    }
    if animated:
        options["n"] = -1
    image = load(vips, job.src, job.sniffed, **options)  # header only: libvips is lazy
    frame_height = image.height // pages_of(image) if animated else image.height
    if image.width > limits.max_width or frame_height > limits.max_height:
        raise MediaFault(
            f"image too large for the engine: {image.width}x{frame_height} (limit "
            f"{limits.max_width}x{limits.max_height}, media.magick.max_width/max_height)"
        )
    if job.autorot and not animated:
        image = image.autorot()
        return image, image.width, image.height, 1.0
    pages = pages_of(image) if animated else 1
    width, height = image.width, image.height // pages
    if pages * width * height > job.max_pixels:
        raise MediaFault(
            f"animation too large to process: {pages} frames of {width}x{height} "
            f"(limit {job.max_pixels} pixels in all)"
        )
    if animated:
        return image, width, height, 1.0
    steps = plan(width, height, job.ops)
    reduction = load_reduction(width, height, steps)
    if job.sniffed == "jpeg":
        shrink = next((f for f in JPEG_SHRINKS if f <= reduction), 1)
        if shrink > 1:
            # Plain sampling all the way (thumbnail): the decoder may take shortcuts too.
            sampling = all(
                isinstance(s, CropBox) or (isinstance(s, ScaleTo) and s.kernel == NEAREST)
                for s in steps
            )
            image = _jpeg_shrunk(vips, job.src, shrink, fast=sampling) or load(
                vips, job.src, "jpeg", shrink=shrink, **options
            )
    elif job.sniffed == "webp" and reduction > 1.0:
        # A pixel of slack so rounding in the decoder never leaves us short of the target.
        scale = min(1.0, 1.0 / reduction + 1.0 / min(width, height))
        image = load(vips, job.src, "webp", scale=scale, **options)
    return image, width, height, width / image.width


def _jpeg_shrunk(
    vips: type[pyvips.Image], path: str, shrink: int, *, fast: bool
) -> pyvips.Image | None:
    """Decode at 1/``shrink`` through TurboJPEG (faster than libvips' own decode here), or
    None when that path does not apply (the caller then uses ``jpegload``)."""
    tj = turbojpeg.decoder()
    if tj is None:
        return None
    # Mapped, not read: the decoder takes the page-cached bytes as they are.
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) as data:
        decoded = tj.decode(data, shrink, fast=fast)
    if decoded is None:
        return None
    image = vips.new_from_memory(
        decoded.pixels, decoded.width, decoded.height, decoded.bands, "uchar"
    ).copy(interpretation="b-w" if decoded.bands == 1 else "srgb")
    # libvips rounds a shrunk size down (libjpeg rounds up): keep libvips' sizes.
    width = max(1, decoded.full_width // shrink)
    height = max(1, decoded.full_height // shrink)
    if width < image.width or height < image.height:
        image = image.crop(0, 0, width, height)
    return image


# ----------------------------------------------------------------------------- pixels


def _exact(image: pyvips.Image, width: int, height: int) -> pyvips.Image:
    """Trim or pad (edge copy) by the odd pixel a resize may round differently."""
    if image.width > width or image.height > height:
        image = image.crop(0, 0, min(width, image.width), min(height, image.height))
    if image.width < width or image.height < height:
        image = image.embed(0, 0, width, height, extend="copy")
    return image


def apply(
    image: pyvips.Image,
    steps: Sequence[Step],
    full: tuple[int, int],
    in_memory_mb: int = EngineLimits().in_memory_mb,
) -> pyvips.Image:
    """Run ``steps`` (planned for a ``full``-sized image) on ``image``, which the decoder
    may have delivered smaller: crops before the first scale are mapped to its size.
    ``in_memory_mb``: the most a blur followed by other steps may keep in memory
    (``_computed``)."""
    sx, sy = image.width / full[0], image.height / full[1]
    filtered = any(isinstance(s, BlurBy) or (isinstance(s, ScaleTo) and s.kernel != NEAREST)
                   for s in steps)  # fmt: skip
    premultiplied = filtered and image.hasalpha()
    band_format = image.format
    if premultiplied:  # filters must not bleed the colour of transparent pixels
        image = image.premultiply()
    for index, step in enumerate(steps):
        if isinstance(step, CropBox):
            left, top = round(step.left * sx), round(step.top * sy)
            width = min(image.width - left, max(1, round(step.width * sx)))
            height = min(image.height - top, max(1, round(step.height * sy)))
            image = image.crop(left, top, width, height)
        elif isinstance(step, ScaleTo):
            image = image.resize(
                step.width / image.width, vscale=step.height / image.height, kernel=step.kernel
            )
            image = _exact(image, step.width, step.height)
            sx = sy = 1.0
        else:
            image = image.gaussblur(step.sigma, min_ampl=BLUR_MIN_AMPL)
            if index + 1 < len(steps):
                image = _computed(image, in_memory_mb)
    if premultiplied:
        image = image.unpremultiply().cast(band_format)
    return image


_BAND_BYTES = {"uchar": 1, "char": 1, "ushort": 2, "short": 2, "uint": 4, "int": 4, "float": 4}


def _computed(image: pyvips.Image, in_memory_mb: int) -> pyvips.Image:
    """``image`` computed once, whole: in memory up to ``in_memory_mb``, else in a temporary
    file that libvips maps and removes (as it does for decodes over its disc threshold).

    libvips evaluates on demand, region by region, and keeps nothing: a step after a blur
    that asks for sparse rows (a nearest-neighbour shrink) or overlapping regions (a
    filtered one) made it compute the blur's tall kernel again for each (30 s instead of 1
    for blur=60&thumbnail=256 on a 1.6 MP photo). A blur that is the last step streams
    into the saver instead."""
    size = image.width * image.height * image.bands * _BAND_BYTES.get(image.format, 8)
    if size <= in_memory_mb << 20:
        return image.copy_memory()
    computed = image.new_temp_file("%s.v")
    image.write(computed)
    return computed


def _frames(
    image: pyvips.Image, width: int, height: int, job: Render, in_memory_mb: int
) -> list[pyvips.Image]:
    """Each frame processed on its own, so no filter or crop crosses a frame boundary."""
    steps = plan(width, height, job.ops)
    count = image.height // height
    return [apply(image.crop(0, i * height, width, height), steps, (width, height), in_memory_mb)
            for i in range(count)]  # fmt: skip


# ----------------------------------------------------------------------------- saving


def _with_page_height(image: pyvips.Image, page_height: int) -> pyvips.Image:
    if field(image, "page-height") is None and page_height == image.height:
        return image
    image = image.copy()
    image.set_type(_gint(), "page-height", page_height)
    return image


def _gint() -> int:
    import pyvips  # already loaded in the worker

    return int(pyvips.GValue.gint_type)


def _save(image: pyvips.Image, job: Render) -> None:
    quality = job.quality if job.quality is not None else DEFAULT_QUALITY.get(job.out_fmt)
    q = {"Q": min(max(quality, 1), 100)} if quality is not None else {}
    keep = {"keep": "none"}  # no EXIF/XMP/IPTC/ICC in what we store
    fmt = job.out_fmt
    if fmt == "jpeg":
        if image.hasalpha():
            image = image.flatten(background=[255] * (image.bands - 1))
        image.jpegsave(job.dst, optimize_coding=True, **keep, **q)
    elif fmt == "png":
        image.pngsave(job.dst, **keep)
    elif fmt == "webp":
        image.webpsave(job.dst, effort=WEBP_EFFORT, **keep, **q)
    elif fmt == "avif":
        image.heifsave(job.dst, compression="av1", effort=AVIF_EFFORT, **keep, **q)
    elif fmt == "gif":
        image.gifsave(job.dst, **keep)
    else:
        raise MediaFault(f"engine cannot write {fmt!r}")


def _save_apng(frames: Sequence[pyvips.Image], source: pyvips.Image, dst: str) -> None:
    delays = field(source, "delay")
    loop = field(source, "loop")
    data = apng.assemble(
        [f.pngsave_buffer(keep="none", interlace=False) for f in frames],
        delays if isinstance(delays, list) else [],
        loop if isinstance(loop, int) else 0,
    )
    with open(dst, "wb") as out:
        out.write(data)


def render(
    vips: type[pyvips.Image],
    job: Render,
    limits: EngineLimits = EngineLimits(),  # noqa: B008 (frozen: one shared default is fine)
) -> RenderResult:
    """The one processing job: decode, apply the steps, save (``_save``, the one saver).
    A conversion is this with no operations."""
    image, width, height, shrink = _open(vips, job, limits)
    animated = job.animated and job.sniffed in MULTI_PAGE
    if animated and not job.ops and job.out_fmt != "apng":
        frames = [image]  # nothing to do per frame: the pages go to the saver as they are
    elif animated:
        frames = _frames(image, width, height, job, limits.in_memory_mb)
    else:
        steps = plan(width, height, job.ops)
        frames = [apply(image, steps, (width, height), limits.in_memory_mb)]
    if job.out_fmt == "apng":
        _save_apng(frames, image, job.dst)
    else:
        out = frames[0] if len(frames) == 1 else vips.arrayjoin(frames, across=1)
        # The pages of an unprocessed animation keep the input's frame height.
        page_height = height if animated and not job.ops else frames[0].height
        _save(_with_page_height(out, page_height), job)
    check = load(vips, job.dst, READ_BACK[job.out_fmt], access="sequential")
    return RenderResult(
        width=check.width,
        height=check.height,
        pages=len(frames) if job.out_fmt == "apng" else pages_of(check),
        has_alpha=bool(check.hasalpha()),
        shrink=shrink,
    )


def blurhash(
    vips: type[pyvips.Image],
    job: Blurhash,
    limits: EngineLimits = EngineLimits(),  # noqa: B008 (frozen: one shared default is fine)
) -> BlurhashResult:
    """The BlurHash of the first frame, from the image shrunk (on load where the decoder
    can) to fit ``bh.SIDE`` pixels a side: a few cosine components need no more. The
    engine's limits apply as for a render."""
    shrink = Render(src=job.src, sniffed=job.sniffed, dst="", ops=[Resize(size=bh.SIDE)],
                    out_fmt="png")  # fmt: skip
    image, width, height, _ = _open(vips, shrink, limits)
    small = apply(image, plan(width, height, shrink.ops), (width, height))
    if small.interpretation != "srgb":
        small = small.colourspace("srgb")  # grey, 16-bit, CMYK: 8-bit sRGB
    if small.bands > 3:
        small = small.extract_band(0, n=3)  # alpha is no part of a BlurHash
    if small.format != "uchar":
        small = small.cast("uchar")
    x, y = bh.components_for(small.width, small.height)
    pixels = bytes(small.write_to_memory())
    return BlurhashResult(blurhash=bh.encode(pixels, small.width, small.height, 3, x, y))


def remove_partial(path: str) -> None:
    """A failed save may leave a partial file behind; the caller's temp cleanup is the
    backstop, this keeps a retry from reading garbage."""
    with contextlib.suppress(OSError):
        os.unlink(path)
