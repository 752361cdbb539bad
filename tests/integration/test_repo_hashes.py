"""SqliteRepo's HashRepo, SettingsRepo and BackupRepo on real SQLite files: pages of files
newest first, the walk prune_missing makes, pruning, blurhashes, the not-found image and
the online export."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest
import trio

from pictrs_trio.repo.records import Hash
from pictrs_trio.repo.sqlite import DB_FILE_NAME, SqliteRepo, open_sqlite_repo
from pictrs_trio.rules.errors import RepoError
from tests.integration.test_repo_sqlite import (
    commit_variant,
    count,
    make_hash,
    raw_conn,
    remove_jobs,
    upload,
)

S = 1_000_000_000


@pytest.fixture
async def repo(tmp_path: Path) -> SqliteRepo:  # type: ignore[misc]
    async with open_sqlite_repo(tmp_path / "repo") as opened:
        yield opened


async def files_at(repo: SqliteRepo, times: list[int]) -> list[tuple[Hash, str]]:
    """One file per creation time (seconds), each with one alias: (hash, alias)."""
    made = []
    for i, t in enumerate(times):
        h, alias, _ = await upload(repo, f"file-{i}")
        with raw_conn(repo) as conn:
            conn.execute("UPDATE hashes SET created_at = ? WHERE hash = ?", (t * S, h.key()))
        made.append((h, alias))
    return made


def page_order(made: list[tuple[Hash, str]], times: list[int]) -> list[Hash]:
    """Newest first, ties by hash key descending: the order pages promise."""
    keyed = sorted(zip(times, made, strict=True), key=lambda p: (p[0], p[1][0].key()))
    return [h for _, (h, _) in reversed(keyed)]


TIMES = [10, 20, 30, 30, 40, 50, 60]  # two files share a time: the tie goes by hash


async def test_pages_walk_every_file_once_newest_first(repo: SqliteRepo) -> None:
    made = await files_at(repo, TIMES)
    expected = page_order(made, TIMES)
    seen: list[Hash] = []
    start: Hash | None = None
    prevs: list[Hash | None] = []
    while True:
        page = await repo.hash_page(start=start, limit=3)
        assert page.limit == 3
        seen.extend(e.hash for e in page.hashes)
        prevs.append(page.prev)
        if page.next is None:
            break
        start = page.next
    assert seen == expected
    # Each page's prev is the first file of the page before it.
    assert prevs == [None, expected[0], expected[3]]
    aliases = {h: a for h, a in made}
    first = await repo.hash_page(limit=3)
    assert [e.aliases for e in first.hashes] == [[aliases[h]] for h in expected[:3]]
    assert all(e.details is not None and e.details.width == 640 for e in first.hashes)


async def test_a_page_starts_at_its_slug_and_an_unknown_start_is_the_first_page(
    repo: SqliteRepo,
) -> None:
    made = await files_at(repo, TIMES)
    expected = page_order(made, TIMES)
    middle = await repo.hash_page(start=expected[2], limit=2)
    assert [e.hash for e in middle.hashes] == expected[2:4]
    assert middle.prev == expected[0]
    assert middle.next == expected[4]
    unknown = await repo.hash_page(start=make_hash("never stored"), limit=2)
    assert [e.hash for e in unknown.hashes] == expected[:2]
    assert unknown.prev is None
    empty = await repo.hash_page(limit=0)
    assert empty.hashes == [] and empty.next == expected[0]


async def test_a_timestamp_starts_at_the_newest_file_created_before_it(repo: SqliteRepo) -> None:
    made = await files_at(repo, TIMES)
    expected = page_order(made, TIMES)
    page = await repo.hash_page(before_ns=30 * S, limit=10)  # strictly before: 20, 10
    assert [e.hash for e in page.hashes] == expected[-2:]
    # The page before starts `limit` files newer, or at the newest when fewer are newer.
    assert page.prev == expected[0]
    assert (await repo.hash_page(before_ns=30 * S, limit=2)).prev == expected[3]
    page = await repo.hash_page(before_ns=30 * S + 1, limit=10)
    assert [e.hash for e in page.hashes] == expected[3:]
    assert (await repo.hash_page(before_ns=10 * S, limit=10)).hashes == []
    assert (await repo.hash_page(before_ns=61 * S, limit=2)).prev is None


async def test_hashes_after_walks_every_file_once(repo: SqliteRepo) -> None:
    made = await files_at(repo, TIMES)
    expected = page_order(made, TIMES)
    walked: list[Hash] = []
    position = None
    while batch := await repo.hashes_after(position, 2):
        walked.extend(s.hash for s in batch)
        position = batch[-1].position
    assert walked == expected
    assert await repo.count_hashes() == len(TIMES)


async def test_prune_removes_every_record_and_queues_the_files(repo: SqliteRepo) -> None:
    h, alias, identifier = await upload(repo, "gone")
    other, other_alias, _ = await upload(repo, "kept")
    await upload(repo, "gone", alias="second.jpeg")  # a second alias of the same file
    variant, _ = await commit_variant(repo, h, "thumbnail=10")
    await repo.relate_blurhash(h, "LKO2?U%2Tw=w]~RBVZRi};RPxuwH")
    before = remove_jobs(repo)

    assert await repo.prune_hash(h, "another-identifier") is None  # not this file's
    assert await repo.find_original(alias) is not None

    queued = await repo.prune_hash(h, identifier, counter="pruned")
    assert queued == [identifier, variant]
    assert remove_jobs(repo)[len(before) :] == [[identifier, variant]]
    assert await repo.find_original(alias) is None
    assert await repo.find_original("second.jpeg") is None
    assert await repo.details(identifier) is None and await repo.details(variant) is None
    assert await repo.blurhash(h) is None
    assert await repo.counter("pruned") == 1
    assert await repo.find_original(other_alias) is not None  # others untouched
    assert await repo.prune_hash(h, identifier, counter="pruned") is None  # idempotent
    assert await repo.counter("pruned") == 1
    assert other in [e.hash for e in (await repo.hash_page(limit=5)).hashes]


async def test_blurhash_is_kept_with_the_file(repo: SqliteRepo) -> None:
    h, _, _ = await upload(repo, "b")
    assert await repo.blurhash(h) is None
    await repo.relate_blurhash(h, "L00000fQfQfQfQfQfQfQfQfQfQfQ")
    assert await repo.blurhash(h) == "L00000fQfQfQfQfQfQfQfQfQfQfQ"


async def test_settings_and_the_not_found_image(repo: SqliteRepo) -> None:
    assert await repo.setting("k") is None and await repo.counter("k") == 0
    await repo.set_settings({"k": b"v", "n": (5).to_bytes(8, "big")})
    assert await repo.setting("k") == b"v" and await repo.counter("n") == 5
    await repo.set_settings({"k": None})
    assert await repo.setting("k") is None

    assert repo.not_found_now() is None
    assert await repo.set_not_found("unknown.png") is False
    assert repo.not_found_now() is None
    h, alias, identifier = await upload(repo, "nf")
    assert await repo.set_not_found(alias) is True
    found = repo.not_found_now()
    assert found is not None
    assert found[0] == alias
    assert found[1].hash == h and found[1].identifier == identifier
    assert found[1].details is not None and found[1].details.width == 640
    await repo.remove_alias(alias)
    assert repo.not_found_now() is None  # its alias is gone: nothing is served


def rows(db: Path) -> list[tuple[object, ...]]:
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return conn.execute("SELECT alias, hash FROM aliases ORDER BY alias").fetchall()
    finally:
        conn.close()


async def test_export_is_a_consistent_standalone_copy_while_writes_go_on(
    repo: SqliteRepo, tmp_path: Path
) -> None:
    for i in range(20):
        await upload(repo, f"before-{i}")
    exports = tmp_path / "exports"
    async with trio.open_nursery() as nursery:

        async def write_more() -> None:
            for i in range(20):
                await upload(repo, f"during-{i}")

        nursery.start_soon(write_more)
        folder = await repo.export(exports)
    assert folder.parent == exports
    assert sorted(p.name for p in exports.iterdir()) == [folder.name]  # nothing partial
    assert folder.name.endswith("Z") and "T" in folder.name
    db = folder / DB_FILE_NAME
    assert sorted(p.name for p in folder.iterdir()) == [DB_FILE_NAME]  # no -wal, no -shm
    copied = rows(db)
    assert len(copied) >= 20
    # Every file the copy names has its hash row: one snapshot, not a torn read.
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        orphans = conn.execute(
            "SELECT count(*) FROM aliases a LEFT JOIN hashes h ON h.hash = a.hash"
            " WHERE h.hash IS NULL"
        ).fetchall()
        assert orphans == [(0,)]
        assert conn.pragma("journal_mode") == "delete"
        assert conn.pragma("integrity_check") == "ok"
    finally:
        conn.close()
    # The copy opens as a repo of its own, with the same answers.
    async with open_sqlite_repo(folder) as restored:
        for alias, _ in copied:
            assert isinstance(alias, str)
            assert await restored.find_original(alias) is not None
        assert await restored.count_hashes() == len(copied)


async def test_export_into_an_unwritable_place_is_a_repo_error(
    repo: SqliteRepo, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(RepoError):
        await repo.export(blocker / "exports")
    assert count(repo._loop_reader, "hashes") == 0
