"""Long-lived children that die with the server, even when it is killed with SIGKILL.

``trio.lowlevel.open_process`` forks from a worker thread, and Linux ties
``PR_SET_PDEATHSIG`` to the thread that forked, not to the process: the child would be
killed as soon as trio's thread cache retires that idle thread (after ~10 s). So the
long-lived children (exiftool, engine workers, server worker processes) are forked here, on
the event loop's own thread, which lives as long as the server; their pipes become trio
streams and their exit is awaited through a pidfd. Short tool runs (ffmpeg) keep using
``trio.run_process``: they end by themselves.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence

import trio

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class Child:
    """A spawned child: ``stdin``/``stdout``/``stderr`` trio streams (when piped), ``wait``,
    ``kill``, ``send_signal``, ``pid``, ``returncode``."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.stdin = _stream(popen.stdin)
        self.stdout = _stream(popen.stdout)
        self.stderr = _stream(popen.stderr)
        self._pidfd = os.pidfd_open(popen.pid)

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    async def wait(self) -> int:
        while self._popen.poll() is None:
            await trio.lowlevel.wait_readable(self._pidfd)
        return self._popen.returncode

    def send_signal(self, sig: int) -> None:
        if self._popen.poll() is None:
            self._popen.send_signal(sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def aclose(self) -> None:
        """Close our ends of the pipes and the pidfd (after the child has been reaped)."""
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                await stream.aclose()
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1


def _stream(f: object) -> trio.lowlevel.FdStream | None:
    if f is None:
        return None
    fd = os.dup(f.fileno())  # type: ignore[attr-defined]
    f.close()  # type: ignore[attr-defined]
    return trio.lowlevel.FdStream(fd)


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    stdin: int | None = subprocess.PIPE,
    stdout: int | None = subprocess.PIPE,
    stderr: int | None = subprocess.PIPE,
) -> Child:
    """Fork ``argv`` on this (the event loop's) thread; the child is SIGKILLed if the
    server dies. Blocks for the fork and exec, a few milliseconds. Raises OSError."""
    popen = subprocess.Popen(
        list(argv),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env=dict(env) if env is not None else None,
        pass_fds=tuple(pass_fds),
        preexec_fn=_die_with_parent,
    )
    try:
        return Child(popen)
    except BaseException:  # e.g. out of file descriptors for the pidfd: do not leak it
        popen.kill()
        popen.wait()
        for f in (popen.stdin, popen.stdout, popen.stderr):
            if f is not None:
                f.close()
        raise
