"""SqliteRepo against real SQLite files in tmp_path."""

from __future__ import annotations

import datetime as dt
import hashlib
import inspect
import statistics
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import apsw
import msgspec
import pytest
import trio

from journal import IntentLost, Journal
from pictrs_trio.repo import Repo, migrations
from pictrs_trio.repo.records import Details, Hash, PendingUpload, UploadOutcome
from pictrs_trio.repo.sqlite import DB_FILE_NAME, SqliteRepo, open_sqlite_repo
from pictrs_trio.rules import ids, jobs
from pictrs_trio.rules.errors import AlreadyClaimed, DuplicateAlias, RepoError
from pictrs_trio.rules.formats import Fmt, Kind, MediaFormat

JPEG = MediaFormat(kind=Kind.IMAGE, fmt=Fmt.JPEG)
WEBP = MediaFormat(kind=Kind.IMAGE, fmt=Fmt.WEBP)


def make_hash(seed: int | str, fmt: MediaFormat = JPEG) -> Hash:
    digest = hashlib.sha256(str(seed).encode()).digest()
    return Hash(sha256=digest, size=1000 + len(str(seed)), format=fmt)


def make_details(width: int = 640, fmt: MediaFormat = JPEG) -> Details:
    return Details(
        width=width,
        height=360,
        frames=None,
        format=fmt,
        created_at=dt.datetime(2024, 6, 25, 15, 34, 41, 123450, tzinfo=dt.UTC),
    )


@pytest.fixture
async def repo(tmp_path: Path) -> AsyncIterator[SqliteRepo]:
    async with open_sqlite_repo(tmp_path / "repo") as opened:
        yield opened


def raw(tmp_path: Path) -> apsw.Connection:
    return apsw.Connection(str(tmp_path / "repo" / DB_FILE_NAME))


@contextmanager
def raw_conn(repo: SqliteRepo) -> Iterator[apsw.Connection]:
    """A connection of its own to ``repo``'s file, for writes no method makes."""
    conn = apsw.Connection(str(repo.db_file))
    conn.set_busy_timeout(5000)
    try:
        yield conn
    finally:
        conn.close()


_OWNERS: weakref.WeakKeyDictionary[SqliteRepo, Journal] = weakref.WeakKeyDictionary()


async def owner_of(repo: SqliteRepo) -> Journal:
    """The journal owner this test's writes belong to (one per repo, registered)."""
    if repo not in _OWNERS:
        _OWNERS[repo] = Journal(repo.journal_db())
        await _OWNERS[repo].register()
    return _OWNERS[repo]


async def intended(repo: SqliteRepo, extension: str = ".jpeg") -> str:
    """A fresh identifier with its intent recorded, as services/storing.py does."""
    identifier = ids.new_identifier(extension)
    journal = await owner_of(repo)
    await journal.intend([identifier], jobs.CLEANUP, jobs.RemoveFiles(identifiers=[identifier]))
    return identifier


def hash_identifier(repo: SqliteRepo, h: Hash) -> str | None:
    rows = repo._loop_reader.execute(
        "SELECT identifier FROM hashes WHERE hash = ?", (h.key(),)
    ).fetchall()
    return None if not rows else str(rows[0][0])


def variant_identifier(repo: SqliteRepo, h: Hash, variant: str) -> str | None:
    rows = repo._loop_reader.execute(
        "SELECT identifier FROM variants WHERE hash = ? AND variant = ?", (h.key(), variant)
    ).fetchall()
    return None if not rows else str(rows[0][0])


async def commit_variant(repo: SqliteRepo, h: Hash, variant: str) -> tuple[str, bool]:
    identifier = await intended(repo, ".webp")
    journal = await owner_of(repo)
    return await repo.commit_variant(
        h, variant, identifier, make_details(256, WEBP), owner=journal.owner
    )


def count(conn: apsw.Connection, table: str) -> int:
    value = conn.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
    assert isinstance(value, int)
    return value


