"""The one decision for reads of stored media (``http/read.py``): status, headers, bytes."""

from __future__ import annotations

import datetime as dt
import email.utils

import pytest

from pictrs_trio.http.read import (
    ReadAnswer,
    ReadRequest,
    Stored,
    decide,
    etag_for,
    probable_span,
)
from pictrs_trio.repo.records import Details
from pictrs_trio.rules.errors import RangeNotSatisfiable
from pictrs_trio.rules.formats import Fmt, Kind, MediaFormat

CREATED = dt.datetime(2026, 3, 1, 12, 30, 15, 250_000, tzinfo=dt.UTC)
STORED = Stored(
    identifier="aa/bb/file.webp",
    details=Details(
        width=10,
        height=20,
        frames=None,
        format=MediaFormat(kind=Kind.IMAGE, fmt=Fmt.WEBP),
        created_at=CREATED,
    ),
    length=1000,
)
ETAG = etag_for(STORED.identifier)
WEAK = b"W/" + ETAG
LAST_MODIFIED = b"Sun, 01 Mar 2026 12:30:15 GMT"
EARLIER = b"Sun, 01 Mar 2026 12:30:14 GMT"
LATER = b"Sun, 01 Mar 2026 12:30:16 GMT"


def answer(method: str = "GET", **headers: bytes) -> ReadAnswer:
    return decide(STORED, ReadRequest(method=method, **headers))


def head(a: ReadAnswer) -> dict[bytes, bytes]:
    return dict(a.headers)


def test_whole_file() -> None:
    a = answer()
    assert (a.status, a.span) == (200, (0, 1000))
    assert head(a) == {
        b"content-type": b"image/webp",
        b"cache-control": b"public, max-age=604800, immutable",
        b"last-modified": LAST_MODIFIED,
        b"accept-ranges": b"bytes",
        b"etag": ETAG,
        b"content-length": b"1000",
    }


def test_head_has_the_length_of_a_get_and_no_body() -> None:
    a = answer("HEAD")
    assert (a.status, a.span, head(a)[b"content-length"]) == (200, None, b"1000")


@pytest.mark.parametrize(
    ("range_", "span", "content_range"),
    [
        (b"bytes=0-9", (0, 10), b"bytes 0-9/1000"),
        (b"bytes=990-", (990, 1000), b"bytes 990-999/1000"),
        (b"bytes=-10", (990, 1000), b"bytes 990-999/1000"),
        (b"bytes=500-5000", (500, 1000), b"bytes 500-999/1000"),
    ],
)
def test_single_range(range_: bytes, span: tuple[int, int], content_range: bytes) -> None:
    a = answer(range=range_)
    assert (a.status, a.span) == (206, span)
    assert head(a)[b"content-range"] == content_range
    assert head(a)[b"content-length"] == b"%d" % (span[1] - span[0])
    h = answer("HEAD", range=range_)
    assert (h.status, h.span, head(h)[b"content-range"]) == (206, None, content_range)


def test_unsatisfiable_range_is_an_empty_416_with_the_length() -> None:
    a = answer(range=b"bytes=1000-")
    assert (a.status, a.span) == (416, None)
    assert head(a)[b"content-range"] == b"bytes */1000"
    assert head(a)[b"content-length"] == b"0"
    assert head(a)[b"content-type"] == b"image/webp"
    assert b"cache-control" not in head(a)  # a shared cache must not keep a refusal a week


@pytest.mark.parametrize("range_", [b"bytes=0-1,5-6", b"items=0-1"])
def test_several_ranges_or_another_unit_are_416_json(range_: bytes) -> None:
    with pytest.raises(RangeNotSatisfiable):
        answer(range=range_)


def test_unparseable_range_is_ignored() -> None:
    assert answer(range=b"bytes=abc").status == 200


@pytest.mark.parametrize(
    "if_none_match",
    [ETAG, WEAK, b"*", b'"other", ' + ETAG, b'"a",' + WEAK, b" " + ETAG + b" "],
)
def test_if_none_match_weak_comparison_gives_304(if_none_match: bytes) -> None:
    for method in ("GET", "HEAD"):
        a = answer(method, if_none_match=if_none_match)
        assert (a.status, a.span) == (304, None)
        h = head(a)
        assert h[b"etag"] == ETAG and h[b"last-modified"] == LAST_MODIFIED
        assert b"content-length" not in h and b"content-type" not in h


