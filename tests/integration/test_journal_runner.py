"""journal.run_workers: handlers, outcomes, leases, heartbeats, wake-ups, on real SQLite.

Virtual time throughout (see ``autojump_clock`` below); a second ``Journal`` on the same
file stands in for another process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

from journal import (
    Abort,
    Backoff,
    Handler,
    Job,
    Journal,
    Outcome,
    Retry,
    open_journal,
    run_workers,
    schema,
)

EPOCH = 1_700_000_000.0


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    # Jump only after a few real milliseconds of idleness, so virtual time never leaps
    # ahead while a thread is still inside SQLite (see test_journal_queue.py).
    return trio.testing.MockClock(autojump_threshold=0.03)


class Delete(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    identifier: str


class Resize(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    size: int


DECODER = msgspec.json.Decoder(Delete | Resize)


def wall_clock() -> Callable[[], float]:
    return lambda: EPOCH + trio.current_time()


@asynccontextmanager
async def journal_on(
    path: Path, *, max_attempts: int = 5, keep_done: float = 3600.0, poll_interval: float = 1.0
) -> AsyncIterator[Journal]:
    async with open_journal(
        path / "db.sqlite3",
        clock=wall_clock(),
        backoff=Backoff(jitter=0.0),
        max_attempts=max_attempts,
        keep_done=keep_done,
        poll_interval=poll_interval,
    ) as journal:
        yield journal


@asynccontextmanager
async def workers(
    journal: Journal, handlers: dict[str, Handler], **options: object
) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(run_workers, journal, handlers, **options))  # type: ignore[arg-type]
        yield
        nursery.cancel_scope.cancel()


async def test_push_wakes_idle_workers_at_once_other_processes_within_a_poll(
    tmp_path: Path, autojump_clock: object
) -> None:
    seen: list[tuple[Delete | Resize, float]] = []

    async def handle(job: Job) -> None:
        seen.append((job.decode(DECODER), trio.current_time()))

    async with (
        journal_on(tmp_path) as journal,
        journal_on(tmp_path) as other,
        workers(journal, {"q": handle}, concurrency={"q": 2}),
    ):
        await trio.sleep(10.3)  # idle workers, polling every second
        pushed = trio.current_time()
        job_id = await journal.push("q", Delete(identifier="a"))
        assert await journal.wait_done(job_id) == Outcome(id=job_id, status="done")
        assert seen == [(Delete(identifier="a"), pushed)]  # no wait at all

        await trio.sleep(0.3)
        pushed = trio.current_time()
        job_id = await other.push("q", Resize(size=5))  # no in-process wake-up
        assert await journal.wait_done(job_id) == Outcome(id=job_id, status="done")
        assert seen[1][0] == Resize(size=5)
        assert 0 < seen[1][1] - pushed <= journal.poll_interval


async def test_a_crashed_workers_job_is_reclaimed_after_its_lease(
    tmp_path: Path, autojump_clock: object
) -> None:
    ran: list[tuple[int, float]] = []

    async def handle(job: Job) -> None:
        ran.append((job.attempts, trio.current_time()))

    async with journal_on(tmp_path) as journal:
        job_id = await journal.push("q", Delete(identifier="a"))
        assert await journal.claim("q", "worker-that-died", 30) is not None
        async with workers(journal, {"q": handle}, concurrency={"q": 1}):
            assert await journal.wait_done(job_id) == Outcome(id=job_id, status="done")
        assert [attempt for attempt, _ in ran] == [2]
        assert ran[0][1] == pytest.approx(30.0)  # at expiry, not a poll later


async def test_shutdown_leaves_the_lease_and_another_process_takes_over(
    tmp_path: Path, autojump_clock: object
) -> None:
    started = trio.Event()
    finished: list[str] = []

    async def forever(job: Job) -> None:
        started.set()
        await trio.sleep_forever()

    async def quick(job: Job) -> None:
        finished.append(job.decode(Delete).identifier)

    async with journal_on(tmp_path) as first:
        job_id = await first.push("q", Delete(identifier="a"))
        async with workers(first, {"q": forever}, concurrency={"q": 1}, lease_seconds=30):
            await started.wait()
    # "Process" one is gone: its worker left the job running, lease and all.
    async with journal_on(tmp_path) as second:
        job = await second.get(job_id)
        assert job is not None
        assert (job.status, job.attempts) == ("running", 1)
        assert job.worker == first.worker_id("q", 0)
        async with workers(second, {"q": quick}, concurrency={"q": 1}):
            assert await second.wait_done(job_id) == Outcome(id=job_id, status="done")
            assert trio.current_time() == pytest.approx(30.0, abs=0.1)
        job = await second.get(job_id)
        assert job is not None
        assert (job.status, job.attempts) == ("done", 2)
    assert finished == ["a"]


async def test_heartbeats_keep_a_long_job_alive_past_its_lease(
    tmp_path: Path, autojump_clock: object
) -> None:
    runs: list[str] = []

    async def slow(job: Job) -> None:
        runs.append("first")
        await trio.sleep(60)  # six leases

    async def competitor(job: Job) -> None:
        runs.append("other process")

    async with journal_on(tmp_path) as first, journal_on(tmp_path) as second:
        job_id = await first.push("q", Delete(identifier="a"))
        async with workers(first, {"q": slow}, concurrency={"q": 1}, lease_seconds=10):
            await trio.sleep(0.5)
            async with workers(second, {"q": competitor}, concurrency={"q": 2}):
                assert await first.wait_done(job_id) == Outcome(id=job_id, status="done")
        job = await first.get(job_id)
        assert job is not None
        assert job.attempts == 1
        assert trio.current_time() == pytest.approx(60.0, abs=0.01)
    assert runs == ["first"]


async def test_a_lost_lease_cancels_the_handler_and_records_nothing(
    tmp_path: Path, autojump_clock: object
) -> None:
    cancelled_at: list[float] = []

    async def slow(job: Job) -> None:
        try:
            await trio.sleep(100)
        except trio.Cancelled:
            cancelled_at.append(trio.current_time())
            raise

    async with journal_on(tmp_path) as journal:
        job_id = await journal.push("q", Delete(identifier="a"))
        async with workers(journal, {"q": slow}, concurrency={"q": 1}, lease_seconds=9):
            await trio.sleep(1)
            # Another process took the job over (say this one stalled past its lease).
            conn = schema.connect(
                tmp_path / "db.sqlite3", busy_timeout_ms=1000, synchronous_full=False
            )
            with conn:
                conn.execute("UPDATE journal_jobs SET worker = 'thief' WHERE id = ?", (job_id,))
            conn.close()
            await trio.sleep(5)
        assert cancelled_at == [pytest.approx(3.0)]  # at the first heartbeat (lease / 3)
        job = await journal.get(job_id)
        assert job is not None
        assert (job.status, job.worker, job.last_error) == ("running", "thief", None)


async def test_retry_backs_off_and_doubles_then_succeeds(
    tmp_path: Path, autojump_clock: object
) -> None:
    attempts: list[tuple[int, float]] = []

    async def flaky(job: Job) -> None:
        attempts.append((job.attempts, trio.current_time()))
        if job.attempts == 1:
            raise Retry("store unavailable")
        if job.attempts == 2:
            raise OSError("disk hiccup")  # any exception: retry

    async with journal_on(tmp_path) as journal:
        async with workers(journal, {"q": flaky}, concurrency={"q": 1}):
            await trio.sleep(0.5)
            job_id = await journal.push("q", Delete(identifier="a"))
            assert await journal.wait_done(job_id) == Outcome(id=job_id, status="done")
        job = await journal.get(job_id)
        assert job is not None
        assert job.last_error == "OSError: disk hiccup"  # the last failure stays on record
    times = [t - 0.5 for _, t in attempts]
    assert [n for n, _ in attempts] == [1, 2, 3]
    assert times == pytest.approx([0.0, 1.0, 3.0], abs=0.01)  # woken at run_after: 1 s, 2 s


async def test_failing_max_attempts_times_ends_dead_with_the_last_error(
    tmp_path: Path, autojump_clock: object
) -> None:
    async def broken(job: Job) -> None:
        raise ValueError(f"nope #{job.attempts}")

    async with journal_on(tmp_path, max_attempts=3) as journal:
        job_id = await journal.push("q", Delete(identifier="a"))
        async with workers(journal, {"q": broken}, concurrency={"q": 1}):
            outcome = await journal.wait_done(job_id)
        assert outcome == Outcome(id=job_id, status="dead", last_error="ValueError: nope #3")
        (dead,) = await journal.dead_jobs(10)
        assert (dead.id, dead.attempts, dead.last_error) == (job_id, 3, "ValueError: nope #3")
        assert (await journal.stats())["q"] == {"pending": 0, "running": 0, "done": 0, "dead": 1}


async def test_abort_and_undecodable_payloads_die_on_the_first_attempt(
    tmp_path: Path, autojump_clock: object
) -> None:
    async def handle(job: Job) -> None:
        payload = job.decode(DECODER)
        if isinstance(payload, Resize):
            raise Abort("invalid delete token")
        async with trio.open_nursery() as nursery:  # an Abort inside a group still aborts
            nursery.start_soon(partial(trio.sleep, 1))
            raise Abort("grouped")

    async with journal_on(tmp_path) as journal:
        ids = [
            await journal.push("q", Resize(size=1)),
            await journal.push("q", b'{"type":"Rename"}', kind="Rename"),
            await journal.push("q", Delete(identifier="a")),
        ]
        async with workers(journal, {"q": handle}, concurrency={"q": 1}):
            outcomes = [await journal.wait_done(job_id) for job_id in ids]
        for job_id in ids:
            job = await journal.get(job_id)
            assert job is not None
            assert job.attempts == 1
    assert [o.status for o in outcomes if o] == ["dead", "dead", "dead"]
    errors = [o.last_error or "" for o in outcomes if o]
    assert errors[0] == "invalid delete token"
    assert errors[1].startswith("Undecodable payload: Invalid value 'Rename'")
    assert errors[2] == "grouped"


async def test_the_time_limit_cancels_and_retries(tmp_path: Path, autojump_clock: object) -> None:
    async def hangs(job: Job) -> None:
        await trio.sleep_forever()

    async with journal_on(tmp_path, max_attempts=2) as journal:
        job_id = await journal.push("q", Delete(identifier="a"))
        async with workers(journal, {"q": hangs}, concurrency={"q": 1}, time_limit={"q": 5}):
            outcome = await journal.wait_done(job_id)
        assert outcome == Outcome(id=job_id, status="dead", last_error="Timed out after 5 s")
        assert trio.current_time() == pytest.approx(5 + 1 + 5, abs=0.05)


async def test_concurrency_runs_jobs_side_by_side_and_done_jobs_are_purged(
    tmp_path: Path, autojump_clock: object
) -> None:
    running = 0
    peak = 0

    async def work(job: Job) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(10)
        running -= 1

    async with journal_on(tmp_path, keep_done=100, poll_interval=30) as journal:
        ids = [await journal.push("q", Delete(identifier=str(n))) for n in range(6)]
        async with workers(journal, {"q": work}, concurrency={"q": 3}, purge_interval=60):
            for job_id in ids:
                await journal.wait_done(job_id)
            assert peak == 3
            assert trio.current_time() == pytest.approx(20, abs=0.05)
            assert (await journal.stats())["q"]["done"] == 6
            await trio.sleep(105)  # done at 10 and 20; purge ticks at 60, 120, 180
            assert (await journal.stats())["q"]["done"] == 3
            await trio.sleep(60)
            assert await journal.stats() == {}


async def test_unknown_queue_in_concurrency_is_refused(tmp_path: Path) -> None:
    async with journal_on(tmp_path) as journal:
        with pytest.raises(ValueError, match="No handler"):
            await run_workers(journal, {}, concurrency={"q": 1})


class Recording:
    """A journal.Monitor that writes down what it hears."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def pushed(self, queue: str, count: int, *, completed: bool) -> None:
        self.events.append(("pushed", queue, count, completed))

    def popped(self, queue: str, seconds: float, *, completed: bool) -> None:
        self.events.append(("popped", queue, seconds, completed))

    def job_started(self, queue: str, worker: str) -> None:
        self.events.append(("started", queue, worker))

    def job_ended(self, queue: str, worker: str, seconds: float, ending: str) -> None:
        self.events.append(("ended", queue, seconds, ending))