async def upload(
    repo: SqliteRepo, seed: int | str, alias: str | None = None, width: int = 640
) -> tuple[Hash, str, str]:
    h = make_hash(seed)
    alias = alias or ids.new_alias(".jpeg")
    token = ids.new_delete_token()
    commit = await repo.commit_upload(
        hash=h,
        identifier=await intended(repo),
        details=make_details(width),
        alias=alias,
        delete_token=token,
        owner=(await owner_of(repo)).owner,
    )
    return h, alias, commit.identifier


def test_implements_every_protocol_method_with_its_signature() -> None:
    names = [
        n
        for cls in Repo.__mro__
        if cls.__module__ == "pictrs_trio.repo"
        for n in vars(cls)
        if not n.startswith("_")
    ]
    assert "commit_upload" in names
    for name in names:
        assert inspect.signature(getattr(SqliteRepo, name)) == inspect.signature(
            getattr(Repo, name)
        ), name
        # Only the ``*_now`` look-ups run on the calling thread (the serving fast path).
        is_async = inspect.iscoroutinefunction(getattr(SqliteRepo, name))
        assert is_async is not (name.endswith("_now") or name == "journal_db"), name


async def test_open_sets_wal_foreign_keys_and_schema(tmp_path: Path, repo: SqliteRepo) -> None:
    assert repo.db_file == tmp_path / "repo" / DB_FILE_NAME
    conn = raw(tmp_path)
    assert conn.pragma("journal_mode") == "wal"
    assert conn.pragma("user_version") == migrations.SCHEMA_VERSION
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_schema WHERE type='table'")}
    assert {
        "hashes",
        "variants",
        "aliases",
        "details",
        "settings",
        "proxies",
        "uploads",
        "store_migrations",
    } <= tables
    # The repo's own connections enforce foreign keys: an alias for no hash is refused.
    with pytest.raises(RepoError):
        await repo._write(
            lambda c: c.execute("INSERT INTO aliases VALUES ('x', zeroblob(39), 't')")
        )
    assert repo._writer.pragma("foreign_keys") == 1
    assert repo._writer.pragma("synchronous") == 1  # NORMAL
    conn.close()


async def test_synchronous_full_flag(tmp_path: Path) -> None:
    async with open_sqlite_repo(tmp_path / "r", synchronous_full=True) as repo:
        assert repo._writer.pragma("synchronous") == 2  # FULL


async def test_commit_upload_and_reads(repo: SqliteRepo) -> None:
    h = make_hash("a")
    identifier = await intended(repo)
    alias = ids.new_alias(".jpeg")
    token = ids.new_delete_token()
    journal = await owner_of(repo)
    commit = await repo.commit_upload(
        hash=h,
        identifier=identifier,
        details=make_details(),
        alias=alias,
        delete_token=token,
        owner=journal.owner,
    )
    assert await journal.intended() == set()  # the commit fulfilled the intent
    assert commit.identifier == identifier
    assert commit.details == make_details()
    assert commit.deduplicated is False

    assert await repo.alias_hash(alias) == h
    assert await repo.delete_token(alias) == token
    assert hash_identifier(repo, h) == identifier
    assert await repo.aliases_for_hash(h) == [alias]
    assert await repo.details(identifier) == make_details()
    assert await repo.identifiers() == {identifier}

    assert await repo.alias_hash("missing.png") is None
    assert await repo.delete_token("missing.png") is None
    assert hash_identifier(repo, make_hash("other")) is None
    assert await repo.aliases_for_hash(make_hash("other")) == []
    assert await repo.details("no/such") is None


async def test_dedupe_keeps_existing_identifier_and_details(
    tmp_path: Path, repo: SqliteRepo
) -> None:
    h, first_alias, first_ident = await upload(repo, "same", width=640)
    second_alias = ids.new_alias(".jpeg")
    fresh_ident = await intended(repo)
    journal = await owner_of(repo)
    commit = await repo.commit_upload(
        hash=h,
        identifier=fresh_ident,
        details=make_details(999),
        alias=second_alias,
        delete_token=ids.new_delete_token(),
        owner=journal.owner,
    )
    assert commit.deduplicated is True
    assert await journal.intended() == {fresh_ident}  # the caller discards its copy
    assert commit.identifier == first_ident
    assert commit.details.width == 640  # the stored ones, not ours
    assert sorted(await repo.aliases_for_hash(h)) == sorted([first_alias, second_alias])
    assert await repo.details(fresh_ident) is None  # nothing recorded for the unused file
    conn = raw(tmp_path)
    assert count(conn, "hashes") == 1
    assert count(conn, "details") == 1
    conn.close()


