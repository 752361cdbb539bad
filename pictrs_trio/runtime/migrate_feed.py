"""What ``migrate-store`` shows beyond its terminal: the migration's progress in the journal's
event log, and, while it runs (the server is stopped then) and ``server.api_key`` is set
(without it nobody could read the feed), ``server.address`` answering in the server's
place: the live event feed ``GET /internal/events`` (docs/api.md "Live events"), so
``pictrs-trio jobs watch`` follows the migration, and a 503 ``migrating`` to every other
request, ``/healthz`` included, so a client or a health check learns why."""

from __future__ import annotations

import hypercorn.trio
import msgspec
import trio
from loguru import logger

from journal import Journal, JournalError
from pictrs_trio.config import Config
from pictrs_trio.http.events import PATH, events_socket, refuse
from pictrs_trio.http.exchange import Receive, Scope, Send
from pictrs_trio.http.failure import answer_for
from pictrs_trio.rules.errors import ErrorCode, RouteNotFound, Unhealthy
from pictrs_trio.runtime.service import hypercorn_config
from pictrs_trio.runtime.startup import StartupError, open_listener
from pictrs_trio.services.migrate import Progress

QUEUE = "migrate"
ANNOUNCE_EVERY = 1.0  # seconds between progress events while files move


class MigrationProgress(msgspec.Struct, frozen=True, kw_only=True):
    """The payload of the migration's ``progress`` and ``done`` events."""

    from_store: str
    to_store: str
    total: int  # files left to move when the walk began
    done_before: int  # moved by earlier runs
    moved: int
    skipped: int
    missing: int
    failed: int
    bytes: int
    seconds: float  # since the walk began
    finished: bool
    stopped: str | None


def payload(progress: Progress, source: str, destination: str) -> MigrationProgress:
    return MigrationProgress(
        from_store=source,
        to_store=destination,
        total=progress.total,
        done_before=progress.done_before,
        moved=progress.moved,
        skipped=progress.skipped,
        missing=progress.missing,
        failed=progress.failed,
        bytes=progress.bytes,
        seconds=round(trio.current_time() - progress.started, 3) if progress.started else 0.0,
        finished=progress.finished,
        stopped=progress.stopped,
    )


async def announce(journal: Journal, progress: Progress, source: str, destination: str) -> None:
    """A ``progress`` event every ANNOUNCE_EVERY seconds while files move and the counts
    changed, until cancelled. A failed write is logged, not fatal: the files matter more."""
    last: tuple[int, ...] | None = None
    while True:
        await trio.sleep(ANNOUNCE_EVERY)
        counts = (progress.moved, progress.skipped, progress.missing, progress.failed)
        if not progress.walking or counts == last:
            continue
        last = counts
        try:
            await journal.announce(QUEUE, "progress", payload(progress, source, destination))
        except JournalError as exc:
            logger.warning("migrate-store: recording progress failed: {}", exc)


async def announce_end(journal: Journal, progress: Progress, source: str, destination: str) -> None:
    """The ``done`` event with the final counts (finished or not: see ``finished``)."""
    with trio.move_on_after(5, shield=True):
        try:
            await journal.announce(QUEUE, "done", payload(progress, source, destination))
        except JournalError as exc:
            logger.warning("migrate-store: recording the end failed: {}", exc)


class FeedApp:
    """The ASGI app on ``server.address`` while the migration runs."""

    def __init__(self, config: Config, journal: Journal, stopping: trio.Event) -> None:
        self.api_key, self.journal, self.stopping = config.server.api_key, journal, stopping
        self.busy = Unhealthy(
            "migrate-store is moving the media to another store; the server is stopped "
            "until it has finished",
            code=ErrorCode.MIGRATING,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        elif scope["type"] == "websocket":
            if scope["path"] == PATH:
                await events_socket(
                    scope,
                    receive,
                    send,
                    journal=self.journal,
                    api_key=self.api_key,
                    stopping=self.stopping,
                )
            elif (await receive())["type"] == "websocket.connect":
                await refuse(scope, send, RouteNotFound("Not found"))
        elif scope["type"] == "http":
            status, body = answer_for(self.busy)
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
                (b"retry-after", b"60"),
            ]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})


async def serve_feed(
    config: Config,
    journal: Journal,
    stopping: trio.Event,
    *,
    task_status: trio.TaskStatus[str | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``FeedApp`` on ``server.address`` until ``stopping`` is set (then open feeds
    close with "going away"). Without an API key, nothing; when the address cannot be bound
    (another program has it), a warning and nothing else: the migration does not need it.
    Reports the address served, or None."""
    if not config.server.api_key:
        task_status.started(None)
        return
    try:
        sock = open_listener(config)
    except StartupError as exc:
        logger.warning("migrate-store: no event feed: {}", exc)
        task_status.started(None)
        return
    hc = hypercorn_config(config, sock.detach())  # hypercorn owns the socket (and closes it)
    hc.graceful_timeout = 5

    async def until_stopping() -> None:
        await stopping.wait()
        await trio.sleep(0.5)  # open feeds send their close frame first

    logger.info("migrate-store: event feed on {}{}", config.server.address, PATH)
    task_status.started(config.server.address)
    await hypercorn.trio.serve(
        FeedApp(config, journal, stopping),  # type: ignore[arg-type]
        hc,
        shutdown_trigger=until_stopping,
    )
