"""Processing operations against the real engine, tools and files (MediaTools.render).

Outputs are decoded independently (pyvips in this process, Pillow for APNG frames, djxl for
JPEG XL) and their pixel sizes and frame counts checked.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import pyvips
from PIL import Image as PILImage

from pictrs_trio.config import Image, Media
from pictrs_trio.media.protocol import Render, RenderResult
from pictrs_trio.media.tools import MediaTools, open_media_tools
from pictrs_trio.media.vips_ops import apply
from pictrs_trio.rules.errors import UnsupportedMedia, status_of
from pictrs_trio.rules.formats import Fmt, Kind, MediaFormat
from pictrs_trio.rules.policy import Discovery
from pictrs_trio.rules.variants import Op, output_format, parse_ext, parse_operations, plan

if any(shutil.which(t) is None for t in ("ffmpeg", "ffprobe", "exiftool", "cjxl", "djxl")):
    pytest.skip("media tools missing", allow_module_level=True)

IMG, ANI = Kind.IMAGE, Kind.ANIMATION
pyvips.cache_set_max(0)  # outputs are rewritten under one name; never decode a stale copy


@pytest.fixture
async def tools(tmp_path: Path) -> AsyncIterator[MediaTools]:
    async with open_media_tools(Media(), tmp_dir=tmp_path, engine_workers=2) as t:
        yield t


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.jpg"
    cat = pyvips.Image.jpegload("/work/shared/media/cat.jpg")
    cat.resize(4000 / 1200, vscale=3000 / 1387).jpegsave(str(path), Q=85)
    return path


def ops_of(query: str) -> list[Op]:
    pairs = [tuple(p.split("=", 1)) for p in query.split("&") if p]
    return parse_operations(pairs, allowed=None)  # type: ignore[arg-type]


def decoded(path: Path, fmt: Fmt, tmp: Path) -> tuple[int, int, int]:
    """(width, height, frames) of a file as an independent decoder sees it."""
    if fmt is Fmt.JXL:
        png = tmp / (path.name + ".png")
        subprocess.run(["djxl", str(path), str(png)], check=True, capture_output=True)
        path, fmt = png, Fmt.PNG
    if fmt in (Fmt.APNG, Fmt.PNG):
        with PILImage.open(path) as im:
            return im.width, im.height, getattr(im, "n_frames", 1)
    multi = {"n": -1} if fmt in (Fmt.GIF, Fmt.WEBP, Fmt.AVIF) else {}
    image = pyvips.Image.new_from_file(str(path), **multi)
    pages = image.get("n-pages") if image.get_typeof("n-pages") else 1
    return image.width, image.height // pages, pages


async def run(
    tools: MediaTools, src: Path, query: str, ext: str, tmp: Path, *, quality: int | None = None
) -> tuple[Discovery, Path]:
    source = await tools.discover(src)
    fmt = parse_ext(ext)
    dst = tmp / f"{src.stem}-{query.replace('=', '_').replace('&', '+')}.{fmt.value}"
    out = await tools.render(
        src,
        dst,
        source=source,
        ops=ops_of(query),
        output=output_format(source.format.kind, fmt),
        quality=quality,
    )
    # what process reports is what discovery of the written file finds
    assert out == await tools.discover(dst), (src.name, query, ext)
    return out, dst


SIZES = {
    # query: (cat.jpg 1200x1387, test.png 640x360, scene.webp 550x368)
    "thumbnail=256": ((221, 256), (256, 144), (256, 171)),
    "resize=200": ((173, 200), (200, 113), (200, 134)),
    "resize=Mitchell.200": ((173, 200), (200, 113), (200, 134)),
    "resize=.a10000": ((93, 107), (133, 75), (122, 81)),
    "crop=16x9": ((1200, 675), (640, 360), (550, 309)),
    "crop=1x1&thumbnail=100": ((100, 100), (100, 100), (100, 100)),
    "blur=2.5": ((1200, 1387), (640, 360), (550, 368)),
    "thumbnail=5000": ((1200, 1387), (640, 360), (550, 368)),
    "identity=1": ((1200, 1387), (640, 360), (550, 368)),
}


async def test_operation_sizes(tools: MediaTools, samples: dict[str, Path], tmp_path: Path) -> None:
    for query, sizes in SIZES.items():
        for name, size in zip(("cat.jpg", "test.png", "scene.webp"), sizes, strict=True):
            out, dst = await run(tools, samples[name], query, "webp", tmp_path)
            assert (out.width, out.height) == size, (name, query)
            assert decoded(dst, Fmt.WEBP, tmp_path) == (*size, 1), (name, query)
            assert out.format == MediaFormat(kind=IMG, fmt=Fmt.WEBP)


async def test_blur_smooths_and_metadata_is_gone(
    tools: MediaTools, samples: dict[str, Path], tmp_path: Path
) -> None:
    _, plain = await run(tools, samples["exif.jpg"], "identity=1", "png", tmp_path)
    _, blurred = await run(tools, samples["exif.jpg"], "blur=2.5", "png", tmp_path)
    a, b = pyvips.Image.pngload(str(plain)), pyvips.Image.pngload(str(blurred))
    # blurring removes high frequencies: the Laplacian's energy drops a lot
    lap = pyvips.Image.new_from_array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]])
    assert b.conv(lap).abs().avg() < 0.5 * a.conv(lap).abs().avg()
    _, jpeg = await run(tools, samples["exif.jpg"], "thumbnail=50", "jpg", tmp_path)
    fields = set(pyvips.Image.jpegload(str(jpeg)).get_fields())
    assert not fields & {"exif-data", "xmp-data", "icc-profile-data", "jpeg-comment-0"}


async def test_a_blur_before_a_shrink_costs_one_blur(
    tools: MediaTools, samples: dict[str, Path], tmp_path: Path
) -> None:
    """libvips evaluates lazily: a shrink that samples sparse rows (nearest) or regions
    (a filtered resize) after a blur made it recompute the blur's tall kernel for each
    request, 30 s and a killed engine worker for blur=60&thumbnail=256 on cat.jpg (found
    by schemathesis). The blur is now computed once when a step follows it."""
    for query, size in (("blur=60&thumbnail=256", (221, 256)), ("blur=60&resize=200", (173, 200))):
        start = time.monotonic()
        out, _ = await run(tools, samples["cat.jpg"], query, "jpg", tmp_path)
        assert (out.width, out.height) == size
        assert time.monotonic() - start < 8, query  # ~1 s; it was 30 s


def test_a_blur_over_the_memory_limit_is_computed_in_a_file(samples: dict[str, Path]) -> None:
    image = pyvips.Image.new_from_file(str(samples["cat.jpg"]))
    steps = plan(image.width, image.height, ops_of("blur=3&thumbnail=64"))
    full = (image.width, image.height)
    in_memory = apply(image, steps, full, in_memory_mb=256)
    in_a_file = apply(image, steps, full, in_memory_mb=0)  # a temporary file, then removed
    assert (in_memory.width, in_memory.height) == (in_a_file.width, in_a_file.height) == (55, 64)
    assert (in_memory - in_a_file).abs().max() == 0


async def test_output_formats(tools: MediaTools, samples: dict[str, Path], tmp_path: Path) -> None:
    expected = {
        "webp": (IMG, Fmt.WEBP),
        "jpg": (IMG, Fmt.JPEG),
        "png": (IMG, Fmt.PNG),
        "avif": (IMG, Fmt.AVIF),
        "gif": (ANI, Fmt.GIF),  # a one-frame GIF is recorded as an animation
        "apng": (ANI, Fmt.APNG),
        "jxl": (IMG, Fmt.JXL),
    }
    for ext, (kind, fmt) in expected.items():
        out, dst = await run(tools, samples["cat.jpg"], "thumbnail=100", ext, tmp_path)
        assert (out.format.kind, out.format.fmt, out.width, out.height) == (kind, fmt, 87, 100)
        assert decoded(dst, fmt, tmp_path) == (87, 100, 1), ext
    # JPEG XL and AVIF inputs
    out, _ = await run(tools, samples["jxl.jxl"], "thumbnail=100", "webp", tmp_path)
    assert (out.width, out.height) == (100, 56)
    out, _ = await run(tools, samples["avif.avif"], "resize=320", "png", tmp_path, quality=9)
    assert (out.width, out.height) == (320, 180)


async def test_animations(tools: MediaTools, samples: dict[str, Path], tmp_path: Path) -> None:
    gif = samples["earth.gif"]
    for ext in ("gif", "webp", "apng"):
        out, dst = await run(tools, gif, "thumbnail=100", ext, tmp_path)
        assert (out.format.kind, out.width, out.height, out.frames) == (ANI, 100, 100, 44), ext
        assert decoded(dst, parse_ext(ext), tmp_path) == (100, 100, 44), ext
    # frame timing survives
    delays = pyvips.Image.webpload(str(tmp_path / "earth-thumbnail_100.webp"), n=-1).get("delay")
    assert delays == pyvips.Image.gifload(str(gif), n=-1).get("delay")
    with PILImage.open(tmp_path / "earth-thumbnail_100.apng") as im:
        assert im.info["duration"] == 90
    # crops stay inside each frame
    out, dst = await run(tools, gif, "crop=16x9&resize=200", "gif", tmp_path)
    assert (out.width, out.height, out.frames) == (200, 113, 44)
    # a still output takes the first frame only
    out, dst = await run(tools, gif, "thumbnail=100", "png", tmp_path)
    assert out.format == MediaFormat(kind=IMG, fmt=Fmt.PNG)
    assert decoded(dst, Fmt.PNG, tmp_path) == (100, 100, 1)
    first = pyvips.Image.gifload(str(gif)).resize(0.25, kernel="nearest")
    assert abs(pyvips.Image.pngload(str(dst)).flatten().avg() - first.flatten().avg()) < 3
    # inputs only ffmpeg reads animated: APNG
    out, dst = await run(tools, samples["anim.apng"], "thumbnail=80", "webp", tmp_path)
    assert (out.format.kind, out.width, out.height, out.frames) == (ANI, 80, 60, 10)
    out, _ = await run(tools, samples["anim.webp"], "resize=.a4800", "avif", tmp_path)
    assert (out.format.kind, out.format.fmt, out.frames) == (ANI, Fmt.AVIF, 10)


async def test_motion_stills(tools: MediaTools, samples: dict[str, Path], tmp_path: Path) -> None:
    video = samples["video.mp4"]
    source = await tools.discover(video)
    cases = {None: Fmt.JPEG, "jpeg": Fmt.JPEG, "png": Fmt.PNG, "avif": Fmt.WEBP, "jxl": Fmt.WEBP}
    for configured, fmt in cases.items():
        media = msgspec.structs.replace(Media(), image=Image(format=configured))
        dst = tmp_path / f"still-{configured}"
        still = await tools.motion_still(video, dst, source=source, media=media)
        assert (still.format, still.width, still.height) == (
            MediaFormat(kind=IMG, fmt=fmt), 320, 240,
        )  # fmt: skip
        assert decoded(dst, fmt, tmp_path) == (320, 240, 1)
    gif = await tools.discover(samples["earth.gif"])
    still = await tools.motion_still(
        samples["earth.gif"], tmp_path / "gif-still", source=gif, media=Media()
    )
    assert (still.format, still.width, still.frames) == (
        MediaFormat(kind=IMG, fmt=Fmt.WEBP),
        400,
        None,
    )
    # a video processed directly uses its first frame
    out, dst = await run(tools, video, "thumbnail=100", "gif", tmp_path)
    assert (out.format, out.width, out.height, out.frames) == (
        MediaFormat(kind=ANI, fmt=Fmt.GIF), 100, 75, None,
    )  # fmt: skip


async def test_shrink_on_load(tools: MediaTools, big_jpeg: Path, tmp_path: Path) -> None:
    cases = {
        "thumbnail=256": (8.0, (256, 192)),  # nearest: down to the target
        "resize=256": (4.0, (256, 192)),  # a kernel keeps a factor of two of data
        "crop=1x1&resize=256": (4.0, (256, 256)),
        "crop=1x1&thumbnail=256": (8.0, (256, 256)),
        "blur=1&thumbnail=256": (1.0, (256, 192)),  # the blur needs every pixel
        "crop=16x9": (1.0, (4000, 2250)),
    }
    for index, (query, (shrink, size)) in enumerate(cases.items()):
        dst = tmp_path / f"out{index}.webp"
        job = Render(
            src=str(big_jpeg), sniffed="jpeg", dst=str(dst), ops=ops_of(query), out_fmt="webp"
        )
        reply = await tools.submit(job)
        assert isinstance(reply, RenderResult)
        assert (reply.shrink, (reply.width, reply.height)) == (shrink, size), query
        assert decoded(dst, Fmt.WEBP, tmp_path)[:2] == size


async def test_shrink_on_load_colour_spaces(tools: MediaTools, tmp_path: Path) -> None:
    """Greyscale and RGB JPEGs decode scaled through TurboJPEG, CMYK through libvips; each
    variant looks like the same thumbnail made by libvips from the full-size decode."""
    noise = pyvips.Image.perlin(4001, 3001, cell_size=128, uchar=True)
    sources = {
        "grey": noise.copy(interpretation="b-w"),
        "rgb": noise.bandjoin([noise.flip("horizontal"), noise.flip("vertical")]),
        "cmyk": noise.bandjoin([noise.flip("horizontal"), noise, noise.flip("vertical")]).copy(
            interpretation="cmyk"
        ),
    }
    for name, image in sources.items():
        src = tmp_path / f"{name}.jpg"
        image.jpegsave(str(src), Q=90)
        dst = tmp_path / f"{name}.png"
        job = Render(
            src=str(src), sniffed="jpeg", dst=str(dst), ops=ops_of("thumbnail=250"), out_fmt="png"
        )
        reply = await tools.submit(job)
        assert isinstance(reply, RenderResult), (name, reply)
        # decoded at 1/8: 500x375 (libvips rounds 500.1 x 375.1 down)
        assert (reply.shrink, reply.width, reply.height) == (4001 / 500, 250, 188), name
        out = pyvips.Image.pngload(str(dst))
        ref = pyvips.Image.jpegload(str(src)).colourspace("srgb" if name != "grey" else "b-w")
        ref = ref.resize(250 / ref.width, vscale=188 / ref.height)
        assert out.bands == ref.bands, name
        assert abs(out.avg() - ref.avg()) < 2.0, name


async def test_refusals(tools: MediaTools, samples: dict[str, Path], tmp_path: Path) -> None:
    svg = samples["image.svg"]
    for sniffed in ("svg", "png", "jpeg", "tiff"):
        job = Render(src=str(svg), sniffed=sniffed, dst=str(tmp_path / "x.png"),
                      ops=ops_of("thumbnail=5"), out_fmt="png")  # fmt: skip
        with pytest.raises(UnsupportedMedia) as info:
            await tools.submit(job)
        assert status_of(info.value) == 400
        assert not (tmp_path / "x.png").exists()
    # an animation over the work budget is refused, not attempted
    job = Render(
        src=str(samples["earth.gif"]),
        sniffed="gif",
        dst=str(tmp_path / "y.gif"),
        ops=ops_of("blur=2"),
        out_fmt="gif",
        animated=True,
        max_pixels=1_000_000,
    )
    with pytest.raises(UnsupportedMedia, match="too large"):
        await tools.submit(job)
