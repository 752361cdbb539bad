"""``migrate-store``: move every stored file the repo names from one store to another and
repoint the rows, resumably, file by file (pict-rs ``src/migrate_store.rs``).

    refuse beside a live server; check both stores and the repo
    begin the run, or resume the unfinished one (same stores only)
    undo what a killed run left half-written (journal intents, queue ``migrate``)
    walk the files not moved yet, ``concurrency`` at a time; per file:
        record the intent on a fresh identifier, save it into the new store: from the
            old store's own file when it has one (a folder), else from a spool copy
        one transaction: repoint every row naming it, record old -> new, fulfil the intent
    all moved (missing ones skipped with --skip-missing-files): finish the run

Written against the ``Store`` and ``Repo`` Protocols only, so any store moves to any other.

What matches pict-rs: originals, variants and motion stills move, each under a new
identifier with its details; progress is recorded per file in ``store_migrations`` (a file
whose identifier is there is done, so a second run skips it), cleared when the run
finishes; a file missing from the old store fails the run unless ``--skip-missing-files``,
which skips it (its rows keep naming it); other failures are retried (10 attempts, 3 s
apart); ``--concurrency`` defaults to 32; old files stay where they were (the operator
removes the old store).

Where it differs: the raw bytes of backgrounded uploads still pending move too (their ingest
reads the row, services/handlers.py); a failed file does not stop the others, it is counted
and the run stays unfinished (pict-rs stops the pass and starts it again, up to 50 times); a
missing file is not retried; the repo records the run itself (``store_migration_runs``), so
the server refuses to start while it is unfinished (pict-rs starts and serves whatever the
rows name, docs/operations.md "Moving media with migrate-store"); a half-written copy of a
killed run is removed (its intent) at the next start; running a finished migration again
moves the files still in the old store (added since) and skips those in the new one, and
the server refuses to start on another store than the last finished run's (runtime/
startup.py); FROM and TO are compared normalised (``same_store``), not as typed; the run
records the command line that ran it, which the server names when it refuses
(``finish_command``); an unfinished run can be abandoned (services/abandon.py).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import msgspec
import trio
from loguru import logger

from journal import Journal, JournalError, NotAlone
from pictrs_trio.config import FilesystemStore, ObjectStorageStore
from pictrs_trio.repo import FileToMove, MovePosition, Repo, StoreMigration
from pictrs_trio.rules import jobs
from pictrs_trio.rules.egress import url_for_log
from pictrs_trio.rules.errors import PictrsError, StoreNotFound
from pictrs_trio.rules.formats import CONTENT_TYPES, Fmt
from pictrs_trio.services.local import copy_out
from pictrs_trio.services.storing import discard_from, save_into
from pictrs_trio.store import Store

__all__ = [
    "DEFAULT_CONCURRENCY",
    "MigrateOptions",
    "MigrationRefused",
    "Progress",
    "check_stores",
    "describe",
    "finish_command",
    "migrate_store",
    "same_store",
    "start_owner",
]

DEFAULT_CONCURRENCY = 32  # pict-rs's default for --concurrency
PAGE = 100  # hashes per walk page, as pict-rs pages them
FAILURES_LOGGED = 50  # failures logged one by one; then only counted
OWNER_CHECK_SECONDS = 5.0  # how often the run looks for a server started beside it
FALLBACK_CONTENT_TYPE = "application/octet-stream"
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,16}$")
_remove_decoder = msgspec.json.Decoder(jobs.RemoveFiles)


class MigrationRefused(Exception):
    """The migration cannot start (or go on) here: the message says why and what to do."""


class MigrateOptions(msgspec.Struct, frozen=True, kw_only=True):
    skip_missing_files: bool = False
    concurrency: int = DEFAULT_CONCURRENCY
    attempts: int = 10  # per file (pict-rs: 10), a missing file excepted
    retry_delay: float = 3.0  # seconds between attempts (pict-rs: 3)
    stop_after_failures: int = 50  # files failing in a row that stop the run (store down)


@dataclasses.dataclass
class Progress:
    """Counts of the run so far, read by whoever reports them (runtime/migrate_command.py).
    ``total`` files were left to move when the walk began; ``done_before`` were moved by
    earlier runs; ``skipped`` counts files found moved meanwhile, or only in the new store
    (moved by an earlier, finished run of the same migration)."""

    total: int = 0
    done_before: int = 0
    moved: int = 0
    skipped: int = 0
    missing: int = 0
    failed: int = 0
    bytes: int = 0
    started: float = 0.0  # trio.current_time() when the walk began
    walking: bool = False
    finished: bool = False
    stopped: str | None = None  # why the run stopped early
    run: StoreMigration | None = None
    failures_in_a_row: int = 0

    @property
    def handled(self) -> int:
        return self.moved + self.skipped + self.missing + self.failed


_DEFAULT_PORTS = {"http": 80, "https": 443}
_FILESYSTEM = "filesystem -p "
_OBJECT_STORAGE = re.compile(r"^object-storage -e (?P<endpoint>\S+) -b (?P<bucket>\S+)$")


def _endpoint(endpoint: str, bucket: str) -> str:
    """``endpoint`` as one spelling per bucket: through ``url_for_log`` (no userinfo, no
    query), the scheme and host lower-cased, the scheme's default port and a trailing slash
    dropped, and a leading ``{bucket}.`` of the host dropped, so the virtual-host spelling
    (``https://m.s3.example.com -b m``) and the path-style one (``https://s3.example.com
    -b m``) of one bucket read the same (store/s3.py ``addressing``)."""
    parts = urlsplit(url_for_log(endpoint))
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if bucket and host.startswith(f"{bucket.lower()}."):
        host = host[len(bucket) + 1 :]
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def describe(config: FilesystemStore | ObjectStorageStore) -> str:
    """Which store this is, as the command line names it: a folder (its real path, symlinks
    resolved), or an endpoint and bucket, normalised (``_endpoint``; region, addressing and
    keys are how to reach it, not which it is; never a secret). Recorded with the run,
    compared when it is resumed (``same_store``), shown in messages."""
    if isinstance(config, FilesystemStore):
        return f"{_FILESYSTEM}{os.path.realpath(config.path)}"
    bucket = config.bucket_name
    return f"object-storage -e {_endpoint(config.endpoint, bucket)} -b {bucket}"


def _normalised(described: str) -> str:
    """A ``describe`` string (maybe recorded by an older version) in today's spelling."""
    if described.startswith(_FILESYSTEM):
        return f"{_FILESYSTEM}{os.path.realpath(described.removeprefix(_FILESYSTEM))}"
    found = _OBJECT_STORAGE.match(described)
    if found is None:
        return described
    bucket = found.group("bucket")
    return f"object-storage -e {_endpoint(found.group('endpoint'), bucket)} -b {bucket}"


