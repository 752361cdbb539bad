"""``migrate-store --abandon`` (services/abandon.py) over a real SQLite repo and two file
stores: a migration stopped halfway is abandoned, every row names its file in the old store
again (which has it), the copies in the new store go when it can be reached, and the server
may start on the old store."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from journal import Journal
from pictrs_trio.config import Config, FilesystemStore
from pictrs_trio.config import SqliteRepo as SqliteRepoConfig
from pictrs_trio.repo.sqlite import open_sqlite_repo
from pictrs_trio.rules import jobs
from pictrs_trio.runtime import startup
from pictrs_trio.runtime.startup import StartupError
from pictrs_trio.services import migrate
from pictrs_trio.services.abandon import Abandoned, abandon_migration
from pictrs_trio.services.migrate import MigrateOptions, MigrationRefused, Progress
from pictrs_trio.store import Store
from pictrs_trio.store.file import open_file_store
from tests.integration.test_migrate_store import Setup
from tests.migrate_helpers import Filled, assert_all_in, db_rows, files_on_disk, fill, named_files


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    async with (
        open_sqlite_repo(tmp_path / "db") as repo,
        open_file_store(tmp_path / "a") as a,
        open_file_store(tmp_path / "b") as b,
    ):
        yield Setup(tmp_path, repo, a, b)


async def _abandon(
    setup: Setup,
    destination: Store | None,
    *,
    to: str = "filesystem -p B",
    **options: object,
) -> Abandoned:
    """One ``--abandon``, as the command runs it: alone on the repo."""
    result = Abandoned()
    try:
        async with trio.open_nursery() as nursery:
            journal = Journal(setup.repo.journal_db())
            await migrate.start_owner(nursery, journal)
            try:
                await abandon_migration(
                    repo=setup.repo,
                    journal=journal,
                    source=setup.a,
                    destination=destination,
                    from_store="filesystem -p A",
                    to_store=to,
                    options=MigrateOptions(**{"retry_delay": 0.0, **options}),  # type: ignore[arg-type]
                    result=result,
                )
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    return result


async def _halfway(setup: Setup, n: int = 40) -> tuple[Filled, set[str], int]:
    """A migration A -> B stopped once some files moved: (what was stored, the identifiers
    the rows named before, how many moved)."""
    filled = await fill(setup.repo, setup.a, n, uploads=2)
    before = named_files(setup.db)
    stop, progress = trio.CancelScope(), Progress()

    async def cancel_after(count: int) -> None:
        while progress.moved < count:  # noqa: ASYNC110 - counts, not events
            await trio.sleep(0.001)
        stop.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancel_after, n // 2)
        await setup.migrate(stop=stop, progress=progress, concurrency=4)
        nursery.cancel_scope.cancel()
    moved = len(db_rows(setup.db, "SELECT 1 FROM store_migrations"))
    assert 0 < moved < filled.files
    assert len(files_on_disk(setup.root / "b")) == moved
    return filled, before, moved


async def _check_serves_on(setup: Setup, folder: str) -> None:
    config = Config(
        repo=SqliteRepoConfig(path=str(setup.db)),
        store=FilesystemStore(path=str(setup.root / folder)),
    )
    migration = await setup.repo.store_migration()
    if migration is not None:
        startup.check_store_migration(config, migration)


async def test_abandoned_halfway_every_row_names_the_old_store_again(setup: Setup) -> None:
    filled, before, moved = await _halfway(setup)
    with pytest.raises(StartupError, match="unfinished"):  # the server refuses either store
        await _check_serves_on(setup, "a")

    result = await _abandon(setup, setup.b)
    assert result.finished and result.unreachable is None
    assert (result.total, result.moved_back, result.removed) == (moved, moved, moved)
    assert (result.missing, result.failed, result.kept) == (0, 0, 0)
    # As before the migration: the same identifiers, every file in A, byte for byte.
    assert named_files(setup.db) == before
    assert_all_in(setup.root / "a", setup.db, filled)
    assert files_on_disk(setup.root / "b") == []  # the copies went
    assert db_rows(setup.db, "SELECT count(*) FROM store_migrations") == [(0,)]
    assert db_rows(setup.db, "SELECT count(*) FROM journal_intents") == [(0,)]
    assert db_rows(
        setup.db,
        f"SELECT count(*) FROM journal_jobs WHERE queue = '{jobs.MIGRATE}'"
        " AND status IN ('pending', 'running')",
    ) == [(0,)]
    details = {str(i) for (i,) in db_rows(setup.db, "SELECT identifier FROM details")}
    assert details <= before and len(details) == filled.files - 2  # back with their files
    assert db_rows(
        setup.db, "SELECT finished IS NULL, abandoned IS NOT NULL FROM store_migration_runs"
    ) == [(1, 1)]
    assert await setup.repo.store_migration() is None  # history: nothing to refuse for
    await _check_serves_on(setup, "a")

    # Nothing left to abandon; a new migration starts afresh and moves everything.
    with pytest.raises(MigrationRefused, match="no unfinished migrate-store"):
        await _abandon(setup, setup.b)
    progress = await setup.migrate()
    assert progress.finished and progress.moved == filled.files and progress.done_before == 0
    assert_all_in(setup.root / "b", setup.db, filled)


async def test_a_new_store_that_is_gone_is_abandoned_all_the_same(setup: Setup) -> None:
    filled, before, moved = await _halfway(setup)
    shutil.rmtree(setup.root / "b")  # the new store is gone, copies and all
    result = await _abandon(setup, None)
    assert result.finished and result.moved_back == moved and result.removed == 0
    assert result.unreachable == "TO could not be opened"
    assert named_files(setup.db) == before
    assert_all_in(setup.root / "a", setup.db, filled)
    assert not (setup.root / "b").exists()  # not made again
    await _check_serves_on(setup, "a")


async def test_a_moved_file_missing_from_the_old_store_stays_moved_unless_skipped(
    setup: Setup,
) -> None:
    filled, before, moved = await _halfway(setup)
    ((old, new),) = db_rows(
        setup.db, "SELECT old_identifier, new_identifier FROM store_migrations LIMIT 1"
    )
    old_copy = setup.root / "a" / str(old)
    data = old_copy.read_bytes()
    old_copy.unlink()  # removed by hand: the copy in B is the only one

    kept = await _abandon(setup, setup.b)
    assert not kept.finished
    assert (kept.moved_back, kept.kept, kept.missing) == (moved - 1, 1, 1)
    assert db_rows(setup.db, "SELECT old_identifier, new_identifier FROM store_migrations") == [
        (old, new)
    ]
    assert (setup.root / "b" / str(new)).read_bytes() == data  # its only copy is kept
    assert files_on_disk(setup.root / "b") == [setup.root / "b" / str(new)]
    assert named_files(setup.db) == (before - {str(old)}) | {str(new)}
    with pytest.raises(StartupError, match="unfinished"):
        await _check_serves_on(setup, "a")

    # Restored into A: the next --abandon moves it back too.
    old_copy.write_bytes(data)
    done = await _abandon(setup, setup.b)
    assert done.finished and (done.moved_back, done.removed) == (1, 1)
    assert_all_in(setup.root / "a", setup.db, filled)
    assert files_on_disk(setup.root / "b") == []


async def test_skipping_missing_files_moves_their_rows_back_and_keeps_their_copy(
    setup: Setup,
) -> None:
    _, before, moved = await _halfway(setup)
    ((old, new),) = db_rows(
        setup.db, "SELECT old_identifier, new_identifier FROM store_migrations LIMIT 1"
    )
    (setup.root / "a" / str(old)).unlink()
    result = await _abandon(setup, setup.b, skip_missing_files=True)
    assert result.finished and (result.moved_back, result.missing) == (moved, 1)
    assert result.removed == moved - 1
    assert named_files(setup.db) == before  # it names the missing file, as migrate leaves it
    assert files_on_disk(setup.root / "b") == [setup.root / "b" / str(new)]
    await _check_serves_on(setup, "a")


async def test_a_partly_abandoned_migration_can_be_finished_instead(setup: Setup) -> None:
    """Stopped at any point, --abandon leaves an unfinished migration with fewer files
    moved: running the migration again finishes it."""
    filled, _, moved = await _halfway(setup)
    pairs = [
        (str(old), str(new))
        for old, new in db_rows(
            setup.db, "SELECT old_identifier, new_identifier FROM store_migrations LIMIT 5"
        )
    ]
    assert await setup.repo.move_back(pairs, [new for _, new in pairs]) == 5  # one page
    progress = await setup.migrate()
    assert progress.finished and progress.done_before == moved - 5
    assert progress.moved == filled.files - moved + 5
    assert_all_in(setup.root / "b", setup.db, filled)  # the queued removals ran first


async def test_abandon_refuses_another_migration_and_a_live_server(setup: Setup) -> None:
    await _halfway(setup)
    with pytest.raises(MigrationRefused, match="from filesystem -p A to filesystem -p B, not"):
        await _abandon(setup, setup.b, to="filesystem -p C")
    server = Journal(setup.repo.journal_db())
    await server.register()
    with pytest.raises(MigrationRefused, match="another pictrs-trio process"):
        await _abandon(setup, setup.b)
    run = await setup.repo.store_migration()
    assert run is not None and not run.finished and run.moved > 0  # untouched