async def test_the_monitor_hears_pushes_waits_and_how_jobs_ended(
    tmp_path: Path, autojump_clock: object
) -> None:
    monitor = Recording()
    started = trio.Event()

    async def handle(job: Job) -> None:
        payload = job.decode(DECODER)
        if isinstance(payload, Resize):
            if payload.size == 0:
                started.set()
                await trio.sleep_forever()
            raise Abort("no")
        await trio.sleep(2)

    async with journal_on(tmp_path) as journal:
        journal.monitor = monitor
        async with workers(journal, {"q": handle}, concurrency={"q": 1}):
            await trio.sleep(5)
            done = await journal.push("q", Delete(identifier="a"))
            await journal.wait_done(done)
            dead = await journal.push("q", Resize(size=1))
            await journal.wait_done(dead)
            journal.notify("q", pushed=3)  # a caller's own transaction queued three
            journal.notify("q")  # a wake-up alone counts nothing
            await trio.sleep(1)
        async with workers(journal, {"q": handle}, concurrency={"q": 1}):
            await journal.push("q", Resize(size=0))
            await started.wait()  # then shutdown stops it mid-job

    kinds = [(e[0], "w" if e[0] == "started" else e[-1]) for e in monitor.events]
    assert kinds == [
        ("pushed", True), ("popped", True), ("started", "w"), ("ended", "done"),
        ("pushed", True), ("popped", True), ("started", "w"), ("ended", "dead"),
        ("pushed", True),
        ("popped", False),  # the first workers stopped while waiting
        ("pushed", True), ("popped", True), ("started", "w"), ("ended", "stopped"),
    ]  # fmt: skip
    pushes = [e[2] for e in monitor.events if e[0] == "pushed"]
    assert pushes == [1, 1, 3, 1]
    first_wait, first_run = monitor.events[1][2], monitor.events[3][2]
    assert first_wait == pytest.approx(5, abs=0.5)  # idle from the start until the push
    assert first_run == pytest.approx(2, abs=0.5)
    worker = monitor.events[2][2]
    assert isinstance(worker, str) and worker == journal.worker_id("q", 0)
