"""The journal's SQL: plain sync functions on an ``apsw.Connection``.

Every function that writes wraps itself in ``schema.transaction``: ``BEGIN IMMEDIATE`` on its
own, a SAVEPOINT inside a transaction the caller already opened, so ``push_in`` joins the
caller's transaction and commits or rolls back with it. ``now`` is always passed in (wall
seconds from the journal's clock): these functions run in worker threads, where a
trio-derived test clock cannot be read.

Ownership of a running job is ``worker = ?``: heartbeat, complete and fail only touch a job
the given worker still holds, so a worker whose lease was taken over changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import apsw
import msgspec

from journal.records import STATUSES, Event, EventName, Job, Status, encode_payload
from journal.schema import transaction

if TYPE_CHECKING:
    from typing import TypeAlias

    Row: TypeAlias = tuple[apsw.SQLiteValue, ...]

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "announce_in",
    "claim",
    "claim_or_next_due",
    "complete",
    "dead_jobs",
    "events_after",
    "fail",
    "get",
    "heartbeat",
    "latest",
    "purge",
    "push_in",
    "retry_dead",
    "stats",
    "trim_events",
]

DEFAULT_MAX_ATTEMPTS = 5  # pict-rs: 5 tries per job
_COLUMNS = (
    "id, queue, kind, payload, unique_key, status, attempts, max_attempts, run_after, worker,"
    " lease_until, heartbeat, last_error, created, updated"
)
# The oldest job a worker may take: pending and due, or running with an expired lease (its
# worker died or hung). Each arm stops at its first row, via the partial indexes.
_CANDIDATE = """
    SELECT min(id) FROM (
        SELECT id FROM (SELECT id FROM journal_jobs WHERE queue = :queue AND status = 'pending'
                        AND run_after <= :now ORDER BY id LIMIT 1)
        UNION ALL
        SELECT id FROM (SELECT id FROM journal_jobs WHERE queue = :queue AND status = 'running'
                        AND lease_until <= :now ORDER BY id LIMIT 1)
    )
