"""``journal.schema.transaction`` when SQLite refuses: a database that is full (``PRAGMA
max_page_count`` caps the file, so writes fail with SQLITE_FULL as on a full disk) and a
COMMIT that fails (a deferred foreign key). The error raised is SQLite's own, nothing is
half-written, and the connection goes on working: later writes are committed, as another
connection sees."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from journal import Journal, JournalError
from journal.schema import OwnDatabase, connect, ensure, transaction

BIG = 64 * 1024  # bytes of payload: more than a page, so the file must grow


def _connect(path: Path) -> apsw.Connection:
    return connect(path, busy_timeout_ms=5000, synchronous_full=False)


def _count(path: Path, sql: str) -> int:
    other = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        (value,) = other.execute(sql).fetchall()[0]
    finally:
        other.close()
    assert isinstance(value, int)
    return value


def _fill_to_the_brim(conn: apsw.Connection) -> None:
    """No page may be added to the file from now on: the database is full."""
    conn.pragma("max_page_count", conn.pragma("page_count"))


def _table(conn: apsw.Connection) -> None:
    conn.execute("CREATE TABLE t (n INTEGER, data BLOB)")


def test_a_full_database_raises_its_own_error_and_writes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "full.sqlite3"
    conn = _connect(db)
    _table(conn)
    with transaction(conn):
        conn.execute("INSERT INTO t VALUES (1, zeroblob(10))")
    _fill_to_the_brim(conn)
    with pytest.raises(apsw.FullError), transaction(conn):  # not "cannot rollback"
        conn.execute("INSERT INTO t VALUES (2, zeroblob(10))")  # fits in the last page
        conn.execute("INSERT INTO t VALUES (3, zeroblob(?))", (BIG,))
    assert not conn.in_transaction
    assert _count(db, "SELECT count(*) FROM t") == 1  # row 2 went with the rest

    conn.pragma("max_page_count", 1_000_000)  # space freed
    with transaction(conn):
        conn.execute("INSERT INTO t VALUES (4, zeroblob(?))", (BIG,))
    assert [n for (n,) in conn.execute("SELECT n FROM t ORDER BY n")] == [1, 4]
    assert _count(db, "SELECT count(*) FROM t") == 2  # committed: another connection sees it
    conn.close()


def test_full_inside_a_nested_transaction_raises_its_own_error(tmp_path: Path) -> None:
    """SQLite rolls the whole transaction back on SQLITE_FULL: the savepoint is gone too,
    and neither level may hide the error by failing to roll it back again."""
    db = tmp_path / "nested.sqlite3"
    conn = _connect(db)
    _table(conn)
    _fill_to_the_brim(conn)
    with pytest.raises(apsw.FullError), transaction(conn):
        conn.execute("INSERT INTO t VALUES (1, NULL)")
        with transaction(conn):
            conn.execute("INSERT INTO t VALUES (2, zeroblob(?))", (BIG,))
    assert not conn.in_transaction
    assert _count(db, "SELECT count(*) FROM t") == 0
    conn.pragma("max_page_count", 1_000_000)
    with transaction(conn):
        conn.execute("INSERT INTO t VALUES (3, NULL)")
        with transaction(conn):
            conn.execute("INSERT INTO t VALUES (4, NULL)")
    assert _count(db, "SELECT count(*) FROM t") == 2
    conn.close()


def test_a_failed_nested_transaction_rolls_back_only_itself(tmp_path: Path) -> None:
    db = tmp_path / "savepoint.sqlite3"
    conn = _connect(db)
    _table(conn)
    with transaction(conn):
        conn.execute("INSERT INTO t VALUES (1, NULL)")
        with pytest.raises(RuntimeError), transaction(conn):
            conn.execute("INSERT INTO t VALUES (2, NULL)")
            raise RuntimeError("the caller's code failed")
        assert conn.in_transaction
        conn.execute("INSERT INTO t VALUES (3, NULL)")
    assert [n for (n,) in conn.execute("SELECT n FROM t ORDER BY n")] == [1, 3]
    assert _count(db, "SELECT count(*) FROM t") == 2
    conn.close()


def test_a_failed_commit_leaves_no_transaction_open(tmp_path: Path) -> None:
    """A deferred foreign key fails at COMMIT, which leaves the transaction open in SQLite:
    were it kept, every later ``transaction`` would nest in it as a savepoint and never be
    committed."""
    db = tmp_path / "commit.sqlite3"
    conn = _connect(db)
    conn.pragma("foreign_keys", True)
    conn.execute(
        "CREATE TABLE parent (id INTEGER PRIMARY KEY);"
        " CREATE TABLE child (parent INTEGER REFERENCES parent (id)"
        " DEFERRABLE INITIALLY DEFERRED)"
    )
    with pytest.raises(apsw.ConstraintError), transaction(conn):
        conn.execute("INSERT INTO child VALUES (7)")  # accepted until COMMIT
    assert not conn.in_transaction
    assert _count(db, "SELECT count(*) FROM child") == 0
    with transaction(conn):
        conn.execute("INSERT INTO parent VALUES (7)")
        conn.execute("INSERT INTO child VALUES (7)")
    assert _count(db, "SELECT count(*) FROM child") == 1  # committed, not nested
    conn.close()


async def test_a_journal_on_a_full_database_fails_the_push_then_goes_on(tmp_path: Path) -> None:
    db = tmp_path / "journal.sqlite3"
    writer, reader = _connect(db), _connect(db)
    ensure(writer)
    reader.pragma("query_only", True)
    journal = Journal(OwnDatabase(writer, reader))
    first = await journal.push("q", b"small")
    _fill_to_the_brim(writer)
    with pytest.raises(JournalError) as failed:
        await journal.push("q", b"x" * BIG)
    assert isinstance(failed.value.__cause__, apsw.FullError)
    assert not writer.in_transaction
    assert _count(db, "SELECT count(*) FROM journal_jobs") == 1

    writer.pragma("max_page_count", 1_000_000)
    second = await journal.push("q", b"x" * BIG)
    assert second > first
    assert _count(db, "SELECT count(*) FROM journal_jobs") == 2
    job = await journal.claim("q", journal.worker_id("q", 0), 60.0)
    assert job is not None and job.id == first
    writer.close()
    reader.close()
