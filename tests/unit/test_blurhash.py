"""rules.blurhash: the BlurHash encoding, against values worked out by hand and vectors
of the reference algorithm (woltapp/blurhash), and invariants over any pixels."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pictrs_trio.rules import blurhash as bh


def pattern(width: int, height: int) -> bytes:
    """A deterministic test image, RGB rows: channels vary along both axes."""
    return bytes(
        v
        for y in range(height)
        for x in range(width)
        for v in ((x * 37 + y * 11) % 256, (x * 5 + y * 71) % 256, (x * y * 13) % 256)
    )


def decode83(text: str) -> int:
    value = 0
    for ch in text:
        value = value * 83 + bh.BASE83.index(ch)
    return value


def test_one_pixel_worked_by_hand() -> None:
    # 1x1 components: size flag 0, no AC so the max-AC digit is 0, then the DC colour: the
    # linear average of one pixel is that pixel, back in sRGB exactly.
    assert bh.encode(bytes([255, 0, 0]), 1, 1, 3, 1, 1) == "00" + bh.base83(0xFF0000, 4)
    assert bh.encode(bytes([18, 52, 86]), 1, 1, 3, 1, 1) == "00" + bh.base83(0x123456, 4)


def test_a_uniform_image_keeps_its_colour() -> None:
    grey = bytes([128, 64, 200]) * (8 * 8)
    out = bh.encode(grey, 8, 8, 3, 4, 3)
    assert out[0] == bh.BASE83[3 + 2 * 9]
    assert decode83(out[2:6]) == 0x8040C8  # the average of equal pixels, exactly
    # Component (i=0, j=2) of a flat image is 0 (cos(2*pi*row/h) over rows 0..h-1 sums
    # to zero), so each channel quantises to the midpoint 9. Components are stored row by
    # row of j, after the DC: index j*x + i - 1 among the ACs.
    at = 6 + 2 * (2 * 4 + 0 - 1)
    assert decode83(out[at : at + 2]) == 9 * 19 * 19 + 9 * 19 + 9


# Computed with an independent implementation of the reference algorithm (the pure-Python
# ``blurhash`` package) on ``pattern``; ours must agree exactly.
REFERENCE = [
    ((1, 1, 1, 1), "000000"),
    ((4, 3, 4, 3), "LK9H%2GlI;-,zaRnW;rtL-i%ofVu"),
    ((7, 5, 4, 3), "LuHL6N7CNY%1#RNwsXf6L+r{bEeo"),
    ((5, 9, 3, 4), "TOFih.4EB0ASierzQUnooi#XTIX1"),
    ((3, 8, 1, 1), "00A3VJ"),
    (
        (16, 16, 9, 9),
        "|WG[.s$^OS$xFXKij.o{WSosR%NaNb6{xV#nWDsCZ*W-k8NIrw,FWGoNX8s*jGeWjso3ahSgjYNyVZWBbubuW=n+j"
        "]jujYxbiyo^kUWEk8WUk7jGVYVvaQkBWYnPoMnljFt6jajKjFaOi_bHk8soUgiibIjKW-SejFahf8",
    ),
]


@pytest.mark.parametrize(("shape", "expected"), REFERENCE)
def test_reference_vectors(shape: tuple[int, int, int, int], expected: str) -> None:
    width, height, x, y = shape
    assert bh.encode(pattern(width, height), width, height, 3, x, y) == expected


def test_extra_bands_are_ignored() -> None:
    rgb = pattern(6, 4)
    rgba = bytes(b for i in range(0, len(rgb), 3) for b in (*rgb[i : i + 3], 7))
    assert bh.encode(rgba, 6, 4, 4, 4, 3) == bh.encode(rgb, 6, 4, 3, 4, 3)


@pytest.mark.parametrize(
    ("args", "why"),
    [
        ((b"\0" * 3, 1, 1, 3, 0, 1), "component counts"),
        ((b"\0" * 3, 1, 1, 3, 1, 10), "component counts"),
        ((b"\0" * 2, 1, 1, 2, 1, 1), "does not match"),
        ((b"\0" * 4, 1, 1, 3, 1, 1), "does not match"),
    ],
)
def test_refuses_bad_input(args: tuple[bytes, int, int, int, int, int], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        bh.encode(*args)


def test_components_follow_the_longer_side() -> None:
    assert bh.components_for(32, 20) == (4, 3)
    assert bh.components_for(20, 32) == (3, 4)
    assert bh.components_for(5, 5) == (4, 3)


@given(
    width=st.integers(1, 6),
    height=st.integers(1, 6),
    x=st.integers(1, 9),
    y=st.integers(1, 9),
    data=st.data(),
)
def test_shape_of_any_hash(width: int, height: int, x: int, y: int, data: st.DataObject) -> None:
    pixels = data.draw(st.binary(min_size=width * height * 3, max_size=width * height * 3))
    out = bh.encode(pixels, width, height, 3, x, y)
    assert len(out) == 4 + 2 * x * y
    assert set(out) <= set(bh.BASE83)
    assert decode83(out[0]) == (x - 1) + (y - 1) * 9
    assert 0 <= decode83(out[1]) <= 82
    assert decode83(out[2:6]) <= 0xFFFFFF
    assert all(decode83(out[i : i + 2]) < 19**3 for i in range(6, len(out), 2))


@given(st.integers(0, 83**4 - 1))
def test_base83_round_trips(value: int) -> None:
    assert decode83(bh.base83(value, 4)) == value