def same_store(one: str, other: str) -> bool:
    """Whether two ``describe`` strings name one store: the same normalised spelling, or
    two existing folders that are one (a bind mount, a hard-linked path)."""
    one, other = _normalised(one), _normalised(other)
    if one == other:
        return True
    if one.startswith(_FILESYSTEM) and other.startswith(_FILESYSTEM):
        try:
            return os.path.samefile(one.removeprefix(_FILESYSTEM), other.removeprefix(_FILESYSTEM))
        except OSError:  # one of them does not exist (yet)
            return False
    return False


def _inside(folder: str, other: str) -> bool:
    """Whether ``folder`` is ``other`` or below it, also through a bind mount of ``other``
    (compared by device and inode along ``folder``'s existing parents)."""
    path, target = Path(os.path.realpath(folder)), Path(os.path.realpath(other))
    if path == target or target in path.parents:
        return True
    try:
        wanted = os.stat(target)
    except OSError:
        return False
    for candidate in (path, *path.parents):
        try:
            found = os.stat(candidate)
        except OSError:
            continue
        if (found.st_dev, found.st_ino) == (wanted.st_dev, wanted.st_ino):
            return True
    return False


def check_stores(
    source: FilesystemStore | ObjectStorageStore, destination: FilesystemStore | ObjectStorageStore
) -> None:
    """Two different stores, however they are spelled (``same_store``), neither folder
    inside the other (removing the old store would remove the new one). Raises
    MigrationRefused."""
    if same_store(describe(source), describe(destination)):
        raise MigrationRefused(f"FROM and TO are the same store ({describe(source)})")
    if not (isinstance(source, FilesystemStore) and isinstance(destination, FilesystemStore)):
        return
    if _inside(source.path, destination.path) or _inside(destination.path, source.path):
        old, new = os.path.realpath(source.path), os.path.realpath(destination.path)
        raise MigrationRefused(
            f"one store folder is inside the other ({old}, {new}): the old store is "
            "removed once the migration is over, so keep them apart"
        )


