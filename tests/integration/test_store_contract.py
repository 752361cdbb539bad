"""The Store contract, on every store: the filesystem, and object storage (moto's S3 server on
loopback, tests/s3.py) in path style and in virtual-host style.

Virtual-host style names the bucket in the host (``<bucket>.s3.test``), which nothing on
loopback resolves: ``LoopbackTransport`` connects to 127.0.0.1 whatever the host and sends
the request's own Host header, which moto reads the bucket from.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import trio

from pictrs_trio.config import FilesystemStore, ObjectStorageStore
from pictrs_trio.rules.errors import StoreError, StoreNotFound
from pictrs_trio.store import Store, open_store
from pictrs_trio.store import file as file_module
from pictrs_trio.store import object as object_module
from pictrs_trio.store.file import FileStore
from pictrs_trio.store.memory import MemoryStore
from pictrs_trio.store.object import ObjectStore, open_object_store
from tests.s3 import LoopbackTransport, MotoServer, ThrottledProxy, small_send_buffer

DATA = bytes(range(256)) * 1200  # 300 KiB: several 64 KiB chunks, not a multiple of it
MIB = 1024 * 1024
KINDS = ["file", "object", "object-vhost"]


class Opened:
    """A store under test and what the tests need to look behind it."""

    def __init__(
        self, kind: str, store: Store, moto: MotoServer | None = None, bucket: str = ""
    ) -> None:
        self.kind, self.store, self.moto, self.bucket = kind, store, moto, bucket
        self.transport: LoopbackTransport | None = None


@pytest.fixture(params=KINDS)
async def opened(
    request: pytest.FixtureRequest, tmp_path: Path, moto: MotoServer
) -> AsyncIterator[Opened]:
    kind = request.param
    if kind == "file":
        async with open_store(FilesystemStore(path=str(tmp_path / "files"))) as store:
            yield Opened(kind, store)
        return
    bucket = moto.create_bucket()
    transport = LoopbackTransport()
    config = moto.config(bucket)
    if kind == "object-vhost":
        config = moto.config(bucket, endpoint=f"http://s3.test:{moto.port}", use_path_style=False)
    async with open_object_store(config, transport=transport) as store:
        result = Opened(kind, store, moto, bucket)
        result.transport = transport
        yield result


def spool(tmp_path: Path, data: bytes = DATA, name: str = "spool.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


async def collect(chunks: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in chunks]


async def listed(store: Store) -> list[str]:
    return sorted([identifier async for identifier in store.identifiers()])


async def test_save_file_length_read(tmp_path: Path, opened: Opened) -> None:
    store = opened.store
    src = spool(tmp_path)
    ident = await store.save_file(
        src, identifier=store.new_identifier(".jpeg"), content_type="image/jpeg"
    )
    assert not src.exists()  # consumed
    assert await store.length(ident) == len(DATA)
    chunks = await collect(store.read(ident))
    assert b"".join(chunks) == DATA
    assert all(len(c) <= 64 * 1024 for c in chunks)
    assert await listed(store) == [ident]
    if opened.moto is not None:
        assert opened.moto.keys(opened.bucket) == [ident]  # the key is the identifier
        assert opened.moto.get(opened.bucket, ident) == DATA
        assert await store.local_path(ident) is None
        assert store.read_now(ident, 10 * MIB) is None


async def test_save_file_keep_source_copies_and_leaves_the_source(
    tmp_path: Path, opened: Opened
) -> None:
    """Another store's file (migrate-store): read, stored, and left exactly as it was, its
    inode shared with nothing."""
    store = opened.store
    src = spool(tmp_path)
    os.chmod(src, 0o600)
    before = os.stat(src)
    ident = await store.save_file(
        src, identifier=store.new_identifier(".png"), content_type="image/png", keep_source=True
    )
    after = os.stat(src)
    assert src.read_bytes() == DATA
    assert (after.st_ino, after.st_mode, after.st_nlink, after.st_mtime_ns) == (
        before.st_ino,
        before.st_mode,
        1,
        before.st_mtime_ns,
    )
    assert b"".join(await collect(store.read(ident))) == DATA
    local = await store.local_path(ident)
    if local is not None:  # a copy of its own, not a second name of the source
        stored = os.stat(local)
        assert stored.st_ino != before.st_ino and stored.st_nlink == 1
        assert stored.st_mode & 0o777 == 0o644
        assert [p.name for p in local.parent.iterdir()] == [local.name]  # no temp file left
    await store.remove(ident)
    assert src.read_bytes() == DATA


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
        (7, 7),
    ],
)
async def test_read_ranges(opened: Opened, start: int, end: int | None) -> None:
    store = opened.store
    ident = await store.save_bytes(
        DATA, identifier=store.new_identifier(".jpeg"), content_type="image/jpeg"
    )
    assert b"".join(await collect(store.read(ident, start, end))) == DATA[start:end]


OPEN_READS = [
    (0, None),
    (0, 1),
    (10, 20),
    (65535, 65537),
    (100_000, None),
    (len(DATA) - 1, None),
    (len(DATA), None),
    (5, 10**9),
    (len(DATA) + 5, None),
    (len(DATA) + 5, len(DATA) + 10),
    (7, 7),
]


async def check_open_read(store: Store, ident: str, start: int, end: int | None) -> None:
    async with store.open_read(ident, start, end) as reading:
        assert reading.length == len(DATA)
        chunks = await collect(reading.chunks)
    assert b"".join(chunks) == DATA[start:end]
    assert all(len(c) <= 64 * 1024 for c in chunks)


@pytest.mark.parametrize(("start", "end"), OPEN_READS)
async def test_open_read_gives_the_length_and_the_bytes(
    opened: Opened, start: int, end: int | None
) -> None:
    store = opened.store
    ident = await store.save_bytes(
        DATA, identifier=store.new_identifier(".jpeg"), content_type="image/jpeg"
    )
    before = len(opened.transport.sent) if opened.transport is not None else 0
    await check_open_read(store, ident, start, end)
    if opened.transport is not None:
        sent = [method for method, _, _ in opened.transport.sent[before:]]
        if end is not None and end <= start:
            assert sent == ["HEAD"]  # no bytes asked for: the length alone
        else:
            assert sent == ["GET"]  # one request, where length() + read() made two
    with pytest.raises(StoreNotFound):
        async with store.open_read(store.new_identifier(".jpeg")):
            pass
    with pytest.raises(StoreNotFound):
        async with store.open_read("../escape"):
            pass


async def test_open_read_of_the_memory_store() -> None:
    store = MemoryStore()
    ident = await store.save_bytes(DATA, identifier=store.new_identifier(".png"), content_type="x")
    for start, end in OPEN_READS:
        await check_open_read(store, ident, start, end)
    with pytest.raises(StoreNotFound):
        async with store.open_read(store.new_identifier(".png")):
            pass


async def test_open_read_of_an_empty_file(opened: Opened) -> None:
    store = opened.store
    ident = await store.save_bytes(b"", identifier=store.new_identifier(""), content_type="x/y")
    for start, end in ((0, None), (0, 10), (3, None)):
        async with store.open_read(ident, start, end) as reading:
            assert reading.length == 0
            assert await collect(reading.chunks) == []


async def test_empty_file(opened: Opened) -> None:
    store = opened.store
    ident = await store.save_bytes(b"", identifier=store.new_identifier(""), content_type="x/y")
    assert await store.length(ident) == 0
    assert b"".join(await collect(store.read(ident))) == b""


async def test_missing_and_unsafe_identifiers(opened: Opened) -> None:
    store = opened.store
    for bad in ("no/such/file.jpeg", "../escape", "/etc/passwd", "a/../../x", "a\x00b"):
        with pytest.raises(StoreNotFound):
            await store.length(bad)
        with pytest.raises(StoreNotFound):
            await collect(store.read(bad))
        with pytest.raises(StoreNotFound):
            await collect(store.read(bad, 5, 5))
    await store.remove("no/such/file.jpeg")  # missing is fine
    for bad in ("../escape", "/etc/passwd", ""):
        with pytest.raises(StoreError) as info:
            await store.remove(bad)
        assert not isinstance(info.value, StoreNotFound)


async def test_remove_is_idempotent(opened: Opened) -> None:
    store = opened.store
    keep = await store.save_bytes(b"a", identifier=store.new_identifier(".png"), content_type="x")
    gone = await store.save_bytes(b"b", identifier=store.new_identifier(".png"), content_type="x")
    await store.remove(gone)
    await store.remove(gone)
    await store.remove(gone, partial=True)
    with pytest.raises(StoreNotFound):
        await store.length(gone)
    assert await listed(store) == [keep]


async def _leave_unfinished(opened: Opened, identifier: str) -> None:
    """What a save of ``identifier`` leaves when its process dies half-way: a temp file
    (filesystem), an unfinished multipart upload with a part in it (object storage)."""
    store = opened.store
    if isinstance(store, FileStore):
        final = store.root / identifier
        final.parent.mkdir(parents=True, exist_ok=True)
        (final.parent / f".{final.name}.tmp-0123456789ab").write_bytes(b"half")
        return
    assert isinstance(store, ObjectStore)
    answer = await store._request("POST", identifier, query={"uploads": ""})
    upload_id = answer.body.split(b"<UploadId>")[1].split(b"</UploadId>")[0].decode()
    query = {"partNumber": "1", "uploadId": upload_id}
    assert (await store._request("PUT", identifier, query=query, body=b"x" * 1000)).status == 200


async def test_partial_remove_clears_an_unfinished_save(opened: Opened) -> None:
    store = opened.store
    ident = store.new_identifier(".mp4")
    other = store.new_identifier(".mp4")
    await _leave_unfinished(opened, ident)
    await _leave_unfinished(opened, other)
    if opened.moto is not None:
        assert sorted(opened.moto.uploads(opened.bucket)) == sorted([ident, other])
    await store.remove(ident, partial=True)
    if opened.moto is not None:
        assert opened.moto.uploads(opened.bucket) == [other]  # only that key's
    else:
        assert isinstance(store, FileStore)
        left = [p.name for p in store.root.rglob("*") if p.is_file()]
        assert left == [f".{Path(other).name}.tmp-0123456789ab"]


async def test_identifiers_lists_every_file(
    opened: Opened, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = opened.store
    monkeypatch.setattr(object_module, "LIST_PAGE", 2)  # object storage: several pages
    made = []
    for n in range(5):
        ident = store.new_identifier(".webp")
        made.append(await store.save_bytes(bytes([n]), identifier=ident, content_type="x"))
    await store.health()  # its probe is never listed
    assert await listed(store) == sorted(made)


async def test_identifiers_resume_after_any_of_them(
    opened: Opened, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing picks up after any identifier it gave, in the same order (the store
    audit's batches): pages of two, and names whose order by path and by text differ."""
    store = opened.store
    monkeypatch.setattr(object_module, "LIST_PAGE", 2)
    monkeypatch.setattr(file_module, "LIST_BATCH", 2)
    made = {store.new_identifier(".webp") for _ in range(4)}
    made |= {"ab/cd.png", "ab-cd/ef.png", "ab.png", "ab/cd/ef.png", "abc/de.png"}
    for ident in made:
        await store.save_bytes(b"x", identifier=ident, content_type="x")
    full = [identifier async for identifier in store.identifiers()]
    assert sorted(full) == sorted(made)  # each once
    for n, after in enumerate(full):
        assert [i async for i in store.identifiers(after=after)] == full[n + 1 :], after


