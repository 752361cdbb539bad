"""Owners, leases and intents (journal/owners.py) on real SQLite files: what a dead process
leaves is released or undone at once on this host, after the heartbeat TTL elsewhere, and a
commit whose intent was undone writes nothing."""

from __future__ import annotations

import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import trio

from journal import IntentLost, Journal, NotAlone, fulfil_in, open_journal, owners, schema
from journal.schema import transaction

REPO = Path(__file__).resolve().parents[2]


class Undo(msgspec.Struct, frozen=True, kw_only=True, tag="undo"):
    keys: list[str]


class Clock:
    """Wall seconds the test moves by hand (heartbeats are stored in this time)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def db_file(tmp_path: Path) -> Path:
    return tmp_path / "db.sqlite3"


@pytest.fixture
async def two(db_file: Path) -> AsyncIterator[tuple[Journal, Journal, Clock]]:
    """Two owners on one file, as two processes would be, on a hand-moved clock."""
    clock = Clock()
    async with open_journal(db_file, clock=clock) as a, open_journal(db_file, clock=clock) as b:
        await a.register()
        await b.register()
        yield a, b, clock


def rows(db_file: Path, sql: str) -> list[tuple[object, ...]]:
    conn = schema.connect(db_file, busy_timeout_ms=5000, synchronous_full=False)
    try:
        return [tuple(r) for r in conn.execute(sql).fetchall()]
    finally:
        conn.close()


async def test_a_lease_has_one_holder_until_released(two: tuple[Journal, Journal, Clock]) -> None:
    a, b, _ = two
    assert await a.lease("k")
    assert await a.lease("k")  # the holder asking again: still its own
    assert not await b.lease("k")
    await a.release("k")
    assert await b.lease("k")
    assert not await a.lease("k")


async def test_a_silent_owner_loses_its_lease_after_the_ttl(
    two: tuple[Journal, Journal, Clock],
) -> None:
    a, b, clock = two
    assert await a.lease("k")
    clock.now += owners.OWNER_TTL - 1
    assert not await b.lease("k")  # quiet, but not for long enough
    clock.now += 2
    assert await b.lease("k")  # a's heartbeat is older than the TTL: taken over


async def test_an_owner_that_runs_alone_joins_only_alone(db_file: Path) -> None:
    clock = Clock()
    async with (
        open_journal(db_file, clock=clock) as lone,
        open_journal(db_file, clock=clock) as server,
        open_journal(db_file, clock=clock) as late,
    ):
        await server.register()
        with pytest.raises(NotAlone) as refused:
            await lone.register(alone=True)
        assert refused.value.owners == [server.owner]
        assert rows(db_file, "SELECT count(*) FROM journal_owners") == [(1,)]  # not joined
        assert rows(db_file, "SELECT count(*) FROM journal_leases") == [(0,)]

        await server._write(lambda conn: owners.unregister(conn, server.owner))  # it stopped
        await lone.register(alone=True)
        with pytest.raises(NotAlone) as refused:
            await late.register()
        assert refused.value.owners == [lone.owner]
        with pytest.raises(NotAlone):
            await late.register(alone=True)
        assert rows(db_file, "SELECT owner FROM journal_owners") == [(lone.owner,)]

        clock.now += owners.OWNER_TTL + 1  # silent too long: dead (this process, so by TTL)
        await late.register()
        assert sorted(rows(db_file, "SELECT owner FROM journal_owners")) == sorted(
            [(lone.owner,), (late.owner,)]
        )


async def test_intents_are_fulfilled_with_the_callers_transaction(
    db_file: Path, two: tuple[Journal, Journal, Clock]
) -> None:
    a, _, _ = two
    await a.intend(["f/1", "f/2"], "cleanup", Undo(keys=["f/1", "f/2"]))
    assert await a.intended() == {"f/1", "f/2"}
    conn = schema.connect(db_file, busy_timeout_ms=5000, synchronous_full=False)
    try:
        with pytest.raises(RuntimeError), transaction(conn):  # the caller's commit fails
            fulfil_in(conn, ["f/1"], a.owner)
            raise RuntimeError("rows refused")
        assert await a.intended() == {"f/1", "f/2"}  # rolled back with it
        with transaction(conn):
            fulfil_in(conn, ["f/1"], a.owner)
        assert await a.intended() == {"f/2"}
        with pytest.raises(IntentLost), transaction(conn):
            fulfil_in(conn, ["f/1"], a.owner)  # fulfilled already: not ours to commit
    finally:
        conn.close()
    await a.abandon(["f/2"])
    assert await a.intended() == set()


async def test_reap_undoes_what_a_dead_owner_left(
    db_file: Path, two: tuple[Journal, Journal, Clock]
) -> None:
    a, b, clock = two
    await a.intend(["x/1"], "cleanup", Undo(keys=["x/1"]))
    assert await a.lease("render:1")
    await a.push("q", Undo(keys=["job"]))
    job = await a.claim("q", a.worker_id("q", 0), 600)
    assert job is not None
    clock.now += owners.OWNER_TTL + 1  # a stops beating
    reaped = await b.reap()
    assert (reaped.owners, reaped.leases, reaped.intents, reaped.jobs) == (1, 1, 1, 1)
    assert reaped.queues == {"cleanup", "q"}
    assert await b.intended() == set()
    undo = rows(db_file, "SELECT queue, kind, payload FROM journal_jobs WHERE queue='cleanup'")
    assert [(q, k, msgspec.json.decode(p, type=Undo)) for q, k, p in undo] == [
        ("cleanup", "undo", Undo(keys=["x/1"]))
    ]
    again = await b.get(job.id)
    assert again is not None
    assert (again.status, again.worker) == ("pending", None)
    assert await b.lease("render:1")
    # a comes back to life: its next beat finds itself gone, registers again, and its
    # commit of the undone write fails instead of pointing a row at a removed file.
    conn = schema.connect(db_file, busy_timeout_ms=5000, synchronous_full=False)
    try:
        with pytest.raises(IntentLost), transaction(conn):
            fulfil_in(conn, ["x/1"], a.owner)
    finally:
        conn.close()
    assert not await a.heartbeat(job.id, a.worker_id("q", 0))  # its job is not its own


async def test_a_clean_stop_releases_leases_and_leaves_intents_to_be_undone(
    db_file: Path,
) -> None:
    async with open_journal(db_file) as survivor:
        await survivor.register()
        async with open_journal(db_file) as stopping, trio.open_nursery() as nursery:
            await nursery.start(stopping.run_owner)
            assert await stopping.lease("k")
            await stopping.intend(["half/written"], "cleanup", Undo(keys=["half/written"]))
            nursery.cancel_scope.cancel()
        assert rows(db_file, "SELECT count(*) FROM journal_owners") == [(1,)]
        assert await survivor.lease("k")  # released by the stop itself
        reaped = await survivor.reap()  # its owner row is gone: its intent is undone
        assert reaped.intents == 1


KILLED_OWNER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import msgspec, trio
    sys.path.insert(0, sys.argv[2])
    from journal import open_journal

    class Undo(msgspec.Struct, frozen=True, kw_only=True, tag="undo"):
        keys: list[str]

    async def main():
        async with open_journal(Path(sys.argv[1])) as journal:
            await journal.register()
            assert await journal.lease("render:k")
            await journal.intend(["half/file.webp"], "cleanup", Undo(keys=["half/file.webp"]))
            await journal.push("q", Undo(keys=["job"]))
            assert await journal.claim("q", journal.worker_id("q", 0), 600)
            os.kill(os.getpid(), signal.SIGKILL)

    trio.run(main)
    """
)


