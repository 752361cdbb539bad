"""The journal's tables, and connections of its own.

The tables may live in a database another program owns (pictrs-trio's repo file): every name
starts with ``journal_``, everything is ``IF NOT EXISTS``, and the journal keeps its schema
version in its own ``journal_meta`` table, never in ``PRAGMA user_version`` (the owner's).

Times are integer nanoseconds of the journal's wall clock. ``id`` is AUTOINCREMENT so an id is
never reused after a purge: a waiter holding an old id can never see somebody else's job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import apsw
import trio

from journal.records import JournalError

__all__ = ["SCHEMA_VERSION", "OwnDatabase", "connect", "ensure", "schema_version", "transaction"]

Migration = Callable[[apsw.Connection], None]
T = TypeVar("T")


@contextmanager
def transaction(conn: apsw.Connection) -> Iterator[None]:
    """A write transaction: a SAVEPOINT inside the caller's open transaction (so it commits
    or rolls back with it), else ``BEGIN IMMEDIATE`` … ``COMMIT``. Whatever fails, the
    statement, the COMMIT or the caller's code, the connection leaves it with its
    transaction rolled back and usable, and the first error is the one raised.

    Not apsw's ``with conn:``, for two reasons. At the outermost level apsw 3.54 runs its
    BEGIN while holding the GIL, so when another connection of this process holds the write
    lock, the busy wait stops the very thread that would release it, until busy_timeout
    fails. ``execute`` releases the GIL while it waits. IMMEDIATE takes the write lock up
    front, so the wait happens at BEGIN, never as a failed upgrade half-way through. And
    after an error that made SQLite roll the whole transaction back, its exit fails on the
    savepoint that is gone, hiding the error.
    """
    if conn.in_transaction:
        conn.execute(f"SAVEPOINT {_SAVEPOINT}")
        try:
            yield
        except BaseException as exc:
            _undo(conn, exc, f"ROLLBACK TO {_SAVEPOINT}; RELEASE {_SAVEPOINT}")
            raise
        conn.execute(f"RELEASE {_SAVEPOINT}")
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        # A COMMIT that fails (a deferred foreign key; SQLITE_BUSY in rollback-journal mode)
        # leaves the transaction open (https://sqlite.org/lang_transaction.html): it is
        # rolled back below, or every later ``transaction`` on this connection would
        # nest in it as a savepoint and never be committed.
        conn.execute("COMMIT")
    except BaseException as exc:
        _undo(conn, exc, "ROLLBACK")
        raise


_SAVEPOINT = "journal_nested"


def _undo(conn: apsw.Connection, exc: BaseException, statements: str) -> None:
    """Roll back after ``exc``, if there is still something to roll back: SQLite itself
    rolls the whole transaction back on some errors (SQLITE_FULL, SQLITE_IOERR, SQLITE_NOMEM:
    https://sqlite.org/lang_transaction.html, "Response To Errors Within A Transaction"),
    and a ROLLBACK then would fail and hide ``exc``. A rollback that fails is noted on
    ``exc``, which stays the error raised."""
    if not conn.in_transaction:
        return
    try:
        conn.execute(statements)
    except apsw.Error as failed:
        exc.add_note(f"and the rollback failed: {failed}")


def _v1(conn: apsw.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS journal_jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            queue TEXT NOT NULL,
            kind TEXT NOT NULL,
            payload BLOB NOT NULL,
            unique_key TEXT,
            status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'dead')),
            attempts INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL CHECK (max_attempts >= 1),
            run_after INTEGER NOT NULL,
            worker TEXT,
            lease_until INTEGER,
            heartbeat INTEGER,
            last_error TEXT,
            created INTEGER NOT NULL,
            updated INTEGER NOT NULL
        );
        -- At most one live (pending or running) job per (queue, unique key); finished jobs
        -- leave the index, so the key can be pushed again.
        CREATE UNIQUE INDEX IF NOT EXISTS journal_jobs_unique ON journal_jobs (queue, unique_key)
            WHERE unique_key IS NOT NULL AND status IN ('pending', 'running');
        -- claim walks this in id (= push) order and stops at the first run_after <= now.
        CREATE INDEX IF NOT EXISTS journal_jobs_pending ON journal_jobs (queue, id)
            WHERE status = 'pending';
        CREATE INDEX IF NOT EXISTS journal_jobs_running ON journal_jobs (queue, lease_until)
            WHERE status = 'running';
        CREATE INDEX IF NOT EXISTS journal_jobs_finished ON journal_jobs (status, updated)
            WHERE status IN ('done', 'dead');
        """
    )