def test_if_none_match_other_tag_gives_the_file() -> None:
    assert answer(if_none_match=b'"nope"').status == 200


def test_if_none_match_wins_over_range_and_if_modified_since() -> None:
    assert answer(if_none_match=ETAG, range=b"bytes=0-1").status == 304
    # a present If-None-Match that does not match: If-Modified-Since is not looked at
    assert answer(if_none_match=b'"nope"', if_modified_since=LATER).status == 200


@pytest.mark.parametrize(("since", "status"), [(LATER, 304), (LAST_MODIFIED, 304), (EARLIER, 200)])
def test_if_modified_since(since: bytes, status: int) -> None:
    assert answer(if_modified_since=since).status == status


def test_bad_dates_are_ignored() -> None:
    assert answer(if_modified_since=b"yesterday").status == 200
    assert answer(if_unmodified_since=b"\xff\xfe").status == 200


@pytest.mark.parametrize(("if_match", "status"), [(ETAG, 200), (b"*", 200), (WEAK, 412)])
def test_if_match_strong_comparison(if_match: bytes, status: int) -> None:
    a = answer(if_match=if_match)
    assert a.status == status
    if status == 412:
        assert a.span is None and head(a)[b"content-length"] == b"0"
        assert head(a)[b"etag"] == ETAG and b"cache-control" not in head(a)


def test_if_unmodified_since() -> None:
    assert answer(if_unmodified_since=EARLIER).status == 412
    assert answer(if_unmodified_since=LAST_MODIFIED).status == 200


@pytest.mark.parametrize(
    ("if_range", "status"),
    [(ETAG, 206), (WEAK, 200), (b'"other"', 200), (LAST_MODIFIED, 206), (LATER, 200)],
)
def test_if_range(if_range: bytes, status: int) -> None:
    """A weak tag never matches If-Range: the whole file, not a piece of another version."""
    assert answer(range=b"bytes=0-9", if_range=if_range).status == status


def test_empty_file() -> None:
    empty = Stored(identifier="x", details=STORED.details, length=0)
    a = decide(empty, ReadRequest(method="GET"))
    assert (a.status, a.span, dict(a.headers)[b"content-length"]) == (200, None, b"0")


def test_last_modified_is_an_http_date() -> None:
    parsed = email.utils.parsedate_to_datetime(head(answer())[b"last-modified"].decode())
    assert parsed == CREATED.replace(microsecond=0)


@pytest.mark.parametrize(
    ("headers", "guess"),
    [
        ({}, (0, None)),
        ({"range": b"bytes=0-"}, (0, None)),
        ({"range": b"bytes=10-19"}, (10, 20)),
        ({"range": b"BYTES = 990-5000"}, (990, 5001)),
        ({"range": b"bytes=2000-"}, (2000, None)),  # past the end: decide says 416
        ({"range": b"bytes=10-19", "if_range": ETAG}, (10, 20)),
        # The length first: a suffix, several ranges, a reversed or unparseable one.
        ({"range": b"bytes=-500"}, None),
        ({"range": b"bytes=0-1,5-6"}, None),
        ({"range": b"bytes=20-10"}, None),
        ({"range": b"pages=1-2"}, None),
        # Conditional requests often end in 304/412, with no bytes to open.
        ({"if_none_match": ETAG}, None),
        ({"if_modified_since": LAST_MODIFIED}, None),
        ({"if_match": ETAG}, None),
        ({"if_unmodified_since": LAST_MODIFIED}, None),
    ],
)
def test_probable_span(headers: dict[str, bytes], guess: tuple[int, int | None] | None) -> None:
    request = ReadRequest(method="GET", **headers)
    assert probable_span(request) == guess
    assert probable_span(ReadRequest(method="HEAD", **headers)) is None
    if guess is not None and guess[0] < STORED.length:  # the guess is what decide sends
        span = decide(STORED, request).span
        assert span == (guess[0], min(guess[1] or STORED.length, STORED.length))
