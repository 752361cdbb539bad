"""A request cancelled in the middle of its work (httpcore's test_cancellations, here for
uploads and renders): nothing is left behind, no file, row, intent, lease or temp file,
and the next request is served."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pyvips
import trio

from pictrs_trio.services.state import AppState
from tests.e2e.rawhttp import multipart
from tests.inprocess.conftest import rows, store_files, upload


def leftovers(state: AppState) -> dict[str, object]:
    return {
        "intents": rows(state, "SELECT key FROM journal_intents"),
        "leases": rows(state, "SELECT key FROM journal_leases"),
        "temp files": sorted(p.name for p in state.tmp_dir.iterdir()),
    }


NOTHING = {"intents": [], "leases": [], "temp files": []}


async def test_cancelled_mid_upload(
    client: httpx.AsyncClient, state: AppState, samples: dict[str, Path]
) -> None:
    headers, body = multipart([("a.png", samples["cat.jpg"].read_bytes())])
    half = len(body) // 2
    sent_half = trio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        yield body[:half]
        sent_half.set()
        await trio.sleep_forever()  # the rest never comes

    async with trio.open_nursery() as nursery:

        async def post() -> None:
            await client.post("/image", headers=dict(headers), content=stalled())

        nursery.start_soon(post)
        await sent_half.wait()
        await trio.sleep(0.2)  # the spool file exists now
        nursery.cancel_scope.cancel()
    assert store_files(state) == set()
    assert rows(state, "SELECT alias FROM aliases") == []
    assert leftovers(state) == NOTHING
    assert (await upload(client, samples["test.png"])).status_code == 201


async def test_cancelled_mid_render(
    client: httpx.AsyncClient, state: AppState, samples: dict[str, Path], tmp_path: Path
) -> None:
    big = tmp_path / "big.jpg"  # a strong blur of 3600x4161 takes seconds
    pyvips.Image.jpegload(str(samples["cat.jpg"])).resize(3).jpegsave(str(big), Q=85)
    alias = (await upload(client, big)).json()["files"][0]["file"]
    stored = store_files(state)
    with trio.move_on_after(0.5) as cancelled:
        await client.get(f"/image/process.png?src={alias}&blur=60")
    assert cancelled.cancelled_caught
    assert store_files(state) == stored  # no variant file
    assert rows(state, "SELECT variant FROM variants") == []
    assert leftovers(state) == NOTHING
    # The engine worker killed with the job was replaced: the next render works.
    r = await client.get(f"/image/process.webp?src={alias}&thumbnail=50")
    assert r.status_code == 200
    assert rows(state, "SELECT variant FROM variants") == [("thumbnail/50/webp",)]
    assert leftovers(state) == NOTHING


async def test_cancelled_mid_backgrounded_upload(
    client: httpx.AsyncClient, state: AppState, samples: dict[str, Path]
) -> None:
    headers, body = multipart([("a.png", samples["test.png"].read_bytes())] * 2)
    sent_one = trio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        yield body[: len(body) * 3 // 4]  # the first file whole, the second half-way
        sent_one.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:

        async def post() -> None:
            await client.post("/image/backgrounded", headers=dict(headers), content=stalled())

        nursery.start_soon(post)
        await sent_one.wait()
        await trio.sleep(0.3)  # the first raw file is stored by now
        nursery.cancel_scope.cancel()
    assert store_files(state) == set()
    assert rows(state, "SELECT id FROM uploads") == []
    assert leftovers(state) == NOTHING
