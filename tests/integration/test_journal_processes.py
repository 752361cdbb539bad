"""journal across processes and threads, on the real clock: claim atomicity under real
concurrency, surviving SIGKILL, and what a push or a claim costs."""

from __future__ import annotations

import os
import signal
import statistics
import sys
import textwrap
import threading
import time
from collections import Counter
from functools import partial
from pathlib import Path

import msgspec
import trio

from journal import Job, open_journal, run_workers, schema, store

REPO = Path(__file__).resolve().parents[2]


class Work(msgspec.Struct, frozen=True, kw_only=True):
    n: int


def test_threads_on_their_own_connections_never_claim_a_job_twice(tmp_path: Path) -> None:
    db_file = tmp_path / "db.sqlite3"
    setup = schema.connect(db_file, busy_timeout_ms=10_000, synchronous_full=False)
    schema.ensure(setup)
    with setup:
        for n in range(1500):
            store.push_in(setup, "q", Work(n=n))
    setup.close()
    claimed: list[list[int]] = [[] for _ in range(6)]

    def claimer(k: int) -> None:
        conn = schema.connect(db_file, busy_timeout_ms=10_000, synchronous_full=False)
        try:
            while (job := store.claim(conn, "q", f"t{k}", 60, time.time())) is not None:
                claimed[k].append(job.id)
                assert store.complete(conn, job.id, f"t{k}", time.time(), keep=True)
        finally:
            conn.close()

    threads = [threading.Thread(target=claimer, args=(k,)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [job_id for ids in claimed for job_id in ids]
    assert sorted(every) == list(range(1, 1501))  # each exactly once
    assert sum(1 for ids in claimed if ids) >= 2  # they really did compete


def test_two_journal_processes_run_each_job_exactly_once(tmp_path: Path) -> None:
    db_file = tmp_path / "db.sqlite3"
    total = 300
    runs: list[tuple[int, str]] = []  # list.append is atomic across threads

    async def process(name: str, push: bool) -> None:
        async def handle(job: Job) -> None:
            runs.append((job.decode(Work).n, name))
            await trio.sleep(0.001)

        async with open_journal(db_file, poll_interval=0.05) as journal:
            if push:
                for n in range(total):
                    await journal.push("q", Work(n=n))
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    partial(run_workers, journal, {"q": handle}, concurrency={"q": 3})
                )
                # Polling on purpose: the other process's progress is only visible so.
                with trio.fail_after(30):
                    while (await journal.stats()).get("q", {}).get("done") != total:  # noqa: ASYNC110
                        await trio.sleep(0.05)
                nursery.cancel_scope.cancel()

    # Two trio runs in two OS threads, each with its own connections: two processes in all
    # but the address space.
    other = threading.Thread(target=trio.run, args=(process, "B", False))
    other.start()
    trio.run(process, "A", True)
    other.join()

    assert sorted(n for n, _ in runs) == list(range(total))
    by_process = Counter(name for _, name in runs)
    assert by_process["A"] > 0
    assert by_process["B"] > 0


KILLED_PRODUCER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import msgspec, trio
    sys.path.insert(0, sys.argv[2])
    from journal import open_journal

    class Work(msgspec.Struct, frozen=True, kw_only=True):
        n: int

    async def main():
        async with open_journal(Path(sys.argv[1])) as journal:
            for n in range(20):
                await journal.push("q", Work(n=n))
            for k in range(3):  # three jobs in hand, with long leases, when the kill comes
                assert await journal.claim("q", journal.worker_id("q", k), 600)
            os.kill(os.getpid(), signal.SIGKILL)

    trio.run(main)
    """
)


async def test_jobs_survive_sigkill_and_run_after_reopening(tmp_path: Path) -> None:
    db_file = tmp_path / "db.sqlite3"
    killed = await trio.run_process(
        [sys.executable, "-c", KILLED_PRODUCER, str(db_file), str(REPO)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()

    done: list[int] = []

    async def handle(job: Job) -> None:
        done.append(job.decode(Work).n)

    async with open_journal(db_file) as journal:
        assert await journal.stats() == {"q": {"pending": 17, "running": 3, "done": 0, "dead": 0}}
        async with trio.open_nursery() as nursery:
            # The reap at start sees the leases' process is gone: no 600 s wait.
            await nursery.start(partial(run_workers, journal, {"q": handle}, concurrency={"q": 2}))
            with trio.fail_after(10):
                for job_id in range(1, 21):
                    await journal.wait_done(job_id)
            nursery.cancel_scope.cancel()
        jobs = [await journal.get(job_id) for job_id in range(1, 21)]
    assert sorted(done) == list(range(20))
    assert [j.attempts for j in jobs if j] == [2, 2, 2] + [1] * 17


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


async def test_push_and_claim_cost(tmp_path: Path) -> None:
    """Database time, in the calling thread, on a file already holding 5000 jobs."""
    db_file = tmp_path / "db.sqlite3"
    conn = schema.connect(db_file, busy_timeout_ms=5000, synchronous_full=False)
    schema.ensure(conn)
    with conn:
        for n in range(5000):
            store.push_in(conn, "backlog", Work(n=n))
    pushes, unique_pushes, cycles = [], [], []
    for n in range(500):
        start = time.perf_counter()
        store.push_in(conn, "q", Work(n=n))  # its own transaction, committed
        pushes.append(time.perf_counter() - start)
        start = time.perf_counter()
        store.push_in(conn, "q", Work(n=n), unique_key=f"k{n % 50}")
        unique_pushes.append(time.perf_counter() - start)
    while True:
        start = time.perf_counter()
        job = store.claim(conn, "q", "w", 30, time.time())
        if job is None:
            break
        assert store.complete(conn, job.id, "w", time.time(), keep=True)
        cycles.append(time.perf_counter() - start)
    conn.close()

    async with open_journal(db_file) as journal:
        async_pushes, async_cycles = [], []
        for n in range(200):
            start = time.perf_counter()
            await journal.push("a", Work(n=n))
            async_pushes.append(time.perf_counter() - start)
        for _ in range(200):
            start = time.perf_counter()
            claimed = await journal.claim("a", "w", 30)
            assert claimed is not None
            await journal.complete(claimed.id, "w")
            async_cycles.append(time.perf_counter() - start)

    push_ms, unique_ms, cycle_ms = map(_median_ms, (pushes, unique_pushes, cycles))
    print(
        f"\npush {push_ms:.3f} ms, unique push {unique_ms:.3f} ms, claim+complete"
        f" {cycle_ms:.3f} ms (sync, median); via trio threads: push"
        f" {_median_ms(async_pushes):.3f} ms, claim+complete {_median_ms(async_cycles):.3f} ms"
        f" (pid {os.getpid()})"
    )
    assert push_ms < 1.0
    assert unique_ms < 1.0
    assert cycle_ms < 2.0
    assert len(cycles) == 500 + 50


JOINER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import trio
    sys.path.insert(0, sys.argv[2])
    from journal import NotAlone, open_journal

    async def main():
        alone, at = sys.argv[3] == "alone", float(sys.argv[4])
        async with open_journal(Path(sys.argv[1])) as journal:
            await trio.sleep(max(0.0, at - time.time()))  # all try at the same moment
            try:
                await journal.register(alone=alone)
            except NotAlone:
                print("refused", flush=True)
                return
            print("joined", flush=True)
            await trio.sleep(1.5)  # alive while the others try

    trio.run(main)
    """
)


def test_processes_joining_at_once_never_join_beside_one_that_runs_alone(
    tmp_path: Path,
) -> None:
    """Owners that run alone and owners that do not, started together, each in a process of
    its own: whoever joins, an owner that runs alone is never beside another."""
    import subprocess

    db_file = tmp_path / "db.sqlite3"
    setup = schema.connect(db_file, busy_timeout_ms=10_000, synchronous_full=False)
    schema.ensure(setup)
    setup.close()
    for round_ in range(3):
        kinds = ["alone", "shared", "alone", "shared", "shared"]
        kinds = kinds[round_ % 2 :] + kinds[: round_ % 2]
        at = time.time() + 2.0  # after every interpreter has started
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", JOINER, str(db_file), str(REPO), kind, str(at)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for kind in kinds
        ]
        outcomes = [proc.communicate(timeout=60)[0].strip() for proc in procs]
        assert all(proc.returncode == 0 for proc in procs), outcomes
        joined = [
            kind for kind, outcome in zip(kinds, outcomes, strict=True) if outcome == "joined"
        ]
        assert joined, outcomes
        assert "alone" not in joined or joined == ["alone"], list(zip(kinds, outcomes, strict=True))
