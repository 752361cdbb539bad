"""server.read_only: reads keep working, every mutation answers 400 read-only."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import Server
from tests.e2e.test_jobs import API_KEY
from tests.e2e.test_upload_serve_delete import upload


def assert_read_only(r) -> None:
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "read-only"


def test_read_only_mode(tmp_path: Path, samples: dict[str, Path]) -> None:
    srv = Server(tmp_path, ["--api-key", API_KEY]).start()
    with srv.client() as c:
        entry = upload(c, samples["test.png"]).json()["files"][0]
        alias = entry["file"]
        assert c.get(f"/image/process.webp?src={alias}&thumbnail=30").status_code == 200
    srv.stop()

    srv = Server(tmp_path, ["--api-key", API_KEY, "--read-only"]).start()
    try:
        with srv.client() as c:
            key = {"X-Api-Token": API_KEY}
            # reads, including an existing variant
            assert c.get(f"/image/original/{alias}").status_code == 200
            assert c.get(f"/image/details/original/{alias}").status_code == 200
            assert c.get(f"/image/process.webp?src={alias}&thumbnail=30").status_code == 200
            assert c.get("/healthz").status_code == 200
            assert c.get("/internal/aliases", params={"alias": alias}, headers=key).json()[
                "aliases"
            ] == [alias]
            # mutations
            assert_read_only(upload(c, samples["cat.jpg"]))
            assert_read_only(c.post("/image/backgrounded", files=[("images[]", ("a.png", b"x"))]))
            assert_read_only(c.get(f"/image/process.webp?src={alias}&thumbnail=31"))
            assert_read_only(c.get(f"/image/process_backgrounded.webp?src={alias}&thumbnail=32"))
            assert_read_only(c.delete(f"/image/delete/{entry['delete_token']}/{alias}"))
            assert_read_only(c.post("/internal/purge", params={"alias": alias}, headers=key))
            assert_read_only(c.post("/internal/delete", params={"alias": alias}, headers=key))
            assert_read_only(c.delete("/internal/variants", headers=key))
            assert_read_only(c.get("/image/download", params={"url": "http://127.0.0.1:9/x"}))
            # nothing changed
            assert c.get(f"/image/original/{alias}").status_code == 200
        assert len(srv.stored_files(expect=2)) == 2
    finally:
        srv.stop()