async def test_duplicate_alias_rolls_back_new_hash(tmp_path: Path, repo: SqliteRepo) -> None:
    _, alias, _ = await upload(repo, "first", alias="cat.jpg")
    other = make_hash("second")
    new_ident = await intended(repo)
    with pytest.raises(DuplicateAlias):
        await repo.commit_upload(
            hash=other,
            identifier=new_ident,
            details=make_details(),
            alias=alias,
            delete_token=ids.new_delete_token(),
            owner=(await owner_of(repo)).owner,
        )
    assert await (await owner_of(repo)).intended() == {new_ident}  # rolled back too
    assert hash_identifier(repo, other) is None
    assert await repo.details(new_ident) is None
    conn = raw(tmp_path)
    assert count(conn, "hashes") == 1
    assert count(conn, "details") == 1
    assert count(conn, "aliases") == 1
    conn.close()
    # The writer is usable afterwards (no transaction left open).
    assert not repo._writer.in_transaction
    await upload(repo, "third")


async def test_relate_details_upserts(repo: SqliteRepo) -> None:
    await repo.relate_details("v/1.webp", make_details(10, WEBP))
    assert await repo.details("v/1.webp") == make_details(10, WEBP)
    await repo.relate_details("v/1.webp", make_details(20, WEBP))
    assert await repo.details("v/1.webp") == make_details(20, WEBP)


async def test_remove_alias_not_last(repo: SqliteRepo) -> None:
    h, a1, ident = await upload(repo, "shared")
    commit = await repo.commit_upload(
        hash=h,
        identifier=await intended(repo),
        details=make_details(),
        alias="second.jpeg",
        delete_token="tok",
        owner=(await owner_of(repo)).owner,
    )
    assert commit.deduplicated
    removed = await repo.remove_alias(a1)
    assert removed is not None
    assert removed.hash == h
    assert removed.orphaned_identifiers == []
    assert await repo.alias_hash(a1) is None
    assert hash_identifier(repo, h) == ident
    assert await repo.aliases_for_hash(h) == ["second.jpeg"]
    assert await repo.remove_alias(a1) is None


async def test_remove_last_alias_orphans_everything(tmp_path: Path, repo: SqliteRepo) -> None:
    h, alias, ident = await upload(repo, "lonely")
    v1, ours1 = await commit_variant(repo, h, "thumbnail.256.webp")
    v2, ours2 = await commit_variant(repo, h, "blur.2.webp")
    assert ours1 and ours2
    await repo._write(
        lambda c: c.execute(
            "UPDATE hashes SET motion_identifier = 'mo/1.png' WHERE hash = ?", (h.key(),)
        )
    )
    await repo.relate_details("mo/1.png", make_details(640))
    keep_h, _, keep_ident = await upload(repo, "other")
    await repo._write(
        lambda c: c.execute(
            "INSERT INTO proxies VALUES ('https://example.org/a.png', ?, 0)", (alias,)
        )
    )
    assert await repo.identifiers() == {ident, v1, v2, "mo/1.png", keep_ident}
    # The store audit's page look-up: every column, nothing else, no duplicates.
    page = [ident, "no/such.png", v1, "mo/1.png", keep_ident, ident, alias]
    assert await repo.known_identifiers(page) == {ident, v1, "mo/1.png", keep_ident}
    assert await repo.known_identifiers([]) == set()

    removed = await repo.remove_alias(alias)
    assert removed is not None
    assert removed.hash == h
    assert set(removed.orphaned_identifiers) == {ident, "mo/1.png", v1, v2}
    assert hash_identifier(repo, h) is None
    assert variant_identifier(repo, h, "thumbnail.256.webp") is None
    for gone in removed.orphaned_identifiers:
        assert await repo.details(gone) is None
    assert await repo.identifiers() == {keep_ident}
    conn = raw(tmp_path)
    assert count(conn, "variants") == 0
    assert count(conn, "proxies") == 0
    assert count(conn, "hashes") == 1
    assert count(conn, "details") == 1
    conn.close()
    assert hash_identifier(repo, keep_h) == keep_ident