async def test_a_killed_process_is_known_dead_at_once(db_file: Path) -> None:
    """No TTL to wait out on the same host: its pid is gone."""
    killed = await trio.run_process(
        [sys.executable, "-c", KILLED_OWNER, str(db_file), str(REPO)],
        capture_stderr=True,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    async with open_journal(db_file) as journal:
        assert await journal.lease("render:k")  # the dead holder's lease, taken over at once
        reaped = await journal.reap()
        assert (reaped.owners, reaped.intents, reaped.jobs) == (1, 1, 1)
        assert (await journal.stats())["q"]["pending"] == 1
        assert rows(db_file, "SELECT count(*) FROM journal_intents") == [(0,)]


STALLED_OWNER = KILLED_OWNER.replace(
    "os.kill(os.getpid(), signal.SIGKILL)", "print('ready', flush=True); time.sleep(60)"
).replace("import os,", "import os, time,")


async def test_a_busy_process_here_keeps_what_it_holds_however_late_its_heartbeat(
    db_file: Path,
) -> None:
    """A live process on this host is not dead for missing beats (a long stall under load):
    its lease, intent and job stay, until the lease is older than the caller allows or the
    process is really gone."""
    child = await trio.lowlevel.open_process(
        [sys.executable, "-c", STALLED_OWNER, str(db_file), str(REPO)], stdout=-1
    )
    try:
        assert child.stdout is not None
        assert (await child.stdout.receive_some(16)).strip() == b"ready"
        clock = Clock()  # far past the child's last heartbeat (wall time now)
        async with open_journal(db_file, clock=clock) as journal:
            assert not await journal.lease("render:k")
            assert not await journal.reap()
            assert rows(db_file, "SELECT count(*) FROM journal_intents") == [(1,)]
            assert not await journal.lease("render:k", stale_after=1e9)  # young enough
            assert await journal.lease("render:k", stale_after=60)  # stuck: passed by
            child.kill()
            await child.wait()
            reaped = await journal.reap()
            assert (reaped.owners, reaped.intents, reaped.jobs) == (1, 1, 1)
    finally:
        if child.poll() is None:
            child.kill()
            with trio.CancelScope(shield=True):
                await child.wait()


def test_owner_ids_name_this_process() -> None:
    mine = owners.origin()
    host, _pidns, pid, started = mine.split("|")
    assert int(pid) > 0 and started
    assert owners.local_state(mine, mine + "|nonce") is None  # ourselves: the heartbeat decides
    assert owners.local_state(mine, f"elsewhere|{_pidns}|1|1|n") is None  # another host
    assert owners.local_state(mine, f"{host}|{_pidns}|{pid}0000|1|n") is False  # no such pid
    assert owners.local_state(mine, f"{host}|{_pidns}|{pid}|0|n") is False  # pid held before us
    assert owners.local_state(mine, f"{host}|{_pidns}|1|{owners._start_time(1)}|n") is True
