"""SQL over every stored file at once: pages newest first (``GET /internal/hashes``), counts,
blurhashes, and pruning the records of files gone from the store. Plain sync functions on an
``apsw.Connection``, run by ``SqliteRepo`` (see sqlite.py for the threading rules).

Order: newest first, by (``created_at``, hash key) descending, the order of the
``hashes_created_at`` index (migrations.py), so a page is one index range scan whatever the
page's depth: a position is a (``created_at``, key) pair compared as a row value. pict-rs's
postgres repo orders the same way (``src/repo/postgres.rs`` ``hashes_ordered``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import apsw

from journal.schema import transaction
from journal.store import push_in
from pictrs_trio.repo.media_sql import as_bytes, as_str, first
from pictrs_trio.repo.settings_sql import increment_in
from pictrs_trio.rules import jobs

if TYPE_CHECKING:
    from typing import TypeAlias

    Position: TypeAlias = tuple[int, bytes]  # (created_at ns, hash key)

# A page's files with the original's details; the position is the page's first, inclusive.
_PAGE_FROM = (
    "SELECT h.hash, d.json FROM hashes h LEFT JOIN details d ON d.identifier = h.identifier"
    " WHERE (h.created_at, h.hash) <= (?, ?) ORDER BY h.created_at DESC, h.hash DESC LIMIT ?"
)
_PAGE_FIRST = (
    "SELECT h.hash, d.json FROM hashes h LEFT JOIN details d ON d.identifier = h.identifier"
    " ORDER BY h.created_at DESC, h.hash DESC LIMIT ?"
)
# The files newer than a position, nearest first: the page before ends at the limit-th.
_NEWER = (
    "SELECT hash FROM hashes WHERE (created_at, hash) > (?, ?) ORDER BY created_at, hash LIMIT ?"
)

PageRow = tuple[bytes, bytes | None, list[str]]  # (hash key, details json, aliases)


def q_hash_page(
    conn: apsw.Connection, start: bytes | None, before_ns: int | None, limit: int
) -> tuple[list[PageRow], bytes | None, bytes | None]:
    """(rows, prev key, next key) of the page that starts at the file ``start`` (a hash key;
    unknown: the first page), else at the newest file created strictly before
    ``before_ns``, else at the newest file. One read transaction, so the page, its
    neighbours, aliases and details are one snapshot."""
    with conn:
        position: Position | None = None
        if start is not None:
            row = first(conn, "SELECT created_at FROM hashes WHERE hash = ?", (start,))
            if row is not None:
                created = row[0]
                assert isinstance(created, int)
                position = (created, start)
        elif before_ns is not None:
            # No key sorts below the empty blob: "<= (t, x'')" is "created before t".
            position = (before_ns, b"")
        if position is None:
            found = conn.execute(_PAGE_FIRST, (limit + 1,)).fetchall()
            prev = None
        else:
            found = conn.execute(_PAGE_FROM, (*position, limit + 1)).fetchall()
            newer = conn.execute(_NEWER, (*position, limit)).fetchall()
            prev = as_bytes(newer[-1][0]) if newer else None
        nxt = as_bytes(found.pop()[0]) if len(found) > limit else None
        rows: list[PageRow] = []
        for key, details in found:
            aliases = conn.execute(
                "SELECT alias FROM aliases WHERE hash = ? ORDER BY alias", (key,)
            ).fetchall()
            rows.append(
                (
                    as_bytes(key),
                    None if details is None else as_bytes(details),
                    [as_str(alias) for (alias,) in aliases],
                )
            )
    return rows, prev, nxt


def q_hashes_after(
    conn: apsw.Connection, position: Position | None, limit: int
) -> list[tuple[bytes, str, int]]:
    """Up to ``limit`` (hash key, identifier, created_at) strictly after ``position`` in page
    order (None: from the newest): how a walk over every file goes, batch by batch."""
    if position is None:
        rows = conn.execute(
            "SELECT hash, identifier, created_at FROM hashes"
            " ORDER BY created_at DESC, hash DESC LIMIT ?",
            (limit,),
        ).fetchall()
    else:
        rows = conn.execute(
            "SELECT hash, identifier, created_at FROM hashes WHERE (created_at, hash) < (?, ?)"
            " ORDER BY created_at DESC, hash DESC LIMIT ?",
            (*position, limit),
        ).fetchall()
    return [(as_bytes(key), as_str(ident), int(created)) for key, ident, created in rows]  # type: ignore[arg-type]


def q_count_hashes(conn: apsw.Connection) -> int:
    row = first(conn, "SELECT count(*) FROM hashes", ())
    assert row is not None
    return int(row[0])  # type: ignore[arg-type]


def q_file_counts(conn: apsw.Connection) -> dict[str, int]:
    """How many files the repo knows, by kind (original, motion still, variant), and how
    many aliases: counts over the tables' smallest indexes, a few ms per million rows."""
    counts: dict[str, int] = {}
    for kind, sql in (
        ("original", "SELECT count(*) FROM hashes"),
        ("motion", "SELECT count(motion_identifier) FROM hashes"),
        ("variant", "SELECT count(*) FROM variants"),
        ("alias", "SELECT count(*) FROM aliases"),
    ):
        row = first(conn, sql, ())
        assert row is not None
        counts[kind] = int(row[0])  # type: ignore[arg-type]
    return counts


