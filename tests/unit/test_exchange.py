"""``http/exchange.py`` against a scripted ASGI server: early answers, body rules, the
connection's fate, deadlines and clients that leave. Time is trio's autojump clock, so
"25 seconds of trickle" takes milliseconds."""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

import pytest
import trio

from pictrs_trio.http.exchange import (
    DRAIN_BYTES,
    MIB,
    BodyRules,
    Exchange,
    Message,
    Settle,
    run_exchange,
    settle,
)
from pictrs_trio.rules.errors import BodyTimeout, BodyTooLarge, InvalidQuery

CHUNK = 64 * 1024
CHUNK_X = b"x" * CHUNK


class Peer:
    """hypercorn's side of one request, built the way hypercorn builds it (its
    ``trio/task_group.py`` and ``protocol/http_stream.py``): the app receives from a memory
    channel of ``max_app_queue_size`` (10) messages. ``client`` (run beside the app) puts
    the body into it as the client sends it, one message per chunk ``gap`` seconds apart,
    then an empty end-of-body message of its own, waiting while the channel is full: a
    client nobody reads from is held back. The stream closing puts a disconnect into the
    same channel from inside the app's ``send``, waiting likewise: at the answer's end, or,
    with ``reset``, at the first write (the client reset the connection; hypercorn swallows
    the write's error). ``more``: the body never ends. ``leave_after``: the client goes away
    then (a disconnect put after what it sent)."""

    def __init__(
        self,
        chunks: list[bytes],
        *,
        gap: float = 0.0,
        more: bool = False,
        leave_after: float | None = None,
        reset: bool = False,
    ) -> None:
        self.chunks = list(chunks)
        self.gap = gap
        self.more = more
        self.leave_after = leave_after
        self.reset = reset
        self._put, self._get = trio.open_memory_channel[Message](10)
        self.received = 0  # body bytes the app took
        self.received_at_head = 0  # ...when the answer's head went out
        self.sent: list[Message] = []
        self.closed = False  # the stream is closed: hypercorn ignores what the app sends
        self.start = trio.current_time()

    async def client(self) -> None:
        with trio.move_on_at(self.start + (self.leave_after or math.inf)):
            for chunk in self.chunks:
                await trio.sleep(self.gap)
                await self._put.send({"type": "http.request", "body": chunk, "more_body": True})
            while self.more:
                await trio.sleep(self.gap or 0.001)
                await self._put.send({"type": "http.request", "body": CHUNK_X, "more_body": True})
            await self._put.send({"type": "http.request", "body": b"", "more_body": False})
            await trio.sleep_forever()
        await self._close()

    async def _close(self) -> None:
        if not self.closed:
            self.closed = True
            await self._put.send({"type": "http.disconnect"})

    async def receive(self) -> Message:
        message = await self._get.receive()
        self.received += len(message.get("body", b""))
        return message

    async def send(self, message: Message) -> None:
        if self.closed:
            return
        if message["type"] == "http.response.start":
            self.received_at_head = self.received
        self.sent.append(message)
        if self.reset or (
            message["type"] == "http.response.body" and not message.get("more_body", False)
        ):
            await self._close()
        await trio.lowlevel.checkpoint()

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0]["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])

    @property
    def finished(self) -> bool:
        return bool(self.sent) and not self.sent[-1].get("more_body", False)


def scope(
    method: str = "POST",
    path: str = "/x",
    headers: list[tuple[bytes, bytes]] | None = None,
    http_version: str = "1.1",
) -> dict[str, Any]:
    return {
        "type": "http",
        "http_version": http_version,
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": headers or [],
    }


def body_headers(size: int | None) -> list[tuple[bytes, bytes]]:
    if size is None:
        return [(b"transfer-encoding", b"chunked")]
    return [(b"content-length", b"%d" % size)]


Handler = Callable[[Exchange], Awaitable[None]]


async def early_404(exchange: Exchange) -> None:
    await exchange.answer_empty(404)


async def read_all(exchange: Exchange) -> None:
    total = 0
    async for chunk in exchange.body():
        total += len(chunk)
    await exchange.answer_json(201, json.dumps({"read": total}).encode())


async def exchange_with(peer: Peer, handler: Handler, rules: BodyRules, **scope_args: Any) -> None:
    """Run one exchange against ``peer``; an exchange that never ends fails the test (on the
    autojump clock, at once)."""
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.client)
            await run_exchange(scope(**scope_args), peer.receive, peer.send, handler, rules)
            nursery.cancel_scope.cancel()