async def test_variants_first_writer_wins(repo: SqliteRepo) -> None:
    h, _, _ = await upload(repo, "v")
    journal = await owner_of(repo)
    assert variant_identifier(repo, h, "k") is None
    first, ours = await commit_variant(repo, h, "k")
    assert ours
    second, ours = await commit_variant(repo, h, "k")
    assert (second, ours) == (first, False)
    assert variant_identifier(repo, h, "k") == first
    assert len(await journal.intended()) == 1  # the loser's: its caller discards it
    with pytest.raises(RepoError):  # no such hash: foreign key
        await commit_variant(repo, make_hash("nope"), "k")


async def test_a_commit_whose_intent_was_reaped_writes_nothing(repo: SqliteRepo) -> None:
    """If this process was taken for dead, its intent became a RemoveFiles job: the file is
    going, so no row may point at it."""
    h, _, _ = await upload(repo, "reaped")
    journal = await owner_of(repo)
    identifier = await intended(repo, ".webp")
    await journal.abandon([identifier])  # as the reaper does
    with pytest.raises(IntentLost):
        await repo.commit_variant(h, "k", identifier, make_details(256, WEBP), owner=journal.owner)
    assert variant_identifier(repo, h, "k") is None
    assert await repo.details(identifier) is None


def remove_jobs(repo: SqliteRepo) -> list[list[str]]:
    """The identifiers of every RemoveFiles job queued, oldest first."""
    rows = repo._loop_reader.execute(
        "SELECT payload FROM journal_jobs WHERE queue = ? AND kind = 'remove_files' ORDER BY id",
        (jobs.CLEANUP,),
    ).fetchall()
    return [msgspec.json.decode(bytes(p), type=jobs.RemoveFiles).identifiers for (p,) in rows]


async def backgrounded(repo: SqliteRepo) -> tuple[str, str]:
    """A backgrounded upload recorded as POST /image/backgrounded does: (upload id, raw)."""
    raw_identifier = await intended(repo, "")
    upload_id = str(uuid.uuid4())
    pending = PendingUpload(upload_id=upload_id, raw_identifier=raw_identifier)
    await repo.create_uploads([pending], owner=(await owner_of(repo)).owner)
    return upload_id, raw_identifier


async def test_an_upload_outcome_is_recorded_once_and_lets_go_of_the_raw_bytes(
    repo: SqliteRepo,
) -> None:
    upload_id, raw_identifier = await backgrounded(repo)
    assert await repo.upload_outcome(upload_id) == (True, None)
    assert await repo.known_identifiers([raw_identifier, "x/y.png"]) == {raw_identifier}
    owner = (await owner_of(repo)).owner
    commit = dict(hash=make_hash("bg"), details=make_details(), owner=owner, upload_id=upload_id)
    first = ids.new_alias(".jpeg")
    await repo.commit_upload(
        identifier=await intended(repo), alias=first, delete_token="t1", **commit
    )
    assert remove_jobs(repo) == [[raw_identifier]]  # queued with the outcome
    # An ingest that ran twice (its first run's process died after committing) is refused,
    # and writes nothing: the client keeps the first alias.
    with pytest.raises(AlreadyClaimed):
        await repo.commit_upload(
            identifier=await intended(repo), alias=ids.new_alias(".jpeg"), delete_token="t2",
            **commit,
        )  # fmt: skip
    exists, outcome = await repo.upload_outcome(upload_id)
    assert (
        exists
        and outcome is not None
        and (outcome.alias, outcome.delete_token)
        == (
            first,
            "t1",
        )
    )
    failed = UploadOutcome(error_msg="late", error_code="unknown-error")
    assert not await repo.finish_upload(upload_id, failed)  # no outcome over an outcome
    assert (await repo.upload_outcome(upload_id))[1] == outcome
    assert await repo.claim_upload(upload_id) == (True, False)
    assert await repo.claim_upload(upload_id) == (False, False)
    assert remove_jobs(repo) == [[raw_identifier]]


