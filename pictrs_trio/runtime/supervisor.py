"""Several server processes on one port (``server.workers`` > 1).

The parent binds one SO_REUSEPORT listening socket per worker and starts ``workers``
children, each a full pictrs-trio process (``service.serve``) accepting on its own socket;
the kernel spreads connections among them. They share the SQLite repo (WAL) and the store;
the repo's claim rows keep rendering single-flight across them, and the journal's atomic
claims let every process run jobs. The parent only supervises: it restarts a child that dies, passes
SIGTERM/SIGINT on, and waits for the children's graceful shutdown. Children (and their own
children) die with it, even on SIGKILL.
"""

from __future__ import annotations

import os
import signal
import socket
import sys

import msgspec
import trio
from loguru import logger

from pictrs_trio.config import Config, parse_address
from pictrs_trio.media.spawn import spawn

CONFIG_ENV = "PICTRS_TRIO_WORKER_CONFIG"
FD_ENV = "PICTRS_TRIO_LISTEN_FD"
RESTART_DELAY = 1.0


def listen_sockets(config: Config) -> list[socket.socket]:
    """One listening socket per worker, all on the same address with SO_REUSEPORT: the
    kernel spreads connections over them by hash (a shared socket would let one busy
    process accept most of a burst while the other's engine idles). A worker that restarts
    finds its socket, with the connections queued meanwhile, still there."""
    host, port = parse_address(config.server.address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks: list[socket.socket] = []
    try:
        for _ in range(config.server.workers):
            sock = socket.create_server((host, port), family=family, backlog=1024, reuse_port=True)
            sock.set_inheritable(True)
            socks.append(sock)
            port = sock.getsockname()[1]  # port 0: the others join the one picked
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


async def _child(
    index: int, config: Config, fd: int, stopping: trio.Event, started: trio.Event
) -> None:
    env = {**os.environ, CONFIG_ENV: msgspec.json.encode(config).decode(), FD_ENV: str(fd)}
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
        if stopping.is_set():
            return
        logger.error("worker {} exited with {}; restarting", index, code)
        await trio.sleep(RESTART_DELAY)


async def supervise(config: Config) -> None:
    socks = listen_sockets(config)
    stopping = trio.Event()
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                for i in range(config.server.workers):
                    started = trio.Event()
                    nursery.start_soon(_child, i, config, socks[i].fileno(), stopping, started)
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
                        # Each child is sent SIGTERM and drains its own requests.
                        nursery.cancel_scope.cancel()
                    break
    finally:
        for sock in socks:
            sock.close()


def child_main() -> None:
    """Entry of one worker process: the config and the listening socket come from the
    parent."""
    from pictrs_trio.runtime import logging as pictrs_logging
    from pictrs_trio.runtime import service

    config = msgspec.json.decode(os.environ[CONFIG_ENV].encode(), type=Config)
    fd = int(os.environ[FD_ENV])
    pictrs_logging.setup(config.tracing.logging)
    service.tune_malloc()
    trio.run(lambda: service.serve(config, listen_fd=fd))


if __name__ == "__main__":
    child_main()
