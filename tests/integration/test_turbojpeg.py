"""The engine's scaled JPEG decode through TurboJPEG, against libvips' own decode."""

from __future__ import annotations

import pytest

pyvips = pytest.importorskip("pyvips")

from pictrs_trio.media import turbojpeg  # noqa: E402

tj = turbojpeg.decoder()
if tj is None:
    pytest.skip("libturbojpeg missing (scripts/bootstrap installs it)", allow_module_level=True)


def _photo(width: int, height: int, *, bands: int = 3) -> pyvips.Image:
    noise = pyvips.Image.perlin(width, height, cell_size=64, uchar=True)
    bands_list = [noise, noise.rot180() if width == height else noise.flip("horizontal"), noise]
    image = noise if bands == 1 else bands_list[0].bandjoin(bands_list[1:3])
    return image.copy(interpretation="b-w" if bands == 1 else "srgb")


@pytest.mark.parametrize("shrink", [2, 4, 8])
@pytest.mark.parametrize("size", [(4000, 3000), (1001, 777), (17, 9)])
def test_scaled_decode_matches_libvips(shrink: int, size: tuple[int, int]) -> None:
    data = _photo(*size).jpegsave_buffer(Q=90)
    decoded = tj.decode(data, shrink)
    assert decoded is not None
    assert (decoded.full_width, decoded.full_height) == size
    # libjpeg's scaled size rounds up; libvips then rounds down (the engine crops to it).
    assert (decoded.width, decoded.height) == (-(-size[0] // shrink), -(-size[1] // shrink))
    ours = pyvips.Image.new_from_memory(
        decoded.pixels, decoded.width, decoded.height, decoded.bands, "uchar"
    )
    ref = pyvips.Image.jpegload_buffer(data, shrink=shrink)
    assert (ref.width, ref.height, ref.bands) == (size[0] // shrink, size[1] // shrink, 3)
    ours = ours.crop(0, 0, ref.width, ref.height)
    # Same libjpeg defaults, different builds: equal to within rounding.
    assert (ours - ref).abs().max() <= 2
    assert (ours - ref).abs().avg() < 0.1


def test_fast_decode_is_close() -> None:
    data = _photo(1600, 1200).jpegsave_buffer(Q=90)
    accurate, fast = tj.decode(data, 8), tj.decode(data, 8, fast=True)
    assert accurate is not None and fast is not None
    a, f = (
        pyvips.Image.new_from_memory(d.pixels, d.width, d.height, d.bands, "uchar")
        for d in (accurate, fast)
    )
    assert (a.width, a.height) == (f.width, f.height) == (200, 150)
    assert (a - f).abs().avg() < 2.0  # plain upsampling, fast IDCT: close, not equal


def test_greyscale_decodes_to_one_band() -> None:
    data = _photo(640, 480, bands=1).jpegsave_buffer(Q=90)
    decoded = tj.decode(data, 8)
    assert decoded is not None
    assert (decoded.width, decoded.height, decoded.bands) == (80, 60, 1)


def test_cmyk_is_left_to_libvips() -> None:
    cmyk = _photo(64, 48).bandjoin(255).copy(interpretation="cmyk")
    data = cmyk.jpegsave_buffer()
    assert pyvips.Image.jpegload_buffer(data).bands == 4
    assert tj.decode(data, 2) is None


def test_truncated_and_garbage_are_left_to_libvips() -> None:
    data = _photo(800, 600).jpegsave_buffer(Q=90)
    assert tj.decode(data[: len(data) // 2], 8) is None  # a warning counts as a refusal
    assert tj.decode(b"\xff\xd8\xff" + b"\x00" * 100, 8) is None
    assert tj.decode(b"", 8) is None


def test_only_libjpeg_scales() -> None:
    data = _photo(16, 16).jpegsave_buffer()
    with pytest.raises(ValueError, match="unsupported scale"):
        tj.decode(data, 3)
