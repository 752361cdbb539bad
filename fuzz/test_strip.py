"""Fuzzing the in-process metadata strippers (media/strip.py): any bytes either give a list
of pieces that lie inside the input, or Malformed (the exiftool fallback) — never another
exception, never a range outside the file."""

from __future__ import annotations

import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pictrs_trio.media.strip import STRIPPERS, Malformed

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _seed(fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    frames = [Image.new("RGB", (24, 16), (i * 60, 30, 200 - i * 50)) for i in range(3)]
    many = {"save_all": True, "append_images": frames[1:]} if fmt != "JPEG" else {}
    frames[0].save(buf, fmt, **many, **options)
    return buf.getvalue()


SEEDS = {
    "jpeg": _seed("JPEG", progressive=True, comment=b"hello"),
    "png": _seed("PNG"),  # APNG: three frames
    "webp": _seed("WEBP", exif=b"Exif\x00\x00MM"),
    "gif": _seed("GIF", comment=b"hello", loop=0),
}
BY_NAME = {fmt.value: fn for fmt, fn in STRIPPERS.items()}


def _check(name: str, data: bytes) -> None:
    try:
        pieces = BY_NAME[name](data)
    except Malformed:
        return
    for piece in pieces:
        if isinstance(piece, tuple):
            start, end = piece
            assert 0 <= start <= end <= len(data)


@FUZZ
@given(
    name=st.sampled_from(sorted(SEEDS)),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
    cut=st.integers(0, 10**6),
)
def test_mutated_files(name: str, edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(SEEDS[name])
    for where, value in edits:
        data[where % len(data)] = value
    _check(name, bytes(data[: max(1, cut % (len(data) + 1))]))


@FUZZ
@given(name=st.sampled_from(sorted(BY_NAME)), data=st.binary(max_size=200))
def test_random_bytes(name: str, data: bytes) -> None:
    _check(name, data)


def test_seeds_strip() -> None:
    for name, data in SEEDS.items():
        assert BY_NAME[name](data), name


def test_every_truncation() -> None:
    """Each prefix of each seed: boundary checks are where a parser breaks."""
    for name, data in SEEDS.items():
        for n in range(len(data)):
            _check(name, data[:n])
