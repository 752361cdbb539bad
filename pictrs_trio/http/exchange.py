"""One HTTP request and its answer, as real clients and proxies need them.

``run_exchange`` wraps every handler, raw ASGI or Quart, and owns three things:

* **The request body.** A handler that takes a body reads it from ``Exchange.body()``,
  straight from ASGI ``receive()``, so a client that sends faster than we store is held back
  by TCP itself. The route's byte cap applies to Content-Length and chunked bodies alike (a
  declared length over it is refused before a byte is read), and a body must keep arriving:
  within ``server.body_timeout`` seconds plus one second per ``server.body_min_rate`` bytes
  received (the rule of Apache's mod_reqtimeout), else 408.
* **The connection after the answer.** HTTP/1.1 can only reuse a connection whose request
  body was read to its end; hypercorn closes it otherwise, the moment the answer is complete
  (its ``protocol/h11.py``, ``_maybe_recycle``). So before the head of an answer given early
  (a 404, 401, 408, 400) the rest of the body is read and dropped, within bounds, and the
  head says whether the connection stays (pict-rs drains the same way,
  ``src/middleware/payload.rs``). Past the bounds, or when the body is known to be too big
  (413), the head says ``Connection: close`` and we keep reading (and dropping) for a moment
  before closing, so the client gets its answer instead of a reset. While any part of an
  answer goes out over an unread body, what arrives is dropped: hypercorn may need room in
  the app's queue inside that very send (for the disconnect of a failed write), and nobody
  else would make it.
* **The client leaving.** Routes that wait (uploads, claims, downloads) watch for the
  disconnect and are cancelled when it comes, so the connection closes at once instead of
  sitting in CLOSE-WAIT until the work ends. Renders are left to finish: the next request
  for the same variant gets it.

Each request runs under a cancel scope whose deadline is ``X-Request-Deadline`` (pict-rs
``src/middleware/deadline.rs``) until its response head goes out; past it, 408. Errors
become pict-rs's JSON through ``errors.error_answer`` (``http/failure.py`` logs them).
"""

from __future__ import annotations

import enum
import math
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import msgspec
import trio
from loguru import logger

