"""The one wrapper for short-lived tool processes (ffprobe, ffmpeg, cjxl, djxl, jxlinfo).

Every call runs under a ``CapacityLimiter`` (CPU is the scarce resource) and a deadline the
caller owns (``media.process_timeout``). Cancellation kills the child at once: media tools do
nothing useful with SIGTERM that we would wait for.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import trio

from pictrs_trio.metrics import Metrics
from pictrs_trio.metrics.names import PROCESS
from pictrs_trio.rules.errors import (
    ErrorCode,
    MediaToolError,
    ToolFailed,
    ToolMissing,
    ToolTimeout,
)

STDERR_EXCERPT = 300  # characters of a failing tool's stderr kept in the error message


async def _kill_now(proc: trio.Process) -> None:
    proc.kill()


def stderr_excerpt(raw: bytes) -> str:
    """The tail of a tool's stderr, one line, short enough for a log line or error body."""
    text = raw.decode("utf-8", "replace").strip().replace("\n", " | ")
    return text[-STDERR_EXCERPT:]


async def run_tool(
    argv: Sequence[str | Path],
    *,
    timeout: float,  # noqa: ASYNC109 - the per-command deadline is owned here, by the caller's budget
    limiter: trio.CapacityLimiter,
    stdin: bytes | None = None,
    capture_stdout: bool = True,
    env: Mapping[str, str] | None = None,
    metrics: Metrics | None = None,
) -> bytes:
    """Run one tool to completion and return its stdout (``b""`` when not captured). A run
    is counted and timed in ``metrics`` (``pict-rs.process.*``, ``command`` = the tool) from
    the moment the limiter lets it start.

    Raises MediaToolError with code ``command-not-found`` / ``command-permission-denied``
    (500) when it cannot start, ``command-timeout`` (400) past ``timeout`` seconds and
    ``command-failure`` (400) on a non-zero exit, naming the tool and the end of its stderr.
    """
    args = [os.fspath(a) for a in argv]
    tool = Path(args[0]).name
    # Only the options that apply: run_process refuses stdout= next to capture_stdout.
    options: dict[str, Any] = {}
    if env is not None:
        options["env"] = {**os.environ, **env}
    if not capture_stdout:
        options["stdout"] = subprocess.DEVNULL  # never onto the server's own stdout
    guard = (metrics or Metrics()).guard
    try:
        async with limiter:
            with guard(PROCESS, {"command": tool}), trio.fail_after(timeout):
                done = await trio.run_process(
                    args,
                    stdin=stdin if stdin is not None else subprocess.DEVNULL,
                    capture_stdout=capture_stdout,
                    capture_stderr=True,
                    check=False,
                    deliver_cancel=_kill_now,
                    **options,
                )
                if done.returncode != 0:
                    raise ToolFailed(
                        f"{tool} failed (exit {done.returncode}): {stderr_excerpt(done.stderr)}"
                    )
    except trio.TooSlowError:
        raise ToolTimeout(f"{tool} timed out after {timeout:g}s") from None
    except FileNotFoundError as exc:
        raise ToolMissing(f"{tool} not found") from exc
    except PermissionError as exc:
        raise ToolMissing(
            f"{tool} not executable", code=ErrorCode.COMMAND_PERMISSION_DENIED
        ) from exc
    except OSError as exc:
        raise MediaToolError(f"{tool} could not start: {exc}") from exc
    return done.stdout if capture_stdout else b""