def _v2_owners(conn: apsw.Connection) -> None:
    """Owners (a heartbeat per process), leases on keys and intents (journal/owners.py);
    the owner holding each running job."""
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS journal_owners (
            owner TEXT PRIMARY KEY,
            started INTEGER NOT NULL,
            heartbeat INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS journal_leases (
            key TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            taken INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS journal_intents (
            key TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            queue TEXT NOT NULL,
            kind TEXT NOT NULL,
            payload BLOB NOT NULL,
            created INTEGER NOT NULL
        ) WITHOUT ROWID;
        ALTER TABLE journal_jobs ADD COLUMN owner TEXT;
        """
    )


def _v3_events(conn: apsw.Connection) -> None:
    """The event log (docs/journal.md "Events"): one row per job state change, written by
    triggers in the transaction that made the change, whoever made it (this code, a
    ``push_in`` inside a caller's transaction, another process), and rows ``announce``
    adds (progress of long work). Readers tail it by id; ``trim_events`` bounds it."""
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS journal_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at INTEGER NOT NULL,
            event TEXT NOT NULL,
            job INTEGER,
            queue TEXT NOT NULL,
            kind TEXT NOT NULL,
            attempt INTEGER NOT NULL DEFAULT 0,
            payload BLOB,
            error TEXT
        );
        CREATE TRIGGER IF NOT EXISTS journal_events_pushed AFTER INSERT ON journal_jobs
        BEGIN
            INSERT INTO journal_events (at, event, job, queue, kind, attempt, payload)
            VALUES (NEW.created, 'pushed', NEW.id, NEW.queue, NEW.kind, NEW.attempts,
                    NEW.payload);
        END;
        -- A heartbeat changes neither status nor worker; a claim of an expired lease
        -- changes the worker only (a new attempt: started again).
        CREATE TRIGGER IF NOT EXISTS journal_events_changed
        AFTER UPDATE OF status, worker ON journal_jobs
        WHEN OLD.status IS NOT NEW.status
            OR (NEW.status = 'running' AND OLD.worker IS NOT NEW.worker)
        BEGIN
            INSERT INTO journal_events (at, event, job, queue, kind, attempt, payload, error)
            VALUES (NEW.updated,
                    CASE WHEN NEW.status = 'running' THEN 'started'
                         WHEN NEW.status = 'done' THEN 'finished'
                         WHEN NEW.status = 'dead' THEN 'failed'
                         WHEN OLD.status = 'dead' THEN 'requeued'
                         ELSE 'retried' END,
                    NEW.id, NEW.queue, NEW.kind, NEW.attempts, NEW.payload,
                    CASE WHEN OLD.status = 'running' AND NEW.status IN ('pending', 'dead')
                         THEN NEW.last_error END);
        END;
        -- complete() without keeping done jobs deletes a running one: it finished.
        CREATE TRIGGER IF NOT EXISTS journal_events_deleted AFTER DELETE ON journal_jobs
        WHEN OLD.status = 'running'
        BEGIN
            INSERT INTO journal_events (at, event, job, queue, kind, attempt, payload)
            VALUES (CAST((julianday('now') - 2440587.5) * 86400000000000 AS INTEGER),
                    'finished', OLD.id, OLD.queue, OLD.kind, OLD.attempts, OLD.payload);
        END;
        """
    )


MIGRATIONS: Sequence[Migration] = (_v1, _v2_owners, _v3_events)
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: apsw.Connection) -> int:
    """The journal schema version of the file on ``conn``: 0 if it has no journal yet."""
    if not conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'journal_meta'"
    ).fetchall():
        return 0
    rows = conn.execute("SELECT value FROM journal_meta WHERE key = 'schema_version'").fetchall()
    value = rows[0][0] if rows else 0
    assert isinstance(value, int)
    return value


