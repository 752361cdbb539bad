"""In-process metadata removal (media/strip.py) against files tagged by exiftool, libvips and
Pillow: a fresh exiftool finds nothing left, and the decoded pixels are identical."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

pyvips = pytest.importorskip("pyvips")
PIL = pytest.importorskip("PIL")
from PIL import Image as PILImage  # noqa: E402
from PIL import ImageCms, PngImagePlugin  # noqa: E402

from pictrs_trio.media.strip import strip_file  # noqa: E402
from pictrs_trio.rules.formats import Fmt  # noqa: E402

sys.path.insert(0, str(Path(__file__).parents[1] / "fixtures"))
from make_fixtures import SHARED  # noqa: E402

if shutil.which("exiftool") is None:
    pytest.skip("exiftool missing", allow_module_level=True)

SECRET = "s3cr3t-leak"
# What may be left: the file's own structure, as exiftool names it.
ALLOWED_GROUPS = {"ExifTool", "System", "File", "JFIF", "PNG", "RIFF", "GIF", "Composite", "Adobe"}
# Within those groups, tags that are metadata rather than structure.
FORBIDDEN_TAGS = {"Comment", "Text", "Title", "Author", "Artist", "ModifyDate", "Software"}


def tag(path: Path, *args: str) -> None:
    subprocess.run(
        ["exiftool", "-q", "-overwrite_original", *args, str(path)], check=True, capture_output=True
    )


def leftovers(path: Path) -> dict[str, object]:
    """Every tag a fresh exiftool finds outside the structural groups, plus secrets."""
    out = subprocess.run(
        ["exiftool", "-j", "-a", "-G1", "-u", str(path)], capture_output=True, check=True
    )
    found = json.loads(out.stdout)[0]
    bad = {}
    for key, value in found.items():
        if key == "SourceFile":
            continue
        group, _, name = key.partition(":")
        structural = group.split("-")[0] in ALLOWED_GROUPS and name not in FORBIDDEN_TAGS
        if not structural or SECRET in str(value):
            bad[key] = value
    return bad


def pixels(path: Path) -> list[bytes]:
    """Raw decoded pixels of every frame (libvips; no colour management on load)."""
    multi = {"n": -1} if path.suffix in (".gif", ".webp") else {}
    image = pyvips.Image.new_from_file(str(path), **multi)
    return [image.write_to_memory()]


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def check(src: Path, fmt: Fmt, tmp_path: Path) -> Path:
    assert leftovers(src), "the test file should carry metadata"
    dst = tmp_path / f"{src.stem}.stripped{src.suffix}"
    hashed = strip_file(src, dst, fmt)
    # what ingest stores under: the digest and size of exactly the bytes written
    assert hashed == (hashlib.sha256(dst.read_bytes()).digest(), dst.stat().st_size)
    assert leftovers(dst) == {}
    assert SECRET.encode() not in dst.read_bytes()
    assert pixels(dst) == pixels(src)
    return dst


# ----------------------------------------------------------------------------- JPEG


def test_jpeg_every_kind_of_metadata(tmp_path: Path) -> None:
    src = tmp_path / "cat.jpg"
    PILImage.open(SHARED / "cat.jpg").save(src, quality=90, icc_profile=srgb_profile())
    tag(src, f"-EXIF:Artist={SECRET}", "-GPSLatitude=52.1", "-GPSLatitudeRef=N",
        f"-XMP-dc:Creator={SECRET}", f"-IPTC:Keywords={SECRET}", f"-Comment={SECRET}",
        "-Make=TestCam")  # fmt: skip
    dst = check(src, Fmt.JPEG, tmp_path)
    data = dst.read_bytes()
    assert b"ICC_PROFILE" not in data and b"Exif" not in data
    assert data.startswith(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00")  # JFIF kept
    assert data.endswith(b"\xff\xd9")


def _insert_before_second_scan(jpeg: bytes, segments: bytes) -> bytes:
    first = jpeg.index(b"\xff\xda")
    second = jpeg.index(b"\xff\xda", first + 2)
    # the second SOS may follow DHT segments; insert right before whatever marker precedes it
    return jpeg[:second] + segments + jpeg[second:]


def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def test_jpeg_progressive_with_metadata_between_scans_and_a_trailer(tmp_path: Path) -> None:
    buf = io.BytesIO()
    PILImage.open(SHARED / "cat.jpg").save(buf, "JPEG", quality=85, progressive=True)
    between = _segment(0xFE, SECRET.encode()) + _segment(0xE1, b"Exif\x00\x00" + SECRET.encode())
    data = _insert_before_second_scan(buf.getvalue(), between) + b"TRAILER " + SECRET.encode()
    src = tmp_path / "progressive.jpg"
    src.write_bytes(data)
    dst = tmp_path / "out.jpg"
    assert strip_file(src, dst, Fmt.JPEG)
    out = dst.read_bytes()
    assert SECRET.encode() not in out and out.endswith(b"\xff\xd9")
    assert pixels(dst) == pixels(src)
    assert out.count(b"\xff\xda") == buf.getvalue().count(b"\xff\xda")  # every scan kept


def test_jpeg_jfif_thumbnail_is_dropped(tmp_path: Path) -> None:
    buf = io.BytesIO()
    PILImage.open(SHARED / "cat.jpg").save(buf, "JPEG", quality=85)
    data = buf.getvalue()
    assert data[2:4] == b"\xff\xe0" and data[6:11] == b"JFIF\x00"
    length = struct.unpack_from(">H", data, 4)[0]
    thumb = bytes([9, 7, 3] * 4)  # a 2x2 RGB thumbnail
    app0 = data[4 + 2 : 4 + length - 2] + b"\x02\x02" + thumb
    src = tmp_path / "thumb.jpg"
    src.write_bytes(data[:2] + _segment(0xE0, app0) + data[4 + length :])
    dst = tmp_path / "out.jpg"
    assert strip_file(src, dst, Fmt.JPEG)
    out = dst.read_bytes()
    assert out[2:20] == b"\xff\xe0\x00\x10" + app0[:12] + b"\x00\x00"  # no thumbnail
    assert thumb not in out
    assert pixels(dst) == pixels(src)


def test_jpeg_cmyk_keeps_the_adobe_segment(tmp_path: Path) -> None:
    src = tmp_path / "cmyk.jpg"
    PILImage.open(SHARED / "cat.jpg").convert("CMYK").save(src, quality=90)
    tag(src, f"-EXIF:Artist={SECRET}")
    dst = check(src, Fmt.JPEG, tmp_path)
    assert b"Adobe" in dst.read_bytes()


def test_jpeg_adobe_segment_keeps_only_its_fields(tmp_path: Path) -> None:
    buf = io.BytesIO()
    PILImage.open(SHARED / "cat.jpg").convert("CMYK").save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    at = data.index(b"\xff\xee\x00\x0eAdobe")  # Pillow writes the 12-byte form
    riding = SECRET.encode()
    adobe = data[at + 4 : at + 16] + riding
    src = tmp_path / "adobe.jpg"
    src.write_bytes(data[:at] + _segment(0xEE, adobe) + data[at + 16 :])
    dst = tmp_path / "out.jpg"
    assert strip_file(src, dst, Fmt.JPEG)
    out = dst.read_bytes()
    assert riding not in out and b"\xff\xee\x00\x0eAdobe" in out
    assert pixels(dst) == pixels(src)


def test_jpeg_long_fill_runs_cost_linear_time(tmp_path: Path) -> None:
    """A hostile scan of 0xFF bytes (a regex that backtracks took quadratic time: ~1 s for
    16 KB, hours for a few MB). Not a benchmark: the bound is far above linear time."""
    import time

    sof = bytes.fromhex("ffc0000b080010001001011100")
    sos = bytes.fromhex("ffda0008010100003f00")
    src, dst = tmp_path / "ff.jpg", tmp_path / "out.jpg"
    src.write_bytes(b"\xff\xd8" + sof + sos + b"\xff" * (8 << 20) + b"\x00\xff\xd9")
    began = time.monotonic()
    strip_file(src, dst, Fmt.JPEG)
    assert time.monotonic() - began < 20


# ----------------------------------------------------------------------------- PNG / APNG


def test_png_text_exif_icc_and_time(tmp_path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", SECRET)
    info.add_text("Description", SECRET, zip=True)
    info.add_itxt("Author", SECRET, lang="en", tkey="Author")
    src = tmp_path / "test.png"
    PILImage.open(SHARED / "test.png").save(src, pnginfo=info, icc_profile=srgb_profile())
    tag(src, f"-EXIF:Artist={SECRET}", f"-XMP-dc:Creator={SECRET}", "-PNG:ModifyDate=now")
    dst = check(src, Fmt.PNG, tmp_path)
    for chunk in (b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"iCCP", b"tIME"):
        assert chunk not in dst.read_bytes()


def test_apng_keeps_its_frames(tmp_path: Path) -> None:
    src = tmp_path / "anim.png"
    frames = [PILImage.new("RGBA", (40, 30), (i * 40, 255 - i * 40, 80, 255)) for i in range(5)]
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", SECRET)
    frames[0].save(src, save_all=True, append_images=frames[1:], duration=100, loop=0,
                   pnginfo=info)  # fmt: skip
    dst = tmp_path / "out.png"
    assert strip_file(src, dst, Fmt.APNG)
    assert SECRET.encode() not in dst.read_bytes()
    with PILImage.open(src) as a, PILImage.open(dst) as b:
        assert b.n_frames == a.n_frames == 5
        for i in range(5):
            a.seek(i)
            b.seek(i)
            assert a.convert("RGBA").tobytes() == b.convert("RGBA").tobytes()


# ----------------------------------------------------------------------------- WebP


def test_webp_exif_xmp_icc(tmp_path: Path) -> None:
    src = tmp_path / "scene.webp"
    PILImage.open(SHARED / "scene.webp").save(src, "WEBP", quality=80, icc_profile=srgb_profile())
    tag(src, f"-EXIF:Artist={SECRET}", f"-XMP-dc:Creator={SECRET}")
    dst = check(src, Fmt.WEBP, tmp_path)
    data = dst.read_bytes()
    assert b"ICCP" not in data and b"EXIF" not in data and b"XMP " not in data
    flags = data[20] if data[12:16] == b"VP8X" else 0
    assert flags & 0x2C == 0  # ICC, EXIF and XMP flags cleared
    assert struct.unpack_from("<I", data, 4)[0] == len(data) - 8


def test_animated_webp_stays_animated(tmp_path: Path) -> None:
    src = tmp_path / "anim.webp"
    gif = pyvips.Image.gifload(str(SHARED / "earth.gif"), n=4)
    gif.webpsave(str(src), Q=60)
    tag(src, f"-XMP-dc:Creator={SECRET}")
    dst = check(src, Fmt.WEBP, tmp_path)
    assert pyvips.Image.new_from_file(str(dst), n=-1).get("n-pages") == 4


def test_animated_webp_frames_keep_only_image_sub_chunks(tmp_path: Path) -> None:
    gif = pyvips.Image.gifload(str(SHARED / "earth.gif"), n=3)
    data = bytearray(gif.webpsave_buffer(Q=60))
    # Put an unknown sub-chunk carrying a secret into the first ANMF frame.
    at = data.index(b"ANMF")
    (length,) = struct.unpack_from("<I", data, at + 4)
    extra = b"XYZW" + struct.pack("<I", len(SECRET)) + SECRET.encode()
    extra += b"\x00" * (len(extra) % 2)
    data[at + 4 : at + 8] = struct.pack("<I", length + len(extra))
    data[at + 8 + length : at + 8 + length] = extra
    data[4:8] = struct.pack("<I", len(data) - 8)
    src, dst = tmp_path / "anim.webp", tmp_path / "out.webp"
    src.write_bytes(bytes(data))
    assert pyvips.Image.new_from_file(str(src), n=-1).get("n-pages") == 3  # still valid
    assert strip_file(src, dst, Fmt.WEBP)
    assert SECRET.encode() not in dst.read_bytes()
    assert pixels(dst) == pixels(src)


# ----------------------------------------------------------------------------- GIF


def test_gif_comment_and_xmp_keep_the_loop(tmp_path: Path) -> None:
    src = tmp_path / "earth.gif"
    shutil.copyfile(SHARED / "earth.gif", src)
    tag(src, f"-Comment={SECRET}", f"-XMP-dc:Creator={SECRET}")
    dst = check(src, Fmt.GIF, tmp_path)
    data = dst.read_bytes()
    assert b"NETSCAPE2.0" in data and b"XMP DataXMP" not in data
    a, b = (pyvips.Image.gifload(str(p), n=-1) for p in (src, dst))
    assert (b.get("n-pages"), b.get("loop")) == (a.get("n-pages"), a.get("loop"))


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("fmt", "data"),
    [
        (Fmt.JPEG, b"\xff\xd8\xff\xe1\xff\xff" + b"x" * 10),  # segment longer than the file
        (Fmt.JPEG, b"\xff\xd8\xff\xd9"),  # no image data
        (Fmt.JPEG, b"\xff\xd8\xff\xda\x00\x02abc"),  # scan before any frame header
        (Fmt.PNG, b"\x89PNG\r\n\x1a\n" + b"\x00" * 20),  # no IHDR
        (Fmt.WEBP, b"RIFF\x04\x00\x00\x00WEBP"),  # no image
        (Fmt.GIF, b"GIF89a" + b"\x01\x00\x01\x00\x00\x00\x00" + b"\x2c"),  # truncated
        (Fmt.AVIF, b"\x00\x00\x00\x1cftypavif"),  # not ours to strip
    ],
)
def test_unusual_structure_is_left_to_exiftool(fmt: Fmt, data: bytes, tmp_path: Path) -> None:
    src, dst = tmp_path / "in", tmp_path / "out"
    src.write_bytes(data)
    assert strip_file(src, dst, fmt) is None
    assert not dst.exists()


def test_unknown_critical_png_chunk_is_left_to_exiftool(tmp_path: Path) -> None:
    buf = io.BytesIO()
    PILImage.new("RGB", (4, 4)).save(buf, "PNG")
    data = buf.getvalue()
    iend = data.index(b"IEND") - 4
    odd = struct.pack(">I", 1) + b"ABCD" + b"x" + b"\x00" * 4
    src, dst = tmp_path / "in.png", tmp_path / "out.png"
    src.write_bytes(data[:iend] + odd + data[iend:])
    assert strip_file(src, dst, Fmt.PNG) is None
