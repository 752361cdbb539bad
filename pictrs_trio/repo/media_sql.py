"""SQL for derived media: variants, motion stills, backgrounded uploads, and the joined
look-ups the serving hot path uses. Plain sync functions on an ``apsw.Connection``, run by
``SqliteRepo`` (see sqlite.py for the threading rules)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import apsw

from journal import fulfil_in, release_in
from journal.schema import transaction
from journal.store import push_in
from pictrs_trio.rules import jobs
from pictrs_trio.rules.errors import AlreadyClaimed

if TYPE_CHECKING:
    from typing import TypeAlias

    Row: TypeAlias = tuple[apsw.SQLiteValue, ...]


def q_original(conn: apsw.Connection, alias: str) -> Row | None:
    """(hash, identifier, details json or None) for an alias, in one statement."""
    rows = conn.execute(
        "SELECT h.hash, h.identifier, d.json FROM aliases a"
        " JOIN hashes h ON h.hash = a.hash"
        " LEFT JOIN details d ON d.identifier = h.identifier"
        " WHERE a.alias = ?",
        (alias,),
    ).fetchall()
    return rows[0] if rows else None


def q_variant(conn: apsw.Connection, alias: str, variant: str) -> Row | None:
    """(hash, variant identifier or None, details json or None) for an alias."""
    rows = conn.execute(
        "SELECT a.hash, v.identifier, d.json FROM aliases a"
        " LEFT JOIN variants v ON v.hash = a.hash AND v.variant = ?"
        " LEFT JOIN details d ON d.identifier = v.identifier"
        " WHERE a.alias = ?",
        (variant, alias),
    ).fetchall()
    return rows[0] if rows else None


def q_motion(conn: apsw.Connection, key: bytes) -> str | None:
    rows = conn.execute("SELECT motion_identifier FROM hashes WHERE hash = ?", (key,)).fetchall()
    if not rows or rows[0][0] is None:
        return None
    value = rows[0][0]
    assert isinstance(value, str)
    return value


def _put_details(conn: apsw.Connection, identifier: str, details_json: bytes) -> None:
    conn.execute(
        "INSERT INTO details (identifier, json) VALUES (?, ?)"
        " ON CONFLICT (identifier) DO UPDATE SET json = excluded.json",
        (identifier, details_json),
    )


def w_commit_variant(
    conn: apsw.Connection,
    key: bytes,
    variant: str,
    identifier: str,
    details_json: bytes,
    now_ns: int,
    owner: str,
    lease: str | None = None,
) -> tuple[str, bool]:
    """Record a rendered variant and its details together, fulfilling ``owner``'s intent on
    its file and releasing the render's ``lease``. Returns (identifier now on record,
    ours_kept); when another render won, ours is not recorded (the caller discards it)."""
    with transaction(conn):
        if lease is not None:
            release_in(conn, lease, owner)
        conn.execute(
            "INSERT INTO variants (hash, variant, identifier, accessed) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (hash, variant) DO NOTHING",
            (key, variant, identifier, now_ns),
        )
        if conn.changes() == 0:
            row = conn.execute(
                "SELECT identifier FROM variants WHERE hash = ? AND variant = ?", (key, variant)
            ).fetchall()
            existing = row[0][0]
            assert isinstance(existing, str)
            return existing, False
        _put_details(conn, identifier, details_json)
        fulfil_in(conn, [identifier], owner)
    return identifier, True


def w_commit_motion(
    conn: apsw.Connection,
    key: bytes,
    identifier: str,
    details_json: bytes,
    owner: str,
    lease: str | None = None,
) -> tuple[str, bool]:
    """Record the hash's motion still (first writer wins), with its details, like
    ``w_commit_variant``."""
    with transaction(conn):
        if lease is not None:
            release_in(conn, lease, owner)
        conn.execute(
            "UPDATE hashes SET motion_identifier = ? WHERE hash = ? AND motion_identifier IS NULL",
            (identifier, key),
        )
        if conn.changes() == 0:
            existing = q_motion(conn, key)
            if existing is None:
                raise apsw.ConstraintError("hash gone while its motion still was rendered")
            return existing, False
        _put_details(conn, identifier, details_json)
        fulfil_in(conn, [identifier], owner)
    return identifier, True


def w_touch_variants(conn: apsw.Connection, items: list[tuple[bytes, str, int]]) -> None:
    """Set last-access times; rows that are gone are skipped (only existing rows count, as
    in pict-rs's postgres repo)."""
    with transaction(conn):
        conn.executemany(
            "UPDATE variants SET accessed = max(accessed, ?3) WHERE hash = ?1 AND variant = ?2",
            items,
        )


def _drop_variants(conn: apsw.Connection, rows: list[tuple[int, str]], now: float) -> int:
    """Delete variant rows (id, identifier) and their details; queue their files' removal."""
    if not rows:
        return 0
    conn.executemany("DELETE FROM variants WHERE id = ?", [(i,) for i, _ in rows])
    conn.executemany("DELETE FROM details WHERE identifier = ?", [(f,) for _, f in rows])
    push_in(
        conn,
        jobs.CLEANUP,
        jobs.RemoveFiles(identifiers=[f for _, f in rows]),
        now=now,
    )
    return len(rows)


def w_expire_variants(conn: apsw.Connection, before_ns: int, limit: int, now: float) -> int:
    with transaction(conn):
        rows = conn.execute(
            "SELECT id, identifier FROM variants WHERE accessed < ? ORDER BY accessed LIMIT ?",
            (before_ns, limit),
        ).fetchall()
        return _drop_variants(conn, [(int(i), str(f)) for i, f in rows], now)  # type: ignore[arg-type]


def w_remove_all_variants(conn: apsw.Connection, limit: int, now: float) -> int:
    with transaction(conn):
        rows = conn.execute("SELECT id, identifier FROM variants LIMIT ?", (limit,)).fetchall()
        return _drop_variants(conn, [(int(i), str(f)) for i, f in rows], now)  # type: ignore[arg-type]


def w_create_uploads(
    conn: apsw.Connection, uploads: list[tuple[str, str, bytes]], now_ns: int, owner: str
) -> None:
    """(upload id, raw identifier, job payload) each: the row and its ingest job together;
    the row now owns the raw file, so ``owner``'s intent on it is fulfilled."""
    with transaction(conn):
        for upload_id, raw_identifier, payload in uploads:
            conn.execute(
                "INSERT INTO uploads (id, result, created_at, raw_identifier)"
                " VALUES (?, NULL, ?, ?)",
                (upload_id, now_ns, raw_identifier),
            )
            push_in(conn, jobs.INGEST, payload, kind="ingest_upload", unique_key=upload_id)
        fulfil_in(conn, [raw for _, raw, _ in uploads], owner)


def q_upload(conn: apsw.Connection, upload_id: str) -> tuple[bool, bytes | None]:
    rows = conn.execute("SELECT result FROM uploads WHERE id = ?", (upload_id,)).fetchall()
    if not rows:
        return False, None
    value = rows[0][0]
    return True, None if value is None else bytes(value)  # type: ignore[arg-type]


def q_upload_raw(conn: apsw.Connection, upload_id: str) -> str | None:
    row = first(conn, "SELECT raw_identifier FROM uploads WHERE id = ?", (upload_id,))
    return None if row is None or row[0] is None else as_str(row[0])


def _set_outcome(conn: apsw.Connection, upload_id: str, result: bytes) -> bool:
    """The upload's outcome, unless it has one already (or is gone): whether it was set."""
    conn.execute(
        "UPDATE uploads SET result = ? WHERE id = ? AND result IS NULL", (result, upload_id)
    )
    return conn.changes() == 1


def record_outcome_in(conn: apsw.Connection, upload_id: str, result: bytes, now: float) -> bool:
    """Inside the caller's transaction: the upload's outcome, once (an ingest that ran twice
    must not replace the first one's alias), and its raw bytes let go of with their
    RemoveFiles job. Raises AlreadyClaimed (rolling back) when the upload has an outcome
    already or is gone. Returns whether a RemoveFiles job was queued."""
    with transaction(conn):
        if not _set_outcome(conn, upload_id, result):
            raise AlreadyClaimed("Upload was already finished")
        return release_raw_in(conn, upload_id, now)


def w_finish_upload(conn: apsw.Connection, upload_id: str, result: bytes, now: float) -> bool:
    """Record a failed ingest's outcome (nothing if there is one already), releasing the raw
    bytes. Returns whether a RemoveFiles job was queued."""
    with transaction(conn):
        _set_outcome(conn, upload_id, result)
        return release_raw_in(conn, upload_id, now)


def release_raw_in(conn: apsw.Connection, upload_id: str, now: float) -> bool:
    """The upload's raw bytes are done with: its row lets go of them and their RemoveFiles
    job is queued, together. False when there was nothing to release."""
    with transaction(conn):
        row = first(conn, "SELECT raw_identifier FROM uploads WHERE id = ?", (upload_id,))
        if row is None or row[0] is None:
            return False
        conn.execute("UPDATE uploads SET raw_identifier = NULL WHERE id = ?", (upload_id,))
        push_in(conn, jobs.CLEANUP, jobs.RemoveFiles(identifiers=[as_str(row[0])]), now=now)
    return True


def w_claim_upload(conn: apsw.Connection, upload_id: str, now: float) -> tuple[bool, bool]:
    """Delete a finished upload's record: (claimed, a RemoveFiles job was queued for raw
    bytes it still held)."""
    with transaction(conn):
        released = release_raw_in(conn, upload_id, now)
        conn.execute("DELETE FROM uploads WHERE id = ? AND result IS NOT NULL", (upload_id,))
        return conn.changes() == 1, released


def first(conn: apsw.Connection, sql: str, args: tuple[apsw.SQLiteValue, ...]) -> Row | None:
    """The first row or None. fetchall steps the statement to its end, so no read
    transaction stays open behind an unfinished cursor (which would pin an old WAL snapshot
    on a pooled connection)."""
    rows = conn.execute(sql, args).fetchall()
    return rows[0] if rows else None


def as_str(value: apsw.SQLiteValue) -> str:
    assert isinstance(value, str)
    return value


def as_bytes(value: apsw.SQLiteValue) -> bytes:
    assert isinstance(value, bytes)
    return value


def w_remove_alias(
    conn: apsw.Connection, alias: str, now: float | None = None
) -> tuple[bytes, list[str]] | None:
    """Remove an alias (its proxy relation cascades). When it was the file's last alias,
    the file's rows go too and a RemoveFiles job for their identifiers is queued in the same
    transaction. Returns (hash key, orphaned identifiers), or None for an unknown alias."""
    with transaction(conn):
        row = first(conn, "SELECT hash FROM aliases WHERE alias = ?", (alias,))
        if row is None:
            return None
        key = as_bytes(row[0])
        conn.execute("DELETE FROM aliases WHERE alias = ?", (alias,))  # proxies cascade
        if first(conn, "SELECT 1 FROM aliases WHERE hash = ? LIMIT 1", (key,)) is not None:
            return key, []
        file_row = first(
            conn, "SELECT identifier, motion_identifier FROM hashes WHERE hash = ?", (key,)
        )
        orphaned: list[str] = []
        if file_row is not None:
            orphaned.extend(as_str(v) for v in file_row if v is not None)
        variant_rows = conn.execute(
            "SELECT identifier FROM variants WHERE hash = ? ORDER BY id", (key,)
        ).fetchall()
        orphaned.extend(as_str(v) for (v,) in variant_rows)
        conn.execute("DELETE FROM variants WHERE hash = ?", (key,))
        conn.execute("DELETE FROM hashes WHERE hash = ?", (key,))
        conn.executemany("DELETE FROM details WHERE identifier = ?", [(i,) for i in orphaned])
        if orphaned:
            # Same transaction: the rows and the job that deletes their files commit together.
            push_in(conn, jobs.CLEANUP, jobs.RemoveFiles(identifiers=orphaned), now=now)
    return key, orphaned


def w_forget_variant(conn: apsw.Connection, key: bytes, variant: str, identifier: str) -> None:
    """Drop a variant row whose file is gone (it is rendered again on the next request)."""
    with transaction(conn):
        conn.execute(
            "DELETE FROM variants WHERE hash = ? AND variant = ? AND identifier = ?",
            (key, variant, identifier),
        )
        conn.execute("DELETE FROM details WHERE identifier = ?", (identifier,))