from pictrs_trio.http.deadline import parse_deadline
from pictrs_trio.http.failure import answer_for, innermost
from pictrs_trio.rules.errors import (
    BodyTimeout,
    BodyTooLarge,
    ParseDeadline,
    PictrsError,
    RequestTimeout,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

MIB = 1024 * 1024
DRAIN_BYTES = 16 * MIB  # what we read and drop after an early answer to keep a connection
LINGER_SECONDS = 2.0  # reading (and dropping) before closing a connection we refused
LINGER_BYTES = 64 * MIB
JSON = (b"content-type", b"application/json")
_LIST_HEADERS = frozenset({b"if-match", b"if-none-match"})
CLOSE = (b"connection", b"close")


class ClientGone(Exception):
    """The client closed the connection; nothing can be answered any more."""


class BodyRules(msgspec.Struct, frozen=True, kw_only=True):
    """How a route takes its request body.

    ``cap``: the most bytes the route reads (None: it reads none; whatever comes is dropped).
    ``watch``: cancel the handler when the client goes away (routes that wait on something).
    """

    cap: int | None = None
    watch: bool = True
    timeout: float = 20.0
    min_rate: float = 500.0


class Settle(enum.Enum):
    """What happens to the connection of an answer starting now (``settle``)."""

    KEEP = "keep"  # the body was read to its end: the connection is reused
    DRAIN = "drain"  # read and drop the rest (bounded) before the head; then KEEP, or LINGER
    LINGER = "linger"  # Connection: close; drop what arrives for a moment, then close
    CLOSE = "close"  # Connection: close at once (a client too slow to wait for)


def settle(
    *,
    complete: bool,
    declared: int | None,
    received: int,
    refused: PictrsError | None,
    cap: int | None = None,
    status: int = 200,
) -> Settle:
    """Pure: the fate of a connection whose answer (``status``) is starting now. ``refused``
    is the error that stopped the body (too large, too slow), if any; ``cap`` is the most
    the route reads."""
    if complete:
        return Settle.KEEP
    if isinstance(refused, BodyTimeout):
        return Settle.CLOSE
    if isinstance(refused, BodyTooLarge) or (status == 413 and declared is None):
        # Too big; and a chunked body refused for its size (a file over its limit) has no
        # known end worth reading towards.
        return Settle.LINGER
    if declared is not None and declared - received > _drainable(received, cap):
        return Settle.LINGER
    return Settle.DRAIN


def _drainable(received: int, cap: int | None) -> int:
    """How much more of a body may be read and dropped to keep its connection: never past
    what the route would have read."""
    return DRAIN_BYTES if cap is None else max(0, min(DRAIN_BYTES, cap - received))


def _declared_length(headers: dict[bytes, bytes]) -> int | None:
    """Content-Length (h11 has already refused a malformed one), None when chunked."""
    value = headers.get(b"content-length")
    return None if value is None else int(value)


class Exchange:
    """One request, as a handler sees it: its scope, body, and the ways to answer."""

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        rules: BodyRules,
        closing: Callable[[], bool] = lambda: False,
    ) -> None:
        self.scope = scope
        self._closing = closing
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        # One pass over the headers, then lookups (h11 hands them over lower-cased). A repeated
        # header keeps its first value, except the list-valued ones conditionals read, whose
        # lines combine (RFC 9110 section 5.3).
        headers: dict[bytes, bytes] = {}
        for key, value in scope["headers"]:
            if key in headers and key in _LIST_HEADERS:
                headers[key] = headers[key] + b", " + value
            else:
                headers.setdefault(key, value)
        self._headers = headers
        self._receive = receive
        self._send = send
        self.rules = rules
        self.declared = _declared_length(self._headers)
        self.received = 0
        # HTTP/1.x frames a body by Content-Length or chunking, so a request with neither has
        # none; HTTP/2 and 3 may stream one of unknown length in any request.
        framed = scope.get("http_version", "1.1") in ("1.0", "1.1")
        self.complete = self.declared == 0 or (
            framed and self.declared is None and self.header(b"transfer-encoding") is None
        )
        self._refused: PictrsError | None = None
        self._waited = 0.0  # seconds spent waiting for the body (the rate rule's clock)
        self.started = False  # the response head went out
        self.finished = False  # the whole response went out
        self.gone = False  # the client closed the connection
        self._settle = Settle.KEEP
        self._request_scope: trio.CancelScope | None = None
        self.cancellable = rules.watch  # set too when a deadline applies
        self._nursery: trio.Nursery | None = None
        self._draining = False  # the watcher reads (and drops) the body
        self._drained_event: trio.Event | None = None  # set when it is done with it
        self._pairs: list[tuple[str, str]] | None = None

    @property
    def _drained(self) -> trio.Event:
        if self._drained_event is None:  # made when needed: most requests never drain
            self._drained_event = trio.Event()
        return self._drained_event

    # -- the request --

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower case), or None."""
        value = self._headers.get(name)
        return None if value is None else bytes(value)

    def header_text(self, name: bytes) -> str | None:
        value = self.header(name)
        return None if value is None else value.decode("latin-1")

    @property
    def query(self) -> list[tuple[str, str]]:
        """The query string's pairs, percent-decoded, in order (blank values kept)."""
        if self._pairs is None:
            raw: bytes = self.scope.get("query_string", b"")
            self._pairs = parse_qsl(
                raw.decode("utf-8", "replace"), keep_blank_values=True, errors="replace"
            )
        return self._pairs

    def arg(self, key: str) -> str | None:
        """The first value of query key ``key``, or None."""
        return next((v for k, v in self.query if k == key), None)

    async def _next(self) -> bytes:
        """The next piece of the body under the rate rule; b"" and ``complete`` at its end.
        Raises BodyTimeout, ClientGone.

        The rule's clock runs only while we wait for the body: time the handler spends on
        what it read (storing one file of several, say) is not the client's."""
        rules = self.rules
        allowed = rules.timeout + self.received / rules.min_rate - self._waited
        began = trio.current_time()
        try:
            with trio.fail_after(max(allowed, 0.0)):
                message = await self._receive()
        except trio.TooSlowError:
            raise BodyTimeout("Request body was not received in time") from None
        finally:
            self._waited += trio.current_time() - began
        if message["type"] == "http.disconnect":
            self._client_gone()
            raise ClientGone
        self._took(message)
        chunk: bytes = message.get("body", b"")
        return chunk

    def _took(self, message: Message) -> None:
        """Count a body message. With a declared length, the last byte completes the body:
        hypercorn's separate end-of-body message may then stay unread."""
        self.received += len(message.get("body", b""))
        if not message.get("more_body", False) or self.received == self.declared:
            self.complete = True

    def body(self) -> AsyncIterator[bytes]:
        """The request body, chunk by chunk, as it arrives: iterate it once. Raises
        BodyTooLarge past the route's cap, BodyTimeout when it arrives too slowly, and
        ClientGone."""
        return _Body(self)

    # -- the answer --

    async def send(self, message: Message) -> None:
        """The ASGI ``send`` every answer goes through (raw handlers and Quart alike)."""
        kind = message["type"]
        if kind == "http.response.start":
            await self._begin(message)
        elif kind == "http.response.body" and not message.get("more_body", False):
            if self._settle is Settle.LINGER and not self.complete:
                await self._deliver({**message, "more_body": True})
                await self._linger()
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            self.finished = True
        await self._deliver(message)

    async def _deliver(self, message: Message) -> None:
        """Send one message. Over a body nobody reads, what arrives meanwhile is dropped:
        a failed write, or the end of the answer, makes hypercorn put a disconnect into the
        app's queue from inside this send, and that queue may be full of body chunks (we
        stopped reading: backpressure); without a reader it would wait for room forever."""
        if self.complete or self._watcher_reads():
            await self._send_now(message)
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._until_gone)
            await self._send_now(message)
            nursery.cancel_scope.cancel()

    async def _send_now(self, message: Message) -> None:
        # Shielded: hypercorn advances its HTTP state before it writes, so a send cancelled
        # half-way would leave the connection (and hypercorn's view of it) broken. Its own
        # write is shielded too, so this adds no wait that was not there. A request nobody
        # can cancel (no deadline, no watcher: most reads) needs no shield.
        if not self.cancellable:
            await self._send(message)
            return
        with trio.CancelScope(shield=True):
            await self._send(message)

    def _watcher_reads(self) -> bool:
        return self._draining and not self._drained.is_set()

    async def _begin(self, message: Message) -> None:
        self.started = True
        scope = self._request_scope
        if scope is not None and scope.deadline != math.inf:
            # X-Request-Deadline covers producing the head, not streaming the body.
            scope.deadline = math.inf
        fate = settle(
            complete=self.complete,
            declared=self.declared,
            received=self.received,
            refused=self._refused,
            cap=self.rules.cap,
            status=int(message.get("status", 200)),
        )
        if self._closing():
            # Shutting down: the client must not send another request on this connection
            # (hypercorn stops reading it once this answer is out).
            fate = {Settle.KEEP: Settle.CLOSE, Settle.DRAIN: Settle.LINGER}.get(fate, fate)
        if fate is Settle.DRAIN:
            # Read the rest now, so that the head can tell the client the truth about the
            # connection: kept when the body ends within bounds, else closed.
            fate = Settle.KEEP if await self._drain() else Settle.LINGER
        self._settle = fate
        if fate in (Settle.LINGER, Settle.CLOSE):
            message["headers"] = [*message.get("headers", []), CLOSE]

    async def answer(self, status: int, headers: Headers, body: bytes = b"") -> None:
        """Head and body in one go (small answers: one write, no Nagle delay)."""
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})

    async def stream(
        self, status: int, headers: Headers, first: bytes, rest: AsyncIterator[bytes]
    ) -> None:
        """A long answer (a large file): ``first`` and then ``rest``, stopped when the client
        leaves. hypercorn drops what is sent after a disconnect without a word, so without a
        look a gigabyte would be read from disk for nobody."""
        async with trio.open_nursery() as nursery:
            if self._nursery is None and self.complete:
                nursery.start_soon(self._stop_when_gone, nursery.cancel_scope)
            await self.send({"type": "http.response.start", "status": status, "headers": headers})
            await self.send({"type": "http.response.body", "body": first, "more_body": True})
            async for chunk in rest:
                if self.gone:  # seen by a send's own reader (a body nobody read)
                    break
                await self.send({"type": "http.response.body", "body": chunk, "more_body": True})
            nursery.cancel_scope.cancel()
        if not self.gone:
            # Outside the scope a disconnect cancels: hypercorn recycles the connection
            # inside this send, which must not be cut half-way.
            await self.send({"type": "http.response.body", "body": b""})

    async def _stop_when_gone(self, stream: trio.CancelScope) -> None:
        await self._until_gone()
        stream.cancel()

    async def answer_json(self, status: int, body: bytes) -> None:
        await self.answer(status, [JSON, (b"content-length", b"%d" % len(body))], body)

    async def answer_empty(self, status: int) -> None:
        """pict-rs's bodiless answers (the 404 of a missing file, 202, 204)."""
        await self.answer(status, [(b"content-length", b"0")])

    async def answer_error(self, exc: BaseException) -> None:
        status, body = answer_for(exc)
        await self.answer_json(status, body)

    # -- the connection --

    def _client_gone(self) -> None:
        self.gone = True
        if not self.finished and self._request_scope is not None:
            self._request_scope.cancel()

    async def _drop(self, max_bytes: int, seconds: float) -> bool:
        """Read and drop the body until its end; False past ``max_bytes`` or ``seconds``, or
        when it arrives too slowly."""
        limit = self.received + max_bytes
        with trio.move_on_after(seconds):
            try:
                while not self.complete and self.received <= limit:
                    await self._next()
            except (BodyTimeout, ClientGone):
                return False
        return self.complete

    async def _drain(self) -> bool:
        """The rest of the body, read and dropped within bounds; True when it ended."""
        seconds = self.rules.timeout
        if self._draining:  # the watcher is reading it: one reader at a time
            with trio.move_on_after(seconds):
                await self._drained.wait()
            return self.complete
        return await self._drop(_drainable(self.received, self.rules.cap), seconds)

    async def _linger(self) -> None:
        """The answer is out but for its last message, and says Connection: close: let the
        client take it before the connection goes, dropping what it still sends."""
        if self._draining:
            with trio.move_on_after(LINGER_SECONDS):
                await self._drained.wait()
        else:
            await self._drop(LINGER_BYTES, LINGER_SECONDS)

    def watch(self) -> None:
        """Start watching for the client to leave (and, while the body is not complete and
        nobody reads it, drop it as it comes, bounded)."""
        if self._nursery is not None:
            self._draining = not self.complete
            self._nursery.start_soon(self._watch)

    async def _watch(self) -> None:
        try:
            if not self.complete:
                await self._drop(DRAIN_BYTES, math.inf)
        finally:
            self._drained.set()
        if not self.complete:
            return  # we stopped reading, so a disconnect cannot be seen: the answer decides
        await self._until_gone()

    async def _until_gone(self) -> None:
        """Read and drop whatever comes (body left unread; after a complete body, only an
        end-of-body message can: of a request without a body, or after the last declared
        byte) until the client is gone, or we are cancelled."""
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._client_gone()
                return
            self._took(message)


