"""prune_missing is a journal job: a walk queued by one process and not run before it
stops is run by the next one on the same repo, in batches that each queue the next."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from pictrs_trio.http.app import create_app
from pictrs_trio.runtime.service import open_state, start_background
from pictrs_trio.services import prune
from pictrs_trio.services.state import AppState
from tests.inprocess.conftest import API_KEY, asgi_client, inprocess_config, rows, upload

KEY = {"X-Api-Token": API_KEY}


async def wait_complete(state: AppState) -> prune.Progress:
    with trio.fail_after(20):
        while True:
            progress = await prune.progress(state)
            if progress.complete:
                return progress
            await trio.sleep(0.02)


async def all_batches_done(state: AppState) -> None:
    unfinished = (
        "SELECT count(*) FROM journal_jobs WHERE kind = 'prune_missing' AND status != 'done'"
    )
    with trio.fail_after(20):
        while True:
            if rows(state, unfinished) == [(0,)]:
                return
            await trio.sleep(0.02)


async def test_a_queued_walk_survives_a_restart(tmp_path: Path, samples: dict[str, Path]) -> None:
    config = inprocess_config(tmp_path)
    async with open_state(config) as first:
        async with trio.open_nursery() as nursery:
            await start_background(first, nursery)
            async with asgi_client(create_app(first)) as client:
                aliases = [
                    (await upload(client, samples[n])).json()["files"][0]["file"]
                    for n in ("test.png", "cat.jpg")
                ]
                found = await first.repo.find_original(aliases[0])
                assert found is not None and found.identifier is not None
                (Path(config.store.path) / found.identifier).unlink()  # type: ignore[union-attr]
            nursery.cancel_scope.cancel()
        # No job runner any more: the walk is queued, and this process stops before it runs.
        before = await prune.start(first, force=False)
        assert before == prune.Progress(complete=False, progress=0, total=2)
        queued = rows(first, "SELECT kind, status FROM journal_jobs WHERE kind = 'prune_missing'")
        assert queued == [("prune_missing", "pending")]

    async with open_state(config) as second, trio.open_nursery() as nursery:
        await start_background(second, nursery)
        assert await wait_complete(second) == prune.Progress(complete=True, progress=1, total=1)
        assert await second.repo.find_original(aliases[0]) is None
        assert await second.repo.find_original(aliases[1]) is not None
        nursery.cancel_scope.cancel()


async def test_a_long_walk_goes_in_batches_and_a_forced_one_replaces_it(
    tmp_path: Path, samples: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prune, "BATCH", 2)
    config = inprocess_config(tmp_path)
    async with open_state(config) as state, trio.open_nursery() as nursery:
        await start_background(state, nursery)
        async with asgi_client(create_app(state)) as client:
            names = ("test.png", "cat.jpg", "earth.gif", "scene.webp", "rotated.jpg")
            for name in names:
                await upload(client, samples[name])
            r = await client.post("/internal/prune_missing", headers=KEY)
            assert r.json() == {"complete": False, "progress": 0, "total": 5}
            assert await wait_complete(state) == prune.Progress(complete=True, progress=0, total=5)
            # 5 files in batches of 2: three batches, each queued by the one before.
            batches = rows(state, "SELECT count(*) FROM journal_jobs WHERE kind = 'prune_missing'")
            assert batches == [(3,)]
            forced = await client.post("/internal/prune_missing?force=true", headers=KEY)
            assert forced.status_code == 200
            await all_batches_done(state)
            started = await state.repo.setting(prune.STARTED)
            assert started is not None
            # The forced walk is a new run: three batches more, the last of them its own.
            runs = rows(state, "SELECT payload FROM journal_jobs WHERE kind = 'prune_missing'")
            assert len(runs) == 6
            last = runs[-1][0]
            assert isinstance(last, bytes) and started in last
        nursery.cancel_scope.cancel()


def unmount(files: Path, elsewhere: Path) -> None:
    """The volume is not mounted: an empty folder where its files were."""
    files.rename(elsewhere)
    files.mkdir()


async def test_a_store_that_is_not_mounted_is_not_pruned(
    tmp_path: Path, samples: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file of a whole batch missing is an empty mount point, not lost media: the walk
    stops and every record stays (pict-rs would forget them all)."""
    monkeypatch.setattr(prune, "BATCH", 2)
    config = inprocess_config(tmp_path)
    async with open_state(config) as state, trio.open_nursery() as nursery:
        await start_background(state, nursery)
        async with asgi_client(create_app(state)) as client:
            aliases = [
                (await upload(client, samples[name])).json()["files"][0]["file"]
                for name in ("test.png", "cat.jpg", "earth.gif")
            ]
            unmount(Path(config.store.path), tmp_path / "elsewhere")  # type: ignore[union-attr]
            r = await client.post("/internal/prune_missing", headers=KEY)
            assert r.json() == {"complete": False, "progress": 0, "total": 3}
            await all_batches_done(state)
            assert await prune.progress(state) == prune.Progress(
                complete=False, progress=0, total=3
            )
            for alias in aliases:
                assert await state.repo.find_original(alias) is not None
        nursery.cancel_scope.cancel()
