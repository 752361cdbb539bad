"""Backgrounded uploads to their end: a claim hands over the alias and the raw bytes go; an
upload whose ingest job died is answered with its failure instead of 204 forever."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import httpx
import msgspec
import pytest
import trio

from journal import Outcome
from pictrs_trio.http.app import create_app
from pictrs_trio.rules import jobs
from pictrs_trio.runtime.service import open_state
from pictrs_trio.services.state import AppState
from tests.inprocess.conftest import asgi_client, inprocess_config, rows, store_files


def removals(state: AppState) -> list[tuple[int, list[str]]]:
    """(job id, identifiers) of every RemoveFiles job queued."""
    found = rows(state, "SELECT id, payload FROM journal_jobs WHERE kind = 'remove_files'")
    return [
        (cast(int, i), msgspec.json.decode(cast(bytes, p), type=jobs.RemoveFiles).identifiers)
        for i, p in found
    ]


async def post_backgrounded(client: httpx.AsyncClient, path: Path) -> str:
    files = {"images[]": (path.name, await trio.Path(path).read_bytes())}
    r = await client.post("/image/backgrounded", files=files)
    assert r.status_code == 202, r.text
    (upload,) = r.json()["uploads"]
    return str(upload["upload_id"])


async def test_a_claimed_upload_leaves_only_its_original(
    client: httpx.AsyncClient, state: AppState, samples: dict[str, Path]
) -> None:
    upload_id = await post_backgrounded(client, samples["cat.jpg"])
    r = await client.get("/image/backgrounded/claim", params={"upload_id": upload_id})
    assert r.status_code == 200, r.text
    (entry,) = r.json()["files"]
    assert (entry["details"]["width"], entry["details"]["height"]) == (1200, 1387)
    (original,) = rows(state, "SELECT identifier FROM hashes")
    ((removal, identifiers),) = removals(state)
    assert identifiers != [original[0]]  # the raw bytes, not the original
    with trio.fail_after(10):  # the raw bytes' RemoveFiles job, on the cleanup queue
        assert await state.journal.wait_done(removal) == Outcome(id=removal, status="done")
    assert store_files(state) == {original[0]}
    assert rows(state, "SELECT id FROM uploads") == []
    r = await client.get("/image/backgrounded/claim", params={"upload_id": upload_id})
    assert (r.status_code, r.json()["code"]) == (400, "already-claimed")


@pytest.fixture
async def no_runners(tmp_path: Path) -> AsyncIterator[tuple[AppState, httpx.AsyncClient]]:
    """A process whose job runners are not running: nothing ingests but what the test does."""
    async with (
        open_state(inprocess_config(tmp_path)) as opened,
        asgi_client(create_app(opened)) as c,
    ):
        yield opened, c


async def test_an_upload_whose_ingest_job_died_is_answered_with_its_failure(
    no_runners: tuple[AppState, httpx.AsyncClient], samples: dict[str, Path]
) -> None:
    state, client = no_runners
    upload_id = await post_backgrounded(client, samples["cat.jpg"])
    (raw_identifier,) = rows(state, "SELECT raw_identifier FROM uploads")
    # Its last attempt fails as a process killed mid-ingest would leave it: dead, no outcome.
    worker = state.journal.worker_id(jobs.INGEST, 0)
    job = await state.journal.claim(jobs.INGEST, worker, 60)
    assert job is not None
    await state.journal.fail(job.id, worker, "worker stopped during attempt 3", retry=False)
    with trio.fail_after(5):  # answered at once, not after the claim's 10 s wait
        r = await client.get("/image/backgrounded/claim", params={"upload_id": upload_id})
    assert r.status_code == 422, r.text
    assert r.json() == {
        "msg": "Ingest failed: worker stopped during attempt 3",
        "code": "unknown-error",
    }
    assert [identifiers for _, identifiers in removals(state)] == [[raw_identifier[0]]]
    assert rows(state, "SELECT id FROM uploads") == []
    assert str(raw_identifier[0]) in store_files(state)  # removed by the cleanup job, not here
