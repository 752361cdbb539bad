"""The embedded metadata repo: APSW/SQLite in WAL mode.

Layout: ``<path>/pictrs.sqlite3`` (plus SQLite's ``-wal`` and ``-shm`` files). Schema in
``migrations.py``, applied at open.

Threads: SQL lives in the plain ``_q_*``/``_w_*`` functions below, each taking an
``apsw.Connection``; the async methods run them with ``trio.to_thread.run_sync``. All writes
go through one writer connection behind a ``CapacityLimiter(1)`` (datasette's
``execute_write_fn``), in IMMEDIATE transactions so a second process sharing the file waits on
``busy_timeout`` instead of failing half-way. Reads take a connection from a small pool; in
WAL they never wait for the writer. ``run_sync`` is not abandoned on cancel, so a connection
is never used by two threads and a started transaction always commits or rolls back.

Durability: ``synchronous=NORMAL`` in WAL mode loses no committed transaction when the
process is killed (the WAL is in the OS page cache); only a power cut or kernel crash can
drop the last transactions. ``synchronous_full=True`` syncs the WAL at every commit too.

Errors: ``apsw`` and ``msgspec`` exceptions are translated once, in ``_translate``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, TypeVarTuple

import apsw
import msgspec
import trio

from journal import fulfil_in
from journal import schema as journal_schema
from journal.schema import set_wal, transaction
from pictrs_trio.repo import (
    JournalDb,
    backup,
    hash_sql,
    media_sql,
    migrations,
    move_sql,
    proxy_sql,
    settings_sql,
)
from pictrs_trio.repo.records import (
    Details,
    FileToMove,
    Found,
    Hash,
    HashEntry,
    HashPage,
    MovePage,
    MovePosition,
    PendingUpload,
    Proxied,
    RemovedAlias,
    StoredHash,
    StoreMigration,
    UploadCommit,
    UploadOutcome,
)
from pictrs_trio.rules import jobs
from pictrs_trio.rules.errors import DuplicateAlias, PictrsError, RepoError

__all__ = ["DB_FILE_NAME", "SqliteRepo", "open_sqlite_repo"]

DB_FILE_NAME = "pictrs.sqlite3"
DEFAULT_READERS = 4
DEFAULT_BUSY_TIMEOUT_MS = 5_000
HEALTH_KEY = "health-value"

T = TypeVar("T")
Ts = TypeVarTuple("Ts")
if TYPE_CHECKING:  # SQLiteValue exists only in apsw's type stubs
    from typing import TypeAlias

    Row: TypeAlias = tuple[apsw.SQLiteValue, ...]

# Immutable, so module constants (msgspec perf tips: build each once).
_DETAILS_ENCODER = msgspec.json.Encoder()
_DETAILS_DECODER = msgspec.json.Decoder(Details)
_OUTCOME_ENCODER = msgspec.json.Encoder()
_LIST_ENCODER = msgspec.json.Encoder()
_OUTCOME_DECODER = msgspec.json.Decoder(UploadOutcome)

# (constraint message fragment, error to raise) for apsw.ConstraintError; anything else from
# the database is a RepoError.
_CONSTRAINTS: tuple[tuple[str, Callable[[], PictrsError]], ...] = (
    ("aliases.alias", lambda: DuplicateAlias("Alias already exists")),
)


def _translate(exc: Exception) -> PictrsError:
    if isinstance(exc, apsw.ConstraintError):
        text = str(exc)
        for fragment, make in _CONSTRAINTS:
            if fragment in text:
                return make()
    if isinstance(exc, msgspec.MsgspecError):
        return RepoError(f"Corrupt record in database: {exc}")
    return RepoError(f"Database error: {exc}")


def _call(fn: Callable[[apsw.Connection, *Ts], T], conn: apsw.Connection, *args: *Ts) -> T:
    try:
        return fn(conn, *args)
    except (apsw.Error, msgspec.MsgspecError) as exc:
        raise _translate(exc) from exc


def _now_ns() -> int:
    return time.time_ns()


# --- connections -----------------------------------------------------------------------------


def _connect(db_file: Path, *, synchronous_full: bool, busy_timeout_ms: int) -> apsw.Connection:
    conn = apsw.Connection(str(db_file), flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
    try:
        conn.set_busy_timeout(busy_timeout_ms)
        mode = set_wal(conn, busy_timeout_ms)
        if mode != "wal":
            raise RepoError(f"SQLite refused WAL mode (journal_mode={mode})")
        conn.pragma("synchronous", "FULL" if synchronous_full else "NORMAL")
        conn.pragma("foreign_keys", True)
    except BaseException:
        conn.close()
        raise
    return conn


def _open_all(
    db_file: Path, *, readers: int, synchronous_full: bool, busy_timeout_ms: int
) -> tuple[apsw.Connection, list[apsw.Connection]]:
    db_file.parent.mkdir(parents=True, exist_ok=True)
    opened: list[apsw.Connection] = []
    try:
        writer = _connect(
            db_file, synchronous_full=synchronous_full, busy_timeout_ms=busy_timeout_ms
        )
        opened.append(writer)
        migrations.migrate(writer)
        journal_schema.ensure(writer)  # the job journal lives in the same file
        writer.transaction_mode = "IMMEDIATE"
        for _ in range(readers + 1):  # the last one is the event loop's own
            reader = _connect(
                db_file, synchronous_full=synchronous_full, busy_timeout_ms=busy_timeout_ms
            )
            opened.append(reader)
            reader.pragma("query_only", True)
    except BaseException:
        for conn in opened:
            conn.close()
        raise
    return writer, opened[1:]


# --- reads -----------------------------------------------------------------------------------


def _q_alias_hash(conn: apsw.Connection, alias: str) -> Hash | None:
    row = media_sql.first(conn, "SELECT hash FROM aliases WHERE alias = ?", (alias,))
    return None if row is None else Hash.from_key(media_sql.as_bytes(row[0]))


def _q_delete_token(conn: apsw.Connection, alias: str) -> str | None:
    row = media_sql.first(conn, "SELECT token FROM aliases WHERE alias = ?", (alias,))
    return None if row is None else media_sql.as_str(row[0])


def _q_aliases_for_hash(conn: apsw.Connection, key: bytes) -> list[str]:
    rows = conn.execute("SELECT alias FROM aliases WHERE hash = ? ORDER BY alias", (key,))
    return [media_sql.as_str(alias) for (alias,) in rows.fetchall()]


def _q_details(conn: apsw.Connection, identifier: str) -> Details | None:
    row = media_sql.first(conn, "SELECT json FROM details WHERE identifier = ?", (identifier,))
    return None if row is None else _DETAILS_DECODER.decode(media_sql.as_bytes(row[0]))


def _q_identifiers(conn: apsw.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT identifier FROM hashes"
        " UNION SELECT motion_identifier FROM hashes WHERE motion_identifier IS NOT NULL"
        " UNION SELECT identifier FROM variants"
        " UNION SELECT raw_identifier FROM uploads WHERE raw_identifier IS NOT NULL"
    ).fetchall()
    return {media_sql.as_str(identifier) for (identifier,) in rows}


def _q_known_identifiers(conn: apsw.Connection, identifiers: str) -> set[str]:
    """Which of ``identifiers`` (a JSON array) a row references; every column has an index
    (uploads' partial one too: equality implies NOT NULL)."""
    rows = conn.execute(
        "SELECT j.value FROM json_each(?1) AS j WHERE"
        " EXISTS (SELECT 1 FROM hashes WHERE identifier = j.value)"
        " OR EXISTS (SELECT 1 FROM hashes WHERE motion_identifier = j.value)"
        " OR EXISTS (SELECT 1 FROM variants WHERE identifier = j.value)"
        " OR EXISTS (SELECT 1 FROM uploads WHERE raw_identifier = j.value)",
        (identifiers,),
    ).fetchall()
    return {media_sql.as_str(identifier) for (identifier,) in rows}


def _q_health(conn: apsw.Connection) -> bytes | None:
    row = media_sql.first(conn, "SELECT value FROM settings WHERE key = ?", (HEALTH_KEY,))
    return None if row is None else media_sql.as_bytes(row[0])


# --- writes (writer connection; journal.schema.transaction is BEGIN IMMEDIATE) ---------


def _w_commit_upload(
    conn: apsw.Connection,
    key: bytes,
    identifier: str,
    details_json: bytes,
    alias: str,
    token: str,
    now_ns: int,
    owner: str,
    upload_id: str | None = None,
) -> tuple[str, bytes, bool]:
    """Returns (identifier, details JSON, deduplicated). With ``upload_id`` the backgrounded
    upload's outcome is recorded in the same transaction (a re-run job then finds it). The
    new file's intent (``owner``'s) is fulfilled, unless the same content was stored already:
    then the caller discards its copy."""
    with transaction(conn):
        conn.execute(
            "INSERT INTO hashes (hash, identifier, created_at) VALUES (?, ?, ?)"
            " ON CONFLICT (hash) DO NOTHING",
            (key, identifier, now_ns),
        )
        deduplicated = conn.changes() == 0
        if deduplicated:
            row = media_sql.first(conn, "SELECT identifier FROM hashes WHERE hash = ?", (key,))
            assert row is not None  # we hold the write lock; the row cannot have gone
            identifier = media_sql.as_str(row[0])
        else:
            fulfil_in(conn, [identifier], owner)
        # First writer wins (as postgres does): for a duplicate the existing details stay.
        # Same bytes means same media facts, so a missing row is filled from ours.
        conn.execute(
            "INSERT INTO details (identifier, json) VALUES (?, ?)"
            " ON CONFLICT (identifier) DO NOTHING",
            (identifier, details_json),
        )
        if conn.changes() == 0:
            row = media_sql.first(
                conn, "SELECT json FROM details WHERE identifier = ?", (identifier,)
            )
            assert row is not None
            details_json = media_sql.as_bytes(row[0])
        # A taken alias raises ConstraintError here and `with` rolls everything back.
        conn.execute(
            "INSERT INTO aliases (alias, hash, token) VALUES (?, ?, ?)", (alias, key, token)
        )
        if upload_id is not None:
            outcome = UploadOutcome(alias=alias, delete_token=token)
            media_sql.record_outcome_in(
                conn, upload_id, _OUTCOME_ENCODER.encode(outcome), now_ns / 1e9
            )
    return identifier, details_json, deduplicated


def _w_relate_details(conn: apsw.Connection, identifier: str, details_json: bytes) -> None:
    # Upsert: details are re-extracted when outdated, and the newest extraction should win.
    conn.execute(
        "INSERT INTO details (identifier, json) VALUES (?, ?)"
        " ON CONFLICT (identifier) DO UPDATE SET json = excluded.json",
        (identifier, details_json),
    )


def _w_bump_health(conn: apsw.Connection) -> int:
    with transaction(conn):
        old = _q_health(conn)
        value = 0 if old is None else (int.from_bytes(old, "big") + 1) % (1 << 64)
        conn.execute(
            "INSERT INTO settings (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (HEALTH_KEY, value.to_bytes(8, "big")),
        )
    return value


class SqliteRepo:
    """``Repo`` on one SQLite file. Make it with ``open_sqlite_repo``."""

    def __init__(
        self,
        db_file: Path,
        writer: apsw.Connection,
        readers: list[apsw.Connection],
        loop_reader: apsw.Connection,
    ):
        self.db_file = db_file
        self._writer = writer
        self._loop_reader = loop_reader
        self._write_limiter = trio.CapacityLimiter(1)
        self._readers = list(readers)
        self._idle_readers = list(readers)
        self._read_slots = trio.Semaphore(len(readers)) if readers else None
        self._closed = False

    # -- plumbing --

    async def _write(self, fn: Callable[[apsw.Connection, *Ts], T], *args: *Ts) -> T:
        if self._closed:
            raise RepoError("Repo is closed")
        return await trio.to_thread.run_sync(
            _call, fn, self._writer, *args, limiter=self._write_limiter
        )

    async def _read(self, fn: Callable[[apsw.Connection, *Ts], T], *args: *Ts) -> T:
        if self._closed:
            raise RepoError("Repo is closed")
        if self._read_slots is None:  # readers=0: everything on the writer
            return await self._write(fn, *args)
        async with self._read_slots:
            conn = self._idle_readers.pop()
            try:
                return await trio.to_thread.run_sync(_call, fn, conn, *args)
            finally:
                self._idle_readers.append(conn)

    # -- HealthRepo --

    async def health(self) -> None:
        await self._write(_w_bump_health)
        # Read back on a pooled connection: proves readers see the file too. Another process
        # may have bumped the counter since, so presence, not equality, is the check.
        if await self._read(_q_health) is None:
            raise RepoError("Health value written but not read back")

    # -- MediaRepo --

    async def commit_upload(
        self,
        *,
        hash: Hash,
        identifier: str,
        details: Details,
        alias: str,
        delete_token: str,
        owner: str,
        upload_id: str | None = None,
    ) -> UploadCommit:
        stored_identifier, details_json, deduplicated = await self._write(
            _w_commit_upload,
            hash.key(),
            identifier,
            _DETAILS_ENCODER.encode(details),
            alias,
            delete_token,
            _now_ns(),
            owner,
            upload_id,
        )
        stored = details if not deduplicated else _DETAILS_DECODER.decode(details_json)
        return UploadCommit(identifier=stored_identifier, details=stored, deduplicated=deduplicated)

    def _found(self, row: Row | None) -> Found | None:
        if row is None:
            return None
        key, identifier, details_json = row
        return Found(
            hash=Hash.from_key(media_sql.as_bytes(key)),
            identifier=None if identifier is None else media_sql.as_str(identifier),
            details=None
            if details_json is None
            else _DETAILS_DECODER.decode(media_sql.as_bytes(details_json)),
        )

    def find_original_now(self, alias: str) -> Found | None:
        """``find_original`` on the calling thread, for the event loop's read path.

        A deliberate exception to "SQL runs in a thread": this indexed point read takes a few
        microseconds and, in WAL mode, never waits for a writer, while a thread hop costs
        about 100 µs, most of a cached variant's budget. It uses its own connection, which
        only the event loop thread touches.
        """
        if self._closed:
            raise RepoError("Repo is closed")
        return self._found(_call(media_sql.q_original, self._loop_reader, alias))

    async def find_original(self, alias: str) -> Found | None:
        return self._found(await self._read(media_sql.q_original, alias))

    async def alias_hash(self, alias: str) -> Hash | None:
        return await self._read(_q_alias_hash, alias)

    async def delete_token(self, alias: str) -> str | None:
        return await self._read(_q_delete_token, alias)

    async def aliases_for_hash(self, hash: Hash) -> list[str]:
        return await self._read(_q_aliases_for_hash, hash.key())

    async def details(self, identifier: str) -> Details | None:
        return await self._read(_q_details, identifier)

    async def relate_details(self, identifier: str, details: Details) -> None:
        await self._write(_w_relate_details, identifier, _DETAILS_ENCODER.encode(details))

    async def remove_alias(self, alias: str) -> RemovedAlias | None:
        removed = await self._write(media_sql.w_remove_alias, alias)
        if removed is None:
            return None
        key, orphaned = removed
        return RemovedAlias(hash=Hash.from_key(key), orphaned_identifiers=orphaned)

    async def identifiers(self) -> set[str]:
        return await self._read(_q_identifiers)

    async def known_identifiers(self, identifiers: Sequence[str]) -> set[str]:
        if not identifiers:
            return set()
        return await self._read(
            _q_known_identifiers, _LIST_ENCODER.encode(list(identifiers)).decode()
        )

    # -- VariantRepo --

    def find_variant_now(self, alias: str, variant: str) -> Found | None:
        """``find_variant`` on the calling thread; see ``find_original_now``."""
        if self._closed:
            raise RepoError("Repo is closed")
        return self._found(_call(media_sql.q_variant, self._loop_reader, alias, variant))

    async def find_variant(self, alias: str, variant: str) -> Found | None:
        return self._found(await self._read(media_sql.q_variant, alias, variant))

    async def commit_variant(
        self,
        hash: Hash,
        variant: str,
        identifier: str,
        details: Details,
        *,
        owner: str,
        lease: str | None = None,
    ) -> tuple[str, bool]:
        return await self._write(
            media_sql.w_commit_variant,
            hash.key(),
            variant,
            identifier,
            _DETAILS_ENCODER.encode(details),
            _now_ns(),
            owner,
            lease,
        )

    async def motion_identifier(self, hash: Hash) -> str | None:
        return await self._read(media_sql.q_motion, hash.key())

    async def commit_motion(
        self,
        hash: Hash,
        identifier: str,
        details: Details,
        *,
        owner: str,
        lease: str | None = None,
    ) -> tuple[str, bool]:
        return await self._write(
            media_sql.w_commit_motion,
            hash.key(),
            identifier,
            _DETAILS_ENCODER.encode(details),
            owner,
            lease,
        )

    async def forget_variant(self, hash: Hash, variant: str, identifier: str) -> None:
        await self._write(media_sql.w_forget_variant, hash.key(), variant, identifier)

    async def touch_variants(self, items: list[tuple[bytes, str, int]]) -> None:
        await self._write(media_sql.w_touch_variants, items)

    async def expire_variants(self, accessed_before_ns: int, limit: int) -> int:
        return await self._write(
            media_sql.w_expire_variants, accessed_before_ns, limit, time.time()
        )

    async def remove_all_variants(self, limit: int) -> int:
        return await self._write(media_sql.w_remove_all_variants, limit, time.time())

    # -- UploadRepo --

    async def create_uploads(self, uploads: list[PendingUpload], *, owner: str) -> None:
        rows = [
            (
                u.upload_id,
                u.raw_identifier,
                msgspec.json.encode(
                    jobs.IngestUpload(
                        upload_id=u.upload_id, raw_identifier=u.raw_identifier, query=u.query
                    )
                ),
            )
            for u in uploads
        ]
        await self._write(media_sql.w_create_uploads, rows, _now_ns(), owner)

    async def upload_outcome(self, upload_id: str) -> tuple[bool, UploadOutcome | None]:
        exists, raw = await self._read(media_sql.q_upload, upload_id)
        return exists, None if raw is None else _OUTCOME_DECODER.decode(raw)

    async def finish_upload(self, upload_id: str, outcome: UploadOutcome) -> bool:
        return await self._write(
            media_sql.w_finish_upload, upload_id, _OUTCOME_ENCODER.encode(outcome), time.time()
        )

    async def claim_upload(self, upload_id: str) -> tuple[bool, bool]:
        return await self._write(media_sql.w_claim_upload, upload_id, time.time())

    async def upload_raw_identifier(self, upload_id: str) -> str | None:
        return await self._read(media_sql.q_upload_raw, upload_id)

    async def release_upload_raw(self, upload_id: str) -> bool:
        return await self._write(media_sql.release_raw_in, upload_id, time.time())

    # -- ProxyRepo --

    async def proxy_alias(self, url: str) -> Proxied | None:
        found = await self._read(proxy_sql.q_proxy, url)
        return None if found is None else Proxied(alias=found[0], accessed_ns=found[1])

    async def relate_proxy(self, url: str, alias: str) -> str:
        return await self._write(proxy_sql.w_relate_proxy, url, alias, _now_ns())

    async def touch_proxy(self, url: str) -> None:
        await self._write(proxy_sql.w_touch_proxy, url, _now_ns())

    async def expire_proxies(self, accessed_before_ns: int, limit: int) -> int:
        return await self._write(proxy_sql.w_expire_proxies, accessed_before_ns, limit, time.time())

    # -- HashRepo --

    async def hash_page(
        self, *, start: Hash | None = None, before_ns: int | None = None, limit: int
    ) -> HashPage:
        rows, prev, nxt = await self._read(
            hash_sql.q_hash_page, None if start is None else start.key(), before_ns, limit
        )
        return HashPage(
            limit=limit,
            hashes=[
                HashEntry(
                    hash=Hash.from_key(key),
                    aliases=aliases,
                    details=None if details is None else _DETAILS_DECODER.decode(details),
                )
                for key, details, aliases in rows
            ],
            prev=None if prev is None else Hash.from_key(prev),
            next=None if nxt is None else Hash.from_key(nxt),
        )

    async def hashes_after(
        self, position: tuple[int, bytes] | None, limit: int
    ) -> list[StoredHash]:
        rows = await self._read(hash_sql.q_hashes_after, position, limit)
        return [
            StoredHash(hash=Hash.from_key(key), identifier=identifier, created_ns=created)
            for key, identifier, created in rows
        ]

    async def count_hashes(self) -> int:
        return await self._read(hash_sql.q_count_hashes)

    async def prune_hash(
        self, hash: Hash, identifier: str, *, counter: str | None = None
    ) -> list[str] | None:
        return await self._write(
            hash_sql.w_prune_hash, hash.key(), identifier, counter, time.time()
        )

    async def blurhash(self, hash: Hash) -> str | None:
        return await self._read(hash_sql.q_blurhash, hash.key())

    async def relate_blurhash(self, hash: Hash, blurhash: str) -> None:
        await self._write(hash_sql.w_relate_blurhash, hash.key(), blurhash)

    # -- SettingsRepo --

    async def setting(self, key: str) -> bytes | None:
        return await self._read(settings_sql.q_setting, key)

    async def counter(self, key: str) -> int:
        return settings_sql.as_count(await self._read(settings_sql.q_setting, key))

    async def set_settings(self, values: dict[str, bytes | None]) -> None:
        await self._write(settings_sql.w_set_settings, values)

    def not_found_now(self) -> tuple[str, Found] | None:
        """The not-found image on the calling thread: only misses of the read path ask,
        so a hit costs what it did before (see ``find_original_now``)."""
        if self._closed:
            raise RepoError("Repo is closed")
        found = _call(settings_sql.q_not_found, self._loop_reader)
        if found is None:
            return None
        alias, row = found
        located = self._found(row)
        assert located is not None
        return alias, located

    async def set_not_found(self, alias: str) -> bool:
        return await self._write(settings_sql.w_set_not_found, alias)

    # -- StoreMigrationRepo (SQL in move_sql.py) --

    async def store_migration(self) -> StoreMigration | None:
        row = await self._read(move_sql.q_latest_run)
        return None if row is None else _store_migration(row)

    async def begin_store_migration(
        self, from_store: str, to_store: str, command: str | None = None
    ) -> StoreMigration:
        row = await self._write(move_sql.w_begin_run, from_store, to_store, _now_ns(), command)
        return _store_migration(row)

    async def files_to_move(self, position: MovePosition, limit: int) -> MovePage:
        rows, following = await self._read(
            move_sql.q_files_to_move,
            position.hash_key,
            position.uploads,
            position.upload_id,
            limit,
        )
        files = [
            FileToMove(
                identifier=identifier,
                what=what,
                details=None if details is None else _DETAILS_DECODER.decode(details),
            )
            for identifier, what, details in rows
        ]
        nxt = None
        if following is not None:
            key, uploads, upload_id = following
            nxt = MovePosition(hash_key=key, uploads=uploads, upload_id=upload_id)
        return MovePage(files=files, next=nxt)

    async def move_counts(self) -> tuple[int, int]:
        return await self._read(move_sql.q_counts)

    async def commit_moved_file(self, old: str, new: str, *, owner: str) -> int:
        return await self._write(move_sql.w_commit_moved, old, new, owner)

    async def finish_store_migration(self) -> None:
        await self._write(move_sql.w_finish_run, _now_ns())

    async def moved_files(self, after: str, limit: int) -> list[tuple[str, str]]:
        return await self._read(move_sql.q_moved_files, after, limit)

    async def move_back(self, pairs: list[tuple[str, str]], remove: list[str]) -> int:
        return await self._write(move_sql.w_move_back, pairs, remove, time.time())

    async def abandon_store_migration(self) -> bool:
        return await self._write(move_sql.w_abandon_run, _now_ns())

    # -- BackupRepo --

    async def export(self, folder: Path) -> Path:
        name = backup.export_name(time.time_ns())
        return await self._read(backup.export_from, folder, name, DB_FILE_NAME)

    # -- the journal's view, and closing --

    def journal_db(self) -> JournalDb:
        return _JournalDb(self)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Wait for an in-flight write; readers are back in the pool once their tasks return,
        # and structured concurrency means no task still uses us when we are closed.
        async with self._write_limiter:
            for conn in self._readers:
                conn.close()
            self._loop_reader.close()
            self._writer.close()


def _store_migration(row: move_sql.RunRow) -> StoreMigration:
    run_id, from_store, to_store, started, finished, moved, command = row
    return StoreMigration(
        id=run_id,
        from_store=from_store,
        to_store=to_store,
        started_ns=started,
        finished_ns=finished,
        moved=moved,
        command=command,
    )


class _JournalDb:
    """The journal's ``Database``: its SQL runs on the repo's connections, so all writes of
    this process queue behind one writer (and a job can commit with the rows it follows)."""

    def __init__(self, repo: SqliteRepo) -> None:
        self._repo = repo

    async def write(self, fn: Callable[[apsw.Connection], T]) -> T:
        return await self._repo._write(fn)

    async def read(self, fn: Callable[[apsw.Connection], T]) -> T:
        return await self._repo._read(fn)


@asynccontextmanager
async def open_sqlite_repo(
    path: Path,
    *,
    readers: int = DEFAULT_READERS,
    synchronous_full: bool = False,
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
) -> AsyncIterator[SqliteRepo]:
    """Open (creating and migrating as needed) ``<path>/pictrs.sqlite3``.

    ``readers`` = 0 runs reads on the writer connection. Raises RepoError if the file cannot
    be opened, refuses WAL, or has a schema newer than this code.
    """
    db_file = Path(path) / DB_FILE_NAME
    try:
        writer, pool = await trio.to_thread.run_sync(
            lambda: _open_all(
                db_file,
                readers=readers,
                synchronous_full=synchronous_full,
                busy_timeout_ms=busy_timeout_ms,
            )
        )
    except migrations.SchemaTooNew as exc:
        raise RepoError(str(exc)) from exc
    except (apsw.Error, OSError) as exc:
        raise RepoError(f"Cannot open database {db_file}: {exc}") from exc
    repo = SqliteRepo(db_file, writer, pool[:-1], pool[-1])
    try:
        yield repo
    finally:
        with trio.CancelScope(shield=True):  # closing is local and quick
            await repo.aclose()
