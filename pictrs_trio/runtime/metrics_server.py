"""The Prometheus scrape listener (``metrics.prometheus_address``; the series:
docs/operations.md, "Metrics").

    server.workers = 1  the server process records (metrics.prometheus.PrometheusMetrics)
                        and serves its own registry
    server.workers > 1  each child records into files of prometheus-client's multiprocess
                        mode, in a private folder the supervisor makes (``fresh_folder``) and
                        names to them; the supervisor serves the sum of all files

Either way the listener adds what the repo knows at scrape time (``RepoGauges``): queue
depths and the stored files, read from the database by a connection of its own. A scrape runs
in a worker thread, one at a time, so the event loop never waits on it. Any path answers, as
pict-rs's exporter does.

Nothing here is imported, and nothing listens, when ``metrics.prometheus_address`` is unset.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import apsw
import hypercorn.config
import hypercorn.trio
import trio
from loguru import logger
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from journal.records import STATUSES, Status
from journal.store import stats
from pictrs_trio.config import Config
from pictrs_trio.http.exchange import Message, Receive, Scope, Send
from pictrs_trio.metrics.prometheus import (
    multiprocess_source,
    render,
    served_registry,
)
from pictrs_trio.repo import hash_sql
from pictrs_trio.repo.sqlite import DB_FILE_NAME
from pictrs_trio.rules import jobs
from pictrs_trio.runtime.startup import temp_root

QUEUES = (jobs.CLEANUP, jobs.INGEST, jobs.PROCESS, jobs.MIGRATE)  # always reported
# The bytes of all originals take a scan of every hash (hash_sql.q_original_bytes, ~2 s a
# million): counted again when the number of originals changed, or BYTES_MAX_AGE seconds
# passed, but never sooner than BYTES_EVERY times as long as the last count took (at most 1%
# of a core; a small repo's count takes well under a millisecond, so it is always fresh).
BYTES_EVERY = 100
BYTES_MAX_AGE = 600.0
BUSY_TIMEOUT_MS = 1000


class RepoGauges:
    """A collector of gauges read from the repo at each scrape (pictrs-trio's own series):
    jobs by queue and status, files by kind, aliases, and the bytes of the originals."""

    def __init__(self, db_file: Path) -> None:
        self._db_file = db_file
        self._bytes: int | None = None
        self._counted = -1  # originals when the bytes were counted
        self._not_before = 0.0  # time.monotonic() of the next count, at the soonest
        self._stale_at = 0.0  # ... and at the latest

    def collect(self) -> Iterator[Metric]:
        try:
            queues, files, original_bytes = self._read()
        except apsw.Error as exc:  # the rest of the scrape still answers
            logger.warning("metrics: could not read the repo: {}", exc)
            return
        depth = GaugeMetricFamily(
            "pictrs_trio_queue_jobs",
            "Jobs in the journal by queue and status",
            labels=["queue", "status"],
        )
        for queue in sorted({*QUEUES, *queues}):
            by_status = queues.get(queue, {})
            for status in STATUSES:
                depth.add_metric([queue, status], by_status.get(status, 0))
        yield depth
        stored = GaugeMetricFamily(
            "pictrs_trio_store_files", "Files the repo knows in the store, by kind", labels=["kind"]
        )
        for kind in ("original", "motion", "variant"):
            stored.add_metric([kind], files[kind])
        yield stored
        yield GaugeMetricFamily("pictrs_trio_aliases", "Aliases in the repo", value=files["alias"])
        if original_bytes is not None:
            yield GaugeMetricFamily(
                "pictrs_trio_store_original_bytes",
                "Bytes of all stored originals (in a large repo, up to minutes old)",
                value=original_bytes,
            )

    def _read(self) -> tuple[dict[str, dict[Status, int]], dict[str, int], int | None]:
        flags = apsw.SQLITE_OPEN_READONLY
        with closing(apsw.Connection(str(self._db_file), flags=flags)) as conn:
            conn.set_busy_timeout(BUSY_TIMEOUT_MS)
            queues = stats(conn)
            files = hash_sql.q_file_counts(conn)
            now = time.monotonic()
            changed = files["original"] != self._counted or now >= self._stale_at
            if changed and now >= self._not_before:
                self._bytes = hash_sql.q_original_bytes(conn)
                self._counted = files["original"]
                self._not_before = now + BYTES_EVERY * (time.monotonic() - now)
                self._stale_at = now + BYTES_MAX_AGE
        return queues, files, self._bytes


def registry_for(config: Config, source: CollectorRegistry) -> CollectorRegistry:
    """What the listener serves: ``source``'s series and the repo's gauges."""
    db_file = Path(config.repo.path) / DB_FILE_NAME
    return served_registry(source, RepoGauges(db_file))


# --- several server processes ----------------------------------------------------------------


def fresh_folder(config: Config) -> Path:
    """An empty folder of this (the supervising) process for the children's files, under the
    temporary directory; children leave folders of live processes alone, and sweep those
    of dead ones (``service.sweep_temp_root``)."""
    folder = temp_root(config) / f"{os.getpid()}-metrics"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    folder.chmod(0o700)
    return folder


def instance_registry(config: Config, folder: Path) -> CollectorRegistry:
    """What the supervisor serves: every child's series, added up, and the repo's gauges."""
    return registry_for(config, multiprocess_source(str(folder)))


def child_exited(folder: Path, pid: int) -> None:
    """A child is gone: its live gauges go (prometheus-client's bookkeeping); its counters
    and histograms stay, so totals survive a restart."""
    from prometheus_client.multiprocess import mark_process_dead

    mark_process_dead(pid, str(folder))  # type: ignore[no-untyped-call]


# --- the listener ----------------------------------------------------------------------------


class ScrapeApp:
    """The ASGI app of the listener: GET (or HEAD) of any path answers the exposition."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._one_at_a_time = trio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _answer(send, 405, [(b"allow", b"GET, HEAD")], b"")
            return
        accept = next((v for k, v in scope["headers"] if k == b"accept"), b"").decode("latin-1")
        async with self._one_at_a_time:
            body, content_type = await trio.to_thread.run_sync(render, self._registry, accept)
        headers = [(b"content-type", content_type.encode())]
        await _answer(send, 200, headers, b"" if scope["method"] == "HEAD" else body, len(body))


async def _answer(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes, length: int = -1
) -> None:
    size = len(body) if length < 0 else length
    headers = [*headers, (b"content-length", b"%d" % size)]
    start: Message = {"type": "http.response.start", "status": status, "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def serve_metrics(
    registry: CollectorRegistry,
    listen_fd: int,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``registry`` on the listening socket ``listen_fd`` (``startup.open_listener``)
    until cancelled."""
    hc = hypercorn.config.Config()
    hc.bind = [f"fd://{listen_fd}"]
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.graceful_timeout = 1.0
    await hypercorn.trio.serve(ScrapeApp(registry), hc, task_status=task_status)  # type: ignore[arg-type]
