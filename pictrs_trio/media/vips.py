"""Pool of libvips engine worker processes, supervised from the server (which never loads
libvips itself).

Each of ``size`` slots keeps one ``python -m pictrs_trio.media.vips_worker`` alive. Idle
workers wait in a channel; ``submit`` takes one, sends one framed job, reads one framed reply
under the job time limit, and gives the worker back. A worker that times out, dies or breaks the
protocol is killed (the caller gets MediaToolError); its slot starts a replacement, so the pool
heals. New job kinds are new Structs in ``media.protocol``; ``submit`` stays as it is.
"""

from __future__ import annotations

import math
import os
import signal
import sys
from pathlib import Path

import msgspec
import trio
from loguru import logger

import pictrs_trio
from pictrs_trio.media.protocol import (
    HEADER,
    LIMITS_ENV,
    MAX_FRAME,
    EngineLimits,
    Failed,
    Ready,
    Reply,
    Request,
    frame,
)
from pictrs_trio.media.spawn import Child, spawn
from pictrs_trio.metrics import Metrics
from pictrs_trio.metrics.names import ENGINE_COMMAND, ENGINE_RESTARTS, PROCESS
from pictrs_trio.rules.errors import EngineBusy, MediaToolError, ToolTimeout, UnsupportedMedia

RESTART_BACKOFF_S = 1.0
REAP_S = 5.0
STARTUP_S = 30.0
STDERR_LINE = 300
_COMMAND = {"command": ENGINE_COMMAND}


class _Worker:
    """One live worker process and its read buffer."""

    def __init__(self, proc: Child) -> None:
        self.proc = proc
        self.buffer = bytearray()

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def read_exact(self, n: int) -> bytes:
        assert self.proc.stdout is not None
        while len(self.buffer) < n:
            chunk = await self.proc.stdout.receive_some(65536)
            if not chunk:
                raise EOFError("engine worker closed its output")
            self.buffer += chunk
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data


