"""migrate-store (services/migrate.py) between two file stores over a real SQLite repo:
files moved byte for byte, rows repointed, missing files, runs stopped and resumed."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import trio

from journal import Journal
from pictrs_trio.config import Config, FilesystemStore, ObjectStorageStore
from pictrs_trio.config import SqliteRepo as SqliteRepoConfig
from pictrs_trio.repo.records import StoreMigration
from pictrs_trio.repo.sqlite import SqliteRepo, open_sqlite_repo
from pictrs_trio.rules import jobs
from pictrs_trio.runtime import startup
from pictrs_trio.runtime.startup import StartupError
from pictrs_trio.services import migrate
from pictrs_trio.services.migrate import MigrateOptions, MigrationRefused, Progress
from pictrs_trio.store.file import FileStore, open_file_store
from pictrs_trio.store.memory import MemoryStore
from tests.migrate_helpers import (
    Filled,
    assert_all_in,
    db_rows,
    files_on_disk,
    fill,
    named_files,
)


class Setup:
    def __init__(self, root: Path, repo: SqliteRepo, a: FileStore, b: FileStore) -> None:
        self.root, self.repo, self.a, self.b = root, repo, a, b
        self.db = root / "db"
        self.tmp = root / "tmp"
        self.tmp.mkdir(exist_ok=True)

    async def migrate(
        self,
        source: object = None,
        *,
        to: str | None = None,
        stop: trio.CancelScope | None = None,
        progress: Progress | None = None,
        **options: object,
    ) -> Progress:
        """One run, as the command runs it: a registered journal owner beside it."""
        progress = progress or Progress()
        try:
            async with trio.open_nursery() as nursery:
                journal = Journal(self.repo.journal_db())
                await migrate.start_owner(nursery, journal)
                try:
                    with stop or trio.CancelScope():
                        await migrate.migrate_store(
                            repo=self.repo,
                            journal=journal,
                            source=source or self.a,  # type: ignore[arg-type]
                            destination=self.b,
                            from_store="filesystem -p A",
                            to_store=to or "filesystem -p B",
                            tmp_dir=self.tmp,
                            options=MigrateOptions(**{"retry_delay": 0.0, **options}),  # type: ignore[arg-type]
                            progress=progress,
                        )
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # the one error, as the command sees it
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        return progress


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    async with (
        open_sqlite_repo(tmp_path / "db") as repo,
        open_file_store(tmp_path / "a") as a,
        open_file_store(tmp_path / "b") as b,
    ):
        yield Setup(tmp_path, repo, a, b)


async def test_moves_every_file_and_repoints_every_row(setup: Setup) -> None:
    filled = await fill(setup.repo, setup.a, 30, uploads=2)
    before = set(named_files(setup.db))
    assert filled.files == 30 + 10 + 6 + 2
    progress = await setup.migrate(concurrency=4)
    assert progress.finished
    assert (progress.moved, progress.failed, progress.missing) == (filled.files, 0, 0)
    assert progress.total == filled.files
    assert progress.bytes == sum(len(d) for d in filled.originals.values()) + sum(
        len(d)
        for group in (filled.variants, filled.motions, filled.uploads)
        for d in group.values()
    )
    assert_all_in(setup.root / "b", setup.db, filled)
    after = named_files(setup.db)
    assert not before & after  # every identifier is new
    # The old store is left as it was (pict-rs leaves it too; the operator removes it).
    assert len(files_on_disk(setup.root / "a")) == filled.files
    # Details moved with their files; the progress rows are gone, the run is finished.
    assert db_rows(setup.db, "SELECT count(*) FROM details")[0][0] == filled.files - 2
    assert {str(i) for (i,) in db_rows(setup.db, "SELECT identifier FROM details")} <= after
    assert db_rows(setup.db, "SELECT count(*) FROM store_migrations") == [(0,)]
    run = await setup.repo.store_migration()
    assert run is not None and run.finished and run.to_store == "filesystem -p B"
    # Reads through the new store give the same bytes.
    for alias, data in filled.originals.items():
        found = await setup.repo.find_original(alias)
        assert found is not None and found.identifier is not None
        assert found.details is not None
        assert b"".join([c async for c in setup.b.read(found.identifier)]) == data
    # The pending uploads' ingest finds its raw bytes through the row.
    for upload_id, data in filled.uploads.items():
        raw = await setup.repo.upload_raw_identifier(upload_id)
        assert raw is not None and (setup.root / "b" / raw).read_bytes() == data
    # A second run has nothing left to do: every file is in B already.
    again = await setup.migrate()
    assert again.finished and again.moved == 0 and again.failed == 0
    assert again.skipped == filled.files
    assert_all_in(setup.root / "b", setup.db, filled)


async def test_a_finished_migration_run_again_moves_files_added_since(setup: Setup) -> None:
    """A server started on the old store after the migration put new uploads there: the
    same migrate-store again moves them (it used to say "finished already")."""
    first = await fill(setup.repo, setup.a, 9, uploads=1)
    assert (await setup.migrate()).finished
    added = await fill(setup.repo, setup.a, 6, uploads=1)
    again = await setup.migrate()
    assert again.finished and (again.moved, again.skipped) == (added.files, first.files)
    assert (again.missing, again.failed) == (0, 0)
    everything = Filled(
        originals=first.originals | added.originals,
        variants=first.variants | added.variants,
        motions=first.motions | added.motions,
        uploads=first.uploads | added.uploads,
    )
    assert_all_in(setup.root / "b", setup.db, everything)
    run = await setup.repo.store_migration()
    assert run is not None and run.finished and run.to_store == "filesystem -p B"


async def test_a_missing_file_fails_the_run_unless_skipped(setup: Setup) -> None:
    filled = await fill(setup.repo, setup.a, 12, variant_every=0, motion_every=0)
    gone_alias = next(iter(filled.originals))
    found = await setup.repo.find_original(gone_alias)
    assert found is not None and found.identifier is not None
    gone = found.identifier
    (setup.root / "a" / gone).unlink()

    first = await setup.migrate()
    assert (first.moved, first.missing, first.failed, first.finished) == (11, 0, 1, False)
    run = await setup.repo.store_migration()
    assert run is not None and not run.finished and run.moved == 11

    second = await setup.migrate(skip_missing_files=True)
    assert (second.moved, second.missing, second.failed) == (0, 1, 0)
    assert second.done_before == 11 and second.total == 1
    assert second.finished
    # Its rows still name the old identifier (pict-rs leaves them: prune_missing forgets).
    found = await setup.repo.find_original(gone_alias)
    assert found is not None and found.identifier == gone
    del filled.originals[gone_alias]
    assert sorted(p.relative_to(setup.root / "b").as_posix() for p in files_on_disk(
        setup.root / "b"
    )) == sorted(named_files(setup.db) - {gone})  # fmt: skip


async def test_a_run_cancelled_midway_leaves_nothing_behind_and_resumes(setup: Setup) -> None:
    filled = await fill(setup.repo, setup.a, 60, variant_every=2, motion_every=0)
    total = filled.files
    stop = trio.CancelScope()
    progress = Progress()

    async def cancel_after(n: int) -> None:
        while progress.moved < n:  # noqa: ASYNC110 - counts, not events
            await trio.sleep(0.001)
        stop.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancel_after, 25)
        await setup.migrate(stop=stop, progress=progress, concurrency=8)
        nursery.cancel_scope.cancel()
    assert stop.cancelled_caught
    moved_first = progress.moved
    assert 0 < moved_first < total
    assert not progress.finished
    # Nothing half-written: the new store holds exactly the files moved, no intent is open.
    moved_rows = db_rows(setup.db, "SELECT new_identifier FROM store_migrations")
    assert len(moved_rows) == moved_first
    on_disk = {p.relative_to(setup.root / "b").as_posix() for p in files_on_disk(setup.root / "b")}
    assert on_disk == {str(i) for (i,) in moved_rows}
    assert db_rows(setup.db, "SELECT count(*) FROM journal_intents") == [(0,)]
    run_record = await setup.repo.store_migration()
    assert run_record is not None and not run_record.finished

    second = await setup.migrate(concurrency=8)
    assert second.finished
    assert second.done_before == moved_first
    assert second.moved == total - moved_first
    assert_all_in(setup.root / "b", setup.db, filled)


async def test_a_killed_copy_is_removed_at_the_next_start(setup: Setup) -> None:
    filled = await fill(setup.repo, setup.a, 5, variant_every=0, motion_every=0)
    # A run killed between its intent and its commit: the copy is in the new store (with a
    # temporary piece beside it), its intent names an owner that is gone.
    dead = Journal(setup.repo.journal_db())
    await dead.register()
    half = setup.b.new_identifier(".png")
    await dead.intend([half], jobs.MIGRATE, jobs.RemoveFiles(identifiers=[half], partial=True))
    await setup.b.save_bytes(b"half", identifier=half, content_type="image/png")
    temp_piece = (setup.root / "b" / half).with_name(f".{Path(half).name}.tmp-0123456789ab")
    temp_piece.write_bytes(b"ha")
    await setup.repo.begin_store_migration("filesystem -p A", "filesystem -p B")
    await dead._write(lambda conn: conn.execute("DELETE FROM journal_owners"))  # it died

    progress = await setup.migrate()
    assert progress.finished and progress.moved == 5
    assert not (setup.root / "b" / half).exists() and not temp_piece.exists()
    assert_all_in(setup.root / "b", setup.db, filled)


async def test_refuses_to_run_beside_another_process(setup: Setup) -> None:
    await fill(setup.repo, setup.a, 2, variant_every=0, motion_every=0)
    server = Journal(setup.repo.journal_db())
    await server.register()  # alive: heartbeating a moment ago
    with pytest.raises(MigrationRefused, match="another pictrs-trio process"):
        await setup.migrate()
    assert await setup.repo.store_migration() is None  # nothing begun


async def test_refuses_to_switch_destination_midway(setup: Setup) -> None:
    await fill(setup.repo, setup.a, 2, variant_every=0, motion_every=0)
    await setup.repo.begin_store_migration("filesystem -p A", "filesystem -p C")
    with pytest.raises(MigrationRefused, match="filesystem -p A to filesystem -p C"):
        await setup.migrate(to="filesystem -p B")


async def test_a_store_without_local_files_streams(setup: Setup) -> None:
    memory = MemoryStore()
    filled = await fill(setup.repo, memory, 8, size=200_000)  # a few chunks each
    progress = await setup.migrate(memory, concurrency=3)
    assert progress.finished and progress.moved == filled.files
    assert_all_in(setup.root / "b", setup.db, filled)


async def test_a_folder_is_read_in_place_and_left_as_it_was(setup: Setup) -> None:
    """A source with local files is saved from them (no scratch copy: the scratch folder
    does not even exist here), and its files are left untouched, sharing no inode with the
    copies."""
    filled = await fill(setup.repo, setup.a, 20, uploads=1, size=100_000)
    a = setup.root / "a"
    before = {p: (p.read_bytes(), os.stat(p)) for p in files_on_disk(a)}
    setup.tmp.rmdir()
    progress = await setup.migrate(concurrency=4)
    assert progress.finished and progress.moved == filled.files and progress.failed == 0
    assert_all_in(setup.root / "b", setup.db, filled)
    assert files_on_disk(a) == sorted(before)
    for path, (data, stat) in before.items():
        now = os.stat(path)
        assert path.read_bytes() == data
        assert (now.st_ino, now.st_mode, now.st_nlink, now.st_mtime_ns) == (
            stat.st_ino,
            stat.st_mode,
            1,
            stat.st_mtime_ns,
        )
    moved_inodes = {os.stat(p).st_ino for p in files_on_disk(setup.root / "b")}
    assert not moved_inodes & {stat.st_ino for _, stat in before.values()}


async def test_a_file_gone_while_it_is_read_is_missing(setup: Setup) -> None:
    """The old store's file disappears between the look and the copy: counted missing,
    not retried as a failure, and nothing is left in the new store."""
    await fill(setup.repo, setup.a, 3, variant_every=0, motion_every=0)
    vanishing = _Vanishing(setup.a)
    progress = await setup.migrate(vanishing, skip_missing_files=True, attempts=1)
    assert progress.finished and (progress.moved, progress.missing) == (2, 1)
    assert vanishing.looked
    assert len(files_on_disk(setup.root / "b")) == 2
    assert db_rows(setup.db, "SELECT count(*) FROM journal_intents") == [(0,)]


async def test_failures_are_retried_then_counted(setup: Setup) -> None:
    filled = await fill(setup.repo, setup.a, 4, variant_every=0, motion_every=0)
    flaky = _Flaky(setup.a, fail_times=2)
    progress = await setup.migrate(flaky, attempts=3)
    assert progress.finished and progress.moved == 4 and progress.failed == 0
    assert_all_in(setup.root / "b", setup.db, filled)

    broken = _Flaky(setup.a, fail_times=99)
    await setup.repo.finish_store_migration()
    progress = await setup.migrate(broken, attempts=2, stop_after_failures=2)
    # Every file is in B already: the old store is not read, nothing fails.
    assert progress.finished and progress.moved == progress.failed == 0
    assert progress.skipped == 4


async def test_a_broken_source_stops_the_run(setup: Setup) -> None:
    await fill(setup.repo, setup.a, 10, variant_every=0, motion_every=0)
    progress = await setup.migrate(
        _Flaky(setup.a, fail_times=99), attempts=2, stop_after_failures=3, concurrency=1
    )
    assert not progress.finished
    assert progress.failed == 3 and progress.stopped is not None
    assert "3 files in a row" in progress.stopped
    assert files_on_disk(setup.root / "b") == []


class _Flaky:
    """A store whose reads fail ``fail_times`` times per file with an I/O error."""

    def __init__(self, inner: FileStore, fail_times: int) -> None:
        self.inner, self.fail_times = inner, fail_times
        self.failed: dict[str, int] = {}

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def local_path(self, identifier: str) -> Path:
        if self.failed.get(identifier, 0) < self.fail_times:
            self.failed[identifier] = self.failed.get(identifier, 0) + 1
            raise OSError(5, "Input/output error")
        return await self.inner.local_path(identifier)


class _Vanishing:
    """A file store whose first file is removed right after its path is handed out."""

    def __init__(self, inner: FileStore) -> None:
        self.inner = inner
        self.removed: str | None = None
        self.looked = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def local_path(self, identifier: str) -> Path:
        path = await self.inner.local_path(identifier)
        if self.removed is None:
            self.removed = identifier
            path.unlink()
        return path

    async def length(self, identifier: str) -> int:
        if identifier == self.removed and not self.looked:  # its size, read before it went
            self.looked = True
            return 1
        return await self.inner.length(identifier)

    async def save_file(self, *args: object, **kwargs: object) -> str:
        raise AssertionError("the old store is only read")


def test_describe_and_check_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = FilesystemStore(path=str(tmp_path / "a")), FilesystemStore(path=str(tmp_path / "b"))
    assert migrate.describe(a) == f"filesystem -p {tmp_path / 'a'}"
    migrate.check_stores(a, b)
    with pytest.raises(MigrationRefused, match="same store"):
        migrate.check_stores(a, FilesystemStore(path=str(tmp_path / "x" / ".." / "a")))
    with pytest.raises(MigrationRefused, match="inside the other"):
        migrate.check_stores(a, FilesystemStore(path=str(tmp_path / "a" / "new")))
    bucket = ObjectStorageStore(
        endpoint="http://s3", bucket_name="m", region="r", access_key="k", secret_key="s"
    )
    assert migrate.describe(bucket) == "object-storage -e http://s3 -b m"
    migrate.check_stores(a, bucket)
    with pytest.raises(MigrationRefused, match="same store"):  # however it is reached
        migrate.check_stores(bucket, msgspec.structs.replace(bucket, use_path_style=True))
    monkeypatch.chdir(tmp_path)
    assert migrate.describe(FilesystemStore(path="a")) == migrate.describe(a)


@pytest.mark.parametrize(
    ("endpoint", "path_style", "other", "other_path_style"),
    [
        ("https://s3.x.com", False, "https://s3.x.com/", False),  # a trailing slash
        ("https://s3.x.com", True, "HTTPS://S3.X.com:443/", True),  # case, default port
        ("http://s3.x.com:80", True, "http://s3.x.com", False),
        ("https://s3.x.com", True, "https://m.s3.x.com", False),  # path-style, virtual-host
        ("https://s3.x.com", False, "https://m.s3.x.com/", False),
    ],
)
def test_one_bucket_however_it_is_spelled(
    endpoint: str, path_style: bool, other: str, other_path_style: bool
) -> None:
    one = ObjectStorageStore(
        endpoint=endpoint,
        bucket_name="m",
        region="r",
        access_key="k",
        secret_key="s",
        use_path_style=path_style,
    )
    two = msgspec.structs.replace(one, endpoint=other, use_path_style=other_path_style)
    with pytest.raises(MigrationRefused, match="same store"):
        migrate.check_stores(one, two)
    assert migrate.same_store(migrate.describe(one), migrate.describe(two))
    for different in (
        msgspec.structs.replace(two, bucket_name="n"),
        msgspec.structs.replace(two, endpoint="https://s3.y.com"),
        msgspec.structs.replace(two, endpoint="https://s3.x.com:9000"),
    ):
        migrate.check_stores(one, different)


def test_describe_never_shows_userinfo_and_reads_old_records() -> None:
    bucket = ObjectStorageStore(
        endpoint="https://user:secret@S3.x.com/",
        bucket_name="m",
        region="r",
        access_key="k",
        secret_key="s",
    )
    assert migrate.describe(bucket) == "object-storage -e https://s3.x.com -b m"
    # A run recorded by an older version, spelled as it was typed, is the same store.
    assert migrate.same_store("object-storage -e https://s3.x.com/ -b m", migrate.describe(bucket))
    assert not migrate.same_store(
        "object-storage -e https://s3.x.com -b n", migrate.describe(bucket)
    )


def test_one_folder_through_a_symlink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "real" / "a").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    a = FilesystemStore(path=str(tmp_path / "real" / "a"))
    monkeypatch.chdir(tmp_path)
    for other in ("link/a", "./real/a", str(tmp_path / "link" / "a") + "/"):
        with pytest.raises(MigrationRefused, match="same store"):
            migrate.check_stores(a, FilesystemStore(path=other))
    with pytest.raises(MigrationRefused, match="inside the other"):
        migrate.check_stores(a, FilesystemStore(path="link/a/new"))
    with pytest.raises(MigrationRefused, match="inside the other"):
        migrate.check_stores(FilesystemStore(path="link"), a)
    assert migrate.describe(FilesystemStore(path="link/a")) == migrate.describe(a)


def test_one_folder_by_device_and_inode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two paths that realpath cannot tie (a bind mount) are one store when they are the
    same file."""
    (tmp_path / "a").mkdir()
    (tmp_path / "mnt").mkdir()
    real_stat = os.stat

    def bound(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if os.fspath(path) == str(tmp_path / "mnt"):  # type: ignore[arg-type]
            path = tmp_path / "a"
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", bound)
    a = FilesystemStore(path=str(tmp_path / "a"))
    with pytest.raises(MigrationRefused, match="same store"):
        migrate.check_stores(a, FilesystemStore(path=str(tmp_path / "mnt")))
    (tmp_path / "mnt" / "new").mkdir()
    with pytest.raises(MigrationRefused, match="inside the other"):
        migrate.check_stores(a, FilesystemStore(path=str(tmp_path / "mnt" / "new")))


def test_the_server_refuses_an_unfinished_migration(tmp_path: Path) -> None:
    b = tmp_path / "b"
    config = Config(
        repo=SqliteRepoConfig(path=str(tmp_path / "db")), store=FilesystemStore(path=str(b))
    )
    unfinished = StoreMigration(
        id=3, from_store="filesystem -p /a", to_store=f"filesystem -p {b}", started_ns=1, moved=7
    )
    with pytest.raises(StartupError) as refused:
        startup.check_store_migration(config, unfinished)
    assert str(refused.value) == (
        f"repo.path {tmp_path / 'db'}: a migrate-store from filesystem -p /a to filesystem -p "
        f"{b} is unfinished (7 files moved); finish it by running the same command again: "
        f"pictrs-trio migrate-store filesystem -p /a filesystem -p {b} sqlite -p {tmp_path / 'db'}"
        "; or end it with migrate-store --abandon (docs/operations.md)"
    )
    to_bucket = msgspec.structs.replace(unfinished, to_store="object-storage -e http://s3 -b m")
    with pytest.raises(StartupError, match=r"db \(with the region and keys of each bucket\);"):
        startup.check_store_migration(config, to_bucket)
    # The command that ran it, recorded with the run: named as it was typed.
    typed = (
        "pictrs-trio -c /etc/pictrs.toml migrate-store --concurrency 4 filesystem -p /a "
        "object-storage -e http://s3 -u -b m -r r -a k -s '<secret-key>' sqlite -p /db"
    )
    with pytest.raises(StartupError) as refused:
        startup.check_store_migration(config, msgspec.structs.replace(to_bucket, command=typed))
    assert f"again: {typed} (with the real <secret-key>); or end it" in str(refused.value)
    with pytest.raises(StartupError, match="records 7 files moved by an unfinished"):
        startup.check_store_migration(config, msgspec.structs.replace(unfinished, id=0))

    finished = msgspec.structs.replace(unfinished, finished_ns=2, moved=0)
    startup.check_store_migration(config, finished)  # went to the configured store
    startup.check_store_migration(  # the same store, spelled otherwise
        config, msgspec.structs.replace(finished, to_store=f"filesystem -p {b}/")
    )
    with pytest.raises(StartupError) as elsewhere:
        startup.check_store_migration(
            config, msgspec.structs.replace(finished, to_store="filesystem -p /elsewhere")
        )
    assert str(elsewhere.value) == (
        f"repo.path {tmp_path / 'db'}: the last migrate-store moved the media to filesystem "
        f"-p /elsewhere, but the configured store is filesystem -p {b}: point store at "
        "filesystem -p /elsewhere; or move the media here first: pictrs-trio migrate-store "
        f"filesystem -p /elsewhere filesystem -p {b} sqlite -p {tmp_path / 'db'}"
    )
    assert "\n" not in str(elsewhere.value)
    to_bucket_done = msgspec.structs.replace(
        finished, to_store="object-storage -e https://s3.x.com -b m"
    )
    with pytest.raises(StartupError, match=r"with the region and keys of each bucket"):
        startup.check_store_migration(config, to_bucket_done)
    on_bucket = msgspec.structs.replace(
        config,
        store=ObjectStorageStore(
            endpoint="https://M.s3.x.com/",
            bucket_name="m",
            region="r",
            access_key="k",
            secret_key="s",
        ),
    )
    startup.check_store_migration(on_bucket, to_bucket_done)  # the same bucket


@pytest.mark.parametrize(
    ("endpoint", "region", "why"),
    [
        ("ftp://s3.x.com", "r", "TO store: store.endpoint 'ftp://s3.x.com' is not an http"),
        ("https://s3.x.com", "", "TO store: store.region is empty"),
        ("https://u:secret@s3.x.com", "r", "TO store: store.endpoint must not carry a user"),
    ],
)
def test_migrate_store_checks_its_buckets_as_run_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, endpoint: str, region: str, why: str
) -> None:
    from pictrs_trio.config import ConfigError
    from pictrs_trio.runtime import migrate_command
    from pictrs_trio.runtime.cli import MigrateStoreArgs

    monkeypatch.setattr(migrate_command.pictrs_logging, "setup", lambda _: None)
    bucket = ObjectStorageStore(
        endpoint=endpoint, bucket_name="m", region=region, access_key="k", secret_key="s"
    )
    args = MigrateStoreArgs(source=FilesystemStore(path=str(tmp_path / "a")), destination=bucket)
    config = Config(repo=SqliteRepoConfig(path=str(tmp_path / "db")))
    with pytest.raises(ConfigError) as refused:
        migrate_command.run(config, args)
    assert str(refused.value).startswith(why) and "secret" not in str(refused.value)
    assert not (tmp_path / "db").exists()  # refused before anything was opened
