"""A repo and a file store filled cheaply for the migrate-store tests: tiny made-up files
committed the way the server commits them (an intent, the bytes, one transaction), plus
what to check after a migration."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path

import apsw
import msgspec
import trio

from journal import Journal
from pictrs_trio.repo.records import Details, Hash, PendingUpload
from pictrs_trio.repo.sqlite import DB_FILE_NAME, SqliteRepo
from pictrs_trio.rules import ids, jobs
from pictrs_trio.rules.formats import Fmt, Kind, MediaFormat
from pictrs_trio.store import Store

PNG = MediaFormat(kind=Kind.IMAGE, fmt=Fmt.PNG)
WEBP = MediaFormat(kind=Kind.IMAGE, fmt=Fmt.WEBP)
VARIANT = "thumbnail.webp"


class Filled(msgspec.Struct, kw_only=True):
    """What was stored: bytes per alias (original), per (alias, variant), per motion still,
    and per pending upload id."""

    originals: dict[str, bytes] = {}
    variants: dict[str, bytes] = {}  # alias -> the VARIANT's bytes
    motions: dict[str, bytes] = {}  # alias -> the motion still's bytes
    uploads: dict[str, bytes] = {}  # upload id -> raw bytes

    @property
    def files(self) -> int:
        return len(self.originals) + len(self.variants) + len(self.motions) + len(self.uploads)


def details(fmt: MediaFormat = PNG) -> Details:
    return Details(
        width=1,
        height=1,
        frames=None,
        format=fmt,
        created_at=dt.datetime(2024, 6, 25, tzinfo=dt.UTC),
    )


async def _save(store: Store, journal: Journal, data: bytes, extension: str) -> str:
    identifier = store.new_identifier(extension)
    await journal.intend([identifier], jobs.CLEANUP, jobs.RemoveFiles(identifiers=[identifier]))
    await store.save_bytes(data, identifier=identifier, content_type="image/png")
    return identifier


async def fill(
    repo: SqliteRepo,
    store: Store,
    n: int,
    *,
    variant_every: int = 3,
    motion_every: int = 5,
    uploads: int = 0,
    size: int = 64,
) -> Filled:
    """``n`` originals (every ``variant_every``-th with a variant, every ``motion_every``-th
    with a motion still) and ``uploads`` pending backgrounded uploads, in ``store``."""
    async with trio.open_nursery() as nursery:
        journal = Journal(repo.journal_db())
        await nursery.start(journal.run_owner)  # unregistered on the way out
        filled = await _fill(repo, store, journal, n, variant_every, motion_every, uploads, size)
        nursery.cancel_scope.cancel()
    return filled


async def _fill(
    repo: SqliteRepo,
    store: Store,
    journal: Journal,
    n: int,
    variant_every: int,
    motion_every: int,
    uploads: int,
    size: int,
) -> Filled:
    filled = Filled()
    for i in range(n):
        data = f"original {i} ".encode() + os.urandom(size)
        h = Hash(sha256=hashlib.sha256(data).digest(), size=len(data), format=PNG)
        alias = ids.new_alias(".png")
        await repo.commit_upload(
            hash=h,
            identifier=await _save(store, journal, data, ".png"),
            details=details(),
            alias=alias,
            delete_token=ids.new_delete_token(),
            owner=journal.owner,
        )
        filled.originals[alias] = data
        if variant_every and i % variant_every == 0:
            variant = f"variant {i} ".encode() + os.urandom(size)
            identifier = await _save(store, journal, variant, ".webp")
            await repo.commit_variant(h, VARIANT, identifier, details(WEBP), owner=journal.owner)
            filled.variants[alias] = variant
        if motion_every and i % motion_every == 0:
            still = f"motion {i} ".encode() + os.urandom(size)
            identifier = await _save(store, journal, still, ".png")
            await repo.commit_motion(h, identifier, details(), owner=journal.owner)
            filled.motions[alias] = still
    for i in range(uploads):
        raw = f"raw {i} ".encode() + os.urandom(size)
        identifier = await _save(store, journal, raw, "")
        upload_id = str(ids.uuid7())
        await repo.create_uploads(
            [PendingUpload(upload_id=upload_id, raw_identifier=identifier)], owner=journal.owner
        )
        filled.uploads[upload_id] = raw
    assert await journal.intended() == set()  # every write committed
    return filled


def files_on_disk(root: Path) -> list[Path]:
    """Every file under ``root``, temporary ones included."""
    return sorted(Path(d) / f for d, _, names in os.walk(root) for f in names)


def db_rows(db_dir: Path, sql: str) -> list[tuple[object, ...]]:
    conn = apsw.Connection(str(db_dir / DB_FILE_NAME), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        conn.set_busy_timeout(5000)
        return [tuple(row) for row in conn.execute(sql).fetchall()]
    finally:
        conn.close()


def named_files(db_dir: Path) -> set[str]:
    """Every identifier a row names."""
    return {
        str(i)
        for (i,) in db_rows(
            db_dir,
            "SELECT identifier FROM hashes UNION SELECT motion_identifier FROM hashes"
            " WHERE motion_identifier IS NOT NULL UNION SELECT identifier FROM variants"
            " UNION SELECT raw_identifier FROM uploads WHERE raw_identifier IS NOT NULL",
        )
    }


def stored(db_dir: Path, filled: Filled) -> dict[str, bytes]:
    """identifier -> the bytes it must hold, by what the rows name now."""
    expected: dict[str, bytes] = {}
    for alias, data in filled.originals.items():
        ((identifier,),) = db_rows(
            db_dir,
            "SELECT h.identifier FROM aliases a JOIN hashes h ON h.hash = a.hash"
            f" WHERE a.alias = '{alias}'",
        )
        expected[str(identifier)] = data
    for alias, data in filled.variants.items():
        ((identifier,),) = db_rows(
            db_dir,
            "SELECT v.identifier FROM aliases a JOIN variants v ON v.hash = a.hash"
            f" WHERE a.alias = '{alias}'",
        )
        expected[str(identifier)] = data
    for alias, data in filled.motions.items():
        ((identifier,),) = db_rows(
            db_dir,
            "SELECT h.motion_identifier FROM aliases a JOIN hashes h ON h.hash = a.hash"
            f" WHERE a.alias = '{alias}'",
        )
        expected[str(identifier)] = data
    for upload_id, data in filled.uploads.items():
        ((identifier,),) = db_rows(
            db_dir, f"SELECT raw_identifier FROM uploads WHERE id = '{upload_id}'"
        )
        expected[str(identifier)] = data
    return expected


def assert_all_in(root: Path, db_dir: Path, filled: Filled) -> None:
    """Every file the rows name is in the store at ``root`` with the bytes it was stored
    with, and the store holds nothing else (no copy twice, no half-written file)."""
    expected = stored(db_dir, filled)
    assert len(expected) == filled.files
    assert set(expected) == named_files(db_dir)
    for identifier, data in expected.items():
        assert (root / identifier).read_bytes() == data, identifier
    on_disk = files_on_disk(root)
    assert sorted(p.relative_to(root).as_posix() for p in on_disk) == sorted(expected)