async def test_health(opened: Opened) -> None:
    await opened.store.health()
    await opened.store.health(write=False)
    assert await listed(opened.store) == []


async def test_public_url(opened: Opened, moto: MotoServer) -> None:
    ident = opened.store.new_identifier(".png")
    assert opened.store.public_url(ident) is None
    if opened.moto is None:
        return
    config = moto.config(opened.bucket, public_endpoint="https://cdn.example.com/media/")
    async with open_object_store(config) as store:
        assert store.public_url(ident) == f"https://cdn.example.com/media/{ident}"
    config = moto.config(opened.bucket, public_endpoint="https://cdn.example.com")
    async with open_object_store(config) as store:
        assert store.public_url(ident) == f"https://cdn.example.com/{ident}"


# --- object storage only ---------------------------------------------------------------------


def only_object(opened: Opened) -> tuple[ObjectStore, MotoServer, LoopbackTransport]:
    if not isinstance(opened.store, ObjectStore):
        pytest.skip("object storage only")
    assert opened.moto is not None and opened.transport is not None
    return opened.store, opened.moto, opened.transport


async def test_addressing_style_reaches_the_bucket(opened: Opened) -> None:
    store, moto, transport = only_object(opened)
    await store.save_bytes(b"x", identifier=store.new_identifier(".png"), content_type="x")
    hosts = {host for _, host, _ in transport.sent}
    if opened.kind == "object-vhost":
        assert hosts == {f"{opened.bucket}.s3.test:{moto.port}"}
    else:
        assert hosts == {f"127.0.0.1:{moto.port}"}


