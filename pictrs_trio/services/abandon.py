"""``migrate-store --abandon``: end an unfinished migration without finishing it, for when
the new store cannot be used (its bucket was deleted, the wrong one was named). pict-rs has
no such command: there, the way out is editing the repo by hand.

    refuse beside a live server (alone, as migrate-store); the unfinished run is FROM -> TO
    walk the files the run moved (``store_migrations``), a page at a time:
        is the old copy still in FROM? (``concurrency`` looks at once)
        one transaction: the rows name the old copies again, the pairs are forgotten, and
            the removal of the new copies is queued (queue ``migrate``)
    none left: the run is recorded as abandoned: the server starts on FROM again
    remove the new copies (and what killed runs half-wrote) from TO, if it can be reached

Why moving back is safe and cheap: migrate-store never removes or changes a file of the old
store (services/migrate.py), so each moved file's old copy is still where its old
identifier says, and the rows need only be repointed; nothing is copied. A moved file whose
old copy is gone (removed by hand since) stays moved and keeps the run unfinished, since its
only copy may be the one in TO; with ``--skip-missing-files`` its rows are repointed anyway,
as migrate-store leaves the rows of a missing file: they name a file FROM does not have
(answered 404; POST /internal/prune_missing forgets it), and its copy in TO is left there.

Every step is a state migrate-store itself can be in: stopped at any point (even
``kill -9``), the run is still unfinished, with fewer files moved; run ``--abandon`` again to
go on, or run the migration again to finish it instead.
"""

from __future__ import annotations

import dataclasses

import msgspec
import trio
from loguru import logger

from journal import Journal
from pictrs_trio.repo import Repo
from pictrs_trio.rules import jobs
from pictrs_trio.rules.errors import PictrsError, StoreNotFound
from pictrs_trio.services.migrate import MigrateOptions, MigrationRefused, same_store
from pictrs_trio.store import Store

__all__ = ["Abandoned", "abandon_migration"]

PAGE = 100  # moved files per transaction
_remove_decoder = msgspec.json.Decoder(jobs.RemoveFiles)


@dataclasses.dataclass
class Abandoned:
    """What ``abandon_migration`` did. ``moved_back``: files whose rows name the old copy
    again (``missing`` of them without one); ``kept``: files left moved (old copy missing,
    or it could not be looked at: ``failed``); ``removed`` copies were removed from TO,
    ``left`` could not be; ``finished``: the run is recorded as abandoned."""

    total: int = 0
    moved_back: int = 0
    missing: int = 0
    failed: int = 0
    kept: int = 0
    removed: int = 0
    left: int = 0
    finished: bool = False
    unreachable: str | None = None  # why TO's copies could not be removed


async def abandon_migration(
    *,
    repo: Repo,
    journal: Journal,
    source: Store,
    destination: Store | None,
    from_store: str,
    to_store: str,
    options: MigrateOptions,
    result: Abandoned,
) -> Abandoned:
    """Abandon the unfinished migration ``from_store`` -> ``to_store`` (``describe``d).
    ``journal`` must be registered alone (``migrate.start_owner``). ``destination`` is None
    when TO cannot be opened: its copies then stay. Raises MigrationRefused (no such
    unfinished run), PictrsError or JournalError (FROM or the repo cannot be used)."""
    run = await repo.store_migration()
    if run is None or run.finished:
        raise MigrationRefused("there is no unfinished migrate-store to abandon in this repo")
    if run.id and not (
        same_store(run.from_store, from_store) and same_store(run.to_store, to_store)
    ):
        raise MigrationRefused(
            f"the unfinished migrate-store is from {run.from_store} to {run.to_store}, not "
            f"from {from_store} to {to_store}: name its stores to abandon it"
        )
    await repo.health()
    await source.health(write=False)  # the old copies are read from here
    result.total = run.moved
    logger.info(
        "abandoning the migration from {} to {}: moving {} files back",
        from_store,
        to_store,
        run.moved,
    )
    after = ""
    while pairs := await repo.moved_files(after, PAGE):
        after = pairs[-1][0]
        await _move_back(repo, source, pairs, options, result)
    if result.kept == 0:
        result.finished = await repo.abandon_store_migration()
    if destination is None:  # the caller may have said why
        result.unreachable = result.unreachable or "TO could not be opened"
    else:
        await _remove_copies(journal, destination, result)
    return result


async def _move_back(
    repo: Repo,
    source: Store,
    pairs: list[tuple[str, str]],
    options: MigrateOptions,
    result: Abandoned,
) -> None:
    """Look for each old copy in FROM, then move back, in one transaction, those that are
    there (and, skipping missing files, those that are not)."""
    found: dict[str, bool | None] = {}  # old identifier -> in FROM (None: could not tell)
    limiter = trio.CapacityLimiter(max(1, options.concurrency))

    async def look(old: str) -> None:
        async with limiter:
            found[old] = await _in_old_store(source, old, options)

    async with trio.open_nursery() as nursery:
        for old, _ in pairs:
            nursery.start_soon(look, old)
    back: list[tuple[str, str]] = []
    remove: list[str] = []
    for old, new in pairs:
        there = found[old]
        if there:
            back.append((old, new))
            remove.append(new)
        elif there is None:
            result.failed += 1
            result.kept += 1
        elif options.skip_missing_files:  # its copy in TO stays: it may be the only one
            back.append((old, new))
            result.missing += 1
            logger.warning("{} is not in the old store: its rows name it anyway", old)
        else:
            result.kept += 1
            result.missing += 1
            logger.error(
                "{} is not in the old store: left moved (its copy is {} in the new store); "
                "run with --skip-missing-files to move it back anyway",
                old,
                new,
            )
    if back:
        result.moved_back += await repo.move_back(back, remove)


async def _in_old_store(source: Store, old: str, options: MigrateOptions) -> bool | None:
    """True or False as FROM says; None when it cannot tell, after ``options.attempts``."""
    for attempt in range(1, options.attempts + 1):
        try:
            await source.length(old)
        except StoreNotFound:
            return False
        except (PictrsError, OSError) as exc:
            why = exc.msg if isinstance(exc, PictrsError) else str(exc)
            logger.warning(
                "cannot look for {} in the old store (attempt {}): {}", old, attempt, why
            )
            if attempt < options.attempts:
                await trio.sleep(options.retry_delay)
            continue
        return True
    return None


async def _remove_copies(journal: Journal, destination: Store, result: Abandoned) -> None:
    """Run the ``migrate`` queue's RemoveFiles jobs against TO: the copies moved back, and
    what killed runs half-wrote. A job TO refuses stays queued (``left``), and so does the
    rest: TO is taken to be out of reach."""
    worker = journal.worker_id(jobs.MIGRATE, 0)
    while (job := await journal.claim(jobs.MIGRATE, worker, 60.0)) is not None:
        payload = job.decode(_remove_decoder)
        try:
            for identifier in payload.identifiers:
                await destination.remove(identifier, partial=payload.partial)
        except PictrsError as exc:
            await journal.fail(job.id, worker, exc.msg, retry=True)
            result.left += len(payload.identifiers)
            result.unreachable = exc.msg
            return
        except BaseException as exc:
            with trio.move_on_after(5, shield=True):
                await journal.fail(job.id, worker, repr(exc), retry=True)
            raise
        await journal.complete(job.id, worker)
        result.removed += len(payload.identifiers)
