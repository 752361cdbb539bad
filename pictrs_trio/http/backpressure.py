"""Backpressure for request bodies.

Quart pulls body chunks from hypercorn in a background task and appends them to an
unbounded buffer whether or not the handler reads them. A client could then fill the
server's memory while a handler waits on something else (a remote download, a render, the
tools working on the previous file). This connection class stops pulling once the buffer
holds ``BODY_BUFFER`` bytes and resumes when the handler has consumed them; hypercorn's own
queue is bounded, so the pause reaches the client as TCP backpressure.
"""

from __future__ import annotations

from typing import Any

import trio
from quart_trio.asgi import TrioASGIHTTPConnection

BODY_BUFFER = 2 * 1024 * 1024
POLL_SECONDS = 0.01


class BoundedHTTPConnection(TrioASGIHTTPConnection):
    async def handle_messages(  # type: ignore[override]
        self, nursery: trio.Nursery, request: Any, receive: Any
    ) -> None:
        body = request.body
        while True:
            # Quart keeps the unread bytes in Body._data (quart 0.22, pinned in uv.lock).
            while len(body._data) > BODY_BUFFER:  # noqa: ASYNC110 - Quart has no "consumed" event
                await trio.sleep(POLL_SECONDS)
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body.set_complete()
            elif message["type"] == "http.disconnect":
                nursery.cancel_scope.cancel()
                return