RULES = BodyRules(cap=None, watch=True)
UPLOAD = BodyRules(cap=4 * MIB, watch=True)


@pytest.mark.parametrize(
    ("complete", "declared", "received", "refused", "expect"),
    [
        (True, 100, 100, None, Settle.KEEP),
        (False, 2 * MIB, 0, None, Settle.DRAIN),
        (False, None, 10, None, Settle.DRAIN),
        (False, DRAIN_BYTES + 1, 0, None, Settle.LINGER),
        (False, DRAIN_BYTES + 10, 10, None, Settle.DRAIN),
        (False, None, 0, BodyTooLarge("x"), Settle.LINGER),
        (False, 100, 0, BodyTimeout("x"), Settle.CLOSE),
        (False, 100, 0, InvalidQuery("x"), Settle.DRAIN),
    ],
)
def test_settle(
    complete: bool, declared: int | None, received: int, refused: Any, expect: Settle
) -> None:
    assert settle(complete=complete, declared=declared, received=received, refused=refused) == (
        expect
    )


def test_settle_never_drains_past_the_routes_cap() -> None:
    def fate(declared: int, received: int) -> Settle:
        return settle(complete=False, declared=declared, received=received, refused=None, cap=MIB)

    assert fate(MIB, MIB // 2) is Settle.DRAIN
    assert fate(MIB + 1, MIB // 2) is Settle.LINGER  # more than the route would ever read


def test_settle_closes_a_chunked_body_refused_for_its_size() -> None:
    """A file over its limit in a chunked body: 413 at once, then close. With a declared
    length the remainder is known, and drained when small enough."""
    chunked = settle(complete=False, declared=None, received=MIB, refused=None, status=413)
    declared = settle(complete=False, declared=2 * MIB, received=MIB, refused=None, status=413)
    assert (chunked, declared) == (Settle.LINGER, Settle.DRAIN)


async def test_an_endless_chunked_upload_refused_early_is_answered_near_its_cap(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The handler refuses the first file (a file-size limit of its own): the drain before
    the head stops at the route's cap, not 16 MiB later."""

    async def refuses_after_one_chunk(exchange: Exchange) -> None:
        async for _ in exchange.body():
            raise InvalidQuery("no")

    peer = Peer([], more=True)
    await exchange_with(peer, refuses_after_one_chunk, UPLOAD, headers=body_headers(None))
    assert peer.status == 400 and peer.headers[b"connection"] == b"close"
    assert peer.received_at_head <= UPLOAD.cap + 2 * CHUNK  # type: ignore[operator]


async def test_answer_without_a_body_is_one_head_and_one_body() -> None:
    peer = Peer([])
    await exchange_with(peer, early_404, BodyRules(cap=None, watch=False), method="GET")
    assert [m["type"] for m in peer.sent] == ["http.response.start", "http.response.body"]
    assert peer.status == 404 and peer.finished
    assert b"connection" not in peer.headers


@pytest.mark.parametrize("chunked", [False, True])
async def test_early_answer_then_the_body_is_drained_and_the_connection_kept(
    chunked: bool,
) -> None:
    body = [b"x" * CHUNK] * 32  # 2 MiB
    peer = Peer(body, gap=0.01)
    size = None if chunked else 32 * CHUNK
    await exchange_with(peer, early_404, RULES, headers=body_headers(size))
    assert peer.status == 404
    assert b"connection" not in peer.headers  # true: read to its end before the head
    assert peer.received == 32 * CHUNK
    assert peer.finished


async def test_a_body_too_slow_to_drain_closes_the_connection_and_says_so(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Chunked, so nobody knows the remainder up front: the drain before the head runs out
    of time, and the head says Connection: close (the client must not reuse it)."""
    peer = Peer([CHUNK_X] * 4, gap=30.0)
    await exchange_with(peer, early_404, RULES, headers=body_headers(None))
    assert peer.status == 404
    assert peer.headers[b"connection"] == b"close"
    assert peer.finished


async def test_a_declared_remainder_too_big_to_drain_closes_after_lingering(
    autojump_clock: trio.abc.Clock,
) -> None:
    peer = Peer([b"x" * CHUNK], gap=0.001, more=True)
    await exchange_with(peer, early_404, RULES, headers=body_headers(DRAIN_BYTES * 4))
    assert peer.status == 404
    assert peer.headers[b"connection"] == b"close"
    assert peer.finished


@pytest.mark.parametrize(
    "rules", [RULES, UPLOAD, BodyRules(cap=None, watch=False)], ids=["quart", "upload", "read"]
)
async def test_an_answer_finishes_while_an_unread_body_keeps_coming(
    autojump_clock: trio.abc.Clock, rules: BodyRules
) -> None:
    """A body that never ends and is no longer read (too big, or the route takes none):
    hypercorn's queue of it is full when the answer ends, and the answer must still end."""
    peer = Peer([CHUNK_X] * 5, more=True)
    await exchange_with(peer, early_404, rules, headers=body_headers(None))
    assert peer.status == 404
    assert peer.headers[b"connection"] == b"close"  # past what may be drained
    assert peer.finished


async def test_declared_over_the_cap_is_413_before_a_byte_is_read() -> None:
    peer = Peer([b"x" * CHUNK], more=True)
    start = trio.current_time()
    with trio.fail_after(5):
        await exchange_with(peer, read_all, UPLOAD, headers=body_headers(10**12))
    assert peer.status == 413
    assert json.loads(peer.body)["code"] == "validate-file-size"
    assert peer.headers[b"connection"] == b"close"
    assert peer.sent[1].get("more_body") is True  # sent before the linger
    assert trio.current_time() - start < 5


async def test_chunked_over_the_cap_is_413_one_chunk_past_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    peer = Peer([b"x" * CHUNK] * 1000, more=True)
    await exchange_with(peer, read_all, UPLOAD, headers=body_headers(None))
    assert peer.status == 413
    assert peer.headers[b"connection"] == b"close"
    read_before_answer = 4 * MIB + CHUNK
    assert peer.received >= read_before_answer  # then dropped for the linger, bounded
    assert peer.finished


async def test_a_trickle_is_cut_by_the_rate_rule(autojump_clock: trio.abc.Clock) -> None:
    """100 B/s against 20 s + 1 s per 500 B: cut at 25 s with 408, connection closed."""
    peer = Peer([b"x" * 100] * 1000, gap=1.0)
    start = trio.current_time()
    await exchange_with(peer, read_all, BodyRules(cap=MIB, watch=True), headers=body_headers(None))
    elapsed = trio.current_time() - start
    assert peer.status == 408
    assert json.loads(peer.body)["code"] == "stream-too-slow"
    assert peer.headers[b"connection"] == b"close"
    assert 24 <= elapsed <= 27


async def test_an_honest_slow_upload_is_not_cut(autojump_clock: trio.abc.Clock) -> None:
    """2 KB/s for 100 s (200 KB): the rule grows with what arrives."""
    peer = Peer([b"x" * 2000] * 100, gap=1.0)
    await exchange_with(peer, read_all, BodyRules(cap=MIB, watch=True), headers=body_headers(None))
    assert peer.status == 201
    assert json.loads(peer.body) == {"read": 200_000}


async def test_request_deadline_gives_408_and_the_connection_is_kept() -> None:
    async def slow(exchange: Exchange) -> None:
        await trio.sleep(10)
        await exchange.answer_empty(204)

    deadline = str(time.time_ns() + 50_000_000)  # 50 ms from now (a wall-clock time)
    peer = Peer([])
    await exchange_with(
        peer, slow, RULES, method="GET", headers=[(b"x-request-deadline", deadline.encode())]
    )
    assert peer.status == 408
    assert json.loads(peer.body)["code"] == "request-timeout"
    assert b"connection" not in peer.headers


@pytest.mark.parametrize("rules", [RULES, UPLOAD], ids=["quart", "upload"])
async def test_an_answer_made_at_once_goes_out_past_the_deadline(
    autojump_clock: trio.abc.Clock, rules: BodyRules
) -> None:
    """A deadline already past (X-Request-Deadline: 0) with a body, and a handler that
    answers in its first step (a 405, a 401): the head is made in time, so it goes out,
    after the body is drained as for any early answer. Found by schemathesis (a TRACE of
    /image with a body): the drain ran in the request's cancelled scope, so nothing was
    answered and hypercorn sent an empty 500."""

    async def wrong_method(exchange: Exchange) -> None:
        await exchange.answer(405, [(b"allow", b"POST"), (b"content-length", b"0")])

    peer = Peer([b"x" * CHUNK] * 8)
    headers = [*body_headers(8 * CHUNK), (b"x-request-deadline", b"0")]
    await exchange_with(peer, wrong_method, rules, method="TRACE", headers=headers)
    assert peer.status == 405
    assert peer.received == 8 * CHUNK and b"connection" not in peer.headers
    # A body too big to drain: the answer closes the connection, and still ends.
    peer = Peer([CHUNK_X] * 300, more=True)
    chunked = [*body_headers(None), (b"x-request-deadline", b"0")]
    await exchange_with(peer, wrong_method, RULES, method="TRACE", headers=chunked)
    assert peer.status == 405 and peer.headers[b"connection"] == b"close"
    assert peer.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    # A handler that waits first is still cancelled at once: 408.
    peer = Peer([b"x" * CHUNK] * 8)
    await exchange_with(peer, slow_200, rules, method="GET", headers=headers)
    assert peer.status == 408 and json.loads(peer.body)["code"] == "request-timeout"
    assert trio.current_time() - peer.start < 1


async def test_a_bad_deadline_is_400_and_the_body_is_drained() -> None:
    peer = Peer([b"x" * CHUNK] * 8)
    headers = [*body_headers(8 * CHUNK), (b"x-request-deadline", b"soon")]
    await exchange_with(peer, read_all, UPLOAD, headers=headers)
    assert peer.status == 400
    assert json.loads(peer.body)["code"] == "parse-deadline"
    assert peer.received == 8 * CHUNK and b"connection" not in peer.headers


async def test_a_client_leaving_cancels_a_waiting_handler(autojump_clock: trio.abc.Clock) -> None:
    cancelled = False

    async def waits(exchange: Exchange) -> None:
        nonlocal cancelled
        try:
            await trio.sleep(60)
        except trio.Cancelled:
            cancelled = True
            raise
        await exchange.answer_empty(204)

    peer = Peer([], leave_after=1.0)
    start = trio.current_time()
    await exchange_with(peer, waits, RULES, method="GET")
    assert cancelled and peer.sent == []
    assert trio.current_time() - start == pytest.approx(1.0, abs=0.01)


async def test_a_client_leaving_mid_upload_gets_no_answer(autojump_clock: trio.abc.Clock) -> None:
    peer = Peer([b"x" * CHUNK] * 100, gap=0.1, leave_after=1.0)
    rules = BodyRules(cap=16 * MIB, watch=True)
    await exchange_with(peer, read_all, rules, headers=body_headers(100 * CHUNK))
    assert peer.sent == []


async def test_a_failure_after_the_head_cuts_the_response() -> None:
    async def breaks(exchange: Exchange) -> None:
        await exchange.send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"9")]}
        )
        await exchange.send({"type": "http.response.body", "body": b"abc", "more_body": True})
        raise OSError("disk went away")

    peer = Peer([])
    await exchange_with(peer, breaks, BodyRules(cap=None, watch=False), method="GET")
    assert peer.status == 200
    assert not peer.finished  # hypercorn then closes the connection: a visible cut


