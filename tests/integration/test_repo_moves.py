"""repo/move_sql.py on a real SQLite file: the walk over the files to move (pict-rs's order,
paging, moved files left out), the latest run, and that each is one statement however many
files a page holds."""

from __future__ import annotations

from pathlib import Path

import apsw
import trio

from pictrs_trio.repo import move_sql
from pictrs_trio.repo.sqlite import DB_FILE_NAME, open_sqlite_repo
from pictrs_trio.store.memory import MemoryStore
from tests.migrate_helpers import db_rows, fill


async def _filled(db: Path, n: int, uploads: int) -> None:
    async with open_sqlite_repo(db) as repo:
        await fill(repo, MemoryStore(), n, variant_every=1, motion_every=2, uploads=uploads)


def _counting(db: Path) -> tuple[apsw.Connection, list[str]]:
    conn = apsw.Connection(str(db / DB_FILE_NAME))
    statements: list[str] = []

    def trace(_cursor: apsw.Cursor, sql: str, _bindings: object) -> bool:
        statements.append(sql)
        return True

    conn.exec_trace = trace
    return conn, statements


def _expected_walk(db: Path) -> list[tuple[str, str]]:
    """Every file in pict-rs's order, built from plain per-hash queries."""
    walk: list[tuple[str, str]] = []
    for key, identifier, motion in db_rows(
        db, "SELECT hash, identifier, motion_identifier FROM hashes ORDER BY hash"
    ):
        if motion is not None:
            walk.append((str(motion), "motion"))
        walk.extend(
            (str(v), "variant")
            for (v,) in db_rows(
                db,
                f"SELECT identifier FROM variants WHERE hash = x'{bytes(key).hex()}' ORDER BY id",  # type: ignore[arg-type]
            )
        )
        walk.append((str(identifier), "original"))
    walk.extend(
        (str(raw), "upload")
        for (raw,) in db_rows(
            db, "SELECT raw_identifier FROM uploads WHERE raw_identifier IS NOT NULL ORDER BY id"
        )
    )
    return walk


def _walk(conn: apsw.Connection, limit: int) -> tuple[list[tuple[str, str]], int]:
    """(identifier, what) of every file to move, and how many pages it took."""
    files: list[tuple[str, str]] = []
    position: tuple[bytes | None, bool, str | None] | None = (None, False, None)
    pages = 0
    while position is not None:
        found, position = move_sql.q_files_to_move(conn, *position, limit)
        files.extend((identifier, what) for identifier, what, _ in found)
        pages += 1
    return files, pages


def test_the_walk_is_one_statement_a_page_in_pict_rs_order(tmp_path: Path) -> None:
    db = tmp_path / "db"
    trio.run(_filled, db, 10, 3)
    expected = _expected_walk(db)
    assert len(expected) == 10 + 10 + 5 + 3
    conn, statements = _counting(db)
    files, pages = _walk(conn, 4)
    assert files == expected
    assert pages == 3 + 1  # 4 + 4 + 2 hashes, then the 3 uploads
    assert len(statements) == pages  # one statement per page, not per file

    # Details come with the files that have them (every one made by fill but the uploads).
    found, _ = move_sql.q_files_to_move(conn, None, False, None, 100)
    assert all(details is not None for _, what, details in found if what != "upload")

    # Moved files (by either column) drop out; a page of moved files still leads on.
    moved = [identifier for identifier, _ in expected[:12]]
    conn.execute("BEGIN")
    for n, identifier in enumerate(moved):
        old, new = (identifier, f"new/{n}") if n % 2 else (f"old/{n}", identifier)
        conn.execute(
            "INSERT INTO store_migrations (old_identifier, new_identifier) VALUES (?, ?)",
            (old, new),
        )
    conn.execute("COMMIT")
    statements.clear()
    files, pages = _walk(conn, 2)
    assert files == expected[12:]
    # 10 hashes 2 a page (a full last page leads to an empty one), then 3 uploads 2 a page
    assert len(statements) == pages == 6 + 2
    conn.close()


def test_the_latest_run_is_one_statement(tmp_path: Path) -> None:
    db = tmp_path / "db"
    trio.run(_filled, db, 1, 0)
    conn, statements = _counting(db)
    assert move_sql.q_latest_run(conn) is None
    first = move_sql.w_begin_run(conn, "filesystem -p A", "filesystem -p B", 10, "cmd 1")
    assert first[1:] == ("filesystem -p A", "filesystem -p B", 10, None, 0, "cmd 1")
    conn.execute("INSERT INTO store_migrations VALUES ('a', 'b')")
    statements.clear()
    assert move_sql.q_latest_run(conn) == (*first[:5], 1, "cmd 1")
    assert len(statements) == 1
    # Resumed as it is, whatever stores the caller names (the command only for its own).
    again = move_sql.w_begin_run(conn, "filesystem -p X", "filesystem -p Y", 20, "cmd X")
    assert again == (*first[:5], 1, "cmd 1")
    resumed = move_sql.w_begin_run(conn, "filesystem -p A", "filesystem -p B", 20, "cmd 2")
    assert resumed == (*first[:5], 1, "cmd 2") == move_sql.q_latest_run(conn)
    move_sql.w_finish_run(conn, 30)
    assert move_sql.q_latest_run(conn) == (*first[:4], 30, 0, "cmd 2")
    # Progress rows no unfinished run names: a run with id 0 (another program's).
    conn.execute("INSERT INTO store_migrations VALUES ('c', 'd')")
    assert move_sql.q_latest_run(conn) == (0, "", "", 0, None, 1, None)
    second = move_sql.w_begin_run(conn, "filesystem -p B", "filesystem -p C", 40, None)
    assert second[0] > first[0]
    assert second[1:] == ("filesystem -p B", "filesystem -p C", 40, None, 1, None)
    assert move_sql.q_latest_run(conn) == second
    # Abandoned once every moved file is back: history; the finished run is the latest again.
    assert not move_sql.w_abandon_run(conn, 50)
    conn.execute("DELETE FROM store_migrations")
    assert move_sql.w_abandon_run(conn, 50)
    assert move_sql.q_latest_run(conn) == (*first[:4], 30, 0, "cmd 2")
    move_sql.w_finish_run(conn, 60)  # finishes nothing: no run is unfinished
    assert db_rows(db, "SELECT id, finished, abandoned FROM store_migration_runs") == [
        (first[0], 30, None),
        (second[0], None, 50),
    ]
    conn.close()