"""
_RELEASE = "worker = NULL, owner = NULL, lease_until = NULL, heartbeat = NULL"


def ns(seconds: float) -> int:
    return round(seconds * 1e9)


def _s(value: apsw.SQLiteValue) -> float | None:
    return None if value is None else cast(int, value) / 1e9


def _job(row: Row) -> Job:
    return Job(
        id=cast(int, row[0]),
        queue=cast(str, row[1]),
        kind=cast(str, row[2]),
        payload=cast(bytes, row[3]),
        unique_key=cast("str | None", row[4]),
        status=cast(Status, row[5]),
        attempts=cast(int, row[6]),
        max_attempts=cast(int, row[7]),
        run_after=cast(int, row[8]) / 1e9,
        worker=cast("str | None", row[9]),
        lease_until=_s(row[10]),
        heartbeat=_s(row[11]),
        last_error=cast("str | None", row[12]),
        created=cast(int, row[13]) / 1e9,
        updated=cast(int, row[14]) / 1e9,
    )


def push_in(
    conn: apsw.Connection,
    queue: str,
    payload: bytes | msgspec.Struct,
    *,
    kind: str = "",
    unique_key: str | None = None,
    run_after: float | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    now: float | None = None,
) -> int:
    """Queue a job on ``conn``, inside the caller's transaction if one is open; returns its id.
    ``payload`` is msgspec JSON bytes, or a Struct to encode (``kind`` then defaults to its
    tag or class name). With ``unique_key``, while a job of this queue with that key is
    pending or running nothing is added and that job's id is returned. ``run_after`` is an
    absolute wall time; ``now`` defaults to ``time.time()`` (pass the journal's clock if it
    has an injected one). The caller must call ``Journal.notify(queue)`` after committing to
    wake this process's workers at once (other processes' workers poll)."""
    if isinstance(payload, msgspec.Struct):
        tag, payload = encode_payload(payload)
        kind = kind or tag
    now_ns = ns(time.time() if now is None else now)
    due_ns = now_ns if run_after is None else ns(run_after)
    with transaction(conn):
        rows = conn.execute(
            "INSERT INTO journal_jobs (queue, kind, payload, unique_key, status, max_attempts,"
            " run_after, created, updated) VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING RETURNING id",
            (queue, kind, payload, unique_key, max_attempts, due_ns, now_ns, now_ns),
        ).fetchall()
        if not rows:  # only the unique index can conflict
            rows = conn.execute(
                "SELECT id FROM journal_jobs WHERE queue = ? AND unique_key = ?"
                " AND status IN ('pending', 'running')",
                (queue, unique_key),
            ).fetchall()
    return cast(int, rows[0][0])


def _next_due(conn: apsw.Connection, queue: str) -> float | None:
    rows = conn.execute(
        "SELECT min(t) FROM ("
        " SELECT min(run_after) AS t FROM journal_jobs WHERE queue = ?1 AND status = 'pending'"
        " UNION ALL"
        " SELECT min(lease_until) FROM journal_jobs WHERE queue = ?1 AND status = 'running')",
        (queue,),
    ).fetchall()
    return _s(rows[0][0])


def claim_or_next_due(
    conn: apsw.Connection,
    queue: str,
    worker: str,
    lease_seconds: float,
    now: float,
    owner: str | None = None,
) -> tuple[Job | None, float | None]:
    """``claim``, plus when nothing was claimed the earliest time something of ``queue`` may
    become claimable (None: the queue is empty), so an idle worker knows how long to sleep."""
    args = {"queue": queue, "now": ns(now)}
    # Look first without the write lock: an idle poll then costs a read, not a write
    # transaction that would make the repo's writer wait.
    if conn.execute(_CANDIDATE, args).fetchall()[0][0] is None:
        return None, _next_due(conn, queue)
    with transaction(conn):
        # A job whose lease ran out on its last allowed attempt is not retried again.
        conn.execute(
            "UPDATE journal_jobs SET status = 'dead', updated = :now, last_error ="
            " 'lease of worker ' || worker || ' expired on attempt ' || attempts"
            " || ' of ' || max_attempts, " + _RELEASE + " WHERE queue = :queue"
            " AND status = 'running' AND lease_until <= :now AND attempts >= max_attempts",
            args,
        )
        rows = conn.execute(
            "UPDATE journal_jobs SET status = 'running', worker = :worker, owner = :owner,"
            " attempts = attempts + 1, heartbeat = :now, lease_until = :now + :lease,"
            f" updated = :now WHERE id = ({_CANDIDATE}) RETURNING {_COLUMNS}",
            {**args, "worker": worker, "owner": owner, "lease": ns(lease_seconds)},
        ).fetchall()
    # Lost a race with another process: report "due now" so the worker looks again.
    return (_job(rows[0]), None) if rows else (None, now)


def claim(
    conn: apsw.Connection, queue: str, worker: str, lease_seconds: float, now: float
) -> Job | None:
    """Take the oldest claimable job of ``queue`` for ``worker`` until ``now +
    lease_seconds`` (attempts + 1), or None."""
    return claim_or_next_due(conn, queue, worker, lease_seconds, now)[0]


def heartbeat(conn: apsw.Connection, job_id: int, worker: str, now: float) -> bool:
    """Extend the lease by its original length from ``now``. False: the lease is lost (the
    job was reclaimed, finished or purged) and the worker must stop."""
    with transaction(conn):
        conn.execute(
            "UPDATE journal_jobs SET lease_until = ?1 + (lease_until - heartbeat), heartbeat = ?1,"
            " updated = ?1 WHERE id = ?2 AND worker = ?3 AND status = 'running'",
            (ns(now), job_id, worker),
        )
        return conn.changes() == 1


def complete(conn: apsw.Connection, job_id: int, worker: str, now: float, *, keep: bool) -> bool:
    """Mark done (``keep``) or delete. False if ``worker`` no longer holds the job."""
    with transaction(conn):
        if keep:
            conn.execute(
                f"UPDATE journal_jobs SET status = 'done', {_RELEASE}, updated = ?"
                " WHERE id = ? AND worker = ? AND status = 'running'",
                (ns(now), job_id, worker),
            )
        else:
            conn.execute(
                "DELETE FROM journal_jobs WHERE id = ? AND worker = ? AND status = 'running'",
                (job_id, worker),
            )
        return conn.changes() == 1


def fail(
    conn: apsw.Connection,
    job_id: int,
    worker: str,
    error: str,
    now: float,
    *,
    retry: bool,
    backoff: Callable[[int], float],
) -> Status | None:
    """Record a failed attempt: back to pending after ``backoff(attempts)`` seconds, or dead
    if ``retry`` is False or attempts are used up. Returns the new status, None if
    ``worker`` no longer holds the job."""
    with transaction(conn):
        rows = conn.execute(
            "SELECT attempts, max_attempts FROM journal_jobs"
            " WHERE id = ? AND worker = ? AND status = 'running'",
            (job_id, worker),
        ).fetchall()
        if not rows:
            return None
        attempts, max_attempts = cast(int, rows[0][0]), cast(int, rows[0][1])
        status: Status = "pending" if retry and attempts < max_attempts else "dead"
        due = now + backoff(attempts) if status == "pending" else now
        conn.execute(
            f"UPDATE journal_jobs SET status = ?, run_after = ?, last_error = ?, {_RELEASE},"
            " updated = ? WHERE id = ?",
            (status, ns(due), error, ns(now), job_id),
        )
    return status


def get(conn: apsw.Connection, job_id: int) -> Job | None:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM journal_jobs WHERE id = ?", (job_id,)).fetchall()
    return _job(rows[0]) if rows else None


def latest(conn: apsw.Connection, queue: str, unique_key: str) -> Job | None:
    """The newest job of ``queue`` pushed with ``unique_key``, whatever its status."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM journal_jobs WHERE queue = ? AND unique_key = ?"
        " ORDER BY id DESC LIMIT 1",
        (queue, unique_key),
    ).fetchall()
    return _job(rows[0]) if rows else None


