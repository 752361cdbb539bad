"""Job handlers: the work the journal runs outside requests, and survives restarts.

    cleanup  RemoveFiles (files of removed rows; of unfinished writes of dead processes),
             ExpireVariants, ExpireProxies (retention), RemoveAllVariants (DELETE
             /internal/variants), AuditStore (count files this repo does not know, a
             batch per job: services/audit.py),
             PruneMissing (POST /internal/prune_missing, services/prune.py)
    ingest   IngestUpload (POST /image/backgrounded, /image/download?backgrounded=true)
    process  Generate (process_backgrounded)
    migrate  RemoveFiles: half-written copies of a migrate-store run that was killed; that
             run's next start removes them, these workers only what is left after it
             finished (the server's store is the one it moved media to by then)

Delivery is at least once, so every handler is idempotent: removing a missing file is fine,
an upload whose outcome is recorded is not ingested again, a rendered variant is found.

With a live tracer each run of a job is a consumer span ``job {kind}`` (``traced``), the
root of the ingest or render spans it makes; the journal itself knows nothing of tracing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from functools import partial

import msgspec
import trio
from loguru import logger

from journal import Abort, Job, Journal
from journal.runner import Handler
from pictrs_trio.config import parse_retention
from pictrs_trio.metrics.names import (
    BACKGROUND_INGEST,
    CLEANUP_OUTDATED_PROXY,
    CLEANUP_OUTDATED_VARIANT,
)
from pictrs_trio.repo.records import UploadOutcome
from pictrs_trio.rules import jobs
from pictrs_trio.rules.errors import PictrsError, StoreError, StoreNotFound
from pictrs_trio.rules.query import parse_upload_query
from pictrs_trio.services import audit, prune, render
from pictrs_trio.services.ingest import IngestSession, ingest, upload_operations
from pictrs_trio.services.state import AppState
from pictrs_trio.services.tracing import Tracer

BATCH = 500
CONCURRENCY = {jobs.CLEANUP: 1, jobs.INGEST: 2, jobs.PROCESS: 2, jobs.MIGRATE: 1}
RETENTION_CHECK_MAX_SECONDS = 300.0

_cleanup_decoder = msgspec.json.Decoder(jobs.CleanupJob)
_ingest_decoder = msgspec.json.Decoder(jobs.IngestUpload)
_generate_decoder = msgspec.json.Decoder(jobs.Generate)


def by_queue(state: AppState) -> dict[str, Handler]:
    handlers: dict[str, Handler] = {
        jobs.CLEANUP: partial(handle_cleanup, state),
        jobs.INGEST: partial(handle_ingest, state),
        jobs.PROCESS: partial(handle_generate, state),
        jobs.MIGRATE: partial(handle_cleanup, state),
    }
    if not state.tracer.enabled:
        return handlers
    return {queue: traced(state.tracer, handler) for queue, handler in handlers.items()}


def traced(tracer: Tracer, handler: Handler) -> Handler:
    """``handler`` with a span around each run: ``job {kind}``, with the job's queue, id
    and attempt (a failed run's span says why: Retry, Abort, or the error)."""

    async def run(job: Job) -> None:
        with tracer.span(__name__, f"job {job.kind}", kind="consumer") as span:
            span.set("messaging.destination.name", job.queue)
            span.set("messaging.message.id", str(job.id))
            span.set("pictrs.job.attempt", job.attempts)
            await handler(job)

    return run


# --- cleanup ---------------------------------------------------------------------------------


async def handle_cleanup(state: AppState, job: Job) -> None:
    payload = job.decode(_cleanup_decoder)
    if isinstance(payload, jobs.RemoveFiles):
        for identifier in payload.identifiers:
            await state.store.remove(identifier, partial=payload.partial)
    elif isinstance(payload, jobs.ExpireVariants):
        cutoff = _cutoff_ns(state.config.media.retention.variants)
        step = partial(state.repo.expire_variants, cutoff, BATCH)
        await _drain(state, step, "expired", counter=CLEANUP_OUTDATED_VARIANT)
    elif isinstance(payload, jobs.ExpireProxies):
        cutoff = _cutoff_ns(state.config.media.retention.proxy)
        step = partial(state.repo.expire_proxies, cutoff, BATCH)
        await _drain(state, step, "expired", "proxied media", counter=CLEANUP_OUTDATED_PROXY)
    elif isinstance(payload, jobs.RemoveAllVariants):
        await _drain(state, partial(state.repo.remove_all_variants, BATCH), "removed")
    elif isinstance(payload, jobs.AuditStore):
        await audit.run_batch(state, payload)
    elif isinstance(payload, jobs.PruneMissing):
        await prune.run_batch(state, payload)
    else:
        # SweepOrphans rows queued by earlier versions: nothing is deleted because no row
        # mentions it any more (a store may hold files of another program); crashes are
        # undone from journal intents instead (services/storing.py).
        logger.info("skipped a queued orphan sweep: pictrs-trio no longer sweeps stores")


def _cutoff_ns(retention: str) -> int:
    """Unix ns before which a last access counts as expired."""
    return time.time_ns() - int(parse_retention(retention).total_seconds() * 1e9)


async def _drain(
    state: AppState,
    step: Callable[[], Awaitable[int]],
    verb: str,
    what: str = "variants",
    *,
    counter: str | None = None,
) -> None:
    """Run a batched removal until a batch comes back short; each batch queued its files
    (one job). ``counter`` counts what was removed."""
    total = 0
    while True:
        n = await step()
        total += n
        if n:
            state.journal.notify(jobs.CLEANUP, pushed=1)
            if counter is not None:
                state.metrics.count(counter, amount=n)
        if n < BATCH:
            break
    if total:
        logger.info("{} {} {}", verb, total, what)


# --- backgrounded uploads --------------------------------------------------------------------


async def handle_ingest(state: AppState, job: Job) -> None:
    with state.metrics.guard(BACKGROUND_INGEST):  # completed: an outcome was recorded
        await _handle_ingest(state, job)


async def _handle_ingest(state: AppState, job: Job) -> None:
    payload = job.decode(_ingest_decoder)
    exists, outcome = await state.repo.upload_outcome(payload.upload_id)
    failed: UploadOutcome | None = None
    if exists and outcome is None:
        try:
            await _ingest_upload(state, payload)
        except PictrsError as exc:
            # Object storage may be down for a moment: try again while attempts remain (a
            # missing raw file will not come back).
            transient = isinstance(exc, StoreError) and not isinstance(exc, StoreNotFound)
            if transient and job.attempts < job.max_attempts:
                raise
            failed = UploadOutcome(error_msg=exc.msg, error_code=str(exc.code))
        except Exception as exc:
            if job.attempts < job.max_attempts:
                raise  # retried later; transient, like a database hiccup
            failed = UploadOutcome(error_msg=str(exc), error_code="unknown-error")
    # The outcome's transaction lets go of the raw bytes and queues their removal (the
    # ingest's commit, which does not say so: not counted as a push); the release after it
    # is for rows whose outcome was recorded otherwise (an upload from before that was so).
    queued = 0
    if failed is not None:
        queued += await state.repo.finish_upload(payload.upload_id, failed)
    queued += await state.repo.release_upload_raw(payload.upload_id)
    state.journal.notify(jobs.CLEANUP, pushed=queued)


async def resolve_lost_upload(state: AppState, upload_id: str) -> bool:
    """A backgrounded upload whose ingest job died (it killed its process on every attempt,
    say) gets a failed outcome, and its raw bytes go; True when that was so. Claims call it,
    so a client waiting on such an upload is told instead of waiting forever."""
    job = await state.journal.latest(jobs.INGEST, upload_id)
    if job is not None and job.status != "dead":
        return False
    why = job.last_error if job is not None and job.last_error else "the ingest job was lost"
    outcome = UploadOutcome(error_msg=f"Ingest failed: {why}", error_code="unknown-error")
    queued = await state.repo.finish_upload(upload_id, outcome)
    state.journal.notify(jobs.CLEANUP, pushed=int(queued))
    return True


async def _ingest_upload(state: AppState, payload: jobs.IngestUpload) -> None:
    limits, pairs = parse_upload_query(payload.query)
    operations = upload_operations(state, pairs)
    # The row knows where the bytes are now: migrate-store repoints it, not this payload.
    raw_identifier = (
        await state.repo.upload_raw_identifier(payload.upload_id) or payload.raw_identifier
    )
    # Streamed from the store (ingest spools it to its own scratch file anyway).
    async with (
        aclosing(state.store.read(raw_identifier)) as raw,
        IngestSession(state) as session,
    ):
        await ingest(
            state,
            session,
            raw,
            limits=limits,
            operations=operations,
            upload_id=payload.upload_id,
        )
        session.disarm()


# --- variants --------------------------------------------------------------------------------


async def handle_generate(state: AppState, job: Job) -> None:
    payload = job.decode(_generate_decoder)
    request = render.parse_request(payload.ext, payload.query, allowed=state.config.media.filters)
    try:
        # A job may take as long as pict-rs allows a render (4 x process_timeout), not just
        # the ~35 s a waiting request gets.
        await render.find_or_render(
            state, payload.alias, request, wait=4 * state.config.media.process_timeout
        )
    except PictrsError as exc:
        raise Abort(exc.msg) from exc  # a render that failed once fails again


# --- schedule --------------------------------------------------------------------------------


async def schedule(state: AppState, journal: Journal) -> None:
    """Queue the store audit when it is due (services/audit.py) and the periodic cleanup
    jobs (pict-rs: not in read-only mode)."""
    await audit.start(state)
    retention = state.config.media.retention
    shortest = min(
        parse_retention(retention.variants).total_seconds(),
        parse_retention(retention.proxy).total_seconds(),
    )
    every = max(1.0, min(shortest / 4, RETENTION_CHECK_MAX_SECONDS))
    while True:
        await journal.push(jobs.CLEANUP, jobs.ExpireVariants(), unique_key="expire-variants")
        await journal.push(jobs.CLEANUP, jobs.ExpireProxies(), unique_key="expire-proxies")
        await trio.sleep(every)
