"""Who is alive, and what the dead leave behind: owners, leases and intents. Plain sync SQL.

An **owner** is one process's use of the journal: ``host|pid-namespace|pid|start-time|nonce``,
registered when it starts, heartbeating every ``OWNER_BEAT`` seconds, unregistered when it
stops. It is dead when its row is gone. On this host its process decides: dead at once when
the pid no longer exists or belongs to a process started at another time, alive while it
runs, however late its heartbeat (a busy process is not a dead one). Elsewhere, where no
process can be looked at, it is dead when its heartbeat is older than ``OWNER_TTL``.

An owner may **run alone** (a command that must not run beside the servers): it joins only
when no other owner is alive, and holds the ``ALONE`` lease while it lives, so that no other
owner joins then. Each check is made in the transaction that registers (``join``), so of two
processes joining at once one is refused.

A **lease** is mutual exclusion on a key across processes (one render per variant): taken
if free, if its holder is dead, or if it was taken longer ago than the caller allows (a stuck
holder), so nobody waits out a dead owner and nobody waits forever on a live one.

An **intent** is write-ahead for a side effect outside the database (a file about to be
written): recorded before the effect, with the job that undoes it. The commit that makes the
effect part of the state fulfils (deletes) it in the same transaction; if the owner dies
first, ``reap`` turns the intent into its undo job. Recovery thus acts on exactly what the
dead started, never on something merely because nothing mentions it (SQLite's own rule,
https://sqlite.org/atomiccommit.html: write ahead, then act).

``reap`` does all of this for every dead owner in one transaction, and also hands the running
jobs of dead owners back to their queues.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import cast

import apsw
import msgspec

from journal.records import JournalError, encode_payload
from journal.schema import transaction
from journal.store import ns, push_in

OWNER_BEAT = 1.0  # seconds between an owner's heartbeats
OWNER_TTL = 10.0  # an owner silent this long is dead (other hosts; this host knows at once)


class IntentLost(JournalError):
    """An intent to fulfil is gone: its owner was taken for dead and the effect undone."""


class NotAlone(JournalError):
    """Joining was refused: an owner that runs alone is alive (``owners``), or, for one
    that would run alone, any other owner is."""

    def __init__(self, message: str, owners: list[str]) -> None:
        super().__init__(message)
        self.owners = owners


class Reaped(msgspec.Struct, frozen=True, kw_only=True):
    """What one ``reap`` released."""

    owners: int = 0
    leases: int = 0
    intents: int = 0
    jobs: int = 0
    queues: frozenset[str] = frozenset()  # queues that got jobs (to wake their workers)

    def __bool__(self) -> bool:
        return bool(self.owners or self.leases or self.intents or self.jobs)


# --- identity -----------------------------------------------------------------------------


def _start_time(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()[19]  # field 22; comm may contain spaces


def origin() -> str:
    """``host|pid-namespace|pid|start-time`` of this process (``?`` where unknowable)."""
    try:
        pidns = str(os.stat("/proc/self/ns/pid").st_ino)
        started = _start_time(os.getpid())
    except (OSError, ValueError, IndexError):
        pidns = started = "?"
    return f"{socket.gethostname()}|{pidns}|{os.getpid()}|{started}"


def local_state(mine: str, other: str) -> bool | None:
    """What this host knows of ``other`` (an owner or worker id): True when it ran here (same
    host and pid namespace) and its process still runs (same pid, same start time); False
    when it ran here and its process is gone (no such pid, or the pid now belongs to a process
    started at another time); None when this host cannot tell (another host or container, no
    /proc, or this very process, which may hold several owners): then only the heartbeat
    can."""
    parts = other.split("|", 4)
    here = mine.split("|")
    if len(parts) < 5 or "?" in parts[:4] or parts[:2] != here[:2]:
        return None
    if parts[2] == here[2]:
        return None if parts[3] == here[3] else False  # our pid, held before us: gone
    try:
        return _start_time(int(parts[2])) == parts[3]
    except FileNotFoundError:
        pass
    except (OSError, ValueError, IndexError):
        return None
    try:  # no /proc entry: confirm with the kernel before calling it gone
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError):
        return None
    return None


LocalState = Callable[[str], "bool | None"]


def _live(state: bool | None, heartbeat: int, now: float) -> bool:
    """A local process's own state decides; elsewhere, a heartbeat within OWNER_TTL."""
    return state if state is not None else heartbeat >= ns(now - OWNER_TTL)


# --- owners -----------------------------------------------------------------------------------

# The lease an owner that runs alone holds while it lives (``join``); released with its row.
ALONE = "journal:alone"


