"""``POST /internal/prune_missing``: forget the files whose original is gone from the store
(pict-rs ``src/lib.rs`` ``prune_missing``, ``src/queue/cleanup.rs`` ``prune``).

The walk is a chain of journal jobs (``jobs.PruneMissing``), one batch of files each, in
the order ``GET /internal/hashes`` lists them; each batch queues the next, so a restart
resumes where the walk was. For each file whose original the store does not have, its
records go and the removal of every file they named is queued, in one transaction
(``HashRepo.prune_hash``). Progress is kept in pict-rs's settings keys:

    prune-missing-started   the run id of the current walk (set by its first batch)
    prune-missing-queued    files pruned by the current walk (8-byte big-endian count)
    prune-missing-complete  set once a walk has reached the end

A forced start begins a new run; the batches of the old one see the run id change and stop.
A batch of which no file at all is in the store stops the walk without pruning: that is a
store that is not mounted, not a hundred lost files (pict-rs would forget them all).
"""

from __future__ import annotations

import uuid

import msgspec
from loguru import logger

from pictrs_trio.rules import jobs
from pictrs_trio.rules.errors import StoreError, StoreNotFound
from pictrs_trio.services.state import AppState

STARTED = "prune-missing-started"
QUEUED = "prune-missing-queued"
COMPLETE = "prune-missing-complete"
BATCH = 100
START_KEY = "prune-missing"  # unique key of a walk's first batch


class Progress(msgspec.Struct, frozen=True, kw_only=True):
    """pict-rs's answer (no ``msg`` key): ``total`` files, ``progress`` pruned so far by
    the current walk, ``complete`` once a walk has finished."""

    complete: bool
    progress: int
    total: int


async def progress(state: AppState) -> Progress:
    repo = state.repo
    return Progress(
        complete=await repo.setting(COMPLETE) is not None,
        progress=await repo.counter(QUEUED),
        total=await repo.count_hashes(),
    )


async def start(state: AppState, *, force: bool) -> Progress:
    """Queue a walk unless one has ever started (or with ``force``); returns the progress
    as it was before. Raises ReadOnly."""
    state.require_writable()
    before = await progress(state)
    if force or await state.repo.setting(STARTED) is None:
        run = uuid.uuid4().hex
        # Unforced, a walk whose first batch is still queued takes the place of this one.
        key = f"{START_KEY}:{run}" if force else START_KEY
        await state.journal.push(jobs.CLEANUP, jobs.PruneMissing(run=run), unique_key=key)
    return before


async def run_batch(state: AppState, job: jobs.PruneMissing) -> None:
    """One batch of the walk ``job.run``: prune the files of the batch that the store lacks,
    then queue the next batch or mark the walk complete. Idempotent: a repeated batch finds
    the pruned files gone."""
    repo = state.repo
    if job.after_key is None:
        await repo.set_settings({STARTED: job.run.encode(), QUEUED: None})
    elif await repo.setting(STARTED) != job.run.encode():
        logger.info("prune-missing walk {} was replaced by a newer one: stopping", job.run)
        return
    position = None if job.after_key is None else (job.after_ns or 0, job.after_key)
    batch = await repo.hashes_after(position, BATCH)
    missing = []
    for stored in batch:
        try:
            await state.store.length(stored.identifier)
            continue
        except StoreNotFound:
            missing.append(stored)
        except StoreError as exc:  # pict-rs: a file that cannot be checked is skipped
            logger.warning("prune-missing: could not check {}: {}", stored.identifier, exc.msg)
    if len(batch) == BATCH and len(missing) == BATCH:
        # Not one of a hundred files: a store that is not mounted (an empty mount point),
        # not lost files. pict-rs would forget them all; stop the walk instead.
        logger.error(
            "prune-missing: none of {} files in a row is in the store; is the store mounted? "
            "The walk stopped and nothing was pruned",
            BATCH,
        )
        return
    pruned = 0
    for stored in missing:
        if await repo.prune_hash(stored.hash, stored.identifier, counter=QUEUED) is not None:
            pruned += 1
            logger.warning(
                "prune-missing: {} is gone from the store; its records were removed",
                stored.identifier,
            )
    if pruned:
        state.journal.notify(jobs.CLEANUP, pushed=pruned)  # RemoveFiles queued with each
    if len(batch) < BATCH:
        if await repo.setting(STARTED) == job.run.encode():
            await repo.set_settings({COMPLETE: b"1"})
            logger.info("prune-missing walk {} complete", job.run)
        return
    created_ns, key = batch[-1].position
    after = jobs.PruneMissing(run=job.run, after_ns=created_ns, after_key=key)
    await state.journal.push(
        jobs.CLEANUP, after, unique_key=f"{START_KEY}:{job.run}:{key.hex()}:{created_ns}"
    )
