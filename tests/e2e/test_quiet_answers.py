"""Answers and log lines that say only what they must: /healthz's empty 200 has no
content type (pict-rs sends none), and a file that cannot be removed while the bucket is
down is one warning line, not a traceback."""

from __future__ import annotations

import re
from pathlib import Path

from tests.e2e.conftest import Server
from tests.e2e.test_object_storage import StallingProxy
from tests.s3 import MotoServer


def test_healthz_200_has_no_content_type(tmp_path: Path) -> None:
    """pict-rs: ``HttpResponse::Ok().finish()`` (src/lib.rs ``healthz``), an empty body and
    no Content-Type; it was ``text/html; charset=utf-8``."""
    srv = Server(tmp_path).start()
    with srv.client() as c:
        r = c.get("/healthz")
    assert (r.status_code, r.content, r.headers.get("content-type")) == (200, b"", None)
    assert r.headers["content-length"] == "0"
    assert srv.stop() == 0


def test_a_file_left_while_the_bucket_is_down_is_one_line(
    tmp_path: Path, moto: MotoServer, samples: dict[str, Path]
) -> None:
    """The bucket goes away: the upload's object cannot be stored, and the clean-up of its
    partial upload cannot reach the bucket either; its intent stays in the journal, so the
    file goes later. One warning line says so, with the store's message."""
    proxy = StallingProxy(moto.endpoint)  # a way to moto that can be cut
    srv = Server(tmp_path, store="object", moto=moto)
    srv.store_endpoint = proxy.endpoint
    srv.start()
    proxy.close()
    with srv.client() as c:
        r = c.post("/image", files={"images[]": ("test.png", samples["test.png"].read_bytes())})
    assert (r.status_code, r.json()["code"]) == (500, "object-request-error")
    assert srv.stop() == 0
    log = srv.log.read_text()
    assert "Traceback" not in srv.output(), log
    lines = [line for line in log.splitlines() if "could not remove" in line]
    assert len(lines) == 1, log
    assert re.search(
        r" WARN pictrs_trio\.services\.storing: could not remove \S+ now: cannot reach object "
        rf"storage {re.escape(proxy.endpoint)} bucket {srv.bucket}: ConnectError: .* "
        r"\(object-request-error\); its intent stays, so it is removed once this process "
        r"has stopped$",
        lines[0],
    ), lines[0]