def register(conn: apsw.Connection, owner: str, now: float, *, alone: bool = False) -> None:
    """Record ``owner`` as alive, unchecked (``join`` checks); ``alone``: with the ALONE
    lease."""
    with transaction(conn):
        conn.execute(
            "INSERT INTO journal_owners (owner, started, heartbeat) VALUES (?1, ?2, ?2)"
            " ON CONFLICT (owner) DO UPDATE SET heartbeat = excluded.heartbeat",
            (owner, ns(now)),
        )
        if alone:
            conn.execute(
                "INSERT INTO journal_leases (key, owner, taken) VALUES (?1, ?2, ?3)"
                " ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, taken = excluded.taken",
                (ALONE, owner, ns(now)),
            )


def join(
    conn: apsw.Connection, owner: str, now: float, state: LocalState, *, alone: bool = False
) -> None:
    """Register ``owner`` unless that would put it beside an owner that runs alone, or,
    ``alone``, beside any live owner at all; the check and the registration are one
    (IMMEDIATE) transaction, so of two processes joining at once, the second sees the first.
    Raises NotAlone (nothing written then)."""
    with transaction(conn):
        if alone:
            others = others_alive(conn, owner, now, state)
            if others:
                raise NotAlone(f"other owners are alive: {', '.join(others)}", others)
        else:
            rows = conn.execute(
                "SELECT owner FROM journal_leases WHERE key = ?", (ALONE,)
            ).fetchall()
            holder = cast(str, rows[0][0]) if rows else None
            if holder is not None and holder != owner and owner_alive(conn, holder, now, state):
                raise NotAlone(f"an owner that runs alone is alive: {holder}", [holder])
        register(conn, owner, now, alone=alone)


def beat(conn: apsw.Connection, owner: str, now: float, *, alone: bool = False) -> bool:
    """Refresh the heartbeat; False when the row was gone (taken for dead: registered again,
    ``alone`` with its lease again, but what it held was released)."""
    with transaction(conn):
        conn.execute("UPDATE journal_owners SET heartbeat = ? WHERE owner = ?", (ns(now), owner))
        if conn.changes() == 1:
            return True
    register(conn, owner, now, alone=alone)
    return False


def unregister(conn: apsw.Connection, owner: str) -> None:
    """A clean stop: its leases go; intents left unfulfilled are undone by the next reap."""
    with transaction(conn):
        conn.execute("DELETE FROM journal_leases WHERE owner = ?", (owner,))
        conn.execute("DELETE FROM journal_owners WHERE owner = ?", (owner,))


def _alive(conn: apsw.Connection, now: float, me: str, state: LocalState) -> set[str]:
    alive = {me}
    for owner, heartbeat in conn.execute("SELECT owner, heartbeat FROM journal_owners").fetchall():
        name = cast(str, owner)
        if name == me or _live(state(name), cast(int, heartbeat), now):
            alive.add(name)
    return alive


def others_alive(conn: apsw.Connection, me: str, now: float, state: LocalState) -> list[str]:
    """The live owners besides ``me``: other processes using the file right now."""
    return sorted(_alive(conn, now, me, state) - {me})


def owner_alive(conn: apsw.Connection, owner: str, now: float, state: LocalState) -> bool:
    """A registered owner whose process runs on this host, or (elsewhere) heartbeats."""
    rows = conn.execute("SELECT heartbeat FROM journal_owners WHERE owner = ?", (owner,)).fetchall()
    return bool(rows) and _live(state(owner), cast(int, rows[0][0]), now)


# --- leases -----------------------------------------------------------------------------------


def take_lease(
    conn: apsw.Connection,
    key: str,
    owner: str,
    now: float,
    state: LocalState,
    stale_after: float | None = None,
) -> bool:
    """Take ``key`` unless a live owner holds it. A dead holder's lease is taken over, and so
    is one taken more than ``stale_after`` seconds ago (a live but stuck holder; its commit
    still checks its own work, so nothing is lost by going on without it)."""
    with transaction(conn):
        rows = conn.execute(
            "SELECT owner, taken FROM journal_leases WHERE key = ?", (key,)
        ).fetchall()
        if rows:
            holder, taken = cast(str, rows[0][0]), cast(int, rows[0][1])
            expired = stale_after is not None and taken < ns(now - stale_after)
            if holder == owner or (not expired and owner_alive(conn, holder, now, state)):
                return holder == owner
            conn.execute(
                "UPDATE journal_leases SET owner = ?, taken = ? WHERE key = ?",
                (owner, ns(now), key),
            )
            return True
        conn.execute(
            "INSERT INTO journal_leases (key, owner, taken) VALUES (?, ?, ?)",
            (key, owner, ns(now)),
        )
        return True


