"""journal: durable job queues in a SQLite file (APSW, WAL), for trio programs.

Domain-free: it stores opaque msgspec-encoded payloads and knows nothing of what they mean.

    async with open_journal(path) as journal:
        job_id = await journal.push("cleanup", Payload(...), unique_key="k")
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(run_workers, journal, {"cleanup": handle},
                                        concurrency={"cleanup": 2}))

``store.push_in(conn, ...)`` queues a job inside a caller's own SQLite transaction on the same
file. Each process is an owner (``Journal.run_owner``) whose leases on keys and intents
(write-ahead for effects outside the database) are released, and undone, when it dies
(journal/owners.py). A ``Monitor`` hears pushes, waits and job endings, for metrics
(journal/monitor.py). Design and guarantees: docs/journal.md.
"""

from journal.monitor import Ending, Monitor, Unmonitored
from journal.owners import IntentLost, NotAlone, Reaped, fulfil_in, release_in
from journal.queue import Database, Journal, open_journal
from journal.records import (
    Abort,
    Backoff,
    Event,
    Job,
    JobNotFound,
    JournalError,
    Outcome,
    Retry,
    Status,
    encode_payload,
)
from journal.runner import Handler, run_workers
from journal.store import push_in

__all__ = [
    "Abort",
    "Backoff",
    "Database",
    "Ending",
    "Event",
    "Handler",
    "IntentLost",
    "Job",
    "JobNotFound",
    "Journal",
    "JournalError",
    "Monitor",
    "NotAlone",
    "Outcome",
    "Reaped",
    "Retry",
    "Status",
    "Unmonitored",
    "encode_payload",
    "fulfil_in",
    "open_journal",
    "push_in",
    "release_in",
    "run_workers",
]
