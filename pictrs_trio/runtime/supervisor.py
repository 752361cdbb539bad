"""Several server processes on one port (``server.workers`` > 1).

The parent (``launch``) binds one listening socket; ``supervise`` starts ``workers``
children, each a full pictrs-trio process (``service.serve``) that inherits that socket and
accepts on it. No SO_REUSEPORT: nothing else can join the port, so a second instance started
by mistake fails at once instead of taking half the requests to another store. The children
share the SQLite repo (WAL) and the store; journal leases keep rendering single-flight across
them, and the journal's atomic claims let every process run jobs. The parent only supervises:
it restarts a child that dies, passes SIGTERM/SIGINT on, and waits for the children's graceful
shutdown. Children (and their own children) die with it, even on SIGKILL.

With metrics on, the parent also serves the scrape listener, for the whole instance: the
children record into files of prometheus-client's multiprocess mode in a folder the parent
makes empty at start and names to them (``PROMETHEUS_MULTIPROC_DIR``), and the parent adds
them up at each scrape (runtime/metrics_server.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
from pathlib import Path

import msgspec
import trio
from loguru import logger

from pictrs_trio.config import Config
from pictrs_trio.media.spawn import spawn
from pictrs_trio.metrics import MULTIPROC_ENV
from pictrs_trio.runtime.startup import StartupError

CONFIG_ENV = "PICTRS_TRIO_WORKER_CONFIG"
FD_ENV = "PICTRS_TRIO_LISTEN_FD"
RESTART_DELAY = 1.0


async def _child(
    index: int,
    config: Config,
    fd: int,
    stopping: trio.Event,
    started: trio.Event,
    metrics_folder: Path | None = None,
) -> None:
    env = {**os.environ, CONFIG_ENV: msgspec.json.encode(config).decode(), FD_ENV: str(fd)}
    if metrics_folder is not None:
        env[MULTIPROC_ENV] = str(metrics_folder)
    while not stopping.is_set():
        proc = spawn(
            [sys.executable, "-m", "pictrs_trio.runtime.supervisor"],
            env=env,
            pass_fds=(fd,),
            stdin=None,
            stdout=None,
            stderr=None,
        )
        logger.info("worker {} started (pid {})", index, proc.pid)
        started.set()
        try:
            code = await proc.wait()
        finally:
            if proc.returncode is None:  # we are being cancelled: take the child with us
                with trio.move_on_after(config.server.shutdown_timeout + 5, shield=True):
                    proc.send_signal(signal.SIGTERM)
                    await proc.wait()
                proc.kill()
                with trio.move_on_after(5, shield=True):
                    await proc.wait()
            with trio.move_on_after(5, shield=True):
                await proc.aclose()
            if metrics_folder is not None:
                from pictrs_trio.runtime import metrics_server

                metrics_server.child_exited(metrics_folder, proc.pid)
        if stopping.is_set():
            return
        logger.error("worker {} exited with {}; restarting", index, code)
        await trio.sleep(RESTART_DELAY)


async def supervise(config: Config, listener: socket.socket, metrics_fd: int | None = None) -> None:
    """Run ``server.workers`` children on ``listener`` until a signal; then close our copy
    of it and stop them (each drains its own requests, and closes its copy at once, so that
    new connections are refused instead of waiting in a backlog nobody serves). With
    ``metrics_fd``, serve the instance's metrics there."""
    folder = None
    if metrics_fd is not None:
        from pictrs_trio.runtime import metrics_server

        folder = await trio.to_thread.run_sync(metrics_server.fresh_folder, config)
    try:
        await _supervise(config, listener, metrics_fd, folder)
    finally:
        if folder is not None:
            with trio.move_on_after(5, shield=True):
                await trio.to_thread.run_sync(lambda: shutil.rmtree(folder, ignore_errors=True))


async def _supervise(
    config: Config, listener: socket.socket, metrics_fd: int | None, folder: Path | None
) -> None:
    listen_fd = listener.fileno()
    stopping = trio.Event()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            if metrics_fd is not None and folder is not None:
                from pictrs_trio.runtime import metrics_server

                registry = metrics_server.instance_registry(config, folder)
                scrape = await nursery.start(metrics_server.serve_metrics, registry, metrics_fd)
                logger.info("metrics for Prometheus on {}", ", ".join(scrape))
            for i in range(config.server.workers):
                started = trio.Event()
                nursery.start_soon(_child, i, config, listen_fd, stopping, started, folder)
                await started.wait()
            logger.info(
                "pictrs-trio supervising {} workers on {}",
                config.server.workers,
                config.server.address,
            )
            async for signum in signals:
                if not stopping.is_set():
                    logger.info("received {}, stopping workers", signal.Signals(signum).name)
                    stopping.set()
                    listener.close()
                    # Each child is sent SIGTERM and drains its own requests.
                    nursery.cancel_scope.cancel()
                break


def child_main() -> None:
    """Entry of one worker process: the config and the listening socket come from the
    parent."""
    from pictrs_trio.runtime import logging as pictrs_logging
    from pictrs_trio.runtime import service

    # Taken out of the environment: the engine workers and tools this process starts
    # inherit it, and the config holds the API key and store credentials.
    config = msgspec.json.decode(os.environ.pop(CONFIG_ENV).encode(), type=Config)
    fd = int(os.environ.pop(FD_ENV))
    pictrs_logging.setup(config.tracing.logging)
    try:
        service.run(config, fd)
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    child_main()
