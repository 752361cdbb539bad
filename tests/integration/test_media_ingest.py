"""Discovery, stripping, conversion and video handling against the real tools and files.

Samples are generated once per session (tests/fixtures/make_fixtures.py). Each test opens
the tools once and walks a table, so worker start-up is paid a few times, not per case.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from pictrs_trio.config import Animation, Image, Media, Video
from pictrs_trio.media.tools import MediaTools, open_media_tools
from pictrs_trio.rules.errors import UnsupportedMedia, status_of
from pictrs_trio.rules.formats import Fmt, Kind, MediaFormat
from pictrs_trio.rules.policy import decide

sys.path.insert(0, str(Path(__file__).parents[1] / "fixtures"))
from make_fixtures import make_media, missing_tools

if missing_tools():
    pytest.skip(f"media tools missing: {missing_tools()}", allow_module_level=True)


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_media(tmp_path_factory.mktemp("media"))


@pytest.fixture
async def tools(tmp_path: Path) -> AsyncIterator[MediaTools]:
    async with open_media_tools(Media(), tmp_dir=tmp_path, engine_workers=2) as t:
        yield t


def exif(path: Path) -> dict[str, object]:
    """Metadata as a fresh exiftool process sees it (not our long-lived one)."""
    out = subprocess.run(["exiftool", "-j", "-n", str(path)], capture_output=True, check=True)
    return json.loads(out.stdout)[0]


def ffprobe(path: Path) -> dict[str, object]:
    argv = ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)]
    return json.loads(subprocess.run(argv, capture_output=True, check=True).stdout)


ANI, IMG, VID = Kind.ANIMATION, Kind.IMAGE, Kind.VIDEO
ACCEPTED = {
    # name: (kind, fmt, width, height, frames, orientation)
    "jpeg_12mp": (IMG, Fmt.JPEG, 4000, 3000, None, 1),
    "jpeg_gps": (IMG, Fmt.JPEG, 300, 347, None, 1),
    "jpeg_rot6": (IMG, Fmt.JPEG, 300, 347, None, 6),
    "png": (IMG, Fmt.PNG, 640, 360, None, None),
    "png_huge": (IMG, Fmt.PNG, 60000, 60000, None, None),
    "apng": (ANI, Fmt.APNG, 400, 400, 6, None),
    "gif": (ANI, Fmt.GIF, 400, 400, 44, None),
    "webp_still": (IMG, Fmt.WEBP, 550, 368, None, None),
    "webp_anim": (ANI, Fmt.WEBP, 400, 400, 8, None),
    "avif_still": (IMG, Fmt.AVIF, 300, 347, None, None),
    "avif_anim": (ANI, Fmt.AVIF, 64, 64, 4, None),
    "jxl": (IMG, Fmt.JXL, 640, 360, None, None),
    "mp4_h264": (VID, Fmt.MP4, 96, 64, 10, None),
    "mp4_aac": (VID, Fmt.MP4, 96, 64, 10, None),
    "webm_vp9": (VID, Fmt.WEBM, 96, 64, 10, None),
}
REJECTED = {
    "svg": "SVG", "tiff": "TIFF", "bmp": "BMP", "pdf": "PDF", "heic": "HEIC", "random": "unknown",
    "png_garbage": "png", "jpeg_garbage": "jpeg", "png_trunc": "truncated png",
    "jpeg_trunc": "truncated jpeg", "gif_trunc": "truncated gif", "mp4_trunc": "truncated mp4",
}  # fmt: skip


async def test_discover_every_accepted_kind(tools: MediaTools, samples: dict[str, Path]) -> None:
    for name, (kind, fmt, width, height, frames, orientation) in ACCEPTED.items():
        d = await tools.discover(samples[name])
        got = (d.format.kind, d.format.fmt, d.width, d.height, d.frames, d.orientation)
        assert got == (kind, fmt, width, height, frames, orientation), name
    mp4 = await tools.discover(samples["mp4_aac"])
    webm = await tools.discover(samples["webm_vp9"])
    assert (mp4.video_codec, mp4.audio_codec, webm.video_codec, webm.audio_codec) == (
        "h264", "aac", "vp9", "opus",
    )  # fmt: skip


async def test_discover_rejects_cleanly(tools: MediaTools, samples: dict[str, Path]) -> None:
    for name, what in REJECTED.items():
        with pytest.raises(UnsupportedMedia, match=what) as info:
            await tools.discover(samples[name])
        assert (status_of(info.value), str(info.value.code)) == (400, "command-failure"), name


def scan(jpeg: bytes) -> bytes:
    """Entropy-coded data and after: from the first SOS marker to the end."""
    return jpeg[jpeg.index(b"\xff\xda") :]


async def test_strip_jpeg_is_lossless_and_removes_gps(
    tools: MediaTools, samples: dict[str, Path], tmp_path: Path
) -> None:
    src = samples["jpeg_gps"]
    assert "GPSLatitude" in exif(src)
    d = await tools.discover(src)
    plan = decide(d, Media())
    assert plan.action == "strip"
    dst = tmp_path / "stripped.jpeg"
    await tools.strip(src, dst, plan.output)
    meta = exif(dst)
    assert not {"GPSLatitude", "GPSLongitude", "Orientation", "Make"} & meta.keys()
    assert scan(dst.read_bytes()) == scan(src.read_bytes())
    assert await tools.discover(dst) == msgspec.structs.replace(d, orientation=None)


async def test_strip_other_formats_keeps_media(
    tools: MediaTools, samples: dict[str, Path], tmp_path: Path
) -> None:
    for name in ("png", "gif", "apng", "webp_still", "webp_anim", "avif_still", "jxl"):
        d = await tools.discover(samples[name])
        dst = tmp_path / f"{name}.out"
        await tools.strip(samples[name], dst, d.format)
        assert await tools.discover(dst) == d, name


async def test_convert_applies_orientation_and_drops_exif(
    tools: MediaTools, samples: dict[str, Path], tmp_path: Path
) -> None:
    src = samples["jpeg_rot6"]
    d = await tools.discover(src)
    plan = decide(d, Media())
    assert (plan.action, plan.autorot, plan.output.fmt) == ("convert", True, Fmt.JPEG)
    dst = tmp_path / "upright.jpeg"
    out = await tools.convert(src, dst, source=d, plan=plan)
    assert (out.width, out.height, out.orientation) == (347, 300, None)
    assert not {"GPSLatitude", "Orientation"} & exif(dst).keys()


async def test_convert_between_formats(
    tools: MediaTools, samples: dict[str, Path], tmp_path: Path
) -> None:
    image_cfg = {
        f: msgspec.structs.replace(Media(), image=Image(format=f))
        for f in ("webp", "avif", "png", "jxl", "jpeg")
    }
    anim_cfg = {
        f: msgspec.structs.replace(Media(), animation=Animation(format=f))
        for f in ("webp", "gif", "apng")
    }
    cases = [
        ("jpeg_rot6", image_cfg["webp"], (IMG, Fmt.WEBP, 347, 300, None)),
        ("png", image_cfg["avif"], (IMG, Fmt.AVIF, 640, 360, None)),
        ("jpeg_gps", image_cfg["jxl"], (IMG, Fmt.JXL, 300, 347, None)),
        ("jxl", image_cfg["png"], (IMG, Fmt.PNG, 640, 360, None)),
        ("webp_still", image_cfg["jpeg"], (IMG, Fmt.JPEG, 550, 368, None)),
        ("gif", anim_cfg["webp"], (ANI, Fmt.WEBP, 400, 400, 44)),
        ("webp_anim", anim_cfg["gif"], (ANI, Fmt.GIF, 400, 400, 8)),
        ("apng", anim_cfg["gif"], (ANI, Fmt.GIF, 400, 400, 6)),
        ("gif", anim_cfg["apng"], (ANI, Fmt.APNG, 400, 400, 44)),
    ]  # fmt: skip
    for name, cfg, expected in cases:
        d = await tools.discover(samples[name])
        plan = decide(d, cfg)
        assert plan.action == "convert", name
        out = await tools.convert(
            samples[name], tmp_path / f"{name}-{expected[1]}", source=d, plan=plan
        )
        assert (out.format.kind, out.format.fmt, out.width, out.height, out.frames) == expected, (
            name
        )


async def test_video_remux_removes_metadata_and_audio(
    tools: MediaTools, samples: dict[str, Path], tmp_path: Path
) -> None:
    src = samples["mp4_aac"]
    assert ffprobe(samples["mp4_h264"])["format"]["tags"]["title"] == "secret"
    d = await tools.discover(src)
    out = await tools.video(src, tmp_path / "a.mp4", source=d, plan=decide(d, Media()))
    assert (out.format.fmt, out.video_codec, out.audio_codec, out.frames) == (
        Fmt.MP4,
        "h264",
        None,
        10,
    )
    allow = msgspec.structs.replace(Media(), video=Video(allow_audio=True))
    out = await tools.video(src, tmp_path / "b.mp4", source=d, plan=decide(d, allow))
    assert out.audio_codec == "aac"

    d = await tools.discover(samples["mp4_h264"])
    dst = tmp_path / "c.mp4"
    await tools.video(samples["mp4_h264"], dst, source=d, plan=decide(d, Media()))
    assert "title" not in ffprobe(dst)["format"].get("tags", {})


async def test_video_transcode(tools: MediaTools, samples: dict[str, Path], tmp_path: Path) -> None:
    cfg = msgspec.structs.replace(Media(), video=Video(video_codec="vp9", allow_audio=True))
    d = await tools.discover(samples["mp4_aac"])
    plan = decide(d, cfg)
    assert (plan.video_codec, plan.audio_codec, plan.output) == (
        "vp9", "opus", MediaFormat(kind=VID, fmt=Fmt.WEBM),
    )  # fmt: skip
    out = await tools.video(samples["mp4_aac"], tmp_path / "t.webm", source=d, plan=plan)
    assert (out.format.fmt, out.video_codec, out.audio_codec, out.width, out.height) == (
        Fmt.WEBM, "vp9", "opus", 96, 64,
    )  # fmt: skip
