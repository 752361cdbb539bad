"""``pictrs-trio migrate-store``: open the repo and both stores, move the media
(services/migrate.py), show how it goes, and end with a summary and an exit status.

    0    finished: every file the repo names is in TO now
    1    unfinished: files failed (or the run stopped early); or it could not start
    130  interrupted (SIGINT or SIGTERM): run the same command again to go on

``--abandon`` (services/abandon.py) opens the same, TO only if it can be, and exits 0 once
every moved file is back in FROM, 1 while some are left moved, 130 when interrupted.

On a terminal (stderr is a TTY) a progress bar is redrawn on stderr; otherwise a plain
progress line is logged every ``LOG_EVERY`` seconds. The summary goes to stdout.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, TypeVar

import trio
from loguru import logger

from journal import Journal, JournalError
from pictrs_trio import store as stores
from pictrs_trio.config import Config, ConfigError, FilesystemStore, ObjectStorageStore
from pictrs_trio.http.events import POLL_SECONDS as EVENTS_POLL_SECONDS
from pictrs_trio.repo.sqlite import open_sqlite_repo
from pictrs_trio.rules.errors import PictrsError
from pictrs_trio.runtime import logging as pictrs_logging
from pictrs_trio.runtime.migrate_feed import announce, announce_end, serve_feed
from pictrs_trio.runtime.startup import StartupError, check_object_storage
from pictrs_trio.services.abandon import Abandoned, abandon_migration
from pictrs_trio.services.migrate import (
    MigrateOptions,
    MigrationRefused,
    Progress,
    check_stores,
    describe,
    migrate_store,
    start_owner,
)
from pictrs_trio.store import Store

if TYPE_CHECKING:
    from pictrs_trio.runtime.cli import MigrateStoreArgs

BAR_EVERY = 0.2  # seconds between redraws of the terminal bar
LOG_EVERY = 10.0  # seconds between progress log lines when not on a terminal
BAR_WIDTH = 24
EXIT_UNFINISHED = 1
EXIT_INTERRUPTED = 130

T = TypeVar("T")


# --- pure: how progress reads ------------------------------------------------------------


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _size(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def progress_line(progress: Progress, elapsed: float) -> str:
    """``120/300 files (40%), 2 missing, 0 failed, 85.0 files/s, 1.2 MB/s, ETA 0:00:02``."""
    handled, total = progress.handled, progress.total
    percent = 100 if total == 0 else min(100, handled * 100 // total)
    rate = handled / elapsed if elapsed > 0 else 0.0
    eta = _duration((total - handled) / rate) if rate > 0 and handled < total else "?"
    if handled >= total:
        eta = _duration(0)
    bytes_rate = progress.bytes / elapsed if elapsed > 0 else 0.0
    return (
        f"{handled}/{total} files ({percent}%), {progress.missing} missing, "
        f"{progress.failed} failed, {rate:.1f} files/s, {_size(bytes_rate)}/s, ETA {eta}"
    )


def progress_bar(progress: Progress, elapsed: float, width: int = BAR_WIDTH) -> str:
    """``[#########---------------] `` then ``progress_line``."""
    total = progress.total
    filled = width if total == 0 else min(width, progress.handled * width // total)
    return f"[{'#' * filled}{'-' * (width - filled)}] {progress_line(progress, elapsed)}"


def summary(progress: Progress, elapsed: float, source: str, destination: str) -> list[str]:
    """What the run did and what to do next, as lines for stdout."""
    skipped = progress.done_before + progress.skipped
    took = f"{elapsed:.1f} s" if elapsed < 60 else _duration(elapsed)
    lines = [
        f"migrate-store: moved {progress.moved} files ({_size(progress.bytes)}) in {took}; "
        f"skipped {skipped} (moved before); missing {progress.missing}; "
        f"failed {progress.failed}"
    ]
    if progress.finished:
        lines.append(f"Finished: every file the repo names is in {destination} now.")
        if progress.missing:
            lines.append(
                f"{progress.missing} files were missing from the old store and were skipped; "
                "their links answer 404 (POST /internal/prune_missing forgets them)."
            )
        lines.append(
            f"Point the configuration at the new store before starting the server "
            f"({_store_hint(destination)}). The old store ({source}) is no longer read: "
            "remove it once the server works."
        )
    else:
        why = f" ({progress.stopped})" if progress.stopped else ""
        lines.append(
            f"Unfinished{why}: fix the cause and run the same command again; it goes on where "
            "it stopped without copying moved files again. The server refuses to start "
            "against this repo until the migration has finished."
        )
    return lines


def abandon_summary(result: Abandoned, source: str, destination: str) -> list[str]:
    """What ``--abandon`` did and what to do next, as lines for stdout."""
    lines = [
        f"migrate-store --abandon: moved back {result.moved_back} of {result.total} files; "
        f"missing {result.missing}; failed {result.failed}; removed {result.removed} copies "
        f"from {destination}"
    ]
    if result.finished:
        lines.append(
            f"Abandoned: the repo names the files in {source} again, as before the "
            f"migration; keep (or put back) the configured store at {source}."
        )
        if result.missing:
            lines.append(
                f"{result.missing} files were missing from {source}: their links answer 404 "
                "(POST /internal/prune_missing forgets them)."
            )
    else:
        lines.append(
            f"Unfinished: {result.kept} moved files were left moved (their copy in {source} "
            "is missing or could not be read). Restore them and run the same command again; "
            "or add --skip-missing-files to move them back anyway; or finish the migration "
            "instead (the same command without --abandon)."
        )
    if result.unreachable is not None:
        lines.append(
            f"Copies in {destination} were not removed ({result.unreachable}): remove them "
            "with that folder or bucket, if it is still there."
        )
    return lines


def _store_hint(destination: str) -> str:
    if destination.startswith("filesystem -p "):
        path = destination.removeprefix("filesystem -p ")
        return (
            f'[store] type = "filesystem", path = "{path}"; or PICTRS__STORE__PATH={path}; '
            f"or `run filesystem -p {path}`"
        )
    return f'[store] type = "object_storage" with the endpoint, bucket and keys of `{destination}`'


# --- the command -------------------------------------------------------------------------


def run(config: Config, args: MigrateStoreArgs, warnings: Sequence[str] = ()) -> int:
    """Run the migration; returns the exit status. Raises ConfigError (status 2) for a FROM
    or TO bucket whose settings cannot work, StartupError (status 1) when it cannot start:
    FROM and TO are one store, a store or the repo cannot be opened, another process uses
    the repo, another migration is unfinished."""
    pictrs_logging.setup(config.tracing.logging)
    for message in warnings:
        logger.warning("configuration: {}", message)
    for which, store in (("FROM", args.source), ("TO", args.destination)):
        if isinstance(store, ObjectStorageStore):
            try:
                check_object_storage(store)  # the checks ``run`` makes of its store
            except ConfigError as exc:
                raise ConfigError(f"{which} store: {exc}") from None
    try:
        check_stores(args.source, args.destination)
    except MigrationRefused as exc:
        raise StartupError(str(exc)) from None
    options = MigrateOptions(
        skip_missing_files=args.skip_missing_files, concurrency=args.concurrency
    )
    try:
        if args.abandon:
            return trio.run(_abandon, config, args, options)
        return trio.run(_migrate, config, args, options, Progress())
    except BaseExceptionGroup as group:
        raise _unwrap(group) from None


def _scratch(config: Config) -> Path:
    base = Path(config.server.temporary_directory or tempfile.gettempdir()) / "pictrs-trio"
    return base / f"{os.getpid()}-{uuid.uuid4().hex}"


async def _migrate(
    config: Config, args: MigrateStoreArgs, options: MigrateOptions, progress: Progress
) -> int:
    source_config, destination_config = args.source, args.destination
    source_name, destination_name = describe(source_config), describe(destination_config)
    tmp_dir = _scratch(config)
    await trio.to_thread.run_sync(lambda: tmp_dir.mkdir(parents=True, exist_ok=True))
    error: str | None = None
    try:
        async with AsyncExitStack() as stack:
            repo = await _enter(
                stack, f"repo.path {config.repo.path}", open_sqlite_repo(Path(config.repo.path))
            )
            source = await _enter(stack, source_name, stores.open_store(source_config))
            destination = await _enter(
                stack, destination_name, stores.open_store(destination_config)
            )
            journal = Journal(repo.journal_db())
            feed_stopping = trio.Event()
            async with trio.open_nursery() as nursery:
                try:  # alone on the repo; also undoes what dead owners left
                    await start_owner(nursery, journal)
                except MigrationRefused as exc:
                    raise StartupError(str(exc)) from None
                nursery.start_soon(_report, progress, sys.stderr)
                feed = await nursery.start(serve_feed, config, journal, feed_stopping)
                nursery.start_soon(announce, journal, progress, source_name, destination_name)
                with trio.CancelScope() as work:
                    nursery.start_soon(_watch_signals, work)
                    try:
                        await migrate_store(
                            repo=repo,
                            journal=journal,
                            source=source,
                            destination=destination,
                            from_store=source_name,
                            to_store=destination_name,
                            tmp_dir=tmp_dir,
                            options=options,
                            progress=progress,
                            command=args.command or None,
                        )
                    except (MigrationRefused, PictrsError, JournalError) as exc:
                        error = _message(exc)
                if progress.run is not None:
                    await announce_end(journal, progress, source_name, destination_name)
                if feed is not None:  # open feeds get the last events, then "going away"
                    await trio.sleep(2 * EVENTS_POLL_SECONDS)
                    feed_stopping.set()
                    await trio.sleep(1.0)
                # the owner, the reporter, the signal watcher, the feed
                nursery.cancel_scope.cancel()
    finally:
        with trio.move_on_after(5, shield=True):
            await trio.to_thread.run_sync(lambda: shutil.rmtree(tmp_dir, ignore_errors=True))
    if error is not None:
        raise StartupError(error)
    if progress.run is None:  # a signal came before the run began
        print("Interrupted before the migration began.", flush=True)
        return EXIT_INTERRUPTED
    elapsed = trio.current_time() - progress.started if progress.started else 0.0
    for line in summary(progress, elapsed, source_name, destination_name):
        print(line, flush=True)
    if work.cancelled_caught:
        print("Interrupted: run the same command again to go on.", flush=True)
        return EXIT_INTERRUPTED
    return 0 if progress.finished else EXIT_UNFINISHED


async def _abandon(config: Config, args: MigrateStoreArgs, options: MigrateOptions) -> int:
    """``--abandon``: the stores and the repo opened as for a migration, but TO only if it
    can be (it may be gone), then ``abandon_migration`` and its summary."""
    source_name, destination_name = describe(args.source), describe(args.destination)
    result = Abandoned()
    error: str | None = None
    async with AsyncExitStack() as stack:
        repo = await _enter(
            stack, f"repo.path {config.repo.path}", open_sqlite_repo(Path(config.repo.path))
        )
        source = await _enter(stack, source_name, stores.open_store(args.source))
        destination = await _open_if_there(stack, args.destination, result)
        journal = Journal(repo.journal_db())
        async with trio.open_nursery() as nursery:
            try:
                await start_owner(nursery, journal)
            except MigrationRefused as exc:
                raise StartupError(str(exc)) from None
            with trio.CancelScope() as work:
                nursery.start_soon(_watch_signals, work)
                try:
                    await abandon_migration(
                        repo=repo,
                        journal=journal,
                        source=source,
                        destination=destination,
                        from_store=source_name,
                        to_store=destination_name,
                        options=options,
                        result=result,
                    )
                except (MigrationRefused, PictrsError, JournalError) as exc:
                    error = _message(exc)
            nursery.cancel_scope.cancel()
    if error is not None:
        raise StartupError(error)
    for line in abandon_summary(result, source_name, destination_name):
        print(line, flush=True)
    if work.cancelled_caught:
        print("Interrupted: run the same command again to go on.", flush=True)
        return EXIT_INTERRUPTED
    return 0 if result.finished else EXIT_UNFINISHED


async def _open_if_there(
    stack: AsyncExitStack, config: FilesystemStore | ObjectStorageStore, result: Abandoned
) -> Store | None:
    """TO, when it can be opened; a folder only if it exists (opening one makes it)."""
    if isinstance(config, FilesystemStore) and not await trio.to_thread.run_sync(
        os.path.isdir, config.path
    ):
        result.unreachable = f"{config.path} is not a folder"
        return None
    try:
        return await stack.enter_async_context(stores.open_store(config))
    except PictrsError as exc:
        result.unreachable = exc.msg
        return None


def _message(exc: BaseException) -> str:
    return exc.msg if isinstance(exc, PictrsError) else str(exc)


async def _enter(stack: AsyncExitStack, what: str, manager: AbstractAsyncContextManager[T]) -> T:
    """Open a resource for the stack's lifetime; a PictrsError (cannot open it) becomes a
    StartupError naming ``what``."""
    try:
        return await stack.enter_async_context(manager)
    except PictrsError as exc:
        raise StartupError(f"{what}: {exc.msg}") from None


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The StartupError (or PictrsError, as one) a nursery wrapped; else the group."""
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        elif isinstance(exc, StartupError):
            return exc
        elif isinstance(exc, (PictrsError, JournalError)):
            return StartupError(_message(exc))
    return group


async def _watch_signals(work: trio.CancelScope) -> None:
    """SIGINT or SIGTERM stop the run between files: copies in flight are discarded and
    nothing is left half-done (a kill -9 is safe too: the next run undoes it)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            logger.warning("received {}: stopping the migration", signal.Signals(signum).name)
            work.cancel()
            return


async def _report(progress: Progress, stream: TextIO) -> None:
    """Redraw the bar (terminal), or log a progress line now and then, while files move."""
    on_terminal = stream.isatty()
    write: Callable[[str], object] = stream.write
    drawn = False
    try:
        while True:
            await trio.sleep(BAR_EVERY if on_terminal else LOG_EVERY)
            if not progress.walking:
                continue
            elapsed = trio.current_time() - progress.started
            if on_terminal:
                write("\r" + progress_bar(progress, elapsed) + "\x1b[K")
                stream.flush()
                drawn = True
            else:
                logger.info("migrate-store: {}", progress_line(progress, elapsed))
    finally:
        if drawn:
            write("\r" + progress_bar(progress, trio.current_time() - progress.started) + "\n")
            stream.flush()
