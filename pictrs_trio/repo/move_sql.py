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

from journal import fulfil_in, push_in
from journal.schema import transaction
from pictrs_trio.repo.media_sql import as_bytes, as_str, first
from pictrs_trio.rules import jobs

if TYPE_CHECKING:
    from typing import TypeAlias

    # (id, from_store, to_store, started ns, finished ns or None, files moved, command)
    RunRow: TypeAlias = tuple[int, str, str, int, int | None, int, str | None]
    # (identifier, what names it, details json or None)
    FileRow: TypeAlias = tuple[str, str, bytes | None]

# The unfinished run if there is one, else the newest finished one (abandoned runs are
# history); with the count of progress rows, which is there even when no run is (a one-row
# table joined to at most one run).
_LATEST = (
    "SELECT r.id, r.from_store, r.to_store, r.started, r.finished, m.moved, r.command"
    " FROM (SELECT count(*) AS moved FROM store_migrations) AS m"
    " LEFT JOIN (SELECT id, from_store, to_store, started, finished, command"
    "  FROM store_migration_runs WHERE abandoned IS NULL"
    "  ORDER BY finished IS NOT NULL, id DESC LIMIT 1) AS r"
)

# Every row naming a file; one statement each, by an indexed column (migrations v1, v6).
_REPOINT = (
    "UPDATE hashes SET identifier = ?1 WHERE identifier = ?2",
    "UPDATE hashes SET motion_identifier = ?1 WHERE motion_identifier = ?2",
    "UPDATE variants SET identifier = ?1 WHERE identifier = ?2",
    "UPDATE uploads SET raw_identifier = ?1 WHERE raw_identifier = ?2",
)

# Whether the file ``f.identifier`` is moved: named in either column (see the docstring).
_MOVED = (
    "(EXISTS (SELECT 1 FROM store_migrations WHERE old_identifier = f.identifier)"
    " OR EXISTS (SELECT 1 FROM store_migrations WHERE new_identifier = f.identifier))"
)
# The details of a file not moved yet (a moved one's are not needed).
_DETAILS = (
    "CASE WHEN f.moved THEN NULL"
    " ELSE (SELECT json FROM details WHERE identifier = f.identifier) END"
)

# One page of hashes and every file they name, in pict-rs's order per hash (motion still,
# variants, original), each with whether it is moved: one statement per page.
_HASH_PAGE = f"""
WITH page AS (
    SELECT hash, identifier, motion_identifier FROM hashes
    WHERE hash > ?1 ORDER BY hash LIMIT ?2
), named (hash, part, n, identifier, what) AS (
    SELECT hash, 0, 0, motion_identifier, 'motion' FROM page
    WHERE motion_identifier IS NOT NULL
    UNION ALL
    SELECT v.hash, 1, v.id, v.identifier, 'variant' FROM page JOIN variants AS v USING (hash)
    UNION ALL
    SELECT hash, 2, 0, identifier, 'original' FROM page
), flagged AS (
    SELECT f.*, {_MOVED} AS moved FROM named AS f
)
SELECT f.hash, f.identifier, f.what, f.moved, {_DETAILS}
FROM flagged AS f ORDER BY f.hash, f.part, f.n
"""

# One page of pending uploads' raw bytes, the same way.
_UPLOAD_PAGE = f"""
WITH flagged AS (
    SELECT f.id, f.identifier, {_MOVED} AS moved FROM (
        SELECT id, raw_identifier AS identifier FROM uploads
        WHERE raw_identifier IS NOT NULL AND id > ?1 ORDER BY id LIMIT ?2
    ) AS f
)
SELECT f.id, f.identifier, 'upload', f.moved, {_DETAILS}
FROM flagged AS f ORDER BY f.id
"""


def _is_moved(conn: apsw.Connection, identifier: str) -> bool:
    return (
        first(
            conn,
            "SELECT 1 FROM store_migrations WHERE new_identifier = ?1 OR old_identifier = ?1",
            (identifier,),
        )
        is not None
    )


def _run(row: tuple[apsw.SQLiteValue, ...]) -> RunRow | None:
    """A ``_LATEST`` row as the unfinished run (or, with progress rows no unfinished run
    names, one with id 0), else the newest finished one, else None."""
    run_id, from_store, to_store, started, finished, moved, command = row
    count = cast(int, moved)
    if run_id is None or (finished is not None and count):
        return (0, "", "", 0, None, count, None) if count else None
    return (
        cast(int, run_id),
        as_str(from_store),
        as_str(to_store),
        cast(int, started),
        cast("int | None", finished),
        count if finished is None else 0,
        cast("str | None", command),
    )


def q_latest_run(conn: apsw.Connection) -> RunRow | None:
    """The unfinished run if there is one, else the last finished one, else None. Progress
    rows without an unfinished run read as an unfinished run with id 0."""
    row = first(conn, _LATEST, ())
    assert row is not None  # the count's row is always there
    return _run(row)