def release_in(conn: apsw.Connection, key: str, owner: str) -> None:
    """Release ``key`` if ``owner`` holds it, inside the caller's transaction if one is open
    (a render's commit releases its lease with its rows)."""
    with transaction(conn):
        conn.execute("DELETE FROM journal_leases WHERE key = ? AND owner = ?", (key, owner))


# --- intents ----------------------------------------------------------------------------------


def intend(
    conn: apsw.Connection,
    keys: Iterable[str],
    owner: str,
    queue: str,
    undo: bytes | msgspec.Struct,
    now: float,
    kind: str = "",
) -> None:
    """Record that ``owner`` is about to create ``keys``; ``undo`` (a job payload for
    ``queue``) removes them if the owner dies before fulfilling the intent."""
    if isinstance(undo, msgspec.Struct):
        kind, undo = encode_payload(undo)
    with transaction(conn):
        conn.executemany(
            "INSERT INTO journal_intents (key, owner, queue, kind, payload, created)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(key, owner, queue, kind, undo, ns(now)) for key in keys],
        )


def fulfil_in(conn: apsw.Connection, keys: Iterable[str], owner: str) -> None:
    """The effects ``keys`` are now part of the state: drop their intents, inside the
    caller's transaction. Raises IntentLost (rolling that transaction back) when any is
    gone: its owner was taken for dead and the effect is being undone."""
    with transaction(conn):
        for key in keys:
            conn.execute("DELETE FROM journal_intents WHERE key = ? AND owner = ?", (key, owner))
            if conn.changes() != 1:
                raise IntentLost(f"Intent of {key} was released: its owner was taken for dead")


def abandon(conn: apsw.Connection, keys: Iterable[str], owner: str) -> None:
    """The owner undid the effects itself (a failed save, a duplicate): drop the intents."""
    with transaction(conn):
        conn.executemany(
            "DELETE FROM journal_intents WHERE key = ? AND owner = ?",
            [(key, owner) for key in keys],
        )


def intended(conn: apsw.Connection) -> set[str]:
    """Every key with an intent (effects in flight, or about to be undone)."""
    return {cast(str, k) for (k,) in conn.execute("SELECT key FROM journal_intents").fetchall()}


# --- reaping ----------------------------------------------------------------------------------


def reap(conn: apsw.Connection, me: str, now: float, state: LocalState) -> Reaped:
    """Release everything dead owners hold: their rows, leases, intents (turned into their
    undo jobs) and running jobs (pending again, or dead after their last attempt). Jobs from
    before owners existed (no owner recorded) are released when their worker's process is
    gone from this host or their lease has run out."""
    with transaction(conn):
        alive = _alive(conn, now, me, state)
        owners = [
            cast(str, o)
            for (o,) in conn.execute("SELECT owner FROM journal_owners").fetchall()
            if o not in alive
        ]
        conn.executemany("DELETE FROM journal_owners WHERE owner = ?", [(o,) for o in owners])
        leases = [
            (cast(str, k),)
            for k, o in conn.execute("SELECT key, owner FROM journal_leases").fetchall()
            if o not in alive
        ]
        conn.executemany("DELETE FROM journal_leases WHERE key = ?", leases)
        queues: set[str] = set()
        intents = conn.execute(
            "SELECT key, owner, queue, kind, payload FROM journal_intents"
        ).fetchall()
        undone = 0
        for key, owner, queue, kind, payload in intents:
            if owner in alive:
                continue
            push_in(conn, cast(str, queue), cast(bytes, payload), kind=cast(str, kind), now=now)
            conn.execute("DELETE FROM journal_intents WHERE key = ?", (key,))
            queues.add(cast(str, queue))
            undone += 1
        jobs = []
        for job_id, queue, owner, worker, lease_until in conn.execute(
            "SELECT id, queue, owner, worker, lease_until FROM journal_jobs"
            " WHERE status = 'running'"
        ).fetchall():
            if owner is not None:
                gone = owner not in alive
            else:  # a row from before owners: by its worker id, or its lease
                gone = cast(int, lease_until) <= ns(now) or state(cast(str, worker)) is False
            if gone:
                jobs.append((ns(now), cast(int, job_id)))
                queues.add(cast(str, queue))
        conn.executemany(
            "UPDATE journal_jobs SET status = CASE WHEN attempts >= max_attempts"
            " THEN 'dead' ELSE 'pending' END, last_error = 'worker ' || worker || ' stopped"
            " during attempt ' || attempts, run_after = ?1, updated = ?1, worker = NULL,"
            " owner = NULL, lease_until = NULL, heartbeat = NULL WHERE id = ?2",
            jobs,
        )
    return Reaped(
        owners=len(owners),
        leases=len(leases),
        intents=undone,
        jobs=len(jobs),
        queues=frozenset(queues),
    )
