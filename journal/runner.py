"""Workers: claim a job, run its handler under a time limit while heartbeating, record how
it ended.

A handler returns (done) or raises ``Retry`` / ``Abort``; any other exception counts as
Retry, except an undecodable payload (``msgspec`` error), which can never succeed: Abort.

Cancelling ``run_workers`` (shutdown) records nothing for the jobs in hand: they keep their
lease and come back when their owner is found dead (``Journal.reap``: at once on this host,
after ``owners.OWNER_TTL`` elsewhere) or their lease expires. Delivery is therefore at least
once: handlers must be idempotent.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping

import msgspec
import trio
from loguru import logger

from journal.monitor import Ending
from journal.queue import Journal
from journal.records import Abort, Job, JournalError, Retry

__all__ = ["DEFAULT_LEASE", "DEFAULT_TIME_LIMIT", "Handler", "run_workers"]

Handler = Callable[[Job], Awaitable[None]]
DEFAULT_LEASE = 30.0  # seconds; beats come every third of it
DEFAULT_TIME_LIMIT = 300.0
RECORD_TIMEOUT = 10.0  # bound on recording an outcome during shutdown


def _leaves(group: ExceptionGroup[Exception]) -> list[Exception]:
    out: list[Exception] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, ExceptionGroup) else [exc])
    return out


def _outcome(exc: Exception) -> tuple[str, bool]:
    """(error text, retry?) for what a handler raised."""
    never = (Abort, msgspec.MsgspecError)
    if isinstance(exc, ExceptionGroup):
        leaves = "; ".join(_outcome(leaf)[0] for leaf in _leaves(exc))
        return leaves, exc.subgroup(never) is None
    if isinstance(exc, Abort | Retry):
        return str(exc) or type(exc).__name__, isinstance(exc, Retry)  # the handler's words
    if isinstance(exc, msgspec.MsgspecError):
        return f"Undecodable payload: {exc}", False
    return f"{type(exc).__name__}: {exc}", True


async def _run_one(
    journal: Journal, handler: Handler, job: Job, worker_id: str, lease: float, limit: float
) -> None:
    monitor = journal.monitor
    monitor.job_started(job.queue, worker_id)
    began = trio.current_time()
    ending: Ending = "stopped"  # unless the run gets as far as an outcome
    try:
        ending = await _run_and_record(journal, handler, job, worker_id, lease, limit)
    finally:
        monitor.job_ended(job.queue, worker_id, trio.current_time() - began, ending)


async def _run_and_record(
    journal: Journal, handler: Handler, job: Job, worker_id: str, lease: float, limit: float
) -> Ending:
    log = logger.bind(queue=job.queue, job=job.id, kind=job.kind, attempt=job.attempts)
    error: tuple[str, bool] | None = None
    lost = False
    job_scope = trio.CancelScope(deadline=trio.current_time() + limit)

    async def beat() -> None:
        nonlocal lost
        while True:
            await trio.sleep(lease / 3)
            try:
                if not await journal.heartbeat(job.id, worker_id):
                    lost = True
                    job_scope.cancel()
                    return
            except JournalError as exc:  # try again next beat; the lease has slack
                log.warning("Heartbeat failed: {}", exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(beat)
        with job_scope:
            try:
                await handler(job)
            except Exception as exc:
                error = _outcome(exc)
        nursery.cancel_scope.cancel()

    if lost:
        log.warning("Lease lost; stopped the job without recording an outcome")
        return "lost"
    if job_scope.cancelled_caught:
        error = (f"Timed out after {limit:g} s", True)
    # Bounded cleanup, so shielded: an outcome reached just before shutdown still counts.
    with trio.move_on_after(RECORD_TIMEOUT, shield=True):
        try:
            if error is None:
                return "done" if await journal.complete(job.id, worker_id) else "lost"
            status = await journal.fail(job.id, worker_id, error[0], retry=error[1])
            log.warning("Job failed ({}): {}", status or "lease lost", error[0])
            return "lost" if status is None else "dead" if status == "dead" else "retry"
        except JournalError as exc:  # the lease will expire and the job run again
            log.error("Could not record the job's outcome: {}", exc)
    return "lost"


async def _worker(
    journal: Journal, queue: str, handler: Handler, worker_id: str, lease: float, limit: float
) -> None:
    monitor = journal.monitor
    waiting_since: float | None = trio.current_time()  # None while a job runs
    try:
        while True:
            # Taken before looking, so a push that lands while we look still wakes us.
            wakeup = journal.wakeup(queue)
            try:
                job, next_due = await journal.claim_or_next_due(queue, worker_id, lease)
            except JournalError as exc:
                logger.bind(queue=queue).warning("Claim failed: {}", exc)
                await trio.sleep(journal.poll_interval)
                continue
            if job is not None:
                assert waiting_since is not None
                monitor.popped(queue, trio.current_time() - waiting_since, completed=True)
                waiting_since = None
                await _run_one(journal, handler, job, worker_id, lease, limit)
                waiting_since = trio.current_time()
                continue
            delay = journal.poll_interval
            if next_due is not None:
                delay = min(delay, max(next_due - journal.clock(), 0.0))
            with trio.move_on_after(delay):
                await wakeup.wait()
    finally:
        if waiting_since is not None:  # stopped while waiting for a job
            monitor.popped(queue, trio.current_time() - waiting_since, completed=False)


async def _purger(journal: Journal, interval: float) -> None:
    while True:
        await trio.sleep(interval)
        try:
            if journal.keep_done > 0:
                await journal.purge_done(journal.keep_done)
            await journal.trim_events()
        except JournalError as exc:
            logger.warning("Purging done jobs and old events failed: {}", exc)


async def run_workers(
    journal: Journal,
    handlers: Mapping[str, Handler],
    *,
    concurrency: Mapping[str, int],
    lease_seconds: float = DEFAULT_LEASE,
    time_limit: float | Mapping[str, float] = DEFAULT_TIME_LIMIT,
    purge_interval: float = 60.0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``concurrency[queue]`` workers (default 1) for each queue in ``handlers`` until
    cancelled; ``time_limit`` per job, per queue if a mapping (missing: no limit). Releases
    what stopped processes held first, then reports started. Raises ValueError for a
    ``concurrency`` queue without a handler, JournalError if that release fails."""
    unknown = set(concurrency) - set(handlers)
    if unknown:
        raise ValueError(f"No handler for queues {sorted(unknown)}")
    await journal.reap()  # jobs of stopped processes run now, not when their lease ends
    async with trio.open_nursery() as nursery:
        for queue, handler in handlers.items():
            if isinstance(time_limit, Mapping):
                limit = time_limit.get(queue, math.inf)
            else:
                limit = time_limit
            for n in range(concurrency.get(queue, 1)):
                worker = journal.worker_id(queue, n)
                nursery.start_soon(_worker, journal, queue, handler, worker, lease_seconds, limit)
        nursery.start_soon(_purger, journal, purge_interval)
        task_status.started()
