"""The store audit: count the store's files that no row and no write in flight accounts
for, and warn once if there are any. They are left alone: a store may hold another
program's files (an earlier pict-rs volume, say), and only what this program's journal
recorded as its own unfinished writes is ever removed (services/storing.py).

The walk is a chain of journal jobs (``jobs.AuditStore``), like prune-missing's
(services/prune.py): each lists up to ``BATCH`` identifiers from where the last one
stopped (``Store.identifiers(after=…)``), checks them a page at a time, and queues the next
with the counts so far; other cleanup jobs run between two batches, and a restart goes on
from the last batch done. Only a page is ever held: a bucket of millions of objects is
never listed into memory.

When it runs (``start``, at every start of the server, not in read-only mode):

* a folder: at every start (a local walk, at worst a few minutes for millions of files);
* object storage: at most once every ``OBJECT_STORAGE_EVERY`` (a week), since listing a
  large bucket takes long and every page is a billed request. A walk under way is not
  started again meanwhile.

What the last walk did is kept in the setting ``store-audit`` (``Record``): which store,
which run, when it started and finished. A walk of a store other than the recorded one
always starts.
"""

from __future__ import annotations

import time
import uuid
from contextlib import aclosing

import msgspec
from loguru import logger

from pictrs_trio.config import FilesystemStore, ObjectStorageStore
from pictrs_trio.rules import jobs
from pictrs_trio.services.migrate import describe
from pictrs_trio.services.state import AppState

SETTING = "store-audit"
START_KEY = "audit-store"  # unique key of a walk's first batch (as before walks had batches)
BATCH = 10_000  # identifiers per job
PAGE = 1000  # identifiers per look-up of intents and rows
OBJECT_STORAGE_EVERY = 7 * 24 * 3600.0  # seconds


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """The last walk: the store (``migrate.describe``), its run id, its start and end (unix
    seconds; ``finished`` None while it goes on), and, once finished, how many files it
    listed and how many of those nothing accounts for."""

    store: str
    run: str
    started: float
    finished: float | None = None
    seen: int = 0
    unknown: int = 0


_decoder = msgspec.json.Decoder(Record)
_encoder = msgspec.json.Encoder()


async def last_walk(state: AppState) -> Record | None:
    """The last walk, as recorded (None: never, or unreadable)."""
    raw = await state.repo.setting(SETTING)
    if raw is None:
        return None
    try:
        return _decoder.decode(raw)
    except msgspec.DecodeError:
        return None  # unreadable: as if there was none


async def _keep(state: AppState, record: Record) -> None:
    await state.repo.set_settings({SETTING: _encoder.encode(record)})


def due(
    config_store: FilesystemStore | ObjectStorageStore,
    record: Record | None,
    store: str,
    now: float,
) -> bool:
    """Whether a start of the server starts a walk (the policy in the module docstring)."""
    if not isinstance(config_store, ObjectStorageStore):
        return True
    if record is None or record.store != store:
        return True
    since = record.started if record.finished is None else record.finished
    return now - since >= OBJECT_STORAGE_EVERY


async def start(state: AppState) -> bool:
    """Queue the first batch of a walk if one is due; True when it was."""
    store = describe(state.config.store)
    record = await last_walk(state)
    if not due(state.config.store, record, store, time.time()):
        assert record is not None
        logger.info(
            "store audit: not due (object storage: once a week; the last began {})",
            time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(record.started)),
        )
        return False
    await state.journal.push(jobs.CLEANUP, jobs.AuditStore(), unique_key=START_KEY)
    return True


async def run_batch(state: AppState, job: jobs.AuditStore) -> None:
    """One batch of the walk ``job.run`` (a first batch, ``after`` None, begins a new run
    and records it); then the next batch is queued, or the walk ends with the warning.
    A batch of a walk that a newer one replaced does nothing."""
    if job.after is None:
        job = jobs.AuditStore(run=uuid.uuid4().hex)
        record = Record(store=describe(state.config.store), run=job.run, started=time.time())
        await _keep(state, record)
    else:
        found = await last_walk(state)
        if found is None or found.run != job.run:
            logger.info("store audit {} was replaced by a newer one: stopping", job.run)
            return
        record = found
    seen, unknown, example = job.seen, job.unknown, job.example
    last = job.after
    page: list[str] = []
    ended = True
    async with aclosing(state.store.identifiers(after=job.after)) as listing:
        async for identifier in listing:
            page.append(identifier)
            if len(page) == PAGE:
                count, first = await _unknown(state, page)
                seen, unknown, example = seen + len(page), unknown + count, example or first
                last, page = page[-1], []
                if seen - job.seen >= BATCH:
                    ended = False
                    break
    if page:
        count, first = await _unknown(state, page)
        seen, unknown, example = seen + len(page), unknown + count, example or first
        last = page[-1]
    if not ended:
        following = jobs.AuditStore(
            run=job.run, after=last, seen=seen, unknown=unknown, example=example
        )
        await state.journal.push(
            jobs.CLEANUP, following, unique_key=f"{START_KEY}:{job.run}:{seen}"
        )
        return
    finished = time.time()
    await _keep(
        state, msgspec.structs.replace(record, finished=finished, seen=seen, unknown=unknown)
    )
    if unknown:
        logger.warning(
            "the store holds {} files this repo does not know (for example {}); they are "
            "left alone. If this store was pict-rs's, see docs/migration.md",
            unknown,
            example,
        )
    logger.info("store audit: {} files listed, {} unknown", seen, unknown)


async def _unknown(state: AppState, page: list[str]) -> tuple[int, str | None]:
    """How many of ``page`` (just listed) nothing accounts for, and the first of them.

    What is known is read after listing: a file listed was intended before it was written,
    and its intent is fulfilled in the commit that adds its row. Intents first, rows second:
    a commit between the two reads moves a file from the first set into the second, never
    out of both."""
    intended = await state.journal.intended()
    candidates = [identifier for identifier in page if identifier not in intended]
    known = await state.repo.known_identifiers(candidates)
    unknown = [identifier for identifier in candidates if identifier not in known]
    return len(unknown), (unknown[0] if unknown else None)