def stats(conn: apsw.Connection) -> dict[str, dict[Status, int]]:
    """{queue: {status: count}} with every status present (zeros included)."""
    out: dict[str, dict[Status, int]] = {}
    for queue, status, count in conn.execute(
        "SELECT queue, status, count(*) FROM journal_jobs GROUP BY queue, status"
    ).fetchall():
        per_queue = out.setdefault(cast(str, queue), dict.fromkeys(STATUSES, 0))
        per_queue[cast(Status, status)] = cast(int, count)
    return out


def dead_jobs(conn: apsw.Connection, limit: int) -> list[Job]:
    """The most recently failed dead jobs first."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM journal_jobs WHERE status = 'dead'"
        " ORDER BY updated DESC, id DESC LIMIT ?",
        (limit,),
    ).fetchall()
    return [_job(row) for row in rows]


def retry_dead(conn: apsw.Connection, job_id: int, now: float) -> bool:
    """Dead → pending with a fresh set of attempts (last_error kept for the record). False
    if the job is not dead. Raises apsw.ConstraintError if a live job holds its unique key."""
    with transaction(conn):
        conn.execute(
            "UPDATE journal_jobs SET status = 'pending', attempts = 0, run_after = ?1,"
            " updated = ?1 WHERE id = ?2 AND status = 'dead'",
            (ns(now), job_id),
        )
        return conn.changes() == 1


def purge(conn: apsw.Connection, status: Status, older_than: float) -> int:
    """Delete jobs in a final ``status`` last updated before ``older_than`` (wall time)."""
    assert status in ("done", "dead")
    with transaction(conn):
        conn.execute(
            "DELETE FROM journal_jobs WHERE status = ? AND updated < ?", (status, ns(older_than))
        )
        return conn.changes()


_EVENT_COLUMNS = "id, at, event, job, queue, kind, attempt, payload, error"


def _event(row: Row) -> Event:
    return Event(
        id=cast(int, row[0]),
        at=cast(int, row[1]) / 1e9,
        event=cast(EventName, row[2]),
        job=cast("int | None", row[3]),
        queue=cast(str, row[4]),
        kind=cast(str, row[5]),
        attempt=cast(int, row[6]),
        payload=cast("bytes | None", row[7]),
        error=cast("str | None", row[8]),
    )


def announce_in(
    conn: apsw.Connection,
    queue: str,
    event: EventName,
    payload: bytes | msgspec.Struct,
    now: float,
    *,
    kind: str = "",
) -> int:
    """Add an event that is not a job's state change (``progress`` or ``done`` of long
    work) to the log, inside the caller's transaction if one is open. Returns its id."""
    if isinstance(payload, msgspec.Struct):
        tag, payload = encode_payload(payload)
        kind = kind or tag
    with transaction(conn):
        rows = conn.execute(
            "INSERT INTO journal_events (at, event, queue, kind, payload)"
            " VALUES (?, ?, ?, ?, ?) RETURNING id",
            (ns(now), event, queue, kind, payload),
        ).fetchall()
    return cast(int, rows[0][0])


def events_after(conn: apsw.Connection, after: int | None, limit: int) -> tuple[list[Event], int]:
    """(up to ``limit`` events with an id above ``after``, oldest first; the id a reader
    goes on from). ``after`` None: none, only the id of the newest event (a reader that
    starts now). A reader that fell behind the trimmed log gets what is left."""
    if after is None:
        row = conn.execute("SELECT coalesce(max(id), 0) FROM journal_events").fetchall()
        return [], cast(int, row[0][0])
    rows = conn.execute(
        f"SELECT {_EVENT_COLUMNS} FROM journal_events WHERE id > ? ORDER BY id LIMIT ?",
        (after, limit),
    ).fetchall()
    found = [_event(row) for row in rows]
    return found, found[-1].id if found else after


def trim_events(conn: apsw.Connection, keep: int) -> int:
    """Delete all but the newest ``keep`` events. Returns how many went."""
    with transaction(conn):
        conn.execute(
            "DELETE FROM journal_events WHERE id <= (SELECT max(id) FROM journal_events) - ?",
            (keep,),
        )
        return conn.changes()