def _kind(file: FileToMove) -> tuple[str, str]:
    """(extension, content type) of the copy: from the details, else the old name."""
    if file.details is not None:
        return file.details.format.extension, file.details.content_type
    found = _EXTENSION.search(file.identifier.rsplit("/", 1)[-1])
    if found is None:
        return "", FALLBACK_CONTENT_TYPE
    extension = found.group(0)
    try:
        return extension, CONTENT_TYPES[Fmt(extension[1:].lower())]
    except ValueError:
        return extension, FALLBACK_CONTENT_TYPE


class _Missing(Exception):
    """The old store has no bytes for the file."""


async def _spool(source: Store, identifier: str, dest: Path) -> int:
    """Stream the file's bytes from ``source`` into ``dest``; returns the size. Raises
    _Missing, StoreError, OSError."""
    try:
        return await copy_out(source, identifier, dest)
    except StoreNotFound as exc:
        raise _Missing(exc.msg) from exc


async def _in_store(store: Store, identifier: str) -> bool:
    """Whether ``store`` has the file: False only when it says it has not."""
    try:
        await store.length(identifier)
    except StoreNotFound:
        return False
    except (PictrsError, OSError):
        return True
    return True


class _Mover:
    def __init__(
        self,
        repo: Repo,
        journal: Journal,
        source: Store,
        destination: Store,
        tmp_dir: Path,
        options: MigrateOptions,
        progress: Progress,
    ) -> None:
        self.repo, self.journal = repo, journal
        self.source, self.destination = source, destination
        self.tmp_dir, self.options, self.progress = tmp_dir, options, progress
        self.logged = 0
        self.again = False  # the same migration finished before: skip files already in TO
        self.scope = trio.CancelScope()  # the walk's: ``stop`` cancels it

    def stop(self, why: str) -> None:
        """End the walk early (files in flight are discarded); the run stays unfinished."""
        if self.progress.stopped is None:
            self.progress.stopped = why
        self.scope.cancel()

    async def move(self, file: FileToMove) -> int:
        """Copy one file and repoint its rows. Returns its size, or -1 when another run
        moved it meanwhile. Raises _Missing, PictrsError, JournalError, OSError."""
        try:
            local = await self.source.local_path(file.identifier)
        except StoreNotFound as exc:
            raise _Missing(exc.msg) from exc
        if local is not None:  # the old store's own file: saved from there, left as it is
            size, new = await self._copy_local(file, local)
        else:  # streamed into a spool file first: a store saves files, not streams
            spool = self.tmp_dir / uuid.uuid4().hex
            try:
                size = await _spool(self.source, file.identifier, spool)
                new = await self._save(file, spool, keep_source=False)
            finally:
                spool.unlink(missing_ok=True)
        try:
            changed = await self.repo.commit_moved_file(
                file.identifier, new, owner=self.journal.owner
            )
        except BaseException:
            await discard_from(self.destination, self.journal, new)
            raise
        if changed == 0:  # moved already (or its rows are gone): ours is not needed
            await discard_from(self.destination, self.journal, new)
            return -1
        return size

    async def _copy_local(self, file: FileToMove, local: Path) -> tuple[int, str]:
        """Save the old store's file at ``local`` into the new store. Returns (size, new
        identifier). Raises _Missing (the file is gone, also when it went while it was
        being read), PictrsError, JournalError."""
        try:
            size = await self.source.length(file.identifier)
        except StoreNotFound as exc:
            raise _Missing(exc.msg) from exc
        try:
            return size, await self._save(file, local, keep_source=True)
        except PictrsError:
            if not await _in_store(self.source, file.identifier):
                raise _Missing(f"No file for {file.identifier}") from None
            raise

    async def _save(self, file: FileToMove, src: Path, *, keep_source: bool) -> str:
        extension, content_type = _kind(file)
        return await save_into(
            self.destination,
            self.journal,
            src,
            extension=extension,
            content_type=content_type,
            queue=jobs.MIGRATE,
            keep_source=keep_source,
        )

    async def handle(self, file: FileToMove) -> None:
        """Move one file with retries, and count how it went."""
        progress, options = self.progress, self.options
        if self.again and await self._in_destination(file):
            progress.skipped += 1  # moved by the earlier, finished run
            return
        for attempt in range(1, options.attempts + 1):
            try:
                size = await self.move(file)
            except _Missing as exc:
                if options.skip_missing_files:
                    progress.missing += 1
                    self._log("warning", "skipping {} {}: not in the old store", file, exc)
                else:
                    progress.failed += 1
                    self._log(
                        "error",
                        "{} {} is not in the old store ({}); run with --skip-missing-files "
                        "to move the others and leave it",
                        file,
                        exc,
                    )
                if progress.moved + progress.done_before + progress.skipped == 0:
                    progress.failures_in_a_row += 1
                    if progress.failures_in_a_row >= options.stop_after_failures:
                        self.stop(
                            f"the first {progress.failures_in_a_row} files are all missing "
                            "from the old store: is FROM the store this repo's files are in?"
                        )
                return
            except (PictrsError, JournalError, OSError) as exc:
                why = exc.msg if isinstance(exc, PictrsError) else str(exc)
                if attempt < options.attempts:
                    logger.warning(
                        "moving {} {} failed (attempt {} of {}): {}; retrying",
                        file.what,
                        file.identifier,
                        attempt,
                        options.attempts,
                        why,
                    )
                    await trio.sleep(options.retry_delay)
                    continue
                progress.failed += 1
                progress.failures_in_a_row += 1
                self._log("error", "could not move {} {}: {}", file, why)
                if progress.failures_in_a_row >= options.stop_after_failures:
                    self.stop(
                        f"{progress.failures_in_a_row} files in a row could not be moved "
                        f"(the last: {why})"
                    )
                return
            progress.failures_in_a_row = 0
            if size < 0:
                progress.skipped += 1
            else:
                progress.moved += 1
                progress.bytes += size
            return

    async def _in_destination(self, file: FileToMove) -> bool:
        """Whether the new store has the file: a row an earlier, finished run of this
        migration repointed (its progress rows are cleared when it finishes)."""
        try:
            await self.destination.length(file.identifier)
        except (PictrsError, OSError):
            return False
        return True

    def _log(self, level: str, message: str, file: FileToMove, why: object) -> None:
        self.logged += 1
        if self.logged <= FAILURES_LOGGED:
            logger.log(level.upper(), message, file.what, file.identifier, why)
        elif self.logged == FAILURES_LOGGED + 1:
            logger.warning("more files failed or are missing; only counted from here on")


