"""FileStore on real files (and MemoryStore against the same contract)."""

from __future__ import annotations

import inspect
import os
import re
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from pictrs_trio.rules.errors import ErrorCode, StoreError, StoreNotFound
from pictrs_trio.store import Store
from pictrs_trio.store import file as file_module
from pictrs_trio.store.file import FileStore, open_file_store
from pictrs_trio.store.memory import MemoryStore
from pictrs_trio.store.object import ObjectStore

LAYOUT = re.compile(r"(?:[0-9a-f]{2}/){10}[0-9a-f]{12}\.jpeg")
DATA = bytes(range(256)) * 1200  # 300 KiB: several 64 KiB chunks, not a multiple of it


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FileStore]:
    async with open_file_store(tmp_path / "files") as opened:
        yield opened


def spool(tmp_path: Path, data: bytes = DATA, name: str = "spool.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


async def collect(chunks: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in chunks]


@pytest.mark.parametrize("cls", [FileStore, MemoryStore, ObjectStore])
def test_implements_every_protocol_method(cls: type) -> None:
    for name in (n for n in vars(Store) if not n.startswith("_")):
        impl = getattr(cls, name)
        assert list(inspect.signature(impl).parameters) == list(
            inspect.signature(getattr(Store, name)).parameters
        ), name
        proto_is_gen = name in ("read", "identifiers")
        assert inspect.isasyncgenfunction(impl) is proto_is_gen, name


async def test_open_creates_root(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"
    async with open_file_store(root) as store:
        assert root.is_dir()
        await store.health()


async def test_save_file_read_length_local_path(tmp_path: Path, store: FileStore) -> None:
    src = spool(tmp_path)
    ident = await store.save_file(
        src, identifier=store.new_identifier(".jpeg"), content_type="image/jpeg"
    )
    assert LAYOUT.fullmatch(ident)
    assert not src.exists()  # consumed
    path = store.root / ident
    assert path.read_bytes() == DATA
    assert path.stat().st_mode & 0o777 == 0o644
    assert await store.length(ident) == len(DATA)
    assert await store.local_path(ident) == path

    chunks = await collect(store.read(ident))
    assert b"".join(chunks) == DATA
    assert all(len(c) <= 64 * 1024 for c in chunks)
    assert len(chunks) == 5


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, None),
        (0, 1),
        (10, 20),
        (65535, 65537),
        (100_000, None),
        (0, len(DATA)),
        (len(DATA) - 1, None),
        (len(DATA), None),
        (5, 10**9),
        (len(DATA) + 5, None),
    ],
)
async def test_read_ranges(tmp_path: Path, store: FileStore, start: int, end: int | None) -> None:
    ident = await store.save_bytes(
        DATA, identifier=store.new_identifier(".jpeg"), content_type="image/jpeg"
    )
    got = b"".join(await collect(store.read(ident, start, end)))
    assert got == DATA[start:end]


async def test_large_read_crosses_thread_batches(store: FileStore) -> None:
    big = os.urandom(3 * 1024 * 1024 + 17)
    ident = await store.save_bytes(
        big, identifier=store.new_identifier(".jpeg"), content_type="image/jpeg"
    )
    assert b"".join(await collect(store.read(ident))) == big
    assert (
        b"".join(await collect(store.read(ident, 1_048_570, 2_100_000))) == big[1_048_570:2_100_000]
    )


async def test_missing_and_unsafe_identifiers(store: FileStore) -> None:
    for bad in ("no/such/file.jpeg", "../escape", "/etc/passwd", "a/../../x", "a\x00b"):
        with pytest.raises(StoreNotFound):
            await store.length(bad)
        with pytest.raises(StoreNotFound):
            await collect(store.read(bad))
        with pytest.raises(StoreNotFound):
            await store.local_path(bad)
    await store.remove("no/such/file.jpeg")  # missing is fine
    for bad in ("../escape", "/etc/passwd", ""):
        with pytest.raises(StoreError) as info:
            await store.remove(bad)
        assert not isinstance(info.value, StoreNotFound)


