"""``GET /internal/events``: the journal's event log as a WebSocket (docs/api.md "Live
events"), raw ASGI like the other hot paths; hypercorn speaks the WebSocket protocol.

    connect -> X-Api-Token checked (401 pict-rs error JSON, no upgrade, when wrong)
            -> accepted: one text message per event, oldest first, from ``?since=<id>`` (the
               last id a client saw) or from now
            -> until the client goes, or the server stops (close 1001, "going away")

Events come from the log in the repo's database (journal/schema.py ``_v3_events``), so a
client sees every server process's jobs, and what ``migrate-store`` announces while it
serves this route in the server's place (runtime/migrate_command.py).
"""

from __future__ import annotations

import datetime as dt
from typing import Literal
from urllib.parse import parse_qsl

import msgspec
import trio

from journal import Event, Journal
from pictrs_trio.http.exchange import Receive, Scope, Send
from pictrs_trio.http.failure import answer_for
from pictrs_trio.http.internal import require_api_key
from pictrs_trio.http.wire import encode, rfc3339
from pictrs_trio.rules.errors import InvalidQuery, PictrsError
from pictrs_trio.rules.query import parse_uint

PATH = "/internal/events"
POLL_SECONDS = 0.25  # how often an idle socket looks for new events
BATCH = 500
GOING_AWAY = 1001  # RFC 6455 section 7.4.1: the server is going down


class WireEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One event as a client sees it (docs/api.md "Live events")."""

    type: Literal["job", "progress"]  # a job's state change, or announced progress
    id: int  # reconnect with ?since=<the last id seen> to miss nothing still in the log
    at: str  # RFC 3339
    event: str  # pushed started finished retried failed requeued | progress done
    queue: str
    kind: str  # the job's (or the progress's) type tag, e.g. ingest_upload
    job: int | None
    attempt: int
    error: str | None
    payload: msgspec.Raw | None  # the job's payload JSON, e.g. {"upload_id": …}


def wire_event(event: Event) -> WireEvent:
    return WireEvent(
        type="job" if event.job is not None else "progress",
        id=event.id,
        at=rfc3339(dt.datetime.fromtimestamp(event.at, dt.UTC)),
        event=event.event,
        queue=event.queue,
        kind=event.kind,
        job=event.job,
        attempt=event.attempt,
        error=event.error,
        payload=None if event.payload is None else msgspec.Raw(event.payload),
    )


def _since(scope: Scope) -> int | None:
    query = scope.get("query_string", b"").decode("latin-1")
    values = [v for k, v in parse_qsl(query, keep_blank_values=True) if k == "since"]
    if not values:
        return None
    if len(values) > 1:
        raise InvalidQuery("Invalid query: since given twice")
    return parse_uint("since", values[0], maximum=2**63 - 1)


async def refuse(scope: Scope, send: Send, exc: PictrsError) -> None:
    """No upgrade: the error JSON as a plain HTTP answer where the server can send one
    (the ASGI websocket.http.response extension; hypercorn has it), else close 1008."""
    status, body = answer_for(exc)
    if "websocket.http.response" in scope.get("extensions", {}):
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})


async def events_socket(
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    journal: Journal,
    api_key: str | None,
    stopping: trio.Event,
) -> None:
    """Serve one WebSocket of the event feed (``scope`` of type websocket, path PATH)."""
    if (await receive())["type"] != "websocket.connect":
        return
    headers = dict(scope["headers"])
    try:
        given = headers.get(b"x-api-token")
        require_api_key(api_key, None if given is None else given.decode("latin-1"))
        since = _since(scope)
    except PictrsError as exc:
        await refuse(scope, send, exc)
        return
    await send({"type": "websocket.accept"})
    async with trio.open_nursery() as nursery:

        async def until_gone() -> None:
            while (await receive())["type"] != "websocket.disconnect":
                pass  # what a client sends is ignored
            nursery.cancel_scope.cancel()

        async def until_stopping() -> None:
            await stopping.wait()
            await send({"type": "websocket.close", "code": GOING_AWAY})
            nursery.cancel_scope.cancel()

        nursery.start_soon(until_gone)
        nursery.start_soon(until_stopping)
        cursor = since
        while True:
            events, cursor = await journal.events_after(cursor, BATCH)
            for event in events:
                text = encode(wire_event(event)).decode()
                await send({"type": "websocket.send", "text": text})
            if len(events) < BATCH:
                await trio.sleep(POLL_SECONDS)