def w_begin_run(
    conn: apsw.Connection, from_store: str, to_store: str, now_ns: int, command: str | None
) -> RunRow:
    """The unfinished run (as it is: the caller compares its stores; ``command`` recorded
    when its stores are spelled as these), or a new one."""
    with transaction(conn):
        latest = q_latest_run(conn)
        unfinished = latest is not None and latest[4] is None
        if latest is not None and unfinished and latest[0]:
            if command is None or latest[1:3] != (from_store, to_store):
                return latest
            conn.execute(
                "UPDATE store_migration_runs SET command = ? WHERE id = ?", (command, latest[0])
            )
            return (*latest[:6], command)
        conn.execute(
            "INSERT INTO store_migration_runs (from_store, to_store, started, command)"
            " VALUES (?, ?, ?, ?)",
            (from_store, to_store, now_ns, command),
        )
        moved = latest[5] if latest is not None and unfinished else 0  # progress no run named
        return (conn.last_insert_rowid(), from_store, to_store, now_ns, None, moved, command)


def w_finish_run(conn: apsw.Connection, now_ns: int) -> None:
    """Every file is moved: the progress rows go (pict-rs clears them too, so a later
    migration starts afresh) and the run is recorded as finished, together."""
    with transaction(conn):
        conn.execute("DELETE FROM store_migrations")
        conn.execute(
            "UPDATE store_migration_runs SET finished = ?"
            " WHERE finished IS NULL AND abandoned IS NULL",
            (now_ns,),
        )


def q_moved_files(conn: apsw.Connection, after: str, limit: int) -> list[tuple[str, str]]:
    """(old, new) of the next ``limit`` moved files by old identifier, after ``after``."""
    rows = conn.execute(
        "SELECT old_identifier, new_identifier FROM store_migrations"
        " WHERE old_identifier > ? ORDER BY old_identifier LIMIT ?",
        (after, limit),
    ).fetchall()
    return [(as_str(old), as_str(new)) for old, new in rows]


def w_move_back(
    conn: apsw.Connection, pairs: list[tuple[str, str]], remove: list[str], now: float
) -> int:
    """``--abandon``: repoint every row naming each ``new`` (and its details) back to its
    ``old`` and forget the pair, and queue a RemoveFiles job for ``remove`` on the
    ``migrate`` queue, in one transaction: the rows name the old store's files again before
    any copy goes, and no copy is forgotten if the process dies. Returns how many pairs were
    moved back (a pair already gone is skipped)."""
    back = 0
    with transaction(conn):
        for old, new in pairs:
            conn.execute(
                "DELETE FROM store_migrations WHERE old_identifier = ? AND new_identifier = ?",
                (old, new),
            )
            if conn.changes() == 0:
                continue
            for statement in _REPOINT:
                conn.execute(statement, (old, new))
            conn.execute("UPDATE details SET identifier = ? WHERE identifier = ?", (old, new))
            back += 1
        if remove:
            push_in(conn, jobs.MIGRATE, jobs.RemoveFiles(identifiers=remove), now=now)
    return back


def w_abandon_run(conn: apsw.Connection, now_ns: int) -> bool:
    """Record the unfinished run as abandoned, if no moved file is left. False (nothing
    written) while some are."""
    with transaction(conn):
        if first(conn, "SELECT 1 FROM store_migrations LIMIT 1", ()) is not None:
            return False
        conn.execute(
            "UPDATE store_migration_runs SET abandoned = ?"
            " WHERE finished IS NULL AND abandoned IS NULL",
            (now_ns,),
        )
    return True


def q_counts(conn: apsw.Connection) -> tuple[int, int]:
    """(files the rows name, files recorded as moved), in one statement."""
    row = first(
        conn,
        "SELECT (SELECT count(*) FROM (SELECT identifier FROM hashes"
        " UNION SELECT motion_identifier FROM hashes WHERE motion_identifier IS NOT NULL"
        " UNION SELECT identifier FROM variants"
        " UNION SELECT raw_identifier FROM uploads WHERE raw_identifier IS NOT NULL)),"
        " (SELECT count(*) FROM store_migrations)",
        (),
    )
    assert row is not None
    return cast(int, row[0]), cast(int, row[1])


def q_files_to_move(
    conn: apsw.Connection,
    after_hash: bytes | None,
    in_uploads: bool,
    after_upload: str | None,
    limit: int,
) -> tuple[list[FileRow], tuple[bytes | None, bool, str | None] | None]:
    """The files not moved yet that the next ``limit`` hashes (by key) name, each hash's
    motion still, variants, then original (pict-rs's order); once the hashes are done, the
    raw bytes of pending uploads. One statement per page. Returns (files, next position or
    None at the end)."""
    if not in_uploads:
        rows = conn.execute(_HASH_PAGE, (after_hash or b"", limit)).fetchall()
    else:
        rows = conn.execute(_UPLOAD_PAGE, (after_upload or "", limit)).fetchall()
    files = [
        (as_str(identifier), as_str(what), None if details is None else as_bytes(details))
        for _, identifier, what, moved, details in rows
        if not moved
    ]
    keys = list(dict.fromkeys(key for key, *_ in rows))  # every hash has its original
    following: tuple[bytes | None, bool, str | None] | None
    if not in_uploads:
        full = len(keys) == limit
        following = (as_bytes(keys[-1]), False, None) if full else (None, True, None)
    else:
        following = (None, True, as_str(keys[-1])) if len(keys) == limit else None
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
