"""Crash recovery as operators meet it: a store that holds another program's files, a
renderer killed while others wait for it, and kill -9 again and again while variants render
and backgrounded work runs. Recovery acts on what the journal recorded, never on files
merely because no row mentions them.

The kills run on the filesystem store and on object storage (tests/e2e/conftest.py): a
render killed while saving leaves a temp file, or an object put (a multipart upload begun)
but never committed. After recovery the store holds exactly what rows reference, the
bucket no unfinished multipart upload, and every variant decodes whole at its size."""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import threading
import time
import uuid
from pathlib import Path

import apsw
import httpx
import pytest
import pyvips

from tests.e2e.conftest import Server
from tests.e2e.test_crash import API_KEY, claim, referenced_identifiers, wait_jobs_idle
from tests.e2e.test_object_storage import StallingProxy
from tests.e2e.test_upload_serve_delete import upload
from tests.s3 import MotoServer

STORES = ("filesystem", "object")  # for the tests that use ``store_kind``

MONTHS = 120 * 24 * 3600
BIG = (3600, 4161)  # big_image's size
SMALL = (640, 360)  # test.png's
# Between the backgrounded requests of the kill test: work queued all the time, at a rate
# the engine stays behind of, not as fast as the machine can answer 202 (hundreds of jobs
# that every restart, and the final wait, must then get through).
PACE = 0.05


def pict_rs_identifier(created: float, extension: str) -> str:
    """pict-rs 0.5.7 (src/file_path.rs): a UUID v7 as 32 hex digits, ten 2-digit folders,
    the rest the name."""
    ms = int(created * 1000)
    value = (ms << 80) | (0x7 << 76) | (uuid.uuid4().int & ((1 << 76) - 1))
    value = (value & ~(0b11 << 62)) | (0b10 << 62)
    digits = f"{value:032x}"
    return "/".join([digits[i : i + 2] for i in range(0, 20, 2)] + [digits[20:] + extension])


def test_a_pict_rs_volume_is_left_untouched(tmp_path: Path, samples: dict[str, Path]) -> None:
    """pictrs-trio started (twice) on a files folder of pict-rs 0.5 with an empty repo:
    every one of its files is still there, bytes and times, and one warning says so."""
    files = tmp_path / "files"
    old = time.time() - 4 * MONTHS
    theirs: dict[Path, tuple[bytes, float]] = {}
    sources = ["cat.jpg", "earth.gif", "scene.webp", "test.png"] * 3
    for n, name in enumerate(sources):
        ext = "." + name.rsplit(".", 1)[1].replace("jpg", "jpeg")
        path = files / pict_rs_identifier(old + n * 3600, ext)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(samples[name].read_bytes())
        os.utime(path, (old + n, old + n))
        theirs[path] = (path.read_bytes(), path.stat().st_mtime)
    assert len(theirs) == 12
    for _ in range(2):
        srv = Server(tmp_path).start()
        try:
            with srv.client() as c:
                alias = upload(c, samples["test.png"]).json()["files"][0]["file"]
                assert c.get(f"/image/process.webp?src={alias}&thumbnail=40").status_code == 200
            deadline = time.monotonic() + 15
            while "does not know" not in srv.log.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            assert srv.stop() == 0
    for path, (data, mtime) in theirs.items():
        assert path.read_bytes() == data
        assert path.stat().st_mtime == mtime
    warnings = [line for line in srv.log.read_text().splitlines() if "does not know" in line]
    assert warnings and all("holds 12 files" in line for line in warnings), warnings
    assert "docs/migration.md" in warnings[0]


def big_image(path: Path, samples: dict[str, Path]) -> Path:
    """3600x4161: a strong blur of it takes seconds."""
    pyvips.Image.jpegload(str(samples["cat.jpg"])).resize(3).jpegsave(str(path), Q=85)
    return path


def fit(size: tuple[int, int], box: int) -> tuple[int, int]:
    """pict-rs's ``thumbnail``/``resize`` geometry (ImageMagick ``NxN>``): shrink only,
    aspect kept, each side rounded half up."""
    width, height = size
    scale = min(1.0, box / max(width, height))
    return max(1, math.floor(width * scale + 0.5)), max(1, math.floor(height * scale + 0.5))


def decoded_size(data: bytes) -> tuple[int, int]:
    """Width and height of ``data`` decoded to the last pixel: a file cut short fails."""
    image = pyvips.Image.new_from_buffer(data, "", fail_on="truncated").copy_memory()
    return image.width, image.height


def wait_nothing_half_written(srv: Server, timeout: float = 30) -> None:
    """Recovery (the next owner's reap, then the RemoveFiles jobs of the dead one's
    intents) leaves no intent, a store holding exactly the files rows reference (no temp
    file, no object put but never committed) and, in a bucket, no multipart upload begun
    and never completed or aborted. Waits for it, bounded."""
    deadline = time.monotonic() + timeout
    while True:
        on_disk, rows, intents = files_and_rows(srv)
        unfinished = []
        if srv.store_kind == "object":
            assert srv.moto is not None
            unfinished = srv.moto.uploads(srv.bucket)
        settled = on_disk == rows and not intents and not unfinished
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert intents == set()
    assert rows - on_disk == set(), "rows whose file is missing"
    assert on_disk - rows == set(), "files no row references"
    assert unfinished == [], "multipart uploads left unfinished"