async def test_directory_is_not_a_file(store: FileStore) -> None:
    ident = await store.save_bytes(
        b"x", identifier=store.new_identifier(".jpeg"), content_type="image/jpeg"
    )
    directory = ident.rsplit("/", 1)[0]
    with pytest.raises(StoreNotFound):
        await store.length(directory)
    with pytest.raises(StoreNotFound):
        await collect(store.read(directory))


async def test_remove_prunes_empty_parents(tmp_path: Path, store: FileStore) -> None:
    a = await store.save_bytes(
        b"a", identifier=store.new_identifier(".jpeg"), content_type="image/jpeg"
    )
    b = await store.save_bytes(
        b"b", identifier=store.new_identifier(".jpeg"), content_type="image/jpeg"
    )
    await store.remove(a)
    assert not (store.root / a).exists()
    assert (store.root / b).read_bytes() == b"b"
    # a's private directories are gone, shared ancestors of b stay.
    a_parts, b_parts = a.split("/"), b.split("/")
    shared = 0
    while a_parts[shared] == b_parts[shared]:
        shared += 1
    assert not (store.root / "/".join(a_parts[: shared + 1])).exists()
    await store.remove(b)
    assert store.root.is_dir()
    assert list(store.root.iterdir()) == []
    await store.remove(b)  # twice is fine


async def test_identifiers_skip_temp_files(store: FileStore) -> None:
    made = {
        await store.save_bytes(
            bytes([n]), identifier=store.new_identifier(".jpeg"), content_type="image/jpeg"
        )
        for n in range(5)
    }
    first = next(iter(made))
    temp = (store.root / first).parent / ".leftover.jpeg.tmp-abc"
    temp.write_bytes(b"partial")
    assert {i async for i in store.identifiers()} == made


async def test_remove_partial_takes_what_an_unfinished_save_left(store: FileStore) -> None:
    """Recovery of a dead process's write: the file (if it got there) and the temporary
    files of exactly that identifier go; a neighbour's temporary file stays."""
    ident = store.new_identifier(".jpeg")
    final = store.root / ident
    final.parent.mkdir(parents=True)
    mine = final.parent / f".{final.name}.tmp-0123456789ab"
    mine.write_bytes(b"half")
    other = final.parent / ".other.jpeg.tmp-0123456789ab"
    other.write_bytes(b"someone else's")
    await store.remove(ident)  # an ordinary remove leaves temporary files alone
    assert mine.exists()
    await store.remove(ident, partial=True)
    assert not mine.exists()
    assert other.read_bytes() == b"someone else's"
    other.unlink()
    await store.remove(ident, partial=True)  # twice is fine; the empty directories go
    assert not (store.root / ident.split("/")[0]).exists()


