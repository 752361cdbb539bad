"""SQL for server-wide settings: the ``settings`` key/value table (pict-rs's
``SettingsRepo``, ``src/repo.rs``), the not-found image it names, and job progress. Plain
sync functions on an ``apsw.Connection``, run by ``SqliteRepo``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import apsw

from journal.schema import transaction
from pictrs_trio.repo.media_sql import as_str, first

if TYPE_CHECKING:
    from typing import TypeAlias

    Row: TypeAlias = tuple[apsw.SQLiteValue, ...]

# pict-rs's key for the alias served in place of unknown ones (src/lib.rs NOT_FOUND_KEY).
NOT_FOUND_KEY = "404-alias"


def q_setting(conn: apsw.Connection, key: str) -> bytes | None:
    row = first(conn, "SELECT value FROM settings WHERE key = ?", (key,))
    return None if row is None else bytes(row[0])  # type: ignore[arg-type]


def as_count(value: bytes | None) -> int:
    """A count kept as a setting: 8 bytes big-endian, as pict-rs keeps its prune progress."""
    return 0 if value is None else int.from_bytes(value, "big")


def put_in(conn: apsw.Connection, key: str, value: bytes) -> None:
    """Inside the caller's transaction: set ``key`` to ``value``."""
    conn.execute(
        "INSERT INTO settings (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def increment_in(conn: apsw.Connection, key: str) -> None:
    """Inside the caller's transaction: add one to the count kept under ``key``."""
    count = as_count(q_setting(conn, key)) + 1
    put_in(conn, key, count.to_bytes(8, "big"))


def w_set_settings(conn: apsw.Connection, values: dict[str, bytes | None]) -> None:
    """Set (or, for None, remove) the settings in one transaction."""
    with transaction(conn):
        for key, value in values.items():
            if value is None:
                conn.execute("DELETE FROM settings WHERE key = ?", (key,))
            else:
                put_in(conn, key, value)


def q_not_found(conn: apsw.Connection) -> tuple[str, Row] | None:
    """(alias, (hash, identifier, details json)) of the not-found image, in one statement;
    None when none is set or its alias is gone. The value is the alias as UTF-8 text."""
    rows = conn.execute(
        "SELECT a.alias, h.hash, h.identifier, d.json FROM settings s"
        " JOIN aliases a ON a.alias = CAST(s.value AS TEXT)"
        " JOIN hashes h ON h.hash = a.hash"
        " LEFT JOIN details d ON d.identifier = h.identifier"
        " WHERE s.key = ?",
        (NOT_FOUND_KEY,),
    ).fetchall()
    if not rows:
        return None
    alias, *found = rows[0]
    return as_str(alias), tuple(found)


def w_set_not_found(conn: apsw.Connection, alias: str) -> bool:
    """Name ``alias`` the not-found image; False (nothing written) when it does not exist.
    The check and the write are one transaction, so the alias cannot go in between."""
    with transaction(conn):
        if first(conn, "SELECT 1 FROM aliases WHERE alias = ?", (alias,)) is None:
            return False
        put_in(conn, NOT_FOUND_KEY, alias.encode())
    return True