class EnginePool:
    """Create it, ``await nursery.start(pool.run)``, then ``await pool.submit(job)``."""

    def __init__(
        self,
        *,
        size: int,
        job_timeout: float,
        limits: EngineLimits = EngineLimits(),  # noqa: B008 (frozen: one shared default is fine)
        tmp_dir: Path | None = None,
        python: str = sys.executable,
        metrics: Metrics | None = None,
    ) -> None:
        self.size = max(1, size)
        # Each job is counted and timed as a run of pict-rs's ``magick`` would be, with
        # ``command`` = ENGINE_COMMAND; each worker replaced, as a restart.
        self._metrics = metrics if metrics is not None else Metrics()
        self._timeout = job_timeout
        self._limits = limits
        self._tmp_dir = tmp_dir
        self._python = python
        # Unbounded: it never holds more than the live workers plus a few dead ones, and
        # giving a worker back must not block.
        self._idle_send, self._idle_recv = trio.open_memory_channel[_Worker](math.inf)
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(Reply)
        self._pids: set[int] = set()
        self._ready: set[int] = set()  # workers that loaded libvips and said so
        self.last_failure: str | None = None  # why the last worker did not start or died
        self.start_failed = False  # the last worker to start did not come up
        self._down_since: float | None = None  # trio time since when no worker is ready

    @property
    def pids(self) -> frozenset[int]:
        """Live worker process ids (tests kill them to prove the pool heals)."""
        return frozenset(self._pids)

    @property
    def ready(self) -> int:
        """How many workers are up and past their start-up (for /healthz)."""
        return len(self._ready)

    def down(self, grace: float = STARTUP_S) -> bool:
        """No worker can take a job, and none is merely restarting: the last one to start
        failed, or none has been ready for ``grace`` seconds (for /healthz: a worker killed
        for a timeout is back within a second, and must not take the server out of a load
        balancer meanwhile)."""
        if self._ready:
            return False
        since = self._down_since
        return self.start_failed or since is None or trio.current_time() - since > grace

    def _set_ready(self, pid: int, ready: bool) -> None:
        if ready:
            self._ready.add(pid)
            self.start_failed, self.last_failure, self._down_since = False, None, None
        else:
            self._ready.discard(pid)
            if not self._ready and self._down_since is None:
                self._down_since = trio.current_time()

    def _env(self) -> dict[str, str]:
        root = str(Path(pictrs_trio.__file__).resolve().parent.parent)
        path = os.environ.get("PYTHONPATH")
        return {
            **os.environ,
            "PYTHONPATH": root if not path else f"{root}{os.pathsep}{path}",
            LIMITS_ENV: msgspec.json.encode(self._limits).decode(),
            # libvips' temporary files (a full decode over the in-memory limit) go there
            **({"TMPDIR": str(self._tmp_dir)} if self._tmp_dir is not None else {}),
            # One job per worker at a time: libvips threads would only fight the other workers.
            "VIPS_CONCURRENCY": "1",
            # glibc makes an arena per thread, which eats the address-space limit for nothing.
            "MALLOC_ARENA_MAX": "2",
            # Return freed pixel buffers to the kernel at once instead of keeping them in
            # RSS (glibc's dynamic threshold would move big buffers onto the heap).
            "MALLOC_MMAP_THRESHOLD_": str(128 * 1024),
            "MALLOC_TRIM_THRESHOLD_": str(256 * 1024),
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep ``size`` workers alive until cancelled; all are killed and reaped on exit."""
        async with trio.open_nursery() as nursery:
            for index in range(self.size):
                await nursery.start(self._slot, index)
            task_status.started()

    async def _slot(self, index: int, *, task_status: trio.TaskStatus[None]) -> None:
        started = False
        while True:
            try:
                proc = spawn([self._python, "-m", "pictrs_trio.media.vips_worker"], env=self._env())
            except OSError as exc:
                self.last_failure, self.start_failed = f"could not start: {exc}", True
                logger.error("engine worker {} could not start: {}", index, exc)
                if not started:
                    task_status.started()
                    started = True
                await trio.sleep(RESTART_BACKOFF_S)
                continue
            self._pids.add(proc.pid)
            began = trio.current_time()
            try:
                async with trio.open_nursery() as watch:
                    watch.start_soon(self._drain_stderr, proc, index)
                    worker = _Worker(proc)
                    if await self._wait_ready(worker):
                        self._set_ready(proc.pid, True)
                        await self._idle_send.send(worker)
                    if not started:
                        task_status.started()
                        started = True
                    await proc.wait()
            finally:
                self._pids.discard(proc.pid)
                self._set_ready(proc.pid, False)
                if proc.returncode is None:
                    proc.kill()
                with trio.move_on_after(REAP_S, shield=True):
                    await proc.wait()
                    await proc.aclose()
            logger.info(
                "engine worker {} (pid {}) exited with {}", index, proc.pid, proc.returncode
            )
            killed = proc.returncode == -signal.SIGKILL
            self._metrics.count(ENGINE_RESTARTS, {"reason": "killed" if killed else "exited"})
            if proc.returncode != -signal.SIGKILL:
                self.last_failure = f"worker exited with {proc.returncode}"
            # Killed (by us, for a timeout or crash) restarts at once; a child that exits on
            # its own right after starting is broken, so wait before trying again.
            if (
                proc.returncode != -signal.SIGKILL
                and trio.current_time() - began < RESTART_BACKOFF_S
            ):
                self.start_failed = True
                await trio.sleep(RESTART_BACKOFF_S)

    async def _wait_ready(self, worker: _Worker) -> bool:
        """A worker is handed out only after its Ready frame (libvips loaded, warmed up)."""
        try:
            with trio.fail_after(STARTUP_S):
                (size,) = HEADER.unpack(await worker.read_exact(HEADER.size))
                if size <= MAX_FRAME and isinstance(
                    self._decoder.decode(await worker.read_exact(size)), Ready
                ):
                    return True
        except (trio.TooSlowError, trio.BrokenResourceError, EOFError, msgspec.DecodeError):
            pass
        self.last_failure, self.start_failed = "worker did not finish starting", True
        logger.error("engine worker (pid {}) did not start properly", worker.proc.pid)
        worker.proc.kill()
        return False

    @staticmethod
    async def _drain_stderr(proc: Child, index: int) -> None:
        # libvips warns about every odd upload; keep that out of the server's stderr.
        assert proc.stderr is not None
        pending = b""
        async for chunk in proc.stderr:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                text = line.decode("utf-8", "replace")[:STDERR_LINE]
                logger.debug("engine worker {}: {}", index, text)

    async def _checkout(self) -> _Worker | None:
        while True:
            worker = await self._idle_recv.receive()
            if worker.alive:
                return worker
            # died while idle; its slot is already starting a replacement

    async def submit(self, job: Request) -> Reply:
        """Run one job on an idle worker; return its (non-failure) reply.

        Raises UnsupportedMedia when the engine refused the input, MediaToolError
        ``command-timeout`` (400) past the job time limit, MediaToolError ``command-error``
        when the worker crashed or broke the protocol (the worker is replaced).
        """
        payload = frame(self._encoder.encode(job))
        worker: _Worker | None = None
        # Waiting for a free worker is queueing, not work: bounded generously so a pool that
        # cannot start workers fails requests instead of hanging them.
        with trio.move_on_after(self._timeout * 4):
            worker = await self._checkout()
        if worker is None:
            raise EngineBusy("no engine worker available")
        healthy = False
        try:
            with self._metrics.guard(PROCESS, _COMMAND), trio.fail_after(self._timeout):
                reply = await self._roundtrip(worker, payload)
                healthy = True
                # Raised in here, so that a refused job counts as a run that failed.
                if isinstance(reply, Failed):
                    if reply.media:
                        raise UnsupportedMedia(f"media rejected by the engine: {reply.message}")
                    raise MediaToolError(f"engine job failed: {reply.message}")
        except trio.TooSlowError:
            raise ToolTimeout(f"engine job timed out after {self._timeout:g}s") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, EOFError) as exc:
            raise MediaToolError(f"engine worker died during a job: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise MediaToolError(f"engine worker broke the protocol: {exc}") from exc
        finally:
            if healthy:
                self._idle_send.send_nowait(worker)  # room is guaranteed: one slot per worker
            elif worker.alive:
                worker.proc.kill()  # mid-job state is unknown: never reuse it
        return reply

    async def _roundtrip(self, worker: _Worker, payload: bytes) -> Reply:
        assert worker.proc.stdin is not None
        await worker.proc.stdin.send_all(payload)
        (size,) = HEADER.unpack(await worker.read_exact(HEADER.size))
        if size > MAX_FRAME:
            raise msgspec.DecodeError(f"reply frame of {size} bytes")
        reply: Reply = self._decoder.decode(await worker.read_exact(size))
        return reply
