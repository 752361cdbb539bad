"""Property-based fuzzing of every parser that sees client bytes: multipart framing, byte
ranges, the upload query, deadlines, file sniffing and structure checks, ffprobe output.

Each must either succeed or raise one of our own errors (a 4xx), never crash otherwise.
"""

from __future__ import annotations

import itertools
from contextlib import aclosing

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pictrs_trio.http.deadline import parse_deadline
from pictrs_trio.http.multipart import iter_file_parts
from pictrs_trio.http.ranges import Unsatisfiable, parse_range
from pictrs_trio.media.discover import inspect_bytes, parse_ffprobe
from pictrs_trio.rules.errors import PictrsError, status_of
from pictrs_trio.rules.formats import sniff
from pictrs_trio.rules.query import parse_upload_query

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class _Body:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        if not self.chunks:
            raise StopAsyncIteration
        return self.chunks.pop(0)


def _form(parts: list[tuple[str, str, bytes]], boundary: str) -> bytes:
    out = b""
    for name, filename, data in parts:
        out += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                f'filename="{filename}"\r\n\r\n'
            ).encode()
            + data
            + b"\r\n"
        )
    return out + f"--{boundary}--\r\n".encode()


async def _parse(body: bytes, cuts: list[int], boundary: str) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})
    chunks = [body[a:b] for a, b in itertools.pairwise(points) if b > a]
    out: list[bytes] = []
    parts = iter_file_parts(
        f"multipart/form-data; boundary={boundary}", _Body(chunks), max_files=10
    )
    async with aclosing(parts):
        async for part in parts:
            out.append(b"".join([c async for c in part.chunks()]))
    return out


boundaries = st.text(alphabet="abcdefXYZ0123456789'-_", min_size=1, max_size=40)
payloads = st.binary(max_size=300)


@FUZZ
@given(st.lists(payloads, min_size=1, max_size=4), st.lists(st.integers(0, 5000)), boundaries)
def test_multipart_round_trip(files: list[bytes], cuts: list[int], boundary: str) -> None:
    # Payloads that contain the delimiter cannot be framed by that boundary; clients pick
    # boundaries that do not occur, and so does this test.
    if any(b"--" + boundary.encode() in f for f in files):
        return
    body = _form([("images[]", f"f{i}", f) for i, f in enumerate(files)], boundary)
    assert trio.run(_parse, body, cuts, boundary) == files


@FUZZ
@given(st.binary(max_size=400), st.lists(st.integers(0, 500), max_size=5), boundaries)
def test_multipart_garbage(body: bytes, cuts: list[int], boundary: str) -> None:
    try:
        trio.run(_parse, body, cuts, boundary)
    except PictrsError as exc:
        assert 400 <= status_of(exc) < 500


@FUZZ
@given(st.text(max_size=40), st.integers(0, 10**9))
def test_range_header(header: str, length: int) -> None:
    try:
        span = parse_range(header, length)
    except (Unsatisfiable, PictrsError):
        return
    if span is not None:
        assert 0 <= span[0] <= span[1] < length


@FUZZ
@given(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=12)), max_size=6))
def test_upload_query(pairs: list[tuple[str, str]]) -> None:
    try:
        parse_upload_query(pairs)
    except PictrsError as exc:
        assert status_of(exc) == 400


@FUZZ
@given(st.binary(max_size=60))
def test_deadline_header(raw: bytes) -> None:
    async def check() -> None:
        try:
            parse_deadline(raw)
        except PictrsError as exc:
            assert status_of(exc) == 400

    trio.run(check)


prefixes = st.sampled_from(
    [
        b"",
        b"\x89PNG\r\n\x1a\n",
        b"\xff\xd8\xff",
        b"GIF89a",
        b"RIFF\x00\x00\x00\x00WEBPVP8X",
        b"\x00\x00\x00\x1cftypavif",
        b"\x00\x00\x00\x18ftypisom",
        b"\x1a\x45\xdf\xa3",
        b"\xff\x0a",
    ]
)


@FUZZ
@given(prefixes, st.binary(max_size=600))
def test_structure_checks(prefix: bytes, rest: bytes) -> None:
    data = prefix + rest
    sniff(data[:64])
    facts = inspect_bytes(data)  # must not raise on any input
    assert facts.sniffed is not None


@FUZZ
@given(st.binary(max_size=300))
def test_ffprobe_output(raw: bytes) -> None:
    try:
        parse_ffprobe(raw)
    except PictrsError as exc:
        assert status_of(exc) in (400, 500)
