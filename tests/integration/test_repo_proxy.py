"""Proxied media rows in SqliteRepo: first relation wins, accesses, expiry by last access
(removing the alias, and the file rows with a RemoveFiles job when it was the last alias)."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec

from pictrs_trio.repo.sqlite import SqliteRepo
from pictrs_trio.rules import jobs
from tests.integration.test_repo_sqlite import count, hash_identifier, raw, repo, upload

__all__ = ["repo"]  # the fixture, shared with test_repo_sqlite

URL = "http://127.0.0.1:9/a.jpg"


def remove_files_jobs(tmp_path: Path) -> list[list[str]]:
    conn = raw(tmp_path)
    rows = conn.execute("SELECT payload FROM journal_jobs WHERE queue = 'cleanup'").fetchall()
    decoded = [msgspec.json.decode(p, type=jobs.CleanupJob) for (p,) in rows]
    return [j.identifiers for j in decoded if isinstance(j, jobs.RemoveFiles)]


async def test_relate_first_wins_and_touch(repo: SqliteRepo) -> None:
    assert await repo.proxy_alias(URL) is None
    _, first, _ = await upload(repo, 1)
    _, second, _ = await upload(repo, 2)
    before = time.time_ns()
    assert await repo.relate_proxy(URL, first) == first
    assert await repo.relate_proxy(URL, second) == first
    found = await repo.proxy_alias(URL)
    assert found is not None
    assert found.alias == first
    assert found.accessed_ns >= before
    await repo.touch_proxy(URL)
    touched = await repo.proxy_alias(URL)
    assert touched is not None
    assert touched.accessed_ns >= found.accessed_ns


async def test_removing_the_alias_removes_the_relation(repo: SqliteRepo) -> None:
    _, alias, _ = await upload(repo, 1)
    await repo.relate_proxy(URL, alias)
    await repo.remove_alias(alias)
    assert await repo.proxy_alias(URL) is None


async def test_expire_proxies(repo: SqliteRepo, tmp_path: Path) -> None:
    h, proxied, identifier = await upload(repo, 1)
    _, shared, _ = await upload(repo, 2)
    _, other, _ = await upload(repo, 2)  # same content as `shared`, another alias
    await repo.relate_proxy(URL, proxied)
    await repo.relate_proxy(URL + "2", shared)
    cutoff = time.time_ns() + 1
    await repo.relate_proxy(URL + "3", other)
    # only relations accessed before the cutoff go; URL+3 is newer
    conn = raw(tmp_path)
    conn.execute("UPDATE proxies SET accessed = ? WHERE url = ?", (cutoff + 10, URL + "3"))
    assert await repo.expire_proxies(cutoff, 10) == 2
    assert await repo.proxy_alias(URL) is None
    assert await repo.alias_hash(proxied) is None
    assert hash_identifier(repo, h) is None  # its last alias: the file rows went
    assert await repo.alias_hash(other) is not None  # the shared file keeps its other alias
    assert (await repo.proxy_alias(URL + "3")) is not None
    assert count(conn, "proxies") == 1
    assert remove_files_jobs(tmp_path) == [[identifier]]
    assert await repo.expire_proxies(cutoff, 10) == 0
