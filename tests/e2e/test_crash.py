"""kill -9 at random moments under concurrent uploads: nothing acknowledged is lost.

Bounded: a few rounds of start -> concurrent plain and backgrounded uploads -> SIGKILL at a
random moment; then one clean start, in which every acknowledged upload must be there
byte-identical with the same details, every backgrounded upload must claim (200 or 422,
never lost), and after cleanup the store and the rows must match exactly.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path

import apsw
import httpx
import pytest

from tests.e2e.conftest import Server
from tests.e2e.test_jobs import API_KEY, claim

# Uploads killed mid-save on both stores: a temp file, or an object put but not committed.
STORES = ("filesystem", "object")
pytestmark = pytest.mark.usefixtures("store_kind")

ROUNDS = 4
PLAIN_THREADS = 3
BACKGROUND_THREADS = 2


def make_pngs(out: Path, n: int, seed: int) -> list[Path]:
    import pyvips

    rng = random.Random(seed)
    files = []
    for i in range(n):
        w, h = rng.randint(48, 160), rng.randint(48, 160)
        img = pyvips.Image.black(w, h, bands=3) + [rng.randint(0, 255) for _ in range(3)]
        img = img.draw_rect(
            [rng.randint(0, 255)] * 3, rng.randint(0, w - 8), 0, 8, h, fill=True
        ).cast("uchar")
        path = out / f"img-{seed}-{i}.png"
        img.pngsave(str(path))
        files.append(path)
    return files


class Log:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.plain: dict[str, tuple[Path, dict[str, object], bytes | None]] = {}
        self.background: dict[str, Path] = {}


def plain_uploader(url: str, files: list[Path], log: Log, stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=10) as c:
        for path in files:
            if stop.is_set():
                return
            try:
                r = c.post("/image", files=[("images[]", (path.name, path.read_bytes()))])
            except httpx.HTTPError:
                return  # the server was killed mid-request: not acknowledged
            if r.status_code != 201:
                continue
            entry = r.json()["files"][0]
            try:
                stored = c.get(f"/image/original/{entry['file']}").content
            except httpx.HTTPError:
                stored = None
            with log.lock:
                log.plain[entry["file"]] = (path, entry["details"], stored)


def background_uploader(url: str, files: list[Path], log: Log, stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=10) as c:
        for path in files:
            if stop.is_set():
                return
            try:
                r = c.post(
                    "/image/backgrounded", files=[("images[]", (path.name, path.read_bytes()))]
                )
            except httpx.HTTPError:
                return
            if r.status_code == 202:
                with log.lock:
                    log.background[r.json()["uploads"][0]["upload_id"]] = path


def pixels_equal(a: bytes, b: Path) -> bool:
    import pyvips

    x = pyvips.Image.new_from_buffer(a, "")
    y = pyvips.Image.new_from_file(str(b))
    return (x.width, x.height) == (y.width, y.height) and (x - y).abs().max() == 0


def referenced_identifiers(db: Path) -> set[str]:
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        rows = conn.execute(
            "SELECT identifier FROM hashes UNION SELECT motion_identifier FROM hashes"
            " WHERE motion_identifier IS NOT NULL UNION SELECT identifier FROM variants"
            " UNION SELECT raw_identifier FROM uploads WHERE raw_identifier IS NOT NULL"
        ).fetchall()
        return {r[0] for r in rows}
    finally:
        conn.close()


def wait_jobs_idle(c: httpx.Client, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queues = c.get("/internal/jobs", headers={"X-Api-Token": API_KEY}).json()["queues"]
        busy = sum(
            n
            for counts in queues.values()
            for s, n in counts.items()
            if s in ("pending", "running")
        )
        if busy == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"jobs still busy: {queues}")


@pytest.mark.slow
def test_sigkill_loses_nothing_acknowledged(tmp_path: Path) -> None:
    rng = random.Random(20261125)
    media = tmp_path / "media"
    media.mkdir()
    log = Log()
    data = tmp_path / "data"
    data.mkdir()
    for round_no in range(ROUNDS):
        files = make_pngs(media, 24 * (PLAIN_THREADS + BACKGROUND_THREADS), seed=round_no)
        srv = Server(data, ["--api-key", API_KEY]).start()
        stop = threading.Event()
        threads = [
            threading.Thread(target=plain_uploader, args=(srv.url, files[i::5], log, stop))
            for i in range(PLAIN_THREADS)
        ] + [
            threading.Thread(
                target=background_uploader, args=(srv.url, files[PLAIN_THREADS + i :: 5], log, stop)
            )
            for i in range(BACKGROUND_THREADS)
        ]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.3, 1.5))
        srv.stop(signal.SIGKILL)
        stop.set()
        for t in threads:
            t.join(30)
    assert log.plain, "no upload was acknowledged before the kills"
    assert log.background

    srv = Server(data, ["--api-key", API_KEY]).start()
    try:
        with srv.client() as c:
            for alias, (path, details, stored) in log.plain.items():
                r = c.get(f"/image/original/{alias}")
                assert r.status_code == 200, alias
                if stored is not None:
                    assert r.content == stored
                assert pixels_equal(r.content, path)
                assert c.get(f"/image/details/original/{alias}").json() == details
            outcomes = {"ok": 0, "failed": 0}
            for upload_id, path in log.background.items():
                r = claim(c, upload_id)
                assert r.status_code in (200, 422), (upload_id, r.status_code, r.text)
                if r.status_code == 200:
                    outcomes["ok"] += 1
                    alias = r.json()["files"][0]["file"]
                    assert pixels_equal(c.get(f"/image/original/{alias}").content, path)
                else:
                    outcomes["failed"] += 1
            wait_jobs_idle(c)
    finally:
        assert srv.stop() == 0
    print(f"acknowledged {len(log.plain)} plain, {len(log.background)} backgrounded {outcomes}")
    on_disk = srv.stored_identifiers()
    rows = referenced_identifiers(srv.db / "pictrs.sqlite3")
    assert rows - on_disk == set(), "rows whose file is missing"
    assert on_disk - rows == set(), "files no row references"