@pytest.mark.usefixtures("store_kind")
def test_a_waiting_request_takes_over_from_a_killed_renderer(
    tmp_path: Path, samples: dict[str, Path]
) -> None:
    """Two servers on one repo and store; A renders a slow variant, B's request for it
    waits on A's lease. A is killed: B renders it itself at once, not after a 35 s wait and
    a 500, and nothing A was writing is left behind."""
    a = Server(tmp_path).start()
    b = Server(tmp_path).start()
    try:
        with a.client() as c:
            alias = upload(c, big_image(tmp_path / "big.jpg", samples)).json()["files"][0]["file"]
        for attempt in range(3):  # a machine fast enough to finish A's render first: again
            outcome: dict[str, object] = {}
            url = f"/image/process.png?src={alias}&blur={60 + attempt}"

            def ask_a(url: str = url, outcome: dict[str, object] = outcome) -> None:
                try:
                    httpx.get(a.url + url, timeout=60)
                    outcome["a"] = "answered"
                except httpx.TransportError as exc:
                    outcome["a"] = type(exc).__name__

            def ask_b(url: str = url, outcome: dict[str, object] = outcome) -> None:
                began = time.monotonic()
                r = httpx.get(b.url + url, timeout=60)
                outcome["b"] = (r.status_code, time.monotonic() - began)
                outcome["b_body"] = r.content

            first = threading.Thread(target=ask_a)
            first.start()
            wait_for_lease(b, present=True)  # A holds the lease and renders
            second = threading.Thread(target=ask_b)
            second.start()
            time.sleep(0.5)  # B waits on A's lease
            if not leases(b):
                first.join()
                second.join()
                continue  # A finished before it could be killed
            a.stop(signal.SIGKILL)
            first.join()
            second.join()
            break
        status, took = outcome["b"]  # type: ignore[misc]
        print(f"B answered {status} after {took:.1f} s (attempt {attempt + 1})")
        assert status == 200
        assert took < 25  # its own render, begun when A died; a dead lease costs ~35 s
        assert outcome["a"] in ("RemoteProtocolError", "ReadError")
        wait_nothing_half_written(b)
        assert decoded_size(outcome["b_body"]) == BIG  # type: ignore[arg-type]
        with b.client() as c:  # and as stored: served again from the store, whole
            again = c.get(url)
            assert again.status_code == 200
            assert decoded_size(again.content) == BIG
            assert again.content == outcome["b_body"]
    finally:
        a.stop()
        b.stop()


def test_a_renderer_killed_mid_multipart_upload_leaves_none_behind(
    tmp_path: Path, samples: dict[str, Path], moto: MotoServer
) -> None:
    """Object storage, caught at the worst moment: A's variant (a PNG of some 22 MB, three
    parts) is mid multipart upload, a proxy holding its second part, when A is killed
    while B's request for it waits on A's lease. B renders and stores the variant itself,
    and recovery aborts A's upload: the bucket holds the original and B's variant, whole,
    and no multipart upload."""
    proxy = StallingProxy(moto.endpoint)
    a = Server(tmp_path, store="object", moto=moto)
    a.store_endpoint = proxy.endpoint  # A's parts go through the proxy
    b = Server(tmp_path, store="object", moto=moto)  # one bucket, B straight to moto
    try:
        a.start()
        b.start()
        with b.client() as c:
            alias = upload(c, big_image(tmp_path / "big.jpg", samples)).json()["files"][0]["file"]
        url = f"/image/process.png?src={alias}&resize=5000"  # full size: 3600x4161
        outcome: dict[str, tuple[int, bytes]] = {}

        def ask_a() -> None:
            with contextlib.suppress(httpx.TransportError):  # killed under it
                httpx.get(a.url + url, timeout=60)

        def ask_b() -> None:
            r = httpx.get(b.url + url, timeout=60)
            outcome["b"] = (r.status_code, r.content)

        first = threading.Thread(target=ask_a)
        first.start()
        assert proxy.stalled.wait(30), "A's upload never reached its second part"
        assert proxy.first_part.wait(30), "A's first part was never stored"
        assert len(moto.uploads(a.bucket)) == 1
        second = threading.Thread(target=ask_b)
        second.start()
        time.sleep(0.5)  # B waits on A's lease
        assert leases(b), "A no longer holds the render lease"
        a.stop(signal.SIGKILL)
        first.join(30)
        second.join(60)
        status, body = outcome["b"]
        assert status == 200
        wait_nothing_half_written(b)
        assert decoded_size(body) == BIG
        with b.client() as c:
            again = c.get(url)
            assert (again.status_code, again.content) == (200, body)
    finally:
        proxy.close()
        a.stop()
        b.stop()


