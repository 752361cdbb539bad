"""What ``/healthz`` checks: every part a request needs (pict-rs's repo and store checks,
plus the engine and the tools pict-rs's own container always carries). The first part that
is down raises ``Unhealthy`` naming it, with that part's own error code; /healthz answers it
with 503."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import trio

from pictrs_trio.media.tools import TOOL_PACKAGES, missing_tools
from pictrs_trio.rules.errors import ErrorCode, PictrsError, Unhealthy
from pictrs_trio.services.state import AppState


async def check(state: AppState) -> None:
    """Raises Unhealthy for the first part down: the repo (write and read back), the store
    (write a probe; in read-only mode, list it), the scratch folder (write a probe; uploads
    and renders spool there), the engine workers (one up, or one merely
    restarting), the tools (all on PATH)."""
    read_only = state.config.server.read_only
    store = partial(state.store.health, write=not read_only)  # read-only: a reading store
    for part, probe in (("repo", state.repo.health), ("store", store)):
        try:
            await probe()
        except PictrsError as exc:
            raise Unhealthy(f"{part}: {exc.msg}", code=exc.code) from exc
    try:
        await trio.to_thread.run_sync(_probe_scratch, state.tmp_dir)
    except OSError as exc:
        raise Unhealthy(
            f"temporary_directory {state.tmp_dir}: cannot write there: {exc.strerror or exc}",
            code=ErrorCode.FILE_IO_ERROR,
        ) from exc
    engine = state.media.engine
    if engine.down():
        why = f" ({engine.last_failure})" if engine.last_failure else ""
        raise Unhealthy(f"engine: no engine worker is running{why}", code=ErrorCode.COMMAND_ERROR)
    if state.config.server.danger_dummy_mode:
        return  # pict-rs runs without the tools in dummy mode
    missing = await trio.to_thread.run_sync(missing_tools)
    if missing:
        packages = sorted({TOOL_PACKAGES[tool] for tool in missing})
        raise Unhealthy(
            f"tools: {', '.join(missing)} not found on PATH (Debian: {', '.join(packages)})",
            code=ErrorCode.COMMAND_NOT_FOUND,
        )


def _probe_scratch(folder: Path) -> None:
    probe = folder / f".health-{os.getpid()}"
    probe.write_bytes(b"ok")
    probe.unlink()
