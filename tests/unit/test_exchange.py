"""``http/exchange.py`` against a scripted ASGI server: early answers, body rules, the
connection's fate, deadlines and clients that leave. Time is trio's autojump clock, so
"25 seconds of trickle" takes milliseconds."""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
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


class Peer:
    """The server side of one request as hypercorn presents it to the app: ``receive``
    replays the body (one message per chunk, ``gap`` seconds apart), then waits until the
    response is complete and reports the disconnect, as hypercorn does. ``leave_after``
    makes the client go away at that time instead."""

    def __init__(
        self,
        chunks: list[bytes],
        *,
        gap: float = 0.0,
        more: bool = False,
        leave_after: float | None = None,
    ) -> None:
        self.chunks = list(chunks)
        self.gap = gap
        self.more = more  # the body goes on after the scripted chunks (never ends)
        self.leave_after = leave_after
        self.received = 0  # body bytes the app took
        self.receives = 0
        self.sent: list[Message] = []
        self.done = trio.Event()
        self.start = trio.current_time()
        self.backlog = 0  # queued chunks hypercorn puts before the disconnect (see below)
        self.disconnect_taken: trio.Event | None = None

    async def receive(self) -> Message:
        self.receives += 1
        if self.disconnect_taken is not None and self.done.is_set():
            if self.backlog:
                self.backlog -= 1
                return {"type": "http.request", "body": b"x" * CHUNK, "more_body": True}
            self.disconnect_taken.set()
            return {"type": "http.disconnect"}
        if self.leave_after is not None:
            with trio.move_on_at(self.start + self.leave_after):
                await self._next_or_wait()
                if self._pending is not None:
                    return self._take()
                await trio.sleep_forever()
            return {"type": "http.disconnect"}
        await self._next_or_wait()
        if self._pending is not None:
            return self._take()
        await self.done.wait()
        return {"type": "http.disconnect"}

    _pending: Message | None = None

    async def _next_or_wait(self) -> None:
        if self._pending is not None:
            return
        if self.chunks:
            await trio.sleep(self.gap)
            chunk = self.chunks.pop(0)
            last = not self.chunks and not self.more
            self._pending = {"type": "http.request", "body": chunk, "more_body": not last}
        elif self.more:
            await trio.sleep_forever()

    def _take(self) -> Message:
        message, self._pending = self._pending, None
        assert message is not None
        self.received += len(message["body"])
        if not message["more_body"]:
            self.chunks = []
        return message

    def like_hypercorn(self, backlog: int = 10) -> Peer:
        """The last message of an answer makes hypercorn put a disconnect into the app's
        queue, behind the ``backlog`` body chunks already there, and its send returns only
        once there is room for it: the app must be reading then."""
        self.backlog = backlog
        self.disconnect_taken = trio.Event()
        return self

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.done.set()
            if self.disconnect_taken is not None:
                with trio.fail_after(60):  # a deadlock fails the test instead of hanging it
                    await self.disconnect_taken.wait()
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
    method: str = "POST", path: str = "/x", headers: list[tuple[bytes, bytes]] | None = None
) -> dict[str, Any]:
    return {
        "type": "http",
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
    await run_exchange(scope(**scope_args), peer.receive, peer.send, handler, rules)


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


async def test_answer_without_a_body_is_one_head_and_one_body() -> None:
    peer = Peer([b""])
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
    assert b"connection" not in peer.headers
    assert peer.received == 32 * CHUNK  # read to its end: hypercorn can reuse the connection
    assert peer.finished
    # The answer went out before the body was read: the head is not held back by the drain.
    assert peer.sent[1].get("more_body") is True


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
    peer = Peer([b"x" * CHUNK] * 5, more=True).like_hypercorn()
    await exchange_with(peer, early_404, rules, headers=body_headers(None))
    assert peer.status == 404
    assert peer.finished
    assert peer.disconnect_taken is not None and peer.disconnect_taken.is_set()


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

    deadline = str(int((trio.current_time() * 0) + (__import__("time").time() + 0.05) * 1e9))
    peer = Peer([b""])
    await exchange_with(
        peer, slow, RULES, method="GET", headers=[(b"x-request-deadline", deadline.encode())]
    )
    assert peer.status == 408
    assert json.loads(peer.body)["code"] == "request-timeout"
    assert b"connection" not in peer.headers


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

    peer = Peer([b""], leave_after=1.0)
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

    peer = Peer([b""])
    await exchange_with(peer, breaks, BodyRules(cap=None, watch=False), method="GET")
    assert peer.status == 200
    assert not peer.finished  # hypercorn then closes the connection: a visible cut


async def test_errors_are_pict_rs_json() -> None:
    async def bad(exchange: Exchange) -> None:
        raise InvalidQuery("Invalid query: nope")

    peer = Peer([b""])
    await exchange_with(peer, bad, RULES, method="GET")
    assert peer.status == 400
    assert json.loads(peer.body) == {"msg": "Invalid query: nope", "code": "invalid-query"}
    assert peer.headers[b"content-type"] == b"application/json"


async def test_unexpected_errors_do_not_leak_their_text() -> None:
    async def bad(exchange: Exchange) -> None:
        raise RuntimeError("/secret/path exploded")

    peer = Peer([b""])
    await exchange_with(peer, bad, RULES, method="GET")
    assert peer.status == 500
    assert json.loads(peer.body) == {"msg": "Request failed", "code": "unknown-error"}


def test_rules_defaults_match_the_documented_ones() -> None:
    rules = BodyRules()
    assert (rules.timeout, rules.min_rate, rules.cap) == (20.0, 500.0, None)
    assert not math.isinf(rules.timeout)
