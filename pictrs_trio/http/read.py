"""The answer to a GET or HEAD of a stored file (an original or a variant). Pure.

    decide(Stored, ReadRequest) -> ReadAnswer(status, headers, span)

One function decides status, headers and which bytes go out, for every route that serves
stored media (``http/serve.py``): pict-rs's media headers (``src/lib.rs``), its
single-range rules (``src/range.rs``, ``ranges.parse_range``), HEAD, and the conditional
requests of RFC 9110 §13, evaluated in the order of §13.2.2:

1. ``If-Match`` (strong comparison, ``*`` matches) fails → 412;
2. else ``If-Unmodified-Since`` earlier than the file → 412;
3. ``If-None-Match`` (weak comparison, ``*`` matches) matches → 304;
4. else ``If-Modified-Since`` not earlier than the file → 304;
5. ``Range`` is honoured unless an ``If-Range`` does not match (strong comparison for an
   entity tag, exact time for a date): then the whole file, 200.

pict-rs sends no ETag and ignores conditionals; a stored file never changes under its
identifier, so a strong ETag derived from the identifier lets caches revalidate for free.
Unparseable dates are ignored, as RFC 9110 says.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import re

import msgspec

from pictrs_trio.http.ranges import Unsatisfiable, parse_range
from pictrs_trio.repo.records import Details

CACHE_CONTROL = b"public, max-age=604800, immutable"

Headers = list[tuple[bytes, bytes]]


class Stored(msgspec.Struct, frozen=True, kw_only=True):
    """What the read path knows of a stored file before reading any of it."""

    identifier: str
    details: Details
    length: int

    @property
    def etag(self) -> bytes:
        return etag_for(self.identifier)


class ReadRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The parts of a request that shape the answer (raw header values, None if absent)."""

    method: str  # GET or HEAD
    range: bytes | None = None
    if_match: bytes | None = None
    if_none_match: bytes | None = None
    if_modified_since: bytes | None = None
    if_unmodified_since: bytes | None = None
    if_range: bytes | None = None


class ReadAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """``span`` is the ``[start, end)`` of the file to send after the head, None for no
    body (HEAD, 304, 412, 416). ``headers`` always carry the length of what a GET sends."""

    status: int
    headers: Headers
    span: tuple[int, int] | None


def etag_for(identifier: str) -> bytes:
    """A strong validator: identifiers are never reused for other content."""
    return b'"' + hashlib.blake2b(identifier.encode(), digest_size=12).hexdigest().encode() + b'"'


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _http_date(t: dt.datetime) -> bytes:
    """RFC 9110's IMF-fixdate (what email.utils.format_datetime writes, at a fifth of its
    cost: this runs for every file served)."""
    u = t.astimezone(dt.UTC)
    return (
        f"{_DAYS[u.weekday()]}, {u.day:02d} {_MONTHS[u.month - 1]} {u.year:04d} "
        f"{u.hour:02d}:{u.minute:02d}:{u.second:02d} GMT"
    ).encode()


def media_headers(stored: Stored) -> Headers:
    """pict-rs's headers for stored media (docs/api.md, Serving), plus our ETag."""
    return [
        (b"content-type", stored.details.content_type.encode()),
        (b"cache-control", CACHE_CONTROL),
        (b"last-modified", _http_date(stored.details.created_at)),
        (b"accept-ranges", b"bytes"),
        (b"etag", stored.etag),
    ]


def _uncacheable(headers: Headers) -> Headers:
    """A bodiless refusal (412, 416): the validators, without the week-long Cache-Control a
    shared cache would otherwise keep it for (RFC 9111 section 3)."""
    return [*(h for h in headers if h[0] != b"cache-control"), (b"content-length", b"0")]


def _tags(header: bytes) -> list[bytes]:
    return [t.strip() for t in header.split(b",") if t.strip()]


def _opaque(tag: bytes) -> bytes:
    return tag[2:] if tag.startswith(b"W/") else tag


def _weak_match(header: bytes, etag: bytes) -> bool:
    tags = _tags(header)
    return b"*" in tags or any(_opaque(t) == etag for t in tags)