async def test_large_upload_goes_through_multipart(tmp_path: Path, opened: Opened) -> None:
    store, moto, transport = only_object(opened)
    data = os.urandom(12 * MIB + 17)
    ident = store.new_identifier(".mp4")
    await store.save_file(spool(tmp_path, data), identifier=ident, content_type="video/mp4")
    sent = [(method, query) for method, _, query in transport.sent]
    assert ("POST", "uploads=") in sent
    parts = sorted(query.split("&")[0] for method, query in sent if "partNumber" in query)
    assert parts == ["partNumber=1", "partNumber=2"]  # 8 MiB + the rest
    assert any(method == "POST" and query.startswith("uploadId=") for method, query in sent)
    assert moto.get(opened.bucket, ident) == data
    assert moto.uploads(opened.bucket) == []
    assert await store.length(ident) == len(data)
    assert (
        b"".join(await collect(store.read(ident, 8 * MIB - 3, 8 * MIB + 3)))
        == data[8 * MIB - 3 : 8 * MIB + 3]
    )


class FailingTransport(LoopbackTransport):
    """Answers requests that ``fails`` picks with ``status`` (or a connection error)."""

    def __init__(self, fails: Callable[[httpx.Request], bool], status: int | None = 503) -> None:
        super().__init__()
        self.fails, self.status, self.failed = fails, status, 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.fails(request):
            self.failed += 1
            if self.status is None:
                raise httpx.ConnectError("refused")
            # Read the body first, as a real connection sends it before the answer comes:
            # left unread, the body's generator is only closed by the garbage collector, which
            # warns in whichever later test it happens to run.
            await request.aread()
            return httpx.Response(self.status, content=b"<Error><Code>SlowDown</Code></Error>")
        return await super().handle_async_request(request)