class _Body:
    """``Exchange.body()``: a plain async iterator (nothing to finalise if abandoned)."""

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        ex = self._exchange
        cap = ex.rules.cap or 0
        while not ex.complete:
            try:
                chunk = await ex._next()
                if ex.received > cap:
                    raise BodyTooLarge(f"Request body is larger than {cap // MIB} MB")
            except (BodyTooLarge, BodyTimeout) as exc:
                ex._refused = exc
                raise
            if ex.complete and ex.rules.watch:
                ex.watch()  # read to its end: from now on, watch for the client leaving
            if chunk:
                return chunk
        raise StopAsyncIteration


Handler = Callable[[Exchange], Awaitable[None]]


async def run_exchange(
    scope: Scope,
    receive: Receive,
    send: Send,
    handler: Handler,
    rules: BodyRules,
    closing: Callable[[], bool] = lambda: False,
) -> None:
    """Run ``handler`` for one request with everything this module promises. ``closing()``
    true (shutdown has begun) makes the answer close its connection."""
    exchange = Exchange(scope, receive, send, rules, closing)
    deadline = math.inf
    raw = exchange.header(b"x-request-deadline")
    try:
        if raw is not None:
            deadline = parse_deadline(raw)
            exchange.cancellable = True
        if rules.cap is not None and (exchange.declared or 0) > rules.cap:
            # Refused before a byte of it is read.
            raise BodyTooLarge(f"Request body is larger than {rules.cap // MIB} MB")
    except (ParseDeadline, BodyTooLarge) as exc:
        exchange._refused = exc if isinstance(exc, BodyTooLarge) else None
        await exchange.answer_error(exc)
        return
    if not rules.watch:
        await _handle(exchange, handler, deadline)
        return
    async with trio.open_nursery() as nursery:
        exchange._nursery = nursery
        if rules.cap is None or exchange.complete:
            exchange.watch()
        await _handle(exchange, handler, deadline)
        nursery.cancel_scope.cancel()


