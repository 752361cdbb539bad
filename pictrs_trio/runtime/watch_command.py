"""``pictrs-trio jobs watch``: the journal's work as it happens, from the server's
``GET /internal/events`` WebSocket (trio-websocket) and ``GET /internal/jobs`` (httpx).

On a terminal it redraws a table of the queues and the latest events; otherwise it prints
one line per event (for a log or ``grep``). It reconnects with ``?since=`` after the server
restarts, so no event still in the log is missed, and stops on Ctrl-C.
"""

from __future__ import annotations

import datetime as dt
import ssl
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TextIO
from urllib.parse import urlsplit

import httpx
import msgspec
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from journal.records import STATUSES
from pictrs_trio.config import Config, parse_address
from pictrs_trio.runtime.startup import StartupError

RETRY_SECONDS = 1.0
RECENT = 20  # events the terminal table shows
REFRESH_SECONDS = 1.0  # how often the terminal table asks /internal/jobs for the counts


class Seen(msgspec.Struct, frozen=True, kw_only=True):
    """An event as the feed sends it (http/events.py ``WireEvent``); what this reads."""

    id: int
    at: str
    event: str
    queue: str
    kind: str
    job: int | None = None
    attempt: int = 0
    error: str | None = None
    payload: msgspec.Raw = msgspec.Raw(b"null")  # the JSON as sent (null: none)


_DECODE = msgspec.json.Decoder(Seen)


def default_url(config: Config) -> str:
    """The feed of the server this configuration runs: its address, a wildcard address
    read as loopback, wss when it serves TLS."""
    host, port = parse_address(config.server.address)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    scheme = "wss" if config.server.certificate and config.server.private_key else "ws"
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}/internal/events"


@asynccontextmanager
async def open_feed(
    url: str, api_key: str | None, since: int | None = None
) -> AsyncIterator[WebSocketConnection]:
    """A WebSocket to the event feed at ``url`` (ws:// or wss://). The TCP stream is ours
    and closed on the way out: trio-websocket's own ``open_websocket_url`` leaves it open
    when the server closes first. Raises ConnectionRejected, HandshakeError, OSError."""
    parts = urlsplit(url)
    host, secure = parts.hostname or "", parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if since is not None:
        resource += f"{'&' if parts.query else '?'}since={since}"
    headers = [(b"X-Api-Token", api_key.encode())] if api_key else []
    tcp = await trio.open_tcp_stream(host, port)
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = tcp
    try:
        if secure:
            stream = trio.SSLStream(tcp, ssl.create_default_context(), server_hostname=host)
        try:
            async with trio.open_nursery() as nursery:
                socket = await wrap_client_stream(
                    nursery,
                    stream,
                    parts.netloc.rsplit("@", 1)[-1],
                    resource,
                    extra_headers=headers,
                )
                try:
                    yield socket
                finally:
                    with trio.move_on_after(2, shield=True):
                        await socket.aclose()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # the reader task's rejection, or the body's error
            leaves = _leaves(group)
            if len(leaves) == 1:
                raise leaves[0] from None
            raise
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


def event_line(seen: Seen) -> str:
    """One line per event: time, queue, kind, job, what happened, the payload's fields."""
    fields = ""
    try:
        decoded = msgspec.json.decode(seen.payload)
    except msgspec.DecodeError:
        decoded = None
    if isinstance(decoded, dict):
        fields = " ".join(
            f"{k}={v}" for k, v in decoded.items() if k != "type" and not isinstance(v, list)
        )
    job = f"#{seen.job} " if seen.job is not None else ""
    attempt = f" (attempt {seen.attempt})" if seen.event == "started" else ""
    error = f": {seen.error}" if seen.error else ""
    return f"{seen.at} {seen.queue} {seen.kind} {job}{seen.event}{attempt}{error} {fields}".rstrip()


