"""The service: open every resource in one root nursery, then serve HTTP until a signal.

run(config)
  └─ trio.run(serve)
       ├─ repo (SQLite)   ├─ store (filesystem)   ├─ media tools (exiftool, engine pool)
       ├─ signal watcher: SIGTERM/SIGINT -> graceful shutdown
       ├─ hypercorn (trio worker) serving create_app(state)
       └─ the scrape listener (runtime/metrics_server.py), when this process has one
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import shutil
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import hypercorn.config
import hypercorn.trio
import trio
from loguru import logger

import pictrs_trio
from journal import Journal, NotAlone, run_workers
from pictrs_trio import store as stores
from pictrs_trio.config import Config, parse_network
from pictrs_trio.http.app import PictrsApp, create_app
from pictrs_trio.media.tools import open_media_tools
from pictrs_trio.metrics import Metrics
from pictrs_trio.repo.sqlite import open_sqlite_repo
from pictrs_trio.rules.errors import PictrsError
from pictrs_trio.runtime.startup import BACKLOG, StartupError, check_store_migration, temp_root
from pictrs_trio.services import handlers
from pictrs_trio.services.outbound import Outbound
from pictrs_trio.services.state import AppState
from pictrs_trio.services.tracing import open_tracer
from pictrs_trio.store import Store

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


def tune_malloc() -> None:
    """Keep glibc from holding on to freed upload and response buffers.

    glibc raises its mmap threshold each time a large block is freed, after which 1 MiB
    buffers come from the heap and stay in the process's RSS; and every thread that
    allocates gets an arena of its own. A fixed threshold returns big buffers to the
    kernel at once, and two arenas bound what worker threads keep. (No-op off glibc.)
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
        libc.mallopt(_M_TRIM_THRESHOLD, 256 * 1024)
        libc.mallopt(_M_ARENA_MAX, 2)
    except (OSError, AttributeError):
        pass


def run(config: Config, listen_fd: int, metrics_fd: int | None = None) -> None:
    """Serve on the listening socket ``listen_fd`` until SIGTERM/SIGINT, and the metrics on
    ``metrics_fd`` if given. Blocks. A failure before serving raises StartupError (one line
    for the operator)."""
    tune_malloc()
    try:
        trio.run(functools.partial(serve, config, listen_fd=listen_fd, metrics_fd=metrics_fd))
    except BaseExceptionGroup as group:
        raise _startup_error(group) from group


def _startup_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one pict-rs error of a start-up that failed in a nursery, as a StartupError;
    anything else (a crash) unchanged, with its traceback."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    for leaf in leaves:
        if isinstance(leaf, StartupError):
            return leaf
        if isinstance(leaf, PictrsError):
            return StartupError(leaf.msg)
    return group


# Per queue: an ingest or render is bounded by its tools' own limits well before this.
JOB_TIME_LIMITS = {"cleanup": 3600.0, "ingest": 600.0, "process": 600.0, "migrate": 600.0}


@asynccontextmanager
async def open_store(config: Config, metrics: Metrics | None = None) -> AsyncIterator[Store]:
    async with stores.open_store(config.store, metrics=metrics) as store:
        yield store


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_temp_root(root: Path) -> int:
    """Remove the scratch folders of processes that are gone (a crash leaves them behind).

    Each process works in ``<root>/<pid>-<random>``; folders of live processes (another
    worker, another instance sharing the temp dir) are left alone.
    """
    removed = 0
    if not root.is_dir():
        return 0
    for entry in root.iterdir():
        pid_text, _, _ = entry.name.partition("-")
        if pid_text.isdigit() and _pid_alive(int(pid_text)) and int(pid_text) != os.getpid():
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    return removed


def user_agent() -> str:
    return f"pictrs-trio/{pictrs_trio.version()}"


def open_http_client(config: Config) -> Outbound:
    """The outbound clients (downloads, proxies, external validation); httpx loads with
    the first request that needs it."""
    return Outbound(
        timeout=config.client.timeout,
        user_agent=user_agent,
        allowed_networks=[parse_network(n) for n in config.client.allowed_networks],
    )