async def _handle(exchange: Exchange, handler: Handler, deadline: float) -> None:
    if not exchange.cancellable:
        # Nobody can cancel this request (no deadline, no watcher: most reads), so no scope:
        # a cancel scope costs more than a cached read's lookup.
        try:
            await handler(exchange)
        except Exception as exc:
            await _failed(exchange, innermost(exc))
        return
    failure: BaseException | None = None
    with trio.CancelScope() as scope:
        # The deadline is set once inside: a scope entered with a deadline already past
        # (X-Request-Deadline: 0) is cancelled at once, so a handler that made its head
        # before any checkpoint (a 405, a 401) could not send it whole (the drain before the
        # head, the rest of the answer) and hypercorn answered an empty 500. Set here, a
        # past deadline cancels the request at its first checkpoint, pict-rs's "first poll",
        # unless the head was made by then (``_begin`` lifts the deadline).
        scope.deadline = deadline
        exchange._request_scope = scope
        try:
            await handler(exchange)
        except ClientGone:
            return
        except Exception as exc:
            failure = innermost(exc)
    # Answers are given out here, never inside a scope that may have been cancelled.
    if exchange.gone:
        return
    if failure is not None:
        await _failed(exchange, failure)
    elif scope.cancelled_caught and not exchange.started:
        await exchange.answer_error(RequestTimeout("Timeout: request deadline exceeded"))


async def _failed(exchange: Exchange, failure: BaseException) -> None:
    if exchange.started:
        # Mid-body: nothing can be said any more. Returning without the last message makes
        # hypercorn close the connection; the client sees the cut.
        logger.opt(exception=failure).warning("response failed after its head was sent")
        return
    await exchange.answer_error(failure)