def _strong_match(header: bytes, etag: bytes) -> bool:
    tags = _tags(header)
    return b"*" in tags or etag in tags  # a weak tag never matches strongly


def _date(header: bytes | None) -> dt.datetime | None:
    """An HTTP-date (any of RFC 9110's three forms), or None when absent or unparseable."""
    if header is None:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(header.decode("latin-1"))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:  # "-0000" or no zone: RFC 9110 dates are GMT
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed


def _seconds(t: dt.datetime) -> dt.datetime:
    """Last-Modified carries whole seconds: compare at that precision."""
    return t.astimezone(dt.UTC).replace(microsecond=0)


def _not_modified(stored: Stored, request: ReadRequest) -> bool:
    if request.if_none_match is not None:
        return _weak_match(request.if_none_match, stored.etag)
    since = _date(request.if_modified_since)
    return since is not None and _seconds(stored.details.created_at) <= since


def _precondition_failed(stored: Stored, request: ReadRequest) -> bool:
    if request.if_match is not None:
        return not _strong_match(request.if_match, stored.etag)
    since = _date(request.if_unmodified_since)
    return since is not None and _seconds(stored.details.created_at) > since


def _range_applies(stored: Stored, request: ReadRequest) -> bool:
    if request.if_range is None:
        return True
    value = request.if_range.strip()
    if value.startswith((b'"', b"W/")):
        return value == stored.etag
    when = _date(value)
    return when is not None and when == _seconds(stored.details.created_at)


_SIMPLE_RANGE = re.compile(rb"^\s*bytes\s*=\s*(\d{1,18})\s*-\s*(\d{0,18})\s*$", re.IGNORECASE)


def probable_span(request: ReadRequest) -> tuple[int, int | None] | None:
    """The bytes ``[start, end)`` (end None: to the end) that ``decide`` will most likely
    send, told before the file's length is known, so that a store can open them and learn
    the length in one request (``Store.open_read``). None when the answer may well send
    nothing (HEAD; a conditional request, often 304) or the span needs the length (a
    suffix range ``bytes=-500``, several ranges): the caller asks the length first then.
    A guess only: whatever ``decide`` says is what is sent (an If-Range that does not
    match, say, sends the whole file)."""
    if request.method != "GET":
        return None
    conditional = (
        request.if_match,
        request.if_none_match,
        request.if_modified_since,
        request.if_unmodified_since,
    )
    if any(header is not None for header in conditional):
        return None
    if request.range is None:
        return 0, None
    found = _SIMPLE_RANGE.match(request.range)
    if found is None:
        return None
    start = int(found.group(1))
    if not found.group(2):
        return start, None
    last = int(found.group(2))
    return (start, last + 1) if last >= start else None


def decide(stored: Stored, request: ReadRequest) -> ReadAnswer:
    """The answer to ``request`` for ``stored``. Raises RangeNotSatisfiable (416 JSON) for
    several ranges or a unit other than bytes, as pict-rs does."""
    headers = media_headers(stored)
    if _precondition_failed(stored, request):
        return ReadAnswer(status=412, headers=_uncacheable(headers), span=None)
    if _not_modified(stored, request):
        # RFC 9110 §15.4.5: the validators and caching headers a 200 would carry, no body.
        return ReadAnswer(status=304, headers=headers[1:], span=None)
    length = stored.length
    span: tuple[int, int] | None = None
    if request.range is not None and _range_applies(stored, request):
        try:
            span = parse_range(request.range.decode("latin-1"), length)
        except Unsatisfiable:
            # pict-rs: the media headers and an empty body; RFC 9110 section 15.5.17 adds
            # the length as Content-Range.
            unsatisfied = [*_uncacheable(headers), (b"content-range", b"bytes */%d" % length)]
            return ReadAnswer(status=416, headers=unsatisfied, span=None)
    status = 200
    start, end = 0, length
    if span is not None:
        start, end = span[0], span[1] + 1
        status = 206
        headers.append((b"content-range", b"bytes %d-%d/%d" % (span[0], span[1], length)))
    headers.append((b"content-length", b"%d" % (end - start)))
    body = None if request.method == "HEAD" or start == end else (start, end)
    return ReadAnswer(status=status, headers=headers, span=body)