def ensure(conn: apsw.Connection) -> None:
    """Create or upgrade the journal's tables on ``conn``. Safe inside the caller's own
    transaction (it nests as a savepoint; that transaction should have begun IMMEDIATE so
    two processes opening at once do not both migrate) and on its own. Raises JournalError
    if the file has a newer journal schema than this code."""
    with transaction(conn):
        conn.execute(
            "CREATE TABLE IF NOT EXISTS journal_meta"
            " (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID"
        )
        current = schema_version(conn)
        if current > SCHEMA_VERSION:
            raise JournalError(
                f"Journal schema version {current} is newer than this code ({SCHEMA_VERSION})"
            )
        for migration in MIGRATIONS[current:]:
            migration(conn)
        if current != SCHEMA_VERSION:
            conn.execute(
                "INSERT INTO journal_meta (key, value) VALUES ('schema_version', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (SCHEMA_VERSION,),
            )


def set_wal(conn: apsw.Connection, busy_timeout_ms: int) -> object:
    """Switch to WAL, waiting out another process that is switching it right now: changing
    the journal mode answers SQLITE_BUSY at once instead of waiting on busy_timeout (two
    processes opening a new database together hit this). Returns the mode now in force."""
    deadline = time.monotonic() + busy_timeout_ms / 1000
    while True:
        try:
            return conn.pragma("journal_mode", "wal")
        except apsw.BusyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def connect(db_file: Path, *, busy_timeout_ms: int, synchronous_full: bool) -> apsw.Connection:
    """A connection in WAL mode; the journal writes on it through ``transaction``."""
    conn = apsw.Connection(str(db_file), flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
    try:
        conn.set_busy_timeout(busy_timeout_ms)
        mode = set_wal(conn, busy_timeout_ms)
        if mode != "wal":
            raise JournalError(f"SQLite refused WAL mode (journal_mode={mode})")
        conn.pragma("synchronous", "FULL" if synchronous_full else "NORMAL")
    except BaseException:
        conn.close()
        raise
    return conn


class OwnDatabase:
    """The journal's own ``Database`` (see ``journal.queue``): a writer behind a limiter of
    1 and one query-only reader, each used by one thread at a time."""

    def __init__(self, writer: apsw.Connection, reader: apsw.Connection):
        self._writer, self._reader = writer, reader
        self._write_limiter, self._read_limiter = trio.CapacityLimiter(1), trio.CapacityLimiter(1)

    async def write(self, fn: Callable[[apsw.Connection], T]) -> T:
        # run_sync is never abandoned, so a started transaction always finishes.
        return await trio.to_thread.run_sync(fn, self._writer, limiter=self._write_limiter)

    async def read(self, fn: Callable[[apsw.Connection], T]) -> T:
        return await trio.to_thread.run_sync(fn, self._reader, limiter=self._read_limiter)

    @classmethod
    def open(cls, db_file: Path, *, busy_timeout_ms: int, synchronous_full: bool) -> OwnDatabase:
        """(Sync: run it in a thread.) Connect twice and ensure the schema."""
        opened: list[apsw.Connection] = []
        try:
            opened.append(
                connect(db_file, busy_timeout_ms=busy_timeout_ms, synchronous_full=synchronous_full)
            )
            ensure(opened[0])
            opened.append(
                connect(db_file, busy_timeout_ms=busy_timeout_ms, synchronous_full=synchronous_full)
            )
            opened[1].pragma("query_only", True)
        except BaseException:
            for conn in opened:
                conn.close()
            raise
        return cls(opened[0], opened[1])

    async def aclose(self) -> None:
        async with self._write_limiter, self._read_limiter:
            self._reader.close()
            self._writer.close()
