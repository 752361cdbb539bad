"""SQL for proxied media (``?proxy=url``): URL -> alias, with a last-access time for
retention. Plain sync functions on an ``apsw.Connection``, run by ``SqliteRepo``.

A proxy row references its alias with ON DELETE CASCADE, so every way an alias goes
(delete, purge, expiry) takes the proxy relation with it.
"""

from __future__ import annotations

import apsw

from journal.schema import transaction
from pictrs_trio.repo import media_sql


def q_proxy(conn: apsw.Connection, url: str) -> tuple[str, int] | None:
    """(alias, accessed ns) of a proxied URL."""
    rows = conn.execute("SELECT alias, accessed FROM proxies WHERE url = ?", (url,)).fetchall()
    if not rows:
        return None
    alias, accessed = rows[0]
    assert isinstance(alias, str)
    assert isinstance(accessed, int)
    return alias, accessed


def w_relate_proxy(conn: apsw.Connection, url: str, alias: str, now_ns: int) -> str:
    """Relate ``url`` to ``alias`` unless it is related already; returns the alias on
    record (first writer wins)."""
    with transaction(conn):
        conn.execute(
            "INSERT INTO proxies (url, alias, accessed) VALUES (?, ?, ?)"
            " ON CONFLICT (url) DO NOTHING",
            (url, alias, now_ns),
        )
        if conn.changes() == 1:
            return alias
        found = q_proxy(conn, url)
    assert found is not None  # we held the write lock: the winner's row is still there
    return found[0]


def w_touch_proxy(conn: apsw.Connection, url: str, now_ns: int) -> None:
    with transaction(conn):
        conn.execute("UPDATE proxies SET accessed = max(accessed, ?) WHERE url = ?", (now_ns, url))


def w_expire_proxies(conn: apsw.Connection, before_ns: int, limit: int, now: float) -> int:
    """Remove up to ``limit`` proxied aliases last accessed before ``before_ns``; files left
    without aliases go with them (a RemoveFiles job in this same transaction)."""
    with transaction(conn):
        rows = conn.execute(
            "SELECT alias FROM proxies WHERE accessed < ? ORDER BY accessed LIMIT ?",
            (before_ns, limit),
        ).fetchall()
        for (alias,) in rows:
            assert isinstance(alias, str)
            media_sql.w_remove_alias(conn, alias, now=now)  # the proxy row cascades
    return len(rows)