async def undo_killed_copies(journal: Journal, destination: Store) -> int:
    """Remove what killed runs left half-written in ``destination``: the undo jobs their
    intents became when the journal reaped them. Returns how many files were removed.
    Raises StoreError, JournalError (the job stays queued for the next try)."""
    worker = journal.worker_id(jobs.MIGRATE, 0)
    removed = 0
    while (job := await journal.claim(jobs.MIGRATE, worker, 60.0)) is not None:
        try:
            payload = job.decode(_remove_decoder)
            for identifier in payload.identifiers:
                await destination.remove(identifier, partial=payload.partial)
        except BaseException as exc:
            with trio.move_on_after(5, shield=True):
                await journal.fail(job.id, worker, repr(exc), retry=True)
            raise
        await journal.complete(job.id, worker)
        removed += len(payload.identifiers)
    return removed


def _beside(others: list[str]) -> MigrationRefused:
    return MigrationRefused(
        f"another pictrs-trio process uses this repo ({others[0]}): stop the server "
        "first; migrate-store runs alone"
    )


async def start_owner(nursery: trio.Nursery, journal: Journal) -> None:
    """Make ``journal`` the run's owner (its ``run_owner`` in ``nursery``), alone: refused
    beside a live server, and no server starts beside it (journal/owners.py ``join``; the
    server checks for migrations once registered, runtime/service.py). Raises
    MigrationRefused."""
    try:
        await nursery.start(functools.partial(journal.run_owner, alone=True))
    except NotAlone as exc:
        raise _beside(exc.owners) from None


async def _refuse_beside_others(journal: Journal) -> None:
    # Also between pages: a process that joined without ``start_owner``'s check (an older
    # version's server) is caught here.
    others = await journal.others_alive()
    if others:
        raise _beside(others)


async def _begin(
    repo: Repo,
    journal: Journal,
    source: Store,
    destination: Store,
    from_store: str,
    to_store: str,
    command: str | None,
) -> tuple[StoreMigration, bool]:
    """Checks, then (the run to go on with, whether the same migration finished before: this
    run then moves what is still in FROM, files added since). Raises MigrationRefused,
    PictrsError, JournalError."""
    await _refuse_beside_others(journal)
    await repo.health()
    latest = await repo.store_migration()
    again = (
        latest is not None
        and latest.finished
        and same_store(latest.from_store, from_store)
        and same_store(latest.to_store, to_store)
    )
    await source.health(write=False)  # pict-rs checks the old store and the repo
    await destination.health(write=True)  # and, here, that the new one takes files
    run = await repo.begin_store_migration(from_store, to_store, command)
    if run.id and not (
        same_store(run.from_store, from_store) and same_store(run.to_store, to_store)
    ):
        raise MigrationRefused(
            f"an unfinished migration from {run.from_store} to {run.to_store} is recorded in "
            f"this repo ({run.moved} files moved); finish it first by running it again: "
            f"{finish_command(run)}; or end it with --abandon (docs/operations.md)"
        )
    return run, again