async def test_a_failed_multipart_upload_is_aborted(
    tmp_path: Path, moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(object_module, "FIRST_PAUSE", 0.01)
    bucket = moto.create_bucket()
    transport = FailingTransport(lambda r: b"partNumber=2" in r.url.query)
    async with open_object_store(moto.config(bucket), transport=transport) as store:
        src = spool(tmp_path, os.urandom(9 * MIB))
        with pytest.raises(StoreError, match="SlowDown"):
            await store.save_file(src, identifier=store.new_identifier(".mp4"), content_type="x")
    assert transport.failed == object_module.ATTEMPTS  # retried, then given up
    assert src.exists()  # not consumed
    assert moto.uploads(bucket) == []
    assert moto.keys(bucket) == []


async def test_a_cancelled_multipart_upload_is_aborted(tmp_path: Path, moto: MotoServer) -> None:
    bucket = moto.create_bucket()
    parts = trio.Event()

    class Slow(LoopbackTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if b"partNumber" in request.url.query:
                parts.set()
                await trio.sleep_forever()
            return await super().handle_async_request(request)

    async with open_object_store(moto.config(bucket), transport=Slow()) as store:
        src = spool(tmp_path, os.urandom(9 * MIB))
        async with trio.open_nursery() as nursery:
            ident = store.new_identifier(".mp4")
            nursery.start_soon(
                lambda: store.save_file(src, identifier=ident, content_type="video/mp4")
            )
            await parts.wait()
            nursery.cancel_scope.cancel()
    assert moto.uploads(bucket) == []
    assert moto.keys(bucket) == []


async def test_transient_failures_are_retried(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(object_module, "FIRST_PAUSE", 0.01)
    bucket = moto.create_bucket()
    for status in (503, 500, None):
        budget = [2]

        def twice(request: httpx.Request, budget: list[int] = budget) -> bool:
            budget[0] -= 1
            return budget[0] >= 0

        transport = FailingTransport(twice, status)
        async with open_object_store(moto.config(bucket), transport=transport) as store:
            ident = await store.save_bytes(
                DATA, identifier=store.new_identifier(".png"), content_type="image/png"
            )
            assert b"".join(await collect(store.read(ident))) == DATA
        assert transport.failed == 2


async def test_a_read_cut_off_resumes(moto: MotoServer) -> None:
    bucket = moto.create_bucket()
    cuts = [0]

    class Cutting(LoopbackTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await super().handle_async_request(request)
            if request.method != "GET" or cuts[0] >= 2 or b"list-type" in request.url.query:
                return response
            cuts[0] += 1
            body = await response.aread()

            class Cut(httpx.AsyncByteStream):
                async def __aiter__(self) -> AsyncIterator[bytes]:
                    yield body[:70_000]  # more than a chunk, then the connection drops
                    raise httpx.ReadError("connection reset")

            return httpx.Response(response.status_code, headers=response.headers, stream=Cut())

    async with open_object_store(moto.config(bucket), transport=Cutting()) as store:
        ident = await store.save_bytes(
            DATA, identifier=store.new_identifier(".png"), content_type="image/png"
        )
        assert b"".join(await collect(store.read(ident, 10))) == DATA[10:]
    assert cuts == [2]


async def test_missing_bucket_and_unreachable_endpoint(moto: MotoServer) -> None:
    async with open_object_store(moto.config("no-such-bucket")) as store:
        with pytest.raises(StoreError) as info:
            await store.health()
    assert info.value.msg == (
        f"object storage {moto.endpoint} bucket no-such-bucket: bucket 'no-such-bucket' does "
        "not exist (NoSuchBucket); create it first (pictrs-trio does not create buckets), or "
        "check store.bucket_name and store.use_path_style"
    )
    config = moto.config("b", endpoint="http://127.0.0.1:9", client_timeout=2.0)
    async with open_object_store(config) as store:
        with pytest.raises(StoreError) as info:
            await store.health(write=False)
    assert info.value.msg.startswith("cannot reach object storage http://127.0.0.1:9 bucket b: ")
    assert "\n" not in info.value.msg


async def test_bad_endpoint_is_refused_at_open(moto: MotoServer) -> None:
    for endpoint in ("ftp://x", "http://user:pw@host", "http://host:port", "not a url"):
        with pytest.raises(StoreError) as info:
            async with open_object_store(moto.config("b", endpoint=endpoint)):
                pass
        assert "pw" not in info.value.msg


async def test_a_slow_upload_that_moves_is_not_cut_off(
    tmp_path: Path, moto: MotoServer, monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery
) -> None:
    """client_timeout bounds each wait, not the request: a 1 MiB PUT through a link of
    400 KiB/s takes about 2.5 s, and passes with client_timeout = 1 s (each 64 KiB write
    goes within it)."""
    monkeypatch.setattr(object_module, "UPLOAD_READ", 64 * 1024)
    bucket = moto.create_bucket()
    proxy = ThrottledProxy(moto.port, rate=400 * 1024)
    await nursery.start(proxy.serve)
    data = os.urandom(MIB)
    config = moto.config(bucket, endpoint=proxy.endpoint, client_timeout=1.0)
    async with open_object_store(config, transport=small_send_buffer()) as store:
        began = trio.current_time()
        ident = await store.save_file(
            spool(tmp_path, data), identifier=store.new_identifier(".mp4"), content_type="x"
        )
        took = trio.current_time() - began
    assert took > 1.5  # well over client_timeout, and it went through
    assert moto.get(bucket, ident) == data
    assert proxy.connections == 1  # in one attempt


async def test_an_upload_that_stops_moving_times_out_and_leaves_nothing(
    tmp_path: Path, moto: MotoServer, monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery
) -> None:
    """The server stops reading the body: each attempt ends client_timeout after the last
    write went, is tried again on a new connection (then given up), and nothing is left."""
    monkeypatch.setattr(object_module, "FIRST_PAUSE", 0.01)
    monkeypatch.setattr(object_module, "ATTEMPTS", 2)
    bucket = moto.create_bucket()
    proxy = ThrottledProxy(moto.port, rate=0)
    await nursery.start(proxy.serve)
    config = moto.config(bucket, endpoint=proxy.endpoint, client_timeout=0.3)
    async with open_object_store(config, transport=small_send_buffer()) as store:
        src = spool(tmp_path, DATA)
        with pytest.raises(StoreError) as info:
            await store.save_file(src, identifier=store.new_identifier(".png"), content_type="x")
    assert info.value.msg == (
        f"object storage {proxy.endpoint} bucket {bucket} took none of the request body for 0.3 s"
    )
    assert proxy.connections == 2
    assert src.exists()
    assert moto.keys(bucket) == []


class Counting(LoopbackTransport):
    """Holds each PUT with a body for a moment, and keeps the most that were in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.now = self.most = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method != "PUT" or request.headers.get("content-length") in (None, "0"):
            return await super().handle_async_request(request)
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await trio.sleep(0.05)
            return await super().handle_async_request(request)
        finally:
            self.now -= 1


async def test_uploads_in_flight_are_bounded_store_wide(
    tmp_path: Path, moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight saves at once, one of them multipart: never more than UPLOADS_IN_FLIGHT bodies
    go at a time (migrate-store's 32 copies of 4 parts each do not empty the pool)."""
    monkeypatch.setattr(object_module, "UPLOADS_IN_FLIGHT", 3)
    bucket = moto.create_bucket()
    transport = Counting()
    big = os.urandom(9 * MIB)
    made: dict[str, bytes] = {}
    async with open_object_store(moto.config(bucket), transport=transport) as store:

        async def save(n: int, data: bytes) -> None:
            ident = store.new_identifier(".png")
            src = spool(tmp_path, data, name=f"{n}.bin")
            made[await store.save_file(src, identifier=ident, content_type="x")] = data

        async with trio.open_nursery() as nursery:
            for n in range(7):
                nursery.start_soon(save, n, DATA)
            nursery.start_soon(save, 7, big)
    assert transport.most == 3
    assert moto.keys(bucket) == sorted(made)
    assert all(moto.get(bucket, ident) == data for ident, data in made.items())


def test_the_pool_is_sized() -> None:
    client = object_module._client(5.0, None)
    pool = client._transport._pool  # type: ignore[attr-defined]
    assert pool._max_connections == object_module.MAX_CONNECTIONS
    assert object_module.UPLOADS_IN_FLIGHT < object_module.MAX_CONNECTIONS
    timeout = client.timeout
    assert (timeout.connect, timeout.read, timeout.write, timeout.pool) == (5.0,) * 4


async def test_a_lost_answer_to_starting_a_multipart_upload_is_not_tried_again(
    tmp_path: Path, moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start of a multipart upload reaches the server, its answer is lost: starting
    again would orphan the first upload, so the save fails, and the partial removal that
    follows a failed save (services/storing.py) aborts the one that was started."""
    monkeypatch.setattr(object_module, "FIRST_PAUSE", 0.01)
    bucket = moto.create_bucket()

    class LosesTheAnswer(LoopbackTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await super().handle_async_request(request)
            if request.method == "POST" and request.url.query == b"uploads=":
                await response.aclose()
                raise httpx.ReadTimeout("timed out")
            return response

    transport = LosesTheAnswer()
    async with open_object_store(moto.config(bucket), transport=transport) as store:
        ident = store.new_identifier(".mp4")
        with pytest.raises(StoreError) as info:
            await store.save_file(
                spool(tmp_path, os.urandom(9 * MIB)), identifier=ident, content_type="x"
            )
        assert info.value.msg.endswith("not tried again, as the request may have reached it")
        assert [m for m, _, q in transport.sent if q == "uploads="] == ["POST"]
        assert moto.uploads(bucket) == [ident]
        await store.remove(ident, partial=True)
    assert moto.uploads(bucket) == []
    assert moto.keys(bucket) == []


async def test_starting_a_multipart_upload_is_tried_again_when_it_never_went(
    tmp_path: Path, moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(object_module, "FIRST_PAUSE", 0.01)
    bucket = moto.create_bucket()
    refused = [False]

    def once(request: httpx.Request) -> bool:
        if request.url.query == b"uploads=" and not refused[0]:
            refused[0] = True
            return True
        return False

    transport = FailingTransport(once, status=None)  # ConnectError: nothing was sent
    data = os.urandom(9 * MIB)
    async with open_object_store(moto.config(bucket), transport=transport) as store:
        ident = await store.save_file(
            spool(tmp_path, data), identifier=store.new_identifier(".mp4"), content_type="x"
        )
    assert transport.failed == 1
    assert moto.get(bucket, ident) == data
    assert moto.uploads(bucket) == []


async def test_completing_is_tried_attempts_times_in_all(
    tmp_path: Path, moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One retry layer: 503s and 200s that hold InternalError alike count towards ATTEMPTS
    (two nested loops sent up to ATTEMPTS squared)."""
    monkeypatch.setattr(object_module, "FIRST_PAUSE", 0.01)
    bucket = moto.create_bucket()
    completes = [0]

    class Fails(LoopbackTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.method == "POST" and request.url.query.startswith(b"uploadId="):
                completes[0] += 1
                if completes[0] % 4:
                    return httpx.Response(503, content=b"<Error><Code>SlowDown</Code></Error>")
                error = b"<Error><Code>InternalError</Code><Message>oops</Message></Error>"
                return httpx.Response(200, content=error)
            return await super().handle_async_request(request)

    async with open_object_store(moto.config(bucket), transport=Fails()) as store:
        with pytest.raises(StoreError, match="InternalError"):
            await store.save_file(
                spool(tmp_path, os.urandom(9 * MIB)),
                identifier=store.new_identifier(".mp4"),
                content_type="x",
            )
    assert completes == [object_module.ATTEMPTS]
    assert moto.uploads(bucket) == []  # aborted


async def test_a_200_with_an_internal_error_is_completed_on_the_next_try(
    tmp_path: Path, moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(object_module, "FIRST_PAUSE", 0.01)
    bucket = moto.create_bucket()
    completes = [0]

    class FailsOnce(LoopbackTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.method == "POST" and request.url.query.startswith(b"uploadId="):
                completes[0] += 1
                if completes[0] == 1:
                    error = b"<Error><Code>InternalError</Code></Error>"
                    return httpx.Response(200, content=error)
            return await super().handle_async_request(request)

    data = os.urandom(9 * MIB)
    async with open_object_store(moto.config(bucket), transport=FailsOnce()) as store:
        ident = await store.save_file(
            spool(tmp_path, data), identifier=store.new_identifier(".mp4"), content_type="x"
        )
    assert completes == [2]
    assert moto.get(bucket, ident) == data


class CutsReads(LoopbackTransport):
    """Cuts each object GET off after ``keep`` bytes, ``times`` times in all."""

    def __init__(self, keep: int, times: int) -> None:
        super().__init__()
        self.keep, self.times, self.cuts = keep, times, 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if request.method != "GET" or self.cuts >= self.times or request.url.query:
            return response
        self.cuts += 1
        body = await response.aread()
        keep = self.keep

        class Cut(httpx.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                if keep:
                    yield body[:keep]
                raise httpx.ReadError("connection reset")

        return httpx.Response(response.status_code, headers=response.headers, stream=Cut())


async def test_a_long_read_survives_more_cut_offs_than_attempts(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each cut-off after progress starts the count again: six cut-offs in one read of
    300 KiB, each after 40 000 more bytes, and every byte arrives in order."""
    monkeypatch.setattr(object_module, "FIRST_PAUSE", 0.01)
    bucket = moto.create_bucket()
    transport = CutsReads(keep=40_000, times=object_module.ATTEMPTS + 2)
    async with open_object_store(moto.config(bucket), transport=transport) as store:
        ident = await store.save_bytes(
            DATA, identifier=store.new_identifier(".png"), content_type="image/png"
        )
        assert b"".join(await collect(store.read(ident, 10))) == DATA[10:]
    assert transport.cuts == object_module.ATTEMPTS + 2


async def test_a_read_that_never_moves_gives_up(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(object_module, "FIRST_PAUSE", 0.01)
    bucket = moto.create_bucket()
    transport = CutsReads(keep=0, times=100)
    async with open_object_store(moto.config(bucket), transport=transport) as store:
        ident = await store.save_bytes(
            DATA, identifier=store.new_identifier(".png"), content_type="image/png"
        )
        with pytest.raises(StoreError) as info:
            await collect(store.read(ident))
    assert info.value.msg.startswith(f"reading {ident} from object storage ")
    assert "ReadError: connection reset" in info.value.msg
    assert transport.cuts == object_module.ATTEMPTS


async def test_removal_without_the_list_permission_still_deletes_the_object() -> None:
    """A key from a pict-rs setup may lack s3:ListBucketMultipartUploads (pict-rs never
    lists uploads): a partial removal deletes the object first, then warns."""
    import httpx

    sent: list[tuple[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append((request.method, request.url.query.decode()))
        if request.method == "GET":  # the list of unfinished uploads
            return httpx.Response(403, content=b"<Error><Code>AccessDenied</Code></Error>")
        return httpx.Response(204)

    config = ObjectStorageStore(
        endpoint="http://127.0.0.1:9", bucket_name="b", region="r", access_key="a",
        secret_key="s", use_path_style=True,
    )  # fmt: skip
    async with open_object_store(config, transport=httpx.MockTransport(answer)) as store:
        await store.remove("ab/cd/ef.png", partial=True)
    assert [method for method, _ in sent] == ["DELETE", "GET"]
    assert "uploads" in sent[1][1]