async def test_errors_are_pict_rs_json() -> None:
    async def bad(exchange: Exchange) -> None:
        raise InvalidQuery("Invalid query: nope")

    peer = Peer([])
    await exchange_with(peer, bad, RULES, method="GET")
    assert peer.status == 400
    assert json.loads(peer.body) == {"msg": "Invalid query: nope", "code": "invalid-query"}
    assert peer.headers[b"content-type"] == b"application/json"


async def test_unexpected_errors_do_not_leak_their_text() -> None:
    async def bad(exchange: Exchange) -> None:
        raise RuntimeError("/secret/path exploded")

    peer = Peer([])
    await exchange_with(peer, bad, RULES, method="GET")
    assert peer.status == 500
    assert json.loads(peer.body) == {"msg": "Request failed", "code": "unknown-error"}


def test_rules_defaults_match_the_documented_ones() -> None:
    rules = BodyRules()
    assert (rules.timeout, rules.min_rate, rules.cap) == (20.0, 500.0, None)
    assert not math.isinf(rules.timeout)


async def slow_200(exchange: Exchange) -> None:
    """A read that takes a while (a first render, a proxy fetch), then answers."""
    await trio.sleep(5)
    await exchange.answer(200, [(b"content-length", b"2")], b"ok")


@pytest.mark.parametrize(
    ("rules", "deadline"),
    [
        (BodyRules(cap=None, watch=False), False),
        (BodyRules(cap=None, watch=False), True),
        (RULES, False),
    ],
    ids=["read", "read-with-deadline", "quart"],
)
async def test_a_reset_over_an_unread_body_ends_the_exchange(
    autojump_clock: trio.abc.Clock, rules: BodyRules, deadline: bool
) -> None:
    """A GET with a big body nobody reads fills hypercorn's queue; the client resets while
    the handler works; the head's write fails, and hypercorn's disconnect needs room in that
    full queue, inside our send. Something must read then, or the exchange (shielded when a
    deadline applies) never ends, and neither does shutdown."""
    peer = Peer([CHUNK_X] * 300, reset=True)  # ~19 MiB: past what the Quart watcher drains
    headers = body_headers(300 * CHUNK)
    if deadline:
        far = str(int((time.time() + 3600) * 1e9)).encode()
        headers.append((b"x-request-deadline", far))
    await exchange_with(peer, slow_200, rules, method="GET", headers=headers)
    assert peer.status == 200 and peer.closed


