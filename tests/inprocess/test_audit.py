"""The store audit (services/audit.py): a chain of journal jobs, a batch of the store's
listing each, compared a page at a time with the rows and intents; it never deletes; on
object storage it runs at most once a week."""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

import msgspec
import pytest
import trio

from pictrs_trio.config import FilesystemStore, ObjectStorageStore
from pictrs_trio.http.app import create_app
from pictrs_trio.rules import jobs
from pictrs_trio.runtime.service import open_state, start_background
from pictrs_trio.services import audit
from pictrs_trio.services.migrate import describe
from pictrs_trio.services.state import AppState
from tests.inprocess.conftest import asgi_client, inprocess_config, rows, store_files, upload


def foreign(root: Path, n: int) -> set[str]:
    """``n`` files of another program (a pict-rs volume, say), in nested folders."""
    made = set()
    for i in range(n):
        identifier = f"{i % 3:02x}/{i % 5:02x}/pict-rs-{i:03d}.webp"
        (root / identifier).parent.mkdir(parents=True, exist_ok=True)
        (root / identifier).write_bytes(b"theirs %d" % i)
        made.add(identifier)
    return made


async def wait_walk(state: AppState, not_run: str | None = None) -> audit.Record:
    """The record of a finished walk other than ``not_run``."""
    with trio.fail_after(20):
        while True:
            record = await audit.last_walk(state)
            if record is not None and record.finished is not None and record.run != not_run:
                return record
            await trio.sleep(0.02)


def batches(state: AppState, run: str) -> int:
    found = rows(state, "SELECT payload FROM journal_jobs WHERE kind = 'audit_store'")
    return sum(1 for (payload,) in found if run.encode() in cast(bytes, payload))


async def test_the_walk_goes_in_batches_and_counts_what_nothing_accounts_for(
    tmp_path: Path, samples: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit, "BATCH", 10)
    monkeypatch.setattr(audit, "PAGE", 4)
    config = inprocess_config(tmp_path)
    root = Path(config.store.path)  # type: ignore[union-attr]
    theirs = foreign(root, 25)
    async with open_state(config) as state, trio.open_nursery() as nursery:
        await start_background(state, nursery)  # queues the start-up walk
        first = await wait_walk(state)
        assert (first.seen, first.unknown) == (25, 25)
        assert first.store == describe(config.store)  # which store it was
        # Three batches: the first (its job pushed without a run yet), then two of the run.
        assert batches(state, first.run) == 2
        async with asgi_client(create_app(state)) as client:
            for name in ("test.png", "cat.jpg"):
                await upload(client, samples[name])
        # A write in flight: its file is there, its intent is recorded, no row yet.
        in_flight = state.store.new_identifier(".png")
        await state.journal.intend([in_flight], jobs.CLEANUP, jobs.RemoveFiles(identifiers=[]))
        await state.store.save_bytes(b"x", identifier=in_flight, content_type="image/png")
        assert await audit.start(state)  # a folder: at every start
        second = await wait_walk(state, not_run=first.run)
        assert (second.seen, second.unknown) == (28, 25)
        assert batches(state, second.run) == 2
        nursery.cancel_scope.cancel()
    assert theirs <= store_files_of(root)  # never deleted


def store_files_of(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


async def test_a_replaced_walk_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit, "BATCH", 4)
    monkeypatch.setattr(audit, "PAGE", 2)
    config = inprocess_config(tmp_path)
    foreign(Path(config.store.path), 6)  # type: ignore[union-attr]
    async with open_state(config) as state:  # no job runners: batches run by hand
        await audit.run_batch(state, jobs.AuditStore())
        old = await audit.last_walk(state)
        assert old is not None and old.finished is None
        ((payload,),) = rows(state, "SELECT payload FROM journal_jobs WHERE kind = 'audit_store'")
        following = msgspec.json.decode(cast(bytes, payload), type=jobs.AuditStore)
        assert (following.run, following.seen, following.unknown) == (old.run, 4, 4)
        await audit.run_batch(state, jobs.AuditStore())  # a new start: a new walk
        new = await audit.last_walk(state)
        assert new is not None and new.run != old.run
        await audit.run_batch(state, following)  # the old walk's next batch does nothing
        assert await audit.last_walk(state) == new
        assert store_files(state) == store_files_of(Path(config.store.path))  # type: ignore[union-attr]


STORE = ObjectStorageStore(
    endpoint="http://s3.test", bucket_name="b", region="r", access_key="a", secret_key="s"
)
THIS = "object-storage -e http://s3.test -b b"
DAY = 24 * 3600.0


@pytest.mark.parametrize(
    ("store", "record", "due"),
    [
        (FilesystemStore(path="/x"), audit.Record(store="x", run="r", started=0, finished=1), True),
        (STORE, None, True),
        (STORE, audit.Record(store="other", run="r", started=0, finished=1), True),
        # finished a day ago / eight days ago
        (STORE, audit.Record(store=THIS, run="r", started=-DAY, finished=-DAY), False),
        (STORE, audit.Record(store=THIS, run="r", started=-8 * DAY, finished=-8 * DAY), True),
        # under way since a day / since eight days (its chain died: start again)
        (STORE, audit.Record(store=THIS, run="r", started=-DAY), False),
        (STORE, audit.Record(store=THIS, run="r", started=-8 * DAY), True),
    ],
)
def test_object_storage_is_audited_once_a_week(
    store: FilesystemStore | ObjectStorageStore, record: audit.Record | None, due: bool
) -> None:
    now = time.time()
    if record is not None:
        record = audit.Record(
            store=record.store,
            run=record.run,
            started=now + record.started,
            finished=None if record.finished is None else now + record.finished,
        )
    assert audit.due(store, record, THIS, now) is due