def recorder(config: Config) -> Metrics:
    """What this process records metrics with: nothing unless ``metrics.prometheus_address``
    is set (prometheus-client is imported only then)."""
    if config.metrics.prometheus_address is None:
        return Metrics()
    from pictrs_trio.metrics.prometheus import PrometheusMetrics

    return PrometheusMetrics()


@asynccontextmanager
async def open_state(config: Config, metrics: Metrics | None = None) -> AsyncIterator[AppState]:
    """Open repo, store and media tools; a private temp folder for this process. Everything
    records into ``metrics`` (default: ``recorder(config)``)."""
    metrics = metrics if metrics is not None else recorder(config)
    root = temp_root(config)
    if config.server.cleanup_temporary_directory:
        swept = await trio.to_thread.run_sync(sweep_temp_root, root)
        if swept:
            logger.info("removed {} temporary folders left by earlier runs", swept)
    tmp_dir = root / f"{os.getpid()}-{uuid.uuid4().hex}"
    await trio.to_thread.run_sync(lambda: tmp_dir.mkdir(parents=True, exist_ok=True))
    try:
        async with (
            open_sqlite_repo(Path(config.repo.path)) as repo,
            open_store(config, metrics) as store,
            open_media_tools(
                config.media,
                tmp_dir=tmp_dir,
                engine_workers=engine_workers(config),
                metrics=metrics,
            ) as media,
            open_http_client(config) as http,
            # last: its spans are flushed once every request and job has ended
            open_tracer(config.tracing.opentelemetry) as tracer,
        ):
            journal = Journal(repo.journal_db(), monitor=metrics)
            yield AppState(
                config=config,
                repo=repo,
                store=store,
                media=media,
                tmp_dir=tmp_dir,
                journal=journal,
                http=http,
                metrics=metrics,
                tracer=tracer,
            )
    finally:
        with trio.move_on_after(5, shield=True):
            await trio.to_thread.run_sync(lambda: shutil.rmtree(tmp_dir, ignore_errors=True))