class Table:
    """The terminal view: counts per queue and status, then the latest events."""

    def __init__(self, url: str, out: TextIO) -> None:
        self.url, self.out = url, out
        self.counts: dict[str, dict[str, int]] = {}
        self.recent: deque[str] = deque(maxlen=RECENT)
        self.note = "connecting"

    def draw(self) -> None:
        lines = [f"pictrs-trio jobs watch  {self.url}  ({self.note})", ""]
        lines.append(f"{'queue':<10}" + "".join(f"{s:>9}" for s in STATUSES))
        for queue in sorted(self.counts):
            row = self.counts[queue]
            lines.append(f"{queue:<10}" + "".join(f"{row.get(s, 0):>9}" for s in STATUSES))
        lines += ["", "latest events:", *self.recent]
        self.out.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")
        self.out.flush()


class JobsCounts(msgspec.Struct, frozen=True):
    queues: dict[str, dict[str, int]]


async def _refresh_counts(jobs_url: str, api_key: str | None, table: Table) -> None:
    headers = {"X-Api-Token": api_key} if api_key else {}
    async with httpx.AsyncClient(timeout=5) as client:
        while True:
            try:
                answer = await client.get(jobs_url, headers=headers)
                if answer.status_code == 200:
                    table.counts = msgspec.json.decode(answer.content, type=JobsCounts).queues
            except (httpx.HTTPError, msgspec.DecodeError):
                pass  # the feed's own state line says what is wrong
            table.draw()
            await trio.sleep(REFRESH_SECONDS)


async def follow(
    url: str,
    api_key: str | None,
    on_event: Callable[[Seen], None],
    on_state: Callable[[str], None],
    since: int | None = None,
) -> None:
    """Hand every event to ``on_event`` until cancelled, reconnecting from the last id seen.
    Raises StartupError when the server refuses the key (retrying cannot help)."""
    while True:
        try:
            async with open_feed(url, api_key, since) as socket:
                on_state("live")
                while True:
                    message = await socket.get_message()
                    try:
                        seen = _DECODE.decode(message)
                    except msgspec.DecodeError as exc:  # a newer server's event: say so, go on
                        on_state(f"unreadable event ({exc}): {message!r:.200}")
                        continue
                    since = seen.id
                    on_event(seen)
        except ConnectionRejected as exc:
            if exc.status_code in (401, 403):
                raise StartupError(f"{url}: the API key was refused ({exc.status_code})") from None
            on_state(f"refused with {exc.status_code}; retrying")
        except (ConnectionClosed, HandshakeError, OSError, trio.BrokenResourceError) as exc:
            on_state(f"disconnected ({type(exc).__name__}); retrying")
        await trio.sleep(RETRY_SECONDS)


async def _watch(url: str, api_key: str | None, since: int | None, out: TextIO) -> None:
    if not out.isatty():

        def state(note: str) -> None:
            print(f"# {note}", file=sys.stderr, flush=True)

        def line(seen: Seen) -> None:
            print(event_line(seen), file=out, flush=True)

        await follow(url, api_key, line, state, since)
        return
    table = Table(url, out)
    jobs_url = url.replace("ws", "http", 1).rsplit("/events", 1)[0] + "/jobs"

    def note(text: str) -> None:
        table.note = text
        table.draw()

    def add(seen: Seen) -> None:
        table.recent.appendleft(event_line(seen))
        table.draw()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_refresh_counts, jobs_url, api_key, table)
        await follow(url, api_key, add, note, since)


def watch(config: Config, *, url: str | None = None, since: int | None = None) -> None:
    """Follow the feed of the configured server (or ``url``) until Ctrl-C."""
    target = url or default_url(config)
    if urlsplit(target).scheme not in ("ws", "wss"):
        raise StartupError(f"--url {target}: expected ws://HOST:PORT/internal/events or wss://")
    started = dt.datetime.now(dt.UTC).strftime("%H:%M:%S")
    print(f"# following {target} from {started}", file=sys.stderr, flush=True)
    trio.run(_watch, target, config.server.api_key, since, sys.stdout)
