"""``X-Request-Deadline``: an ASGI middleware that puts every request under a trio deadline.

The header is an absolute deadline in nanoseconds since the Unix epoch (api.md §1.4). The
deadline covers the handler until the response head goes out, not the body streaming after.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio

from pictrs_trio.rules.errors import ParseDeadline, PictrsError, RequestTimeout, error_response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Seconds between trio's clock and the wall clock are re-read per request: cheap and exact.


def parse_deadline(raw: bytes) -> float:
    """The trio-clock deadline for a header value. Raises ParseDeadline."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ParseDeadline("Deadline header is not valid text") from None
    try:
        nanos = int(text.strip())
    except ValueError:
        raise ParseDeadline("Deadline header is not an integer") from None
    if abs(nanos) > 2**126:
        raise ParseDeadline("Deadline is not a representable timestamp")
    remaining = nanos / 1e9 - time.time()
    if not math.isfinite(remaining):
        raise ParseDeadline("Deadline cannot be converted to a duration")
    return trio.current_time() + max(remaining, 0.0)


async def send_error(send: Send, exc: PictrsError) -> None:
    status, body = error_response(exc)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def deadline_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        raw = next((v for k, v in scope["headers"] if k == b"x-request-deadline"), None)
        if raw is None:
            await app(scope, receive, send)
            return
        try:
            deadline = parse_deadline(raw)
        except ParseDeadline as exc:
            await send_error(send, exc)
            return
        started = False

        with trio.CancelScope(deadline=deadline) as cancel_scope:

            async def tracking_send(message: Message) -> None:
                nonlocal started
                if message["type"] == "http.response.start":
                    started = True
                    # The deadline covers producing the head, not streaming the body.
                    cancel_scope.deadline = math.inf
                await send(message)

            await app(scope, receive, tracking_send)
        if cancel_scope.cancelled_caught and not started:
            await send_error(send, RequestTimeout("Timeout: request deadline exceeded"))

    return middleware