async def test_health_fails_when_not_writable(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    store = FileStore(tmp_path / "ro")
    await store.prepare()
    await store.health()
    (tmp_path / "ro").chmod(0o500)
    try:
        with pytest.raises(StoreError):
            await store.health()
    finally:
        (tmp_path / "ro").chmod(0o700)
    assert list((tmp_path / "ro").iterdir()) == []


async def test_health_fails_when_root_missing(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        await FileStore(tmp_path / "never-made").health()


async def test_failed_save_missing_src_leaves_nothing(tmp_path: Path, store: FileStore) -> None:
    with pytest.raises(StoreError):
        await store.save_file(
            tmp_path / "gone", identifier=store.new_identifier(".jpeg"), content_type="image/jpeg"
        )
    assert all_files(store.root) == []
    assert list(store.root.iterdir()) == []  # directories made for it were pruned


async def test_failed_save_readonly_root_leaves_nothing(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    store = FileStore(tmp_path / "ro")
    await store.prepare()
    src = spool(tmp_path)
    (tmp_path / "ro").chmod(0o500)
    try:
        with pytest.raises(StoreError):
            await store.save_file(
                src, identifier=store.new_identifier(".jpeg"), content_type="image/jpeg"
            )
        with pytest.raises(StoreError):
            await store.save_bytes(
                DATA, identifier=store.new_identifier(".jpeg"), content_type="image/jpeg"
            )
    finally:
        (tmp_path / "ro").chmod(0o700)
    assert list((tmp_path / "ro").iterdir()) == []
    assert src.read_bytes() == DATA  # left untouched on failure


async def test_failed_save_blocked_directory_leaves_nothing(
    tmp_path: Path, store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real filesystem failure that root cannot bypass: a directory level of the new
    identifier is occupied by a regular file (ENOTDIR)."""
    (store.root / "01").write_bytes(b"in the way")
    monkeypatch.setattr(file_module.ids, "new_identifier", lambda ext: "01/02/03/x" + ext)
    src = spool(tmp_path)
    with pytest.raises(StoreError):
        await store.save_file(
            src, identifier=store.new_identifier(".jpeg"), content_type="image/jpeg"
        )
    with pytest.raises(StoreError):
        await store.save_bytes(
            DATA, identifier=store.new_identifier(".jpeg"), content_type="image/jpeg"
        )
    assert [p.name for p in store.root.iterdir()] == ["01"]
    assert (store.root / "01").read_bytes() == b"in the way"
    assert src.read_bytes() == DATA


async def test_failed_copy_removes_temp(
    tmp_path: Path, store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Force the copy path (no hard link possible) and make the final link fail after the
    temp file is complete: no temp, no final, no directories remain."""
    real_link = os.link
    calls: list[str] = []

    def refusing_link(src: object, dst: object, **kw: object) -> None:
        calls.append(str(src))
        if len(calls) == 1:  # the direct link of src: "cross-device"
            raise OSError(18, "Invalid cross-device link")
        raise PermissionError(13, "Permission denied")  # temp -> final

    monkeypatch.setattr(file_module.os, "link", refusing_link)
    src = spool(tmp_path)
    with pytest.raises(StoreError):
        await store.save_file(
            src, identifier=store.new_identifier(".jpeg"), content_type="image/jpeg"
        )
    monkeypatch.setattr(file_module.os, "link", real_link)
    assert len(calls) == 2
    assert ".tmp-" in calls[1]
    assert all_files(store.root) == []
    assert list(store.root.iterdir()) == []
    assert src.read_bytes() == DATA


async def test_copy_path_when_src_on_other_fs_or_not_linkable(
    tmp_path: Path, store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_link = os.link

    def no_direct_link(src: object, dst: object, **kw: object) -> None:
        if ".tmp-" not in str(src):
            raise OSError(18, "Invalid cross-device link")
        real_link(src, dst, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(file_module.os, "link", no_direct_link)
    src = spool(tmp_path)
    src_inode = src.stat().st_ino
    ident = await store.save_file(
        src, identifier=store.new_identifier(".jpeg"), content_type="image/jpeg"
    )
    assert (store.root / ident).read_bytes() == DATA
    assert (store.root / ident).stat().st_ino != src_inode  # a real copy
    assert not src.exists()
    assert [p.name for p in all_files(store.root)] == [ident.rsplit("/", 1)[1]]


async def test_never_overwrites(tmp_path: Path, store: FileStore) -> None:
    taken = await store.save_bytes(
        b"first", identifier=store.new_identifier(".jpeg"), content_type="image/jpeg"
    )
    with pytest.raises(StoreError) as info:
        await store.save_bytes(b"second", identifier=taken, content_type="image/jpeg")
    assert info.value.code == ErrorCode.FILE_EXISTS
    src = spool(tmp_path)
    with pytest.raises(StoreError) as info:
        await store.save_file(src, identifier=taken, content_type="image/jpeg")
    assert info.value.code == ErrorCode.FILE_EXISTS
    assert (store.root / taken).read_bytes() == b"first"
    assert [p.name for p in all_files(store.root)] == [taken.rsplit("/", 1)[1]]


async def test_identifier_ignores_client_input(tmp_path: Path, store: FileStore) -> None:
    src = spool(tmp_path, name="..%2f..%2fevil.jpeg")
    ident = await store.save_file(
        src, identifier=store.new_identifier(".jpeg"), content_type="../../x"
    )
    assert LAYOUT.fullmatch(ident)
    with pytest.raises(ValueError, match="extension"):
        store.new_identifier("/../../etc")
    with pytest.raises(StoreNotFound):
        await store.save_bytes(b"x", identifier="../../etc/x", content_type="image/jpeg")
    assert {i async for i in store.identifiers()} == {ident}


async def test_concurrent_saves_and_removes(store: FileStore) -> None:
    """Removes prune directories while saves create them; every save must still land."""
    kept: list[tuple[str, bytes]] = []

    async def save_and_maybe_remove(n: int) -> None:
        data = n.to_bytes(4, "big") * 100
        ident = await store.save_bytes(
            data, identifier=store.new_identifier(".jpeg"), content_type="image/jpeg"
        )
        if n % 2:
            await store.remove(ident)
        else:
            kept.append((ident, data))

    async with trio.open_nursery() as nursery:
        for n in range(60):
            nursery.start_soon(save_and_maybe_remove, n)
    assert len(kept) == 30
    for ident, data in kept:
        assert (store.root / ident).read_bytes() == data
    assert {i async for i in store.identifiers()} == {i for i, _ in kept}


async def test_save_timings(tmp_path: Path, samples: dict[str, Path]) -> None:
    """A 3 MB JPEG-sized save on the link path and the copy path; numbers printed."""
    jpeg = samples["cat.jpg"].read_bytes()
    payload = (jpeg * (3_000_000 // len(jpeg) + 1))[:3_000_000]
    async with open_file_store(tmp_path / "timed") as store:
        linked: list[float] = []
        written: list[float] = []
        reads: list[float] = []
        for n in range(15):
            src = spool(tmp_path, payload, name=f"up{n}.jpeg")
            start = time.perf_counter()
            ident = await store.save_file(
                src, identifier=store.new_identifier(".jpeg"), content_type="image/jpeg"
            )
            linked.append(time.perf_counter() - start)
            start = time.perf_counter()
            await store.save_bytes(
                payload, identifier=store.new_identifier(".jpeg"), content_type="image/jpeg"
            )
            written.append(time.perf_counter() - start)
            start = time.perf_counter()
            total = sum([len(c) async for c in store.read(ident)])
            reads.append(time.perf_counter() - start)
            assert total == len(payload)
    link_ms = statistics.median(linked) * 1000
    write_ms = statistics.median(written) * 1000
    read_ms = statistics.median(reads) * 1000
    print(
        f"3 MB save_file (link) {link_ms:.2f} ms, save_bytes (write) {write_ms:.2f} ms,"
        f" read all {read_ms:.2f} ms"
    )
    assert link_ms < 100  # loose: fsync cost depends on the disk


# --- MemoryStore: same contract ---------------------------------------------------------------


async def test_memory_store_contract(tmp_path: Path) -> None:
    store = MemoryStore()
    src = spool(tmp_path)
    ident = await store.save_file(
        src, identifier=store.new_identifier(".jpeg"), content_type="image/jpeg"
    )
    assert LAYOUT.fullmatch(ident)
    assert not src.exists()
    assert await store.length(ident) == len(DATA)
    assert await store.local_path(ident) is None
    chunks = await collect(store.read(ident))
    assert b"".join(chunks) == DATA
    assert max(len(c) for c in chunks) == 64 * 1024
    assert b"".join(await collect(store.read(ident, 70_000, 70_010))) == DATA[70_000:70_010]
    assert {i async for i in store.identifiers()} == {ident}
    await store.health()
    with pytest.raises(StoreNotFound):
        await store.length("nope")
    with pytest.raises(StoreNotFound):
        await collect(store.read("nope"))
    with pytest.raises(StoreError):
        await store.save_file(
            tmp_path / "gone", identifier=store.new_identifier(".jpeg"), content_type="image/jpeg"
        )
    with pytest.raises(StoreError):
        await store.remove("../x")
    await store.remove(ident)
    await store.remove(ident)
    assert {i async for i in store.identifiers()} == set()
