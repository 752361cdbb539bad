"""journal: push, claim, leases, retries, uniqueness, visibility — on real SQLite files.

Time: the journal's wall clock is derived from trio's mocked clock, so advancing one
advances the other."""

from __future__ import annotations

import os
import random
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import apsw
import msgspec
import pytest
import trio
import trio.testing

from journal import (
    Backoff,
    JobNotFound,
    Journal,
    JournalError,
    Outcome,
    encode_payload,
    open_journal,
    owners,
    push_in,
    schema,
)

EPOCH = 1_700_000_000.0


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    # pytest-trio's autojump_clock jumps as soon as no task is runnable, even while a thread
    # is inside SQLite, so virtual time would leap ahead of the database work it waits on. A
    # few real milliseconds of idleness first keeps virtual timings exact.
    return trio.testing.MockClock(autojump_threshold=0.03)


def wall_clock() -> Callable[[], float]:
    """Wall seconds that move with trio's clock (so with autojump_clock)."""
    return lambda: EPOCH + trio.current_time()


class Resize(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    alias: str
    size: int


class Delete(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    identifier: str


Payload = Resize | Delete
DECODER = msgspec.json.Decoder(Payload)


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    # pytest-trio only uses a clock the test itself asks for, so tests take autojump_clock.
    async with open_journal(
        tmp_path / "db.sqlite3", clock=wall_clock(), backoff=Backoff(jitter=0.0)
    ) as opened:
        yield opened


def raw(tmp_path: Path) -> apsw.Connection:
    conn = schema.connect(tmp_path / "db.sqlite3", busy_timeout_ms=2000, synchronous_full=False)
    schema.ensure(conn)
    return conn


async def test_push_claim_complete_round_trip(journal: Journal, autojump_clock: object) -> None:
    job_id = await journal.push("process", Resize(alias="a.png", size=256))
    assert await journal.stats() == {"process": {"pending": 1, "running": 0, "done": 0, "dead": 0}}

    assert await journal.claim("cleanup", "w1", 30) is None  # other queue
    job = await journal.claim("process", "w1", 30)
    assert job is not None
    assert (job.id, job.kind, job.status, job.attempts, job.worker) == (
        job_id,
        "Resize",
        "running",
        1,
        "w1",
    )
    assert job.decode(DECODER) == Resize(alias="a.png", size=256)
    assert job.decode(Resize) == Resize(alias="a.png", size=256)
    assert job.heartbeat is not None
    assert job.lease_until == pytest.approx(job.heartbeat + 30)
    assert await journal.claim("process", "w2", 30) is None  # taken

    assert await journal.complete(job_id, "w1")
    assert not await journal.complete(job_id, "w1")  # already done
    assert await journal.stats() == {"process": {"pending": 0, "running": 0, "done": 1, "dead": 0}}
    assert await journal.wait_done(job_id) == Outcome(id=job_id, status="done")


async def test_claim_takes_oldest_due_job(journal: Journal, autojump_clock: object) -> None:
    later = await journal.push("q", Delete(identifier="later"), run_after=journal.clock() + 10)
    first = await journal.push("q", Delete(identifier="1"))
    second = await journal.push("q", Delete(identifier="2"))
    claimed = [await journal.claim("q", "w", 30) for _ in range(3)]
    assert [j.id if j else None for j in claimed] == [first, second, None]
    await trio.sleep(10)
    job = await journal.claim("q", "w", 30)
    assert job is not None
    assert job.id == later


async def test_unique_key_dedupes_while_live_then_allows_again(
    journal: Journal, autojump_clock: object
) -> None:
    first = await journal.push("cleanup", Delete(identifier="x"), unique_key="prune")
    assert await journal.push("cleanup", Delete(identifier="y"), unique_key="prune") == first
    # Scoped by queue: the same key on another queue is another job.
    other = await journal.push("process", Delete(identifier="x"), unique_key="prune")
    assert other != first

    job = await journal.claim("cleanup", "w", 30)
    assert job is not None
    assert job.id == first
    assert await journal.push("cleanup", Delete(identifier="z"), unique_key="prune") == first

    await journal.complete(first, "w")
    second = await journal.push("cleanup", Delete(identifier="z"), unique_key="prune")
    assert second not in (first, other)
    job = await journal.claim("cleanup", "w", 30)
    assert job is not None
    assert job.decode(DECODER) == Delete(identifier="z")  # the new payload, not the old

    await journal.fail(second, "w", "boom", retry=False)  # dead also frees the key
    third = await journal.push("cleanup", Delete(identifier="z"), unique_key="prune")
    assert third > second
    # A dead job cannot come back while a live one holds its key.
    with pytest.raises(JournalError):
        await journal.retry_dead(second)


async def test_backoff_doubles_up_to_the_cap_then_dead(
    tmp_path: Path, autojump_clock: object
) -> None:
    backoff = Backoff(base=2.0, factor=2.0, cap=10.0, jitter=0.0)
    async with open_journal(
        tmp_path / "db.sqlite3", clock=wall_clock(), backoff=backoff, max_attempts=5
    ) as journal:
        job_id = await journal.push("q", Delete(identifier="x"))
        delays = []
        for attempt in range(1, 6):
            job = await journal.claim("q", "w", 30)
            assert job is not None
            assert job.attempts == attempt
            status = await journal.fail(job_id, "w", f"error {attempt}", retry=True)
            stored = await journal.get(job_id)
            assert stored is not None
            if attempt < 5:
                assert status == "pending"
                delays.append(stored.run_after - journal.clock())
                assert await journal.claim("q", "w", 30) is None  # not before its time
                await trio.sleep(stored.run_after - journal.clock())
        assert delays == pytest.approx([2.0, 4.0, 8.0, 10.0], abs=1e-6)
        assert status == "dead"
        (dead,) = await journal.dead_jobs()
        assert (dead.id, dead.status, dead.attempts, dead.last_error) == (
            job_id,
            "dead",
            5,
            "error 5",
        )
        assert await journal.wait_done(job_id) == Outcome(
            id=job_id, status="dead", last_error="error 5"
        )

        assert await journal.retry_dead(job_id)
        assert not await journal.retry_dead(job_id)  # no longer dead
        job = await journal.claim("q", "w", 30)
        assert job is not None
        assert job.attempts == 1  # a fresh set of attempts


def test_backoff_jitter_stays_within_its_fraction() -> None:
    backoff = Backoff(base=1.0, factor=2.0, cap=300.0, jitter=0.25)
    rng = random.Random(7)
    for attempts, full in ((1, 1.0), (3, 4.0), (9, 256.0), (10, 300.0), (500, 300.0)):
        samples = [backoff.delay(attempts, rng) for _ in range(200)]
        assert all(full * 0.75 <= d <= full for d in samples)
        assert max(samples) - min(samples) > full * 0.1  # it does spread


async def test_abort_goes_dead_at_once_with_its_error(
    journal: Journal, autojump_clock: object
) -> None:
    job_id = await journal.push("q", Delete(identifier="x"), max_attempts=10)
    await journal.claim("q", "w", 30)
    assert await journal.fail(job_id, "w", "invalid token", retry=False) == "dead"
    job = await journal.get(job_id)
    assert job is not None
    assert (job.status, job.attempts, job.last_error, job.worker) == (
        "dead",
        1,
        "invalid token",
        None,
    )


async def test_expired_lease_is_reclaimed_and_the_old_worker_is_locked_out(
    journal: Journal,
    autojump_clock: object,
) -> None:
    job_id = await journal.push("q", Delete(identifier="x"))
    assert await journal.claim("q", "crashed", 10) is not None
    await trio.sleep(9.9)
    assert await journal.claim("q", "w2", 10) is None  # lease still valid
    await trio.sleep(0.2)
    job = await journal.claim("q", "w2", 10)
    assert job is not None
    assert (job.id, job.worker, job.attempts) == (job_id, "w2", 2)
    # The first worker wakes up: it owns nothing any more.
    assert not await journal.heartbeat(job_id, "crashed")
    assert not await journal.complete(job_id, "crashed")
    assert await journal.fail(job_id, "crashed", "late", retry=True) is None
    assert await journal.heartbeat(job_id, "w2")
    assert await journal.complete(job_id, "w2")


async def test_heartbeat_extends_the_lease_by_its_length(
    journal: Journal, autojump_clock: object
) -> None:
    job_id = await journal.push("q", Delete(identifier="x"))
    await journal.claim("q", "w", 10)
    for _ in range(5):
        await trio.sleep(8)
        assert await journal.heartbeat(job_id, "w")
        assert await journal.claim("q", "other", 10) is None
    job = await journal.get(job_id)
    assert job is not None
    assert job.lease_until == pytest.approx(journal.clock() + 10, abs=1e-3)


async def test_lease_lost_on_the_last_attempt_ends_dead(
    journal: Journal, autojump_clock: object
) -> None:
    job_id = await journal.push("q", Delete(identifier="x"), max_attempts=1)
    await journal.claim("q", "crashed", 5)
    await trio.sleep(6)
    assert await journal.claim("q", "w", 5) is None
    job = await journal.get(job_id)
    assert job is not None
    assert job.status == "dead"
    assert job.last_error == "lease of worker crashed expired on attempt 1 of 1"


async def test_push_in_joins_the_callers_transaction(
    tmp_path: Path, journal: Journal, autojump_clock: object
) -> None:
    conn = raw(tmp_path)
    conn.execute("CREATE TABLE things (name TEXT PRIMARY KEY)")
    kind, payload = encode_payload(Delete(identifier="t1"))

    with pytest.raises(apsw.ConstraintError), conn:
        conn.execute("INSERT INTO things VALUES ('t1')")
        push_in(conn, "cleanup", payload, kind=kind, now=journal.clock())
        conn.execute("INSERT INTO things VALUES ('t1')")  # fails: everything rolls back
    assert await journal.stats() == {}
    assert conn.execute("SELECT count(*) FROM things").fetchall() == [(0,)]

    with conn:
        conn.execute("INSERT INTO things VALUES ('t1')")
        job_id = push_in(conn, "cleanup", Delete(identifier="t1"), now=journal.clock())
        assert push_in(conn, "cleanup", Delete(identifier="t1"), unique_key="u") != job_id
        assert push_in(conn, "cleanup", Delete(identifier="t2"), unique_key="u") == job_id + 1
    journal.notify("cleanup")
    job = await journal.claim("cleanup", "w", 30)
    assert job is not None
    assert (job.id, job.kind, job.decode(DECODER)) == (job_id, "Delete", Delete(identifier="t1"))
    conn.close()


async def test_stats_and_purge_done_by_age(journal: Journal, autojump_clock: object) -> None:
    ids = [await journal.push("q", Delete(identifier=str(n))) for n in range(4)]
    for job_id in ids[:3]:
        await journal.claim("q", "w", 30)
        await journal.complete(job_id, "w")
        await trio.sleep(100)
    await journal.push("other", Delete(identifier="o"))
    assert await journal.stats() == {
        "q": {"pending": 1, "running": 0, "done": 3, "dead": 0},
        "other": {"pending": 1, "running": 0, "done": 0, "dead": 0},
    }
    assert await journal.purge_done(150) == 2  # finished 300 s and 200 s ago
    assert (await journal.stats())["q"] == {"pending": 1, "running": 0, "done": 1, "dead": 0}
    assert await journal.get(ids[0]) is None
    assert await journal.get(ids[2]) is not None


async def test_wait_done_wakes_in_process_at_once(journal: Journal, autojump_clock: object) -> None:
    job_id = await journal.push("q", Delete(identifier="x"))
    assert await journal.wait_done(job_id, timeout=5) is None  # still pending
    with pytest.raises(JobNotFound):
        await journal.wait_done(job_id + 100)

    async def finish() -> None:
        await trio.sleep(0.25)
        await journal.claim("q", "w", 30)
        await journal.complete(job_id, "w")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(finish)
        start = trio.current_time()
        assert await journal.wait_done(job_id) == Outcome(id=job_id, status="done")
        # Woken by the completion itself, not by the 1 s poll.
        assert trio.current_time() - start == pytest.approx(0.25)


async def test_keep_done_zero_deletes_and_waiters_still_learn_done(
    tmp_path: Path, autojump_clock: object
) -> None:
    async with open_journal(tmp_path / "db.sqlite3", clock=wall_clock(), keep_done=0) as journal:
        job_id = await journal.push("q", Delete(identifier="x"))

        async def finish() -> None:
            await trio.sleep(3)
            await journal.claim("q", "w", 30)
            await journal.complete(job_id, "w")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(finish)
            assert await journal.wait_done(job_id) == Outcome(id=job_id, status="done")
        assert await journal.get(job_id) is None
        assert await journal.stats() == {}


async def test_reap_releases_jobs_of_dead_local_processes_only(
    journal: Journal, autojump_clock: object, tmp_path: Path
) -> None:
    origin = owners.origin()
    host, pidns = origin.split("|")[:2]
    child = await trio.lowlevel.open_process([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        alive = f"{host}|{pidns}|{child.pid}|{owners._start_time(child.pid)}|n|q|0"
        elsewhere = f"otherhost|{pidns}|{child.pid}|1|n|q|0"
        mine = journal.worker_id("q", 0)
        assert owners.local_state(origin, alive) is True
        assert owners.local_state(origin, mine) is None  # this process: the heartbeat decides
        ids = {}
        for name, worker in (("alive", alive), ("elsewhere", elsewhere), ("mine", mine)):
            ids[name] = await journal.push("q", Delete(identifier=name))
            assert await journal.claim("q", worker, 600) is not None
        assert (await journal.reap()).jobs == 0

        child.kill()
        await child.wait()
        assert owners.local_state(origin, alive) is False
        assert (await journal.reap()).jobs == 1
        job = await journal.get(ids["alive"])
        assert job is not None
        assert (job.status, job.worker, job.attempts) == ("pending", None, 1)
        assert job.last_error == f"worker {alive} stopped during attempt 1"
        assert (await journal.stats())["q"] == {"pending": 1, "running": 2, "done": 0, "dead": 0}
    finally:
        if child.poll() is None:
            child.kill()
            with trio.CancelScope(shield=True):
                await child.wait()
    # Pid reuse: same pid, other start time -> that process is gone.
    reused = f"{host}|{pidns}|{os.getpid()}|0|n|q|0"
    assert owners.local_state(origin, reused) is False  # our pid, held before us
    assert socket.gethostname() == host


async def test_journal_shares_the_repo_file_without_touching_user_version(
    tmp_path: Path,
) -> None:
    from pictrs_trio.repo.sqlite import DB_FILE_NAME, open_sqlite_repo

    async with open_sqlite_repo(tmp_path) as repo:
        db_file = repo.db_file
        async with open_journal(db_file) as journal:
            await journal.push("q", Delete(identifier="x"))
            await repo.health()
    conn = apsw.Connection(str(tmp_path / DB_FILE_NAME))
    user_version = conn.pragma("user_version")
    assert user_version >= 1  # the repo's, untouched by the journal
    assert schema.schema_version(conn) == schema.SCHEMA_VERSION
    schema.ensure(conn)  # idempotent
    assert conn.pragma("user_version") == user_version
    assert conn.execute("SELECT count(*) FROM journal_jobs").fetchall() == [(1,)]
    # A file from a newer journal is refused, not guessed at.
    conn.execute("UPDATE journal_meta SET value = 99 WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(JournalError, match="newer"):
        async with open_journal(tmp_path / DB_FILE_NAME):
            pass