# An original's size is bytes 33-38 of its hash key, big-endian (records.Hash.key). Summed in
# SQL, without Python per row (apsw lets other threads run meanwhile): ``instr`` in the blob
# of all byte values gives one more than a byte's value.
_BYTE_VALUES = bytes(range(256))
_SIZE = " + ".join(
    f"(instr(?1, substr(hash, {33 + i}, 1)) - 1) * {256 ** (5 - i)}" for i in range(6)
)


def q_original_bytes(conn: apsw.Connection) -> int:
    """The bytes of every original together. A scan of every hash key, about 2 s a
    million rows: callers compute it rarely."""
    row = first(conn, f"SELECT coalesce(sum({_SIZE}), 0) FROM hashes", (_BYTE_VALUES,))
    assert row is not None
    return int(row[0])  # type: ignore[arg-type]


def q_blurhash(conn: apsw.Connection, key: bytes) -> str | None:
    row = first(conn, "SELECT blurhash FROM hashes WHERE hash = ?", (key,))
    return None if row is None or row[0] is None else as_str(row[0])


def w_relate_blurhash(conn: apsw.Connection, key: bytes, blurhash: str) -> None:
    """Record the file's blurhash (computed once; a second computation writes the same)."""
    with transaction(conn):
        conn.execute("UPDATE hashes SET blurhash = ? WHERE hash = ?", (blurhash, key))


def w_prune_hash(
    conn: apsw.Connection, key: bytes, identifier: str, counter: str | None, now: float
) -> list[str] | None:
    """Remove the records of a file whose original ``identifier`` is gone from the store:
    its aliases (their proxy relations cascade), variants, motion still, details and the
    hash, and queue a RemoveFiles job for every file those records named (variants and the
    motion still may be there still; removing the missing original is a no-op), all in one
    transaction, as pict-rs's prune queues a full cleanup of the hash
    (``src/queue/cleanup.rs``). With ``counter``, that setting counts the file too.

    Returns the identifiers whose removal was queued, or None when the hash is gone or now
    names another file (nothing changed).
    """
    with transaction(conn):
        row = first(conn, "SELECT identifier, motion_identifier FROM hashes WHERE hash = ?", (key,))
        if row is None or row[0] != identifier:
            return None
        named = [identifier] + ([as_str(row[1])] if row[1] is not None else [])
        variants = conn.execute(
            "SELECT identifier FROM variants WHERE hash = ? ORDER BY id", (key,)
        )
        named.extend(as_str(v) for (v,) in variants.fetchall())
        conn.execute("DELETE FROM aliases WHERE hash = ?", (key,))
        conn.execute("DELETE FROM variants WHERE hash = ?", (key,))
        conn.executemany("DELETE FROM details WHERE identifier = ?", [(i,) for i in named])
        conn.execute("DELETE FROM hashes WHERE hash = ?", (key,))
        push_in(conn, jobs.CLEANUP, jobs.RemoveFiles(identifiers=named), now=now)
        if counter is not None:
            increment_in(conn, counter)
    return named