async def test_claiming_an_upload_whose_raw_bytes_were_kept_removes_them(
    repo: SqliteRepo,
) -> None:
    """A row that still holds its raw bytes when claimed (an outcome recorded by an older
    version, which released them separately) queues their removal with the claim."""
    upload_id, raw_identifier = await backgrounded(repo)
    with raw_conn(repo) as conn:
        conn.execute("UPDATE uploads SET result = ? WHERE id = ?", (b"{}", upload_id))
    assert remove_jobs(repo) == []
    assert await repo.claim_upload(upload_id) == (True, True)
    assert remove_jobs(repo) == [[raw_identifier]]


async def test_a_failed_ingest_records_its_outcome_and_lets_go_of_the_raw_bytes(
    repo: SqliteRepo,
) -> None:
    upload_id, raw_identifier = await backgrounded(repo)
    failed = UploadOutcome(error_msg="Unsupported media type", error_code="media-disallowed")
    assert await repo.finish_upload(upload_id, failed)
    assert await repo.upload_outcome(upload_id) == (True, failed)
    assert remove_jobs(repo) == [[raw_identifier]]
    assert not await repo.release_upload_raw(upload_id)  # nothing left to release


async def test_health(repo: SqliteRepo) -> None:
    for _ in range(3):
        await repo.health()
    rows = repo._loop_reader.execute(
        "SELECT value FROM settings WHERE key = 'health-value'"
    ).fetchall()
    assert rows == [((2).to_bytes(8, "big"),)]


async def test_closed_repo_raises(tmp_path: Path) -> None:
    async with open_sqlite_repo(tmp_path / "r") as repo:
        pass
    with pytest.raises(RepoError, match="closed"):
        await repo.health()


async def test_open_unusable_path_raises_repo_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"not a directory")
    with pytest.raises(RepoError):
        async with open_sqlite_repo(blocker):
            pass
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / DB_FILE_NAME).write_bytes(b"x" * 4096)
    with pytest.raises(RepoError):
        async with open_sqlite_repo(tmp_path / "garbage"):
            pass


async def test_migration_from_older_version(tmp_path: Path) -> None:
    db_dir = tmp_path / "old"
    db_dir.mkdir()
    conn = apsw.Connection(str(db_dir / DB_FILE_NAME))
    assert migrations.migrate(conn, target=1) == 0
    h = make_hash("old")
    conn.execute(
        "INSERT INTO hashes (hash, identifier, created_at) VALUES (?, 'old/file.jpeg', 1)",
        (h.key(),),
    )
    conn.execute("INSERT INTO aliases VALUES ('old.jpeg', ?, 'tok')", (h.key(),))
    columns = {row[1] for row in conn.execute("PRAGMA table_info(hashes)")}
    assert "blurhash" not in columns
    assert conn.pragma("user_version") == 1
    conn.close()

    async with open_sqlite_repo(db_dir) as repo:
        assert repo._writer.pragma("user_version") == migrations.SCHEMA_VERSION
        assert await repo.alias_hash("old.jpeg") == h
        assert hash_identifier(repo, h) == "old/file.jpeg"
        columns = {row[1] for row in repo._writer.execute("PRAGMA table_info(hashes)")}
        assert "blurhash" in columns


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db_dir = tmp_path / "new"
    db_dir.mkdir()
    conn = apsw.Connection(str(db_dir / DB_FILE_NAME))
    conn.pragma("user_version", migrations.SCHEMA_VERSION + 1)
    conn.close()
    with pytest.raises(RepoError, match="newer"):
        async with open_sqlite_repo(db_dir):
            pass


