"""Pure pieces of the HTTP layer: ranges, deadlines, query parsing, multipart, wire."""

from __future__ import annotations

import datetime as dt
import time
from contextlib import aclosing

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from pictrs_trio.http.deadline import parse_deadline
from pictrs_trio.http.multipart import iter_file_parts
from pictrs_trio.http.ranges import Unsatisfiable, parse_range
from pictrs_trio.http.wire import rfc3339
from pictrs_trio.rules import query
from pictrs_trio.rules.errors import (
    InvalidProcessPath,
    InvalidQuery,
    NoFiles,
    ParseDeadline,
    RangeNotSatisfiable,
    UploadError,
)
from pictrs_trio.rules.query import parse_upload_query


@pytest.mark.parametrize(
    ("header", "length", "expect"),
    [
        (None, 100, None),
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=90-200", 100, (90, 99)),
        ("bytes=95-", 100, (95, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-1000", 100, (0, 99)),
        ("garbage", 100, None),
        ("bytes=abc", 100, None),
    ],
)
def test_parse_range(header: str | None, length: int, expect: tuple[int, int] | None) -> None:
    assert parse_range(header, length) == expect


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=5-4", "bytes=-0", "bytes=0-0"])
def test_unsatisfiable(header: str) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, 0 if header == "bytes=0-0" else 100)


@pytest.mark.parametrize("header", ["bytes=0-1,3-4", "items=0-1"])
def test_range_416_json(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)


@given(st.integers(0, 10_000), st.integers(0, 10_000), st.integers(1, 10_000))
def test_range_slices_fit(a: int, b: int, length: int) -> None:
    try:
        span = parse_range(f"bytes={a}-{b}", length)
    except Unsatisfiable:
        assert a >= length or a > b
        return
    assert span is not None
    assert 0 <= span[0] <= span[1] < length


async def test_parse_deadline() -> None:
    future = parse_deadline(str(time.time_ns() + 2_000_000_000).encode())
    assert 1.5 < future - trio.current_time() < 2.5
    past = parse_deadline(str(time.time_ns() - 2_000_000_000).encode())
    assert past == pytest.approx(trio.current_time(), abs=0.05)
    for bad in (b"\xff\xfe", b"tomorrow", b"1e9", b"9" * 50):
        with pytest.raises(ParseDeadline):
            parse_deadline(bad)


def test_upload_query() -> None:
    limits, ops = parse_upload_query(
        [("max_width", "100"), ("resize", "200"), ("allow_video", "false")]
    )
    assert limits.max_width == 100
    assert limits.allow_video is False
    assert limits.allow_image
    assert ops == [("resize", "200")]
    with pytest.raises(InvalidQuery):
        parse_upload_query([("allow_image", "True")])
    with pytest.raises(InvalidQuery):
        parse_upload_query([("max_width", "70000")])
    with pytest.raises(InvalidProcessPath):
        parse_upload_query([("bogus", "1")])


def test_rfc3339() -> None:
    t = dt.datetime(2024, 6, 25, 15, 34, 41, 123450, tzinfo=dt.UTC)
    assert rfc3339(t) == "2024-06-25T15:34:41.12345Z"
    assert rfc3339(t.replace(microsecond=0)) == "2024-06-25T15:34:41Z"


def _form(*parts: tuple[str, str | None, bytes]) -> bytes:
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--B\r\nContent-Disposition: {disp}\r\n\r\n".encode() + data + b"\r\n"
    return out + b"--B--\r\n"


class _body:
    def __init__(self, data: bytes, step: int) -> None:
        self.parts = [data[i : i + step] for i in range(0, len(data), step)]

    def __aiter__(self) -> _body:
        return self

    async def __anext__(self) -> bytes:
        if not self.parts:
            raise StopAsyncIteration
        return self.parts.pop(0)


async def _collect(data: bytes, step: int = 7, max_files: int = 5) -> list[tuple[str, bytes]]:
    out = []
    parts = iter_file_parts(
        "multipart/form-data; boundary=B", _body(data, step), max_files=max_files
    )
    async with aclosing(parts):
        async for part in parts:
            out.append((part.filename, b"".join([c async for c in part.chunks()])))
    return out


async def test_multipart_streams_files() -> None:
    payload = bytes(range(256)) * 40
    form = _form(("note", None, b"hi"), ("images[]", "a.png", payload), ("images[]", "b", b"xyz"))
    for step in (1, 2, 3, 5, 7, 64, 4096):
        assert await _collect(form, step) == [("a.png", payload), ("b", b"xyz")]


async def test_multipart_errors() -> None:
    with pytest.raises(NoFiles):
        await _collect(_form(("note", None, b"hi")))
    with pytest.raises(UploadError):
        await _collect(_form(("images[]", "a", b"1"), ("images[]", "b", b"2")), max_files=1)
    with pytest.raises(UploadError):
        await _collect(_form(("images[]", None, b"1")))
    with pytest.raises(UploadError):
        await _collect(
            b'--B\r\nContent-Disposition: form-data; name="images[]"; '
            b'filename="a"\r\n\r\nunterminated'
        )
    with pytest.raises(UploadError):
        parts = iter_file_parts("text/plain", _body(b"", 1), max_files=1)
        async with aclosing(parts):
            async for _ in parts:
                pass


def test_hostile_numbers_are_4xx_not_crashes() -> None:
    """Thousands of digits must not reach int() (Python refuses > 4300 digits)."""
    with pytest.raises(InvalidQuery):
        parse_upload_query([("max_width", "++5")])
    with pytest.raises(InvalidQuery):
        parse_upload_query([("max_width", "0" * 5000 + "1" + "0" * 30)])
    limits, _ = parse_upload_query([("max_width", "0" * 5000 + "7")])
    assert limits.max_width == 7
    with pytest.raises(Unsatisfiable):
        parse_range("bytes=" + "9" * 5000 + "-", 100)
    assert parse_range("bytes=0-" + "9" * 5000, 100) == (0, 99)
    assert parse_range("bytes=-" + "9" * 5000, 100) == (0, 99)


async def test_multipart_ignored_parts_are_capped() -> None:
    big_field = _form(("note", None, b"x" * (2 * 1024 * 1024)), ("images[]", "a", b"1"))
    with pytest.raises(UploadError):
        await _collect(big_field, step=65536)


async def test_multipart_reads_the_body_to_its_end_before_the_last_part_ends() -> None:
    """The request is complete when the consumer sees the last file's end (not only when it
    asks for the next part), and what follows the closing delimiter is dropped, bounded."""
    body = _body(_form(("images[]", "a", b"1" * 100)) + b"epilogue", 16)
    parts = iter_file_parts("multipart/form-data; boundary=B", body, max_files=5)
    async with aclosing(parts):
        async for part in parts:
            assert b"".join([c async for c in part.chunks()]) == b"1" * 100
            assert body.parts == []  # all read before the part's last chunk was handed over
    flood = _form(("images[]", "a", b"1")) + b"x" * (2 * 1024 * 1024)
    with pytest.raises(UploadError):
        await _collect(flood, step=65536)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-04T10:00:00Z", 1_796_378_400 * 10**9),
        ("2026-12-04T11:00:00.5+01:00", 1_796_378_400 * 10**9 + 500_000_000),
        ("3000-01-01T00:00:00Z", 2**63 - 1),  # past what a stored time can be: the newest
        ("1000-01-01T00:00:00Z", -(2**63)),
    ],
)
def test_rfc3339_timestamps_as_stored_nanoseconds(text: str, expected: int) -> None:
    assert query.parse_rfc3339_ns("timestamp", text) == expected


@pytest.mark.parametrize(
    "text", ["0000-01-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-12-04T10:00:00", "yesterday"]
)
def test_rfc3339_timestamps_that_are_not(text: str) -> None:
    with pytest.raises(InvalidQuery):
        query.parse_rfc3339_ns("timestamp", text)