_PLACEHOLDERS = ("<secret-key>", "<session-token>")


def finish_command(run: StoreMigration, repo_path: str | None = None) -> str:
    """The command that goes on with ``run``: the one that last ran it, as recorded
    (runtime/cli.py ``command_line``: secrets are placeholders, said so here); for a run
    recorded without it, one built from its stores (and ``repo_path``)."""
    if run.command:
        left_out = [p for p in _PLACEHOLDERS if p in run.command]
        if not left_out:
            return run.command
        return f"{run.command} (with the real {' and '.join(left_out)})"
    repo = f" sqlite -p {repo_path}" if repo_path else ""
    buckets = "object-storage" in (run.from_store + run.to_store)
    keys = " (with the region and keys of each bucket)" if buckets else ""
    return f"pictrs-trio migrate-store {run.from_store} {run.to_store}{repo}{keys}"


async def migrate_store(
    *,
    repo: Repo,
    journal: Journal,
    source: Store,
    destination: Store,
    from_store: str,
    to_store: str,
    tmp_dir: Path,
    options: MigrateOptions,
    progress: Progress,
    command: str | None = None,
) -> Progress:
    """Move every file the repo names from ``source`` to ``destination`` (``from_store``
    and ``to_store`` describe them: ``describe``). ``journal`` must be registered alone
    and reaped (``start_owner``), ``tmp_dir`` an existing private folder. ``command``, the
    command line running it, is recorded with the run (``finish_command``). Counts go
    to ``progress`` as the run goes (also returned): ``finished`` once every file is moved
    and the run recorded as finished. Raises MigrationRefused (another process uses the
    repo, or another migration is unfinished), PictrsError or JournalError (a store or the
    repo cannot be used)."""
    progress.run, again = await _begin(
        repo, journal, source, destination, from_store, to_store, command
    )
    if again:
        logger.info(
            "this migration finished before: moving the files still in {} (added since)",
            from_store,
        )
    elif progress.run.moved:
        logger.info(
            "continuing the migration from {} to {}: {} files were moved before",
            from_store,
            to_store,
            progress.run.moved,
        )
    undone = await undo_killed_copies(journal, destination)
    if undone:
        logger.info("removed {} half-written copies of a run that was stopped", undone)
    named, moved = await repo.move_counts()
    progress.done_before, progress.total = moved, max(named - moved, 0)
    logger.info("{} files to move, {} moved before", progress.total, progress.done_before)
    mover = _Mover(repo, journal, source, destination, tmp_dir, options, progress)
    mover.again = again
    progress.started, progress.walking = trio.current_time(), True
    try:
        with mover.scope:
            await _walk(repo, journal, mover, options.concurrency)
    finally:
        progress.walking = False
    if progress.stopped is None and progress.failed == 0:
        await repo.finish_store_migration()
        progress.finished = True
    return progress


async def _walk(repo: Repo, journal: Journal, mover: _Mover, concurrency: int) -> None:
    """Feed the files to move to ``concurrency`` workers, page by page; stops the walk
    (``mover.stop``) when the repo cannot be read or a server starts beside it."""
    send, receive = trio.open_memory_channel[FileToMove](0)

    async def work(files: trio.MemoryReceiveChannel[FileToMove]) -> None:
        async with files:
            async for file in files:
                await mover.handle(file)

    async with trio.open_nursery() as nursery:
        async with receive:
            for _ in range(max(1, concurrency)):
                nursery.start_soon(work, receive.clone())
        async with send:
            position: MovePosition | None = MovePosition()
            checked = trio.current_time()
            try:
                while position is not None:
                    page = await repo.files_to_move(position, PAGE)
                    for file in page.files:
                        await send.send(file)
                    position = page.next
                    if trio.current_time() - checked >= OWNER_CHECK_SECONDS:
                        checked = trio.current_time()
                        await _refuse_beside_others(journal)
            except MigrationRefused as exc:
                mover.stop(str(exc))
            except (PictrsError, JournalError) as exc:
                mover.stop(f"the repo could not be read: {exc}")
