"""One long-lived ``exiftool -stay_open True -@ -`` process, supervised.

Starting Perl and exiftool costs ~90 ms; a command on the running process costs a few ms.
So ``ExifTool.supervise`` runs in the media nursery, keeps one process alive and restarts it
whenever it dies; commands are serialised by a lock, each under the process timeout. A command
that times out or finds the process dead kills it and raises MediaToolError; the supervisor
starts a fresh process and the next command works.

Framing: exiftool reads arguments one per line from stdin and ends each command's output with
``{readyN}`` when the command ends in ``-executeN``. stderr is merged into stdout so warnings
and errors arrive in order, before the marker.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import trio
from loguru import logger

from pictrs_trio.media.run import stderr_excerpt
from pictrs_trio.media.spawn import Child, spawn
from pictrs_trio.metrics import Metrics
from pictrs_trio.metrics.names import PROCESS
from pictrs_trio.rules.errors import ErrorCode, MediaToolError, ToolFailed, ToolMissing, ToolTimeout
from pictrs_trio.rules.formats import Fmt

RESTART_BACKOFF_S = 1.0  # a process that dies at once is not restarted in a hot loop
REAP_S = 5.0  # bounded wait for a killed child to be reaped
# A 1x1 JPEG (made by libvips) stripped once per process start to load the writer modules.
WARMUP_JPEG = bytes.fromhex(
    "ffd8ffdb004300100b0c0e0c0a100e0d0e1211101318281a181616183123251d283a333d3c3933383740485c"
    "4e404457453738506d51575f626768673e4d71797064785c656763ffdb0043011112121815182f1a1a2f6342"
    "3842636363636363636363636363636363636363636363636363636363636363636363636363636363636363"
    "6363636363636363ffc00011080001000103012200021101031101ffc4001f00000105010101010101000000"
    "00000000000102030405060708090a0bffc400b5100002010303020403050504040000017d01020300041105"
    "122131410613516107227114328191a1082342b1c11552d1f02433627282090a161718191a25262728292a34"
    "35363738393a434445464748494a535455565758595a636465666768696a737475767778797a838485868788"
    "898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7"
    "d8d9dae1e2e3e4e5e6e7e8e9eaf1f2f3f4f5f6f7f8f9faffc4001f0100030101010101010101010000000000"
    "000102030405060708090a0bffc400b511000201020404030407050404000102770001020311040521310612"
    "41510761711322328108144291a1b1c109233352f0156272d10a162434e125f11718191a262728292a353637"
    "38393a434445464748494a535455565758595a636465666768696a737475767778797a82838485868788898a"
    "92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9"
    "dae2e3e4e5e6e7e8e9eaf2f3f4f5f6f7f8f9faffda000c03010002110311003f00f3fa28a2803fffd9"
)


def _safe_arg(path: Path) -> str:
    """Arguments travel one per line: a newline in a path would inject exiftool options.

    Only our own temp paths get here (uuid names), so this is an assertion, not a filter.
    """
    text = os.fspath(path)
    if "\n" in text or "\r" in text or text.startswith("-"):
        raise MediaToolError(f"refusing unsafe path for exiftool: {text!r}")
    return text


COMMAND = {"command": "exiftool"}  # the label of its commands in pict-rs.process.*


class ExifTool:
    """The supervised exiftool process: create, ``nursery.start(et.supervise)``, then call.

    With ``idle_timeout`` > 0 the process starts on the first command and is stopped after
    that many seconds without one (Perl and exiftool hold ~29 MB, and most servers upload
    far less often than they serve); the next command starts it again (~0.1 s). With 0 it
    starts at once and runs until shutdown.
    """

    def __init__(
        self,
        *,
        timeout: float,
        warmup_dir: Path | None = None,
        executable: str = "exiftool",
        idle_timeout: float = 0.0,
        metrics: Metrics | None = None,
    ) -> None:
        self._timeout = timeout
        self._metrics = metrics if metrics is not None else Metrics()
        self._warmup_dir = warmup_dir
        self._executable = executable
        self._idle_timeout = idle_timeout
        self._lock = trio.Lock()
        self._proc: Child | None = None
        self._buffer = bytearray()
        self._alive = trio.Event()  # set while _proc is a live process
        self._wanted = trio.Event()  # set when a command waits for a process
        self._spawn_error: MediaToolError | None = None
        self._counter = itertools.count(1)
        self._exited = trio.Event()  # set when the current process has been reaped
        self._last_used = 0.0

    @property
    def pid(self) -> int | None:
        """The current process id (tests kill it to prove recovery)."""
        return self._proc.pid if self._proc is not None else None

    async def supervise(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep exiftool available until cancelled: started when needed (or at once without
        an idle timeout), restarted when it dies, stopped when idle; the child is killed and
        reaped on exit."""
        lazy = self._idle_timeout > 0
        if lazy:
            task_status.started()
        started = lazy
        while True:
            if lazy:
                await self._wanted.wait()
                # Reset before starting: a command that finds this process dead later sets
                # the new event, and the next turn of the loop starts another.
                self._wanted = trio.Event()
            proc = await self._spawn()
            if proc is None:
                if not started:
                    task_status.started()  # callers get the spawn error, the server runs on
                    started = True
                await trio.sleep(RESTART_BACKOFF_S)
                continue
            began = trio.current_time()
            idle_stop = False
            try:
                if not lazy:  # a lazy start is for a waiting command: no extra work first
                    await self._warm_up()
                if not started:
                    task_status.started()
                    started = True
                if lazy:
                    self._last_used = trio.current_time()
                    idle_stop = await self._run_until_idle(proc)
                else:
                    await proc.wait()
            finally:
                self._alive = trio.Event()
                self._proc = None
                self._exited.set()
                self._exited = trio.Event()
                with trio.move_on_after(REAP_S, shield=True):
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
                    await proc.aclose()
            if idle_stop:
                logger.debug("exiftool (pid {}) stopped after being idle", proc.pid)
                continue
            logger.warning(
                "exiftool (pid {}) exited with {}; restarting", proc.pid, proc.returncode
            )
            # Killed (by us, for a timeout or crash) restarts at once; a child that exits on
            # its own right after starting is broken, so wait before trying again.
            if (
                proc.returncode != -signal.SIGKILL
                and trio.current_time() - began < RESTART_BACKOFF_S
            ):
                await trio.sleep(RESTART_BACKOFF_S)

    async def _run_until_idle(self, proc: Child) -> bool:
        """Return when ``proc`` has exited: True when we stopped it for being idle, False
        when it exited on its own (a crash, or killed by a command that gave up on it)."""
        while proc.returncode is None:
            with trio.move_on_at(self._last_used + self._idle_timeout):
                await proc.wait()
                return False
            if self._lock.locked():
                # A command is running. Keep watching the process rather than queueing on
                # the lock: if it dies mid-command, that command waits for us to notice.
                with trio.move_on_after(self._idle_timeout):
                    await proc.wait()
                    return False
                continue
            async with self._lock:  # no command starts while it shuts down
                idle = trio.current_time() >= self._last_used + self._idle_timeout
                if idle and proc.returncode is None:
                    await self._stop(proc)
                    return True
        return False

    async def _stop(self, proc: Child) -> None:
        # "-stay_open False" makes exiftool exit 0 after the commands before it.
        assert proc.stdin is not None
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await proc.stdin.send_all(b"-stay_open\nFalse\n")
        with trio.move_on_after(REAP_S):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    async def _warm_up(self) -> None:
        # The first write command loads exiftool's writer modules (~40 ms): not in an upload.
        if self._warmup_dir is None:
            return
        src = self._warmup_dir / f"{uuid.uuid4().hex}.jpeg"
        dst = self._warmup_dir / f"{uuid.uuid4().hex}.jpeg"
        try:
            await trio.Path(src).write_bytes(WARMUP_JPEG)
            await self.strip(src, dst)
        except (MediaToolError, OSError) as exc:
            logger.warning("exiftool warm-up failed: {}", exc)
        finally:
            src.unlink(missing_ok=True)
            dst.unlink(missing_ok=True)

    async def _spawn(self) -> Child | None:
        try:
            proc = spawn(
                [self._executable, "-stay_open", "True", "-@", "-"],
                stderr=subprocess.STDOUT,
            )
        except FileNotFoundError:
            self._spawn_error = ToolMissing("exiftool not found")
        except PermissionError:
            self._spawn_error = ToolMissing(
                "exiftool not executable", code=ErrorCode.COMMAND_PERMISSION_DENIED
            )
        except OSError as exc:
            self._spawn_error = MediaToolError(f"exiftool could not start: {exc}")
        else:
            self._spawn_error = None
            self._proc = proc
            self._buffer.clear()
            self._alive.set()
            return proc
        # Wake waiters so they raise the spawn error instead of waiting for their deadline.
        self._alive.set()
        self._alive = trio.Event()
        return None

    async def execute(self, args: list[str]) -> str:
        """Run one command (``args`` without ``-execute``); return its merged output text.

        A process found dead mid-command (killed or crashed since the last command) is
        replaced and the command retried once; our commands are idempotent.
        Raises MediaToolError: ``command-timeout`` (400) past the timeout, ``command-error``
        when the process died twice or could not be started.
        """
        async with self._lock:
            try:
                self._last_used = trio.current_time()
                with self._metrics.guard(PROCESS, COMMAND), trio.fail_after(self._timeout):
                    for attempt in (1, 2):
                        proc = await self._wait_alive()
                        try:
                            return await self._roundtrip(proc, args)
                        except (
                            trio.BrokenResourceError,
                            trio.ClosedResourceError,
                            EOFError,
                        ) as exc:
                            self._kill(proc)
                            await self._wait_dead(proc)
                            if attempt == 2:
                                raise MediaToolError("exiftool died during a command") from exc
                    raise AssertionError("unreachable")
            except trio.TooSlowError:
                self._kill()
                raise ToolTimeout(f"exiftool timed out after {self._timeout:g}s") from None
            except trio.Cancelled:
                # The caller gave up mid-command: the reply would confuse the next caller.
                self._kill()
                raise
            finally:
                self._last_used = trio.current_time()

    async def _wait_dead(self, proc: Child) -> None:
        # Wait until the supervisor has noticed this process is gone (it then starts another).
        exited = self._exited
        if self._proc is proc:
            await exited.wait()

    async def _wait_alive(self) -> Child:
        while True:
            proc = self._proc
            if proc is not None and proc.returncode is None:
                return proc
            self._wanted.set()  # (re)started on demand when idle-stopped or after a failure
            if self._spawn_error is not None:
                raise self._spawn_error
            await self._alive.wait()

    async def _roundtrip(self, proc: Child, args: list[str]) -> str:
        assert proc.stdin is not None
        assert proc.stdout is not None
        n = next(self._counter)
        marker = b"{ready%d}\n" % n
        payload = "".join(a + "\n" for a in [*args, f"-execute{n}"]).encode()
        await proc.stdin.send_all(payload)
        while (end := self._buffer.find(marker)) < 0:
            chunk = await proc.stdout.receive_some(65536)
            if not chunk:
                raise EOFError("exiftool closed its output")
            self._buffer += chunk
        out = bytes(self._buffer[:end])
        del self._buffer[: end + len(marker)]
        return out.decode("utf-8", "replace")

    def _kill(self, proc: Child | None = None) -> None:
        proc = proc if proc is not None else self._proc
        if proc is not None and proc.returncode is None:
            proc.kill()  # the supervisor reaps it and starts a fresh one

    async def strip(self, src: Path, dst: Path, *, fmt: Fmt = Fmt.JPEG) -> None:
        """Write ``src`` without any metadata to ``dst`` (``-all=``; JPEG scans untouched).

        AVIF gets ``-exif:all= -xmp:all=`` instead: exiftool 12.57's ``-all=`` drops the ICC
        item of libheif-written files and leaves broken item offsets behind (unreadable
        output). A bare JPEG XL codestream cannot carry metadata, so it is copied as is.
        Raises MediaToolError ``command-failure`` (400) when exiftool refuses the file.
        """
        src_arg, dst_arg = _safe_arg(src), _safe_arg(dst)
        if _is_jxl_codestream(src):
            await trio.to_thread.run_sync(shutil.copyfile, src, dst)
            return
        # Path calls below touch our local temp dir only: cheaper inline than via a thread.
        dst.unlink(missing_ok=True)  # noqa: ASYNC240 - exiftool never overwrites with -o
        delete = ["-exif:all=", "-xmp:all="] if fmt is Fmt.AVIF else ["-all="]
        out = await self.execute([*delete, "-o", dst_arg, src_arg])
        # "created" when metadata was removed, "copied" when there was none to remove.
        done = "1 image files created" in out or "1 image files copied" in out
        if not dst.exists() or not done:  # noqa: ASYNC240
            dst.unlink(missing_ok=True)  # noqa: ASYNC240
            raise ToolFailed(f"exiftool could not strip metadata: {stderr_excerpt(out.encode())}")

    async def orientation(self, path: Path) -> int | None:
        """EXIF orientation 1..8, or None when the file has no such tag."""
        out = await self.execute(["-n", "-s3", "-Orientation", _safe_arg(path)])
        text = out.strip()
        return int(text) if text.isdigit() else None


def _is_jxl_codestream(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(2) == b"\xff\x0a"