async def test_a_client_leaving_while_its_upload_is_processed_cancels_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    """hypercorn ends every body with an empty message of its own, which a handler that has
    what it needs (the multipart parser, at its closing delimiter) never asks for. The body
    is complete at its last declared byte all the same, and from then on the watcher sees
    the client leave."""
    cancelled = trio.Event()

    async def stores_slowly(exchange: Exchange) -> None:
        async for _ in exchange.body():
            if exchange.received == 4 * CHUNK:
                break
        try:
            await trio.sleep(60)  # validating, transcoding
        except trio.Cancelled:
            cancelled.set()
            raise
        await exchange.answer_empty(201)

    peer = Peer([CHUNK_X] * 4, leave_after=5.0)
    await exchange_with(peer, stores_slowly, UPLOAD, headers=body_headers(4 * CHUNK))
    assert cancelled.is_set() and peer.sent == []


async def test_an_http2_body_without_a_length_is_read() -> None:
    peer = Peer([CHUNK_X] * 3)
    await exchange_with(peer, read_all, UPLOAD, http_version="2")
    assert peer.status == 201
    assert json.loads(peer.body) == {"read": 3 * CHUNK}


async def test_the_rate_rule_does_not_count_the_handlers_own_time(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The first file of two takes 60 s to store, past the 22 s the rule gives 1000 bytes:
    the second, queued meanwhile, is read all the same."""

    async def slow_between(exchange: Exchange) -> None:
        total = 0
        async for chunk in exchange.body():
            total += len(chunk)
            if total == 1000:
                await trio.sleep(60)
        await exchange.answer_json(201, json.dumps({"read": total}).encode())

    peer = Peer([b"x" * 1000] * 2)
    await exchange_with(peer, slow_between, UPLOAD, headers=body_headers(None))
    assert (peer.status, json.loads(peer.body)) == (201, {"read": 2000})


def test_repeated_conditional_header_lines_combine() -> None:
    headers = [(b"if-none-match", b'"a"'), (b"if-none-match", b'"b"'), (b"range", b"x")]
    exchange = Exchange(scope(headers=[*headers, (b"range", b"y")]), _never, _never, RULES)
    assert exchange.header(b"if-none-match") == b'"a", "b"'
    assert exchange.header(b"range") == b"x"  # one-valued: the first line


async def _never(*_: Any) -> Any:
    raise AssertionError("not called")


async def test_a_stream_stops_when_the_client_leaves(autojump_clock: trio.abc.Clock) -> None:
    """hypercorn drops what is sent after a disconnect without a word: the stream must look
    for itself, or a large file is read to its end for nobody."""
    produced = 0
    closed = False

    async def endless() -> AsyncGenerator[bytes, None]:
        nonlocal produced, closed
        try:
            while True:
                await trio.sleep(0.01)
                produced += 1
                yield CHUNK_X
        finally:
            closed = True

    async def streams(exchange: Exchange) -> None:
        async with aclosing(endless()) as rest:
            await exchange.stream(200, [], b"first", rest)

    peer = Peer([], leave_after=1.0)
    await exchange_with(peer, streams, BodyRules(cap=None, watch=False), method="GET")
    assert peer.status == 200 and not peer.finished
    assert 90 <= produced <= 110 and closed


async def test_a_stream_ends_with_its_last_message() -> None:
    async def two() -> AsyncGenerator[bytes, None]:
        yield b"b"
        yield b"c"

    async def streams(exchange: Exchange) -> None:
        await exchange.stream(200, [(b"content-length", b"3")], b"a", two())

    peer = Peer([])
    await exchange_with(peer, streams, BodyRules(cap=None, watch=False), method="GET")
    assert (peer.status, peer.body, peer.finished) == (200, b"abc", True)