def leases(srv: Server) -> list[str]:
    conn = apsw.Connection(str(srv.db / "pictrs.sqlite3"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [str(k) for (k,) in conn.execute("SELECT key FROM journal_leases")]
    finally:
        conn.close()


def wait_for_lease(srv: Server, *, present: bool, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while bool(leases(srv)) != present:
        assert time.monotonic() < deadline, "no render lease appeared"
        time.sleep(0.02)


def files_and_rows(srv: Server) -> tuple[set[str], set[str], set[str]]:
    on_disk = srv.stored_identifiers()
    rows = referenced_identifiers(srv.db / "pictrs.sqlite3")
    conn = apsw.Connection(str(srv.db / "pictrs.sqlite3"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        intents = {str(k) for (k,) in conn.execute("SELECT key FROM journal_intents")}
    finally:
        conn.close()
    return on_disk, rows, intents


@pytest.mark.slow
@pytest.mark.usefixtures("store_kind")
def test_sigkill_while_rendering_and_working_in_the_background(
    tmp_path: Path, samples: dict[str, Path]
) -> None:
    rng = random.Random(20261204)
    data = tmp_path / "data"
    data.mkdir()
    srv = Server(data, ["--api-key", API_KEY]).start()
    with srv.client() as c:
        photo = upload(c, big_image(tmp_path / "big.jpg", samples)).json()["files"][0]["file"]
        small = upload(c, samples["test.png"]).json()["files"][0]["file"]
    requested: set[str] = set()  # every variant a GET asked for (answered or not)
    queued: set[str] = set()  # process_backgrounded answered 202
    uploads: dict[str, Path] = {}  # backgrounded uploads answered 202
    lock = threading.Lock()
    counter = iter(range(1_000_000))

    sizes: dict[str, tuple[int, int]] = {}  # query (requested or queued) -> its variant's size

    def renderer(stop: threading.Event) -> None:
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            while not stop.is_set():
                box = 200 + next(counter)
                query = f"/image/process.webp?src={photo}&resize={box}&blur=3"
                with lock:
                    requested.add(query)
                    sizes[query] = fit(BIG, box)
                try:
                    client.get(query)
                except httpx.TransportError:
                    return

    def backgrounder(stop: threading.Event) -> None:
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            while not stop.is_set():
                box = 20 + next(counter)
                query = f"src={small}&thumbnail={box}"
                try:
                    r = client.get(f"/image/process_backgrounded.webp?{query}")
                except httpx.TransportError:
                    return
                if r.status_code == 202:
                    with lock:
                        queued.add(query)
                        sizes[query] = fit(SMALL, box)
                stop.wait(PACE)

    def uploader(stop: threading.Event) -> None:
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            while not stop.is_set():
                try:
                    r = client.post(
                        "/image/backgrounded",
                        files={"images[]": ("a.png", samples["test.png"].read_bytes())},
                    )
                except httpx.TransportError:
                    return
                if r.status_code == 202:
                    with lock:
                        uploads[r.json()["uploads"][0]["upload_id"]] = samples["test.png"]
                stop.wait(PACE)

    for _ in range(4):
        stop = threading.Event()
        threads = [
            threading.Thread(target=work, args=(stop,))
            for work in (renderer, renderer, backgrounder, uploader)
        ]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(1.0, 2.5))
        srv.stop(signal.SIGKILL)
        stop.set()
        for t in threads:
            t.join(30)
        srv = Server(data, ["--api-key", API_KEY]).start()
    assert requested and queued and uploads
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            slowest = 0.0
            for query in sorted(requested):
                began = time.monotonic()
                r = c.get(query)
                slowest = max(slowest, time.monotonic() - began)
                assert r.status_code == 200, (query, r.status_code, r.text)
                assert decoded_size(r.content) == sizes[query], query
            # Every variant queued before a kill is rendered by its job after the restart.
            deadline = time.monotonic() + 60
            pending = set(queued)
            while pending and time.monotonic() < deadline:
                for query in list(pending):
                    if c.get(f"/image/details/process.webp?{query}").status_code == 200:
                        pending.discard(query)
                time.sleep(0.2)
            assert pending == set(), f"{len(pending)} queued variants never generated"
            for query in sorted(queued):
                r = c.get(f"/image/process.webp?{query}")
                assert r.status_code == 200, (query, r.status_code, r.text)
                assert decoded_size(r.content) == sizes[query], query
            for upload_id in uploads:
                assert claim(c, upload_id).status_code in (200, 422), upload_id
            wait_jobs_idle(c)
        print(
            f"{len(requested)} variants asked for (slowest {slowest:.1f} s), {len(queued)} "
            f"queued, {len(uploads)} backgrounded uploads"
        )
    finally:
        assert srv.stop() == 0
    wait_nothing_half_written(srv, timeout=0)  # stopped: nothing more will change
