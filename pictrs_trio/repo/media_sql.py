"""SQL for derived media: variants, motion stills, generation claims, and the joined
look-ups the serving hot path uses. Plain sync functions on an ``apsw.Connection``, run by
``SqliteRepo`` (see sqlite.py for the threading rules)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import apsw

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


def w_commit_variant(
    conn: apsw.Connection, key: bytes, variant: str, identifier: str, details_json: bytes,
    now_ns: int,
) -> tuple[str, bool]:
    """Record a rendered variant and its details together. Returns (identifier now on
    record, ours_kept); when another generation won, ours is not recorded."""
    with conn:
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
        conn.execute(
            "INSERT INTO details (identifier, json) VALUES (?, ?)"
            " ON CONFLICT (identifier) DO UPDATE SET json = excluded.json",
            (identifier, details_json),
        )
    return identifier, True


def w_commit_motion(
    conn: apsw.Connection, key: bytes, identifier: str, details_json: bytes
) -> tuple[str, bool]:
    """Record the hash's motion still (first writer wins), with its details."""
    with conn:
        conn.execute(
            "UPDATE hashes SET motion_identifier = ? WHERE hash = ? AND motion_identifier IS NULL",
            (identifier, key),
        )
        if conn.changes() == 0:
            existing = q_motion(conn, key)
            if existing is None:
                raise apsw.ConstraintError("hash gone while its motion still was rendered")
            return existing, False
        conn.execute(
            "INSERT INTO details (identifier, json) VALUES (?, ?)"
            " ON CONFLICT (identifier) DO UPDATE SET json = excluded.json",
            (identifier, details_json),
        )
    return identifier, True


def w_claim(conn: apsw.Connection, key: str, now_ns: int, stale_before_ns: int) -> bool:
    """Take the generation claim for ``key`` unless a live one exists."""
    with conn:
        conn.execute(
            "DELETE FROM generation_claims WHERE key = ? AND heartbeat < ?",
            (key, stale_before_ns),
        )
        conn.execute(
            "INSERT INTO generation_claims (key, heartbeat) VALUES (?, ?)"
            " ON CONFLICT (key) DO NOTHING",
            (key, now_ns),
        )
        return conn.changes() == 1


def w_heartbeat(conn: apsw.Connection, key: str, now_ns: int) -> None:
    with conn:
        conn.execute("UPDATE generation_claims SET heartbeat = ? WHERE key = ?", (now_ns, key))


def w_release(conn: apsw.Connection, key: str) -> None:
    with conn:
        conn.execute("DELETE FROM generation_claims WHERE key = ?", (key,))


def w_touch_variants(conn: apsw.Connection, items: list[tuple[bytes, str, int]]) -> None:
    """Set last-access times; rows that are gone are skipped (only existing rows count, as
    in pict-rs's postgres repo)."""
    with conn:
        conn.executemany(
            "UPDATE variants SET accessed = max(accessed, ?3) WHERE hash = ?1 AND variant = ?2",
            items,
        )