async def test_failed_migration_rolls_back(tmp_path: Path) -> None:
    db_dir = tmp_path / "half"
    db_dir.mkdir()
    conn = apsw.Connection(str(db_dir / DB_FILE_NAME))
    migrations.migrate(conn, target=1)
    # Pre-create what v2 adds, so v2 fails midway: the version must stay at 1.
    conn.execute("CREATE INDEX variants_accessed ON variants (accessed)")
    with pytest.raises(apsw.SQLError):
        migrations.migrate(conn)
    assert conn.pragma("user_version") == 1
    columns = {row[1] for row in conn.execute("PRAGMA table_info(hashes)")}
    assert "blurhash" not in columns
    conn.close()


async def test_two_instances_share_the_file(tmp_path: Path) -> None:
    async with (
        open_sqlite_repo(tmp_path / "shared") as one,
        open_sqlite_repo(tmp_path / "shared") as two,
    ):
        h1, a1, i1 = await upload(one, "from-one")
        assert await two.alias_hash(a1) == h1  # a reader of the other instance sees it
        h2, a2, i2 = await upload(two, "from-two")
        assert await one.alias_hash(a2) == h2
        assert await one.identifiers() == await two.identifiers() == {i1, i2}
        # A duplicate alias across instances is still caught by the database.
        with pytest.raises(DuplicateAlias):
            await upload(two, "another", alias=a1)
        removed = await two.remove_alias(a1)
        assert removed is not None
        assert removed.orphaned_identifiers == [i1]
        assert await one.alias_hash(a1) is None
        await one.health()
        await two.health()


async def test_fifty_concurrent_uploads_all_land(tmp_path: Path, repo: SqliteRepo) -> None:
    results: dict[int, str] = {}

    async def one(n: int) -> None:
        _, alias, _ = await upload(repo, n % 40)  # some share content: dedupe under load
        results[n] = alias

    async with trio.open_nursery() as nursery:
        for n in range(50):
            nursery.start_soon(one, n)
    assert len(results) == 50
    conn = raw(tmp_path)
    assert count(conn, "aliases") == 50
    assert count(conn, "hashes") == 40
    conn.close()
    for n, alias in results.items():
        assert await repo.alias_hash(alias) == make_hash(n % 40)


async def test_cancellation_never_leaves_half_a_transaction(repo: SqliteRepo) -> None:
    def slow_write(conn: apsw.Connection) -> None:
        with conn:
            conn.execute("INSERT INTO settings VALUES ('slow', x'01')")
            time.sleep(0.2)  # the thread keeps going when its task is cancelled

    waiting_alias = ids.new_alias(".jpeg")
    with trio.move_on_after(0.05) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(repo._write, slow_write)
            await trio.sleep(0.01)
            # Queued behind the writer limiter: cancelled before it touches the database.
            nursery.start_soon(upload, repo, "queued", waiting_alias)
    assert scope.cancelled_caught
    # The running write was not abandoned: it committed in full, and nothing is left open.
    assert repo._loop_reader.execute(
        "SELECT value FROM settings WHERE key = 'slow'"
    ).fetchall() == [(b"\x01",)]
    assert not repo._writer.in_transaction
    assert await repo.alias_hash(waiting_alias) is None
    await upload(repo, "after")


@pytest.mark.parametrize("readers", [4, 0])
async def test_timings(tmp_path: Path, readers: int) -> None:
    """300 uploads and their look-ups; the per-call cost (thread hop included) is printed
    (bench/ measures speed; tests assert outcomes)."""
    async with open_sqlite_repo(tmp_path / f"t{readers}", readers=readers) as repo:
        commits: list[float] = []
        lookups: list[float] = []
        aliases: list[str] = []
        for n in range(300):
            start = time.perf_counter()
            _, alias, _ = await upload(repo, f"t{n}")
            commits.append(time.perf_counter() - start)
            aliases.append(alias)
        for alias in aliases:
            start = time.perf_counter()
            assert await repo.alias_hash(alias) is not None
            lookups.append(time.perf_counter() - start)
    commit_ms = statistics.median(commits) * 1000
    lookup_ms = statistics.median(lookups) * 1000
    print(f"readers={readers}: commit_upload {commit_ms:.3f} ms, alias_hash {lookup_ms:.3f} ms")