def engine_workers(config: Config) -> int:
    """Engine processes for this server process: the configured number, or the cores
    shared out among the server processes (``server.workers``)."""
    if config.media.engine_workers > 0:
        return config.media.engine_workers
    return max(1, (os.cpu_count() or 1) // config.server.workers)


def hypercorn_config(config: Config, listen_fd: int) -> hypercorn.config.Config:
    """hypercorn serves the socket ``runtime/startup.open_listener`` bound."""
    hc = hypercorn.config.Config()
    hc.bind = [f"fd://{listen_fd}"]
    hc.backlog = BACKLOG  # hypercorn listens again on the socket, with its own 100
    # A backstop only: serve() ends hypercorn itself once in-flight requests are done.
    hc.graceful_timeout = config.server.shutdown_timeout + 5
    hc.accesslog = None  # the request log is ours (http/access_log.py)
    # A Logger, not "-": hypercorn then adds no stderr handler of its own, and its lines reach
    # our sinks through the root logger (runtime/logging.py).
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.keep_alive_timeout = config.server.keep_alive_timeout
    if config.server.certificate and config.server.private_key:
        hc.certfile = config.server.certificate
        hc.keyfile = config.server.private_key
        # check_files refused an encrypted key; should it have become one since, an empty
        # passphrase makes loading fail instead of OpenSSL asking on the terminal.
        hc.keyfile_password = ""
    return hc


async def _watch_signals(shutdown: trio.Event) -> None:
    """SIGTERM/SIGINT start a graceful shutdown; more of them while draining are ignored
    (a supervisor repeating its SIGTERM must not kill in-flight requests)."""
    # Closing the receiver puts back the handlers found when it opened and re-delivers
    # signals still queued; with these ignored, a late SIGTERM cannot kill the process
    # after the graceful shutdown has finished.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if shutdown.is_set():
                logger.info("received {} again; still finishing in-flight requests", name)
            else:
                logger.info("received {}, shutting down", name)
                shutdown.set()


async def _serve_http(
    app: PictrsApp,
    hc: hypercorn.config.Config,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    await hypercorn.trio.serve(
        app,  # type: ignore[arg-type]
        hc,
        shutdown_trigger=shutdown.wait,
        task_status=task_status,
    )


async def _serve_metrics(
    state: AppState, metrics_fd: int, *, task_status: trio.TaskStatus[list[str]]
) -> None:
    """The scrape listener of a lone server process, over its own registry."""
    from pictrs_trio.metrics.prometheus import PrometheusMetrics
    from pictrs_trio.runtime import metrics_server

    assert isinstance(state.metrics, PrometheusMetrics)  # recorder(): metrics are on
    registry = metrics_server.registry_for(state.config, state.metrics.registry)
    await metrics_server.serve_metrics(registry, metrics_fd, task_status=task_status)


async def start_background(state: AppState, nursery: trio.Nursery) -> None:
    """Start what every server process runs beside HTTP, in ``nursery``: first this
    process becomes a journal owner and what dead ones left (render leases, jobs in hand,
    unfinished writes) is released or undone; then the job runners, the access-time
    flusher and (not in read-only mode) the scheduler. Raises StartupError when a
    migrate-store runs, or the repo records one unfinished or elsewhere
    (``check_store_migration``)."""
    try:
        await nursery.start(state.journal.run_owner)
    except NotAlone as exc:
        raise StartupError(
            f"repo.path {state.config.repo.path}: a migrate-store is running on this repo "
            f"({exc.owners[0]}): start the server once it has finished"
        ) from None
    # Registered: from now on no migrate-store can begin beside this process (it runs alone,
    # journal/owners.py), so what the repo says of migrations holds while it serves. Read
    # after registering: preflight's reading may be stale by now.
    migration = await state.repo.store_migration()
    if migration is not None:
        check_store_migration(state.config, migration)
    nursery.start_soon(state.accesses.run, state.repo)
    await nursery.start(
        functools.partial(
            run_workers,
            state.journal,
            handlers.by_queue(state),
            concurrency=handlers.CONCURRENCY,
            time_limit=JOB_TIME_LIMITS,
        )
    )
    if not state.config.server.read_only:
        nursery.start_soon(handlers.schedule, state, state.journal)


async def serve(
    config: Config,
    *,
    listen_fd: int,
    metrics_fd: int | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Open everything, serve, and return once a signal has drained in-flight requests.
    With ``metrics_fd`` (one server process, metrics on) serve the scrape listener too.

    hypercorn stops accepting on the shutdown event and gives open requests up to
    ``server.shutdown_timeout`` seconds; then resources close in reverse order.
    """
    async with open_state(config) as state:
        shutdown = trio.Event()
        app = create_app(state)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, shutdown)
            if metrics_fd is not None:
                scrape = await nursery.start(_serve_metrics, state, metrics_fd)
                logger.info("metrics for Prometheus on {}", ", ".join(scrape))
            await start_background(state, nursery)
            binds = await nursery.start(
                _serve_http, app, hypercorn_config(config, listen_fd), shutdown
            )
            logger.info("pictrs-trio listening on {}", ", ".join(binds))
            task_status.started(binds)
            await shutdown.wait()
            # hypercorn stops accepting and closes idle connections; every answer from now
            # on closes its connection; in-flight requests get server.shutdown_timeout.
            app.stop()
            with trio.move_on_after(config.server.shutdown_timeout) as waited:
                await app.wait_quiet()
            if waited.cancelled_caught:
                logger.warning(
                    "requests still running after {} s: cut", config.server.shutdown_timeout
                )
            nursery.cancel_scope.cancel()  # hypercorn, job runners, scheduler, timers
    logger.info("pictrs-trio stopped")
