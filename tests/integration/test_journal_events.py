"""journal's event log: every job state change is one event, whoever made it, in the
transaction that made it; announced progress; trimming. On real SQLite files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from journal import Event, Journal, open_journal, push_in, schema
from journal.records import Backoff


class Ingest(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    upload_id: str


class Progress(msgspec.Struct, frozen=True, kw_only=True):
    moved: int


def trail(events: list[Event]) -> list[tuple[str, int | None, int, str | None]]:
    return [(e.event, e.job, e.attempt, e.error) for e in events]


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    async with open_journal(tmp_path / "db.sqlite3", backoff=Backoff(base=0.0, jitter=0.0)) as j:
        yield j


async def test_a_job_s_life_is_one_event_per_change(journal: Journal) -> None:
    _, start = await journal.events_after(None)
    job = await journal.push("process", Ingest(upload_id="u-1"))
    claimed = await journal.claim("process", "w", 30.0)
    assert claimed is not None
    for _ in range(3):  # heartbeats change nothing a reader cares about
        assert await journal.heartbeat(job, "w")
    await journal.fail(job, "w", "decoder crashed", retry=True)
    await journal.claim("process", "w", 30.0)
    assert await journal.complete(job, "w")
    events, last = await journal.events_after(start)
    assert trail(events) == [
        ("pushed", job, 0, None),
        ("started", job, 1, None),
        ("retried", job, 1, "decoder crashed"),
        ("started", job, 2, None),
        ("finished", job, 2, None),
    ]
    assert last == events[-1].id
    assert {(e.queue, e.kind) for e in events} == {("process", "Ingest")}
    assert msgspec.json.decode(events[0].payload or b"") == {"type": "Ingest", "upload_id": "u-1"}
    assert await journal.events_after(last) == ([], last)


async def test_dead_requeued_and_taken_over_jobs(journal: Journal) -> None:
    _, start = await journal.events_after(None)
    job = await journal.push("cleanup", Ingest(upload_id="u-2"), max_attempts=2)
    await journal.claim("cleanup", "w1", 0.0)  # a lease that has already run out
    await journal.claim("cleanup", "w2", 30.0)  # another worker takes it over
    await journal.fail(job, "w2", "no such file", retry=True)  # out of attempts
    assert await journal.retry_dead(job)
    events, _ = await journal.events_after(start)
    assert trail(events) == [
        ("pushed", job, 0, None),
        ("started", job, 1, None),
        ("started", job, 2, None),
        ("failed", job, 2, "no such file"),
        ("requeued", job, 0, None),
    ]


async def test_a_job_deleted_on_completion_still_finishes(tmp_path: Path) -> None:
    async with open_journal(tmp_path / "db.sqlite3", keep_done=0) as journal:
        _, start = await journal.events_after(None)
        job = await journal.push("process", Ingest(upload_id="u-3"))
        await journal.claim("process", "w", 30.0)
        assert await journal.complete(job, "w")
        assert await journal.get(job) is None  # the row is gone, its events stay
        events, _ = await journal.events_after(start)
    assert trail(events)[-1] == ("finished", job, 1, None)
    assert abs(events[-1].at - events[0].at) < 60  # the trigger's own clock is wall time


async def test_a_push_in_a_rolled_back_transaction_leaves_no_event(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite3"
    conn = schema.connect(db, busy_timeout_ms=2000, synchronous_full=False)
    schema.ensure(conn)
    with pytest.raises(RuntimeError), schema.transaction(conn):
        push_in(conn, "process", Ingest(upload_id="gone"))
        raise RuntimeError("the caller's own write failed")
    push_in(conn, "process", Ingest(upload_id="kept"))
    rows = conn.execute("SELECT event, payload FROM journal_events").fetchall()
    assert [(e, msgspec.json.decode(p)["upload_id"]) for e, p in rows] == [("pushed", "kept")]
    conn.close()


async def test_announced_progress_and_trimming(tmp_path: Path) -> None:
    async with open_journal(tmp_path / "db.sqlite3", keep_events=3) as journal:
        first = await journal.announce("migrate", "progress", Progress(moved=1))
        for moved in range(2, 6):
            await journal.announce("migrate", "progress", Progress(moved=moved))
        assert await journal.trim_events() == 2
        events, _ = await journal.events_after(0)
    assert [msgspec.json.decode(e.payload or b"")["moved"] for e in events] == [3, 4, 5]
    assert events[0].id == first + 2
    assert {(e.event, e.job, e.kind) for e in events} == {("progress", None, "Progress")}


async def test_another_process_s_events_are_seen(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite3"
    async with open_journal(db) as reader, open_journal(db) as writer:
        _, start = await reader.events_after(None)
        job = await writer.push("process", Ingest(upload_id="u-4"))
        events, _ = await reader.events_after(start)
    assert trail(events) == [("pushed", job, 0, None)]
