"""SQL for ``migrate-store`` (services/migrate.py): its runs, the walk over every stored file
the rows name, and repointing them file by file. Plain sync functions on an
``apsw.Connection``, run by ``SqliteRepo`` (see sqlite.py for the threading rules).

Progress is per file, in pict-rs's ``store_migrations`` table (old identifier, new
identifier; postgres V0007): a file is moved once its rows name the new identifier, which
happens in the same transaction that records the pair. A file counts as moved when its
current identifier appears in either column: pict-rs's sled repo looks up the new one, its
postgres repo the old one (``src/repo/postgres.rs`` ``is_migrated``), which misses files
already moved on resume; accepting both covers either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import apsw

from journal import fulfil_in
from journal.schema import transaction
from pictrs_trio.repo.media_sql import as_bytes, as_str, first

if TYPE_CHECKING:
    from typing import TypeAlias

    # (id, from_store, to_store, started ns, finished ns or None, files moved)
    RunRow: TypeAlias = tuple[int, str, str, int, int | None, int]
    # (identifier, what names it, details json or None)
    FileRow: TypeAlias = tuple[str, str, bytes | None]

_RUN = "SELECT id, from_store, to_store, started, finished FROM store_migration_runs"

# Every row naming a file; one statement each, by an indexed column (migrations v1, v6).
_REPOINT = (
    "UPDATE hashes SET identifier = ?1 WHERE identifier = ?2",
    "UPDATE hashes SET motion_identifier = ?1 WHERE motion_identifier = ?2",
    "UPDATE variants SET identifier = ?1 WHERE identifier = ?2",
    "UPDATE uploads SET raw_identifier = ?1 WHERE raw_identifier = ?2",
)


def _moved_count(conn: apsw.Connection) -> int:
    row = first(conn, "SELECT count(*) FROM store_migrations", ())
    assert row is not None
    return int(row[0])  # type: ignore[arg-type]


def _run(row: tuple[apsw.SQLiteValue, ...], moved: int) -> RunRow:
    run_id, from_store, to_store, started, finished = row
    return (
        cast(int, run_id),
        as_str(from_store),
        as_str(to_store),
        cast(int, started),
        cast("int | None", finished),
        moved,
    )


def q_latest_run(conn: apsw.Connection) -> RunRow | None:
    """The unfinished run if there is one, else the last finished one, else None. Progress
    rows without an unfinished run read as an unfinished run with id 0."""
    with conn:  # one snapshot
        moved = _moved_count(conn)
        unfinished = first(conn, _RUN + " WHERE finished IS NULL ORDER BY id DESC LIMIT 1", ())
        last = first(conn, _RUN + " ORDER BY id DESC LIMIT 1", ())
    if unfinished is not None:
        return _run(unfinished, moved)
    if moved:
        return (0, "", "", 0, None, moved)
    return None if last is None else _run(last, 0)


def w_begin_run(conn: apsw.Connection, from_store: str, to_store: str, now_ns: int) -> RunRow:
    """The unfinished run (as it is: the caller compares its stores), or a new one."""
    with transaction(conn):
        moved = _moved_count(conn)
        unfinished = first(conn, _RUN + " WHERE finished IS NULL ORDER BY id DESC LIMIT 1", ())
        if unfinished is None:
            conn.execute(
                "INSERT INTO store_migration_runs (from_store, to_store, started) VALUES (?, ?, ?)",
                (from_store, to_store, now_ns),
            )
            run_id = conn.last_insert_rowid()
    if unfinished is not None:
        return _run(unfinished, moved)
    return (run_id, from_store, to_store, now_ns, None, moved)


def w_finish_run(conn: apsw.Connection, now_ns: int) -> None:
    """Every file is moved: the progress rows go (pict-rs clears them too, so a later
    migration starts afresh) and the run is recorded as finished, together."""
    with transaction(conn):
        conn.execute("DELETE FROM store_migrations")
        conn.execute(
            "UPDATE store_migration_runs SET finished = ? WHERE finished IS NULL", (now_ns,)
        )


def q_counts(conn: apsw.Connection) -> tuple[int, int]:
    """(files the rows name, files recorded as moved), in one snapshot."""
    with conn:
        row = first(
            conn,
            "SELECT count(*) FROM (SELECT identifier FROM hashes"
            " UNION SELECT motion_identifier FROM hashes WHERE motion_identifier IS NOT NULL"
            " UNION SELECT identifier FROM variants"
            " UNION SELECT raw_identifier FROM uploads WHERE raw_identifier IS NOT NULL)",
            (),
        )
        moved = _moved_count(conn)
    assert row is not None
    return cast(int, row[0]), moved


def _is_moved(conn: apsw.Connection, identifier: str) -> bool:
    return (
        first(
            conn,
            "SELECT 1 FROM store_migrations WHERE new_identifier = ?1 OR old_identifier = ?1",
            (identifier,),
        )
        is not None
    )


def _details(conn: apsw.Connection, identifier: str) -> bytes | None:
    row = first(conn, "SELECT json FROM details WHERE identifier = ?", (identifier,))
    return None if row is None else as_bytes(row[0])


def q_files_to_move(
    conn: apsw.Connection,
    after_hash: bytes | None,
    in_uploads: bool,
    after_upload: str | None,
    limit: int,
) -> tuple[list[FileRow], tuple[bytes | None, bool, str | None] | None]:
    """The files not moved yet that the next ``limit`` hashes (by key) name, each hash's
    motion still, variants, then original (pict-rs's order); once the hashes are done, the
    raw bytes of pending uploads. Returns (files, next position or None at the end)."""
    named: list[tuple[str, str]] = []
    with conn:
        if not in_uploads:
            if after_hash is None:
                rows = conn.execute(
                    "SELECT hash, identifier, motion_identifier FROM hashes ORDER BY hash LIMIT ?",
                    (limit,),
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT hash, identifier, motion_identifier FROM hashes WHERE hash > ?"
                    " ORDER BY hash LIMIT ?",
                    (after_hash, limit),
                ).fetchall()
            for key, identifier, motion in rows:
                if motion is not None:
                    named.append((as_str(motion), "motion"))
                variants = conn.execute(
                    "SELECT identifier FROM variants WHERE hash = ? ORDER BY id", (key,)
                ).fetchall()
                named.extend((as_str(v), "variant") for (v,) in variants)
                named.append((as_str(identifier), "original"))
            following: tuple[bytes | None, bool, str | None] | None = (
                (as_bytes(rows[-1][0]), False, None) if len(rows) == limit else (None, True, None)
            )
        else:
            uploads = conn.execute(
                "SELECT id, raw_identifier FROM uploads"
                " WHERE raw_identifier IS NOT NULL AND id > ? ORDER BY id LIMIT ?",
                (after_upload or "", limit),
            ).fetchall()
            named.extend((as_str(raw), "upload") for _, raw in uploads)
            following = (None, True, as_str(uploads[-1][0])) if len(uploads) == limit else None
        files = [
            (identifier, what, _details(conn, identifier))
            for identifier, what in named
            if not _is_moved(conn, identifier)
        ]
    return files, following


def w_commit_moved(conn: apsw.Connection, old: str, new: str, owner: str) -> int:
    """Repoint every row naming ``old`` (and its details) to ``new``, record the pair, and
    fulfil ``owner``'s intent on ``new``, in one transaction. Returns how many rows now name
    ``new``; 0 when none named ``old`` (moved already, or its rows are gone): nothing is
    written then and the intent stays, for the caller to discard its copy."""
    with transaction(conn):
        if _is_moved(conn, old):
            return 0
        changed = 0
        for statement in _REPOINT:
            conn.execute(statement, (new, old))
            changed += conn.changes()
        if changed == 0:
            return 0
        conn.execute("UPDATE details SET identifier = ? WHERE identifier = ?", (new, old))
        conn.execute(
            "INSERT INTO store_migrations (old_identifier, new_identifier) VALUES (?, ?)",
            (old, new),
        )
        fulfil_in(conn, [new], owner)
    return changed
