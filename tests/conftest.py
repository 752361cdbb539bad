"""Sample media for every test layer: the shared sample images plus files made here with
the real tools (ffmpeg, exiftool, cjxl, libvips), once per test session; and one bytecode
cache for the Python processes the tests start."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.s3 import MotoServer, moto_server

REPO = Path(__file__).resolve().parents[1]

_BYTECODE = pytest.StashKey[tuple[Path, str]]()


def pytest_configure(config: pytest.Config) -> None:
    """The suite starts some 400 Python processes: about 110 servers with their engine
    workers, migrate-store and jobs runs, start-ups meant to fail, moto. Where the
    environment sets PYTHONDONTWRITEBYTECODE (this machine does, as docker/Dockerfile
    does), none of them keeps bytecode, so each compiled every module it imports again:
    half of a server start's CPU (0.9 of 1.8 s), over two minutes of the suite. They share
    one cache in a temporary folder instead (PYTHONPYCACHEPREFIX), which leaves the source
    trees as clean as the variable asks. Where bytecode is written anyway, or a prefix is
    set, nothing changes."""
    if not os.environ.get("PYTHONDONTWRITEBYTECODE") or os.environ.get("PYTHONPYCACHEPREFIX"):
        return
    prefix = Path(tempfile.mkdtemp(prefix="pictrs-trio-tests-pycache-"))
    config.stash[_BYTECODE] = (prefix, os.environ.pop("PYTHONDONTWRITEBYTECODE"))
    os.environ["PYTHONPYCACHEPREFIX"] = str(prefix)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _BYTECODE not in config.stash:
        return
    prefix, value = config.stash[_BYTECODE]
    del os.environ["PYTHONPYCACHEPREFIX"]
    os.environ["PYTHONDONTWRITEBYTECODE"] = value
    shutil.rmtree(prefix, ignore_errors=True)


def shared_media() -> Path:
    for candidate in (REPO.parent / "shared" / "media", Path("/work/shared/media")):
        if candidate.is_dir():
            return candidate
    raise RuntimeError("shared/media (sample images) not found beside the repository")


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def _ffmpeg(*argv: str) -> None:
    _run("ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *argv)


def make_samples(out: Path) -> dict[str, Path]:
    import pyvips  # tests may use libvips in-process; the server never does

    media = shared_media()
    s: dict[str, Path] = {}
    for name in ("cat.jpg", "earth.gif", "scene.webp", "test.png"):
        s[name] = out / name
        shutil.copy(media / name, s[name])

    # JPEG carrying EXIF + GPS + XMP + a comment, upright (orientation 1)
    s["exif.jpg"] = out / "exif.jpg"
    shutil.copy(media / "cat.jpg", s["exif.jpg"])
    _run(
        "exiftool",
        "-q",
        "-overwrite_original",
        "-Make=TestCam",
        "-Model=T1",
        "-GPSLatitude=48.8584",
        "-GPSLatitudeRef=N",
        "-GPSLongitude=2.2945",
        "-GPSLongitudeRef=E",
        "-XMP:Creator=someone",
        "-Comment=secret comment",
        "-Orientation#=1",
        str(s["exif.jpg"]),
    )

    # JPEG stored sideways with orientation 6 (rotate 90 CW to view): 300x200 raw pixels
    s["rotated.jpg"] = out / "rotated.jpg"
    pyvips.Image.black(300, 200, bands=3).draw_rect(
        [255, 0, 0], 0, 0, 150, 200, fill=True
    ).jpegsave(str(s["rotated.jpg"]))
    _run(
        "exiftool",
        "-q",
        "-overwrite_original",
        "-Orientation#=6",
        "-GPSLatitude=1",
        str(s["rotated.jpg"]),
    )

    s["avif.avif"] = out / "still.avif"
    pyvips.Image.new_from_file(str(s["test.png"])).heifsave(
        str(s["avif.avif"]), compression="av1", Q=50, effort=0
    )

    s["jxl.jxl"] = out / "still.jxl"
    _run("cjxl", "-q", "90", "-e", "1", str(s["test.png"]), str(s["jxl.jxl"]))

    s["anim.webp"] = out / "anim.webp"
    _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=160x120:rate=10:duration=1",
        "-loop",
        "0",
        "-c:v",
        "libwebp_anim",
        str(s["anim.webp"]),
    )

    s["anim.apng"] = out / "anim.apng"
    _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=160x120:rate=10:duration=1",
        "-plays",
        "0",
        "-f",
        "apng",
        str(s["anim.apng"]),
    )

    s["video.mp4"] = out / "video.mp4"
    _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=25:duration=1",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=1",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-shortest",
        "-metadata",
        "title=secret",
        str(s["video.mp4"]),
    )

    s["video.webm"] = out / "video.webm"
    _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=25:duration=1",
        "-c:v",
        "libvpx-vp9",
        "-deadline",
        "realtime",
        "-cpu-used",
        "8",
        "-b:v",
        "200k",
        str(s["video.webm"]),
    )

    # things we must refuse
    s["random.bin"] = out / "random.bin"
    s["random.bin"].write_bytes(bytes((i * 7919 + 13) % 251 for i in range(50_000)))
    s["empty.bin"] = out / "empty.bin"
    s["empty.bin"].write_bytes(b"")
    s["truncated.png"] = out / "truncated.png"
    s["truncated.png"].write_bytes(s["test.png"].read_bytes()[:2000])
    s["truncated.jpg"] = out / "truncated.jpg"
    s["truncated.jpg"].write_bytes(s["cat.jpg"].read_bytes()[:600])
    s["image.svg"] = out / "image.svg"
    s["image.svg"].write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')
    s["image.tiff"] = out / "image.tiff"
    pyvips.Image.black(8, 8).tiffsave(str(s["image.tiff"]))
    s["image.bmp"] = out / "image.bmp"
    s["image.bmp"].write_bytes(b"BM" + bytes(100))
    return s


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_samples(tmp_path_factory.mktemp("samples"))


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """moto's S3 server on a free loopback port for the session (tests/s3.py)."""
    yield from moto_server(tmp_path_factory.mktemp("moto"))
