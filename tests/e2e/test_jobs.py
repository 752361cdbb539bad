"""Backgrounded uploads and claims, retention, internal variant removal, the store audit,
end to end: the work the journal runs outside requests."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.conftest import Server
from tests.e2e.test_process import wait_for
from tests.e2e.test_upload_serve_delete import upload

# On the filesystem store only: what these jobs do to a store (read a raw upload back,
# remove files) is the store contract's (tests/integration/test_store_contract.py), and
# backgrounded uploads on object storage are claimed after kills in test_crash.py.

API_KEY = "test-api-key"


def upload_backgrounded(c, *paths: Path, query: str = ""):
    files = [("images[]", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]
    return c.post("/image/backgrounded" + query, files=files)


def claim(c, upload_id: str):
    """Claim until the job is done (204 means "not yet")."""
    deadline = time.monotonic() + 30
    while True:
        r = c.get("/image/backgrounded/claim", params={"upload_id": upload_id}, timeout=30)
        if r.status_code != 204 or time.monotonic() > deadline:
            return r


def test_backgrounded_upload_and_claim(fresh_server: Server, samples: dict[str, Path]) -> None:
    with fresh_server.client() as c:
        r = upload_backgrounded(c, samples["test.png"], samples["random.bin"])
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["msg"] == "ok"
        good, bad = (u["upload_id"] for u in body["uploads"])

        ok = claim(c, good)
        assert ok.status_code == 200, ok.text
        entry = ok.json()["files"][0]
        assert (entry["details"]["width"], entry["details"]["height"]) == (640, 360)
        assert c.get(f"/image/original/{entry['file']}").status_code == 200

        failed = claim(c, bad)
        assert failed.status_code == 422
        assert failed.json()["code"] == "command-failure"

        again = c.get("/image/backgrounded/claim", params={"upload_id": good})
        assert again.status_code == 400
        assert again.json()["code"] == "already-claimed"
        bogus = c.get("/image/backgrounded/claim", params={"upload_id": "nope"})
        assert bogus.status_code == 400
        assert bogus.json()["code"] == "invalid-query"
    # the raw uploads are gone; only the ingested file stays
    assert len(fresh_server.stored_files(expect=1)) == 1


def test_variant_retention(tmp_path: Path, samples: dict[str, Path]) -> None:
    srv = Server(tmp_path, env={"PICTRS__MEDIA__RETENTION__VARIANTS": "2s"}).start()
    try:
        with srv.client() as c:
            alias = upload(c, samples["test.png"]).json()["files"][0]["file"]
            url = f"/image/process.webp?src={alias}&thumbnail=32"
            first = c.get(url)
            assert first.status_code == 200
            assert len(srv.stored_files(expect=2)) == 2
            # unused past the retention: the variant goes on the next check
            assert wait_for(lambda: c.head(url), 404, timeout=20).status_code == 404
            assert len(srv.stored_files(expect=1)) == 1
            again = c.get(url)
            assert again.status_code == 200
            assert again.content == first.content
    finally:
        srv.stop()


def test_internal_variants_removal(tmp_path: Path, samples: dict[str, Path]) -> None:
    srv = Server(tmp_path, ["--api-key", API_KEY]).start()
    try:
        with srv.client() as c:
            alias = upload(c, samples["test.png"]).json()["files"][0]["file"]
            for size in (10, 20, 30):
                assert c.get(f"/image/process.png?src={alias}&thumbnail={size}").status_code == 200
            assert len(srv.stored_files(expect=4)) == 4
            denied = c.delete("/internal/variants")
            assert denied.status_code == 401
            assert denied.json()["code"] == "invalid-api-token"
            assert c.get("/internal/nope").status_code == 401
            assert c.get("/internal/nope", headers={"X-Api-Token": API_KEY}).status_code == 404
            r = c.delete("/internal/variants", headers={"X-Api-Token": API_KEY})
            assert r.status_code == 204
            assert len(srv.stored_files(expect=1)) == 1
            assert c.head(f"/image/process.png?src={alias}&thumbnail=10").status_code == 404
            jobs = c.get("/internal/jobs", headers={"X-Api-Token": API_KEY}).json()
            assert jobs["msg"] == "ok"
            assert jobs["queues"]["cleanup"].get("dead", 0) == 0
            assert jobs["queues"]["cleanup"].get("done", 0) >= 1
    finally:
        srv.stop()
    # the same view from the command line, read from the database file
    out = subprocess.run(
        [sys.executable, "-m", "pictrs_trio", "jobs", "sqlite", "-p", str(srv.db)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cleanup = next(line.split() for line in out.splitlines() if line.startswith("cleanup"))
    assert int(cleanup[3]) >= 1  # done
