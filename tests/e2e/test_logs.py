"""Logs as an operator reads them: pict-rs's formats on stdout and nothing else there, the
request log, pict-rs's filter syntax, and no secret in any line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import REPO, Server

KEY = "api-key-that-must-not-be-logged"


def test_json_lines_on_stdout_with_every_request(tmp_path: Path, samples: dict[str, Path]) -> None:
    env = {
        "PICTRS__TRACING__LOGGING__FORMAT": "json",
        "PICTRS__TRACING__LOGGING__LOG_REQUESTS": "true",
        # pict-rs's default filter in its sample configuration, with its own target names
        "PICTRS__TRACING__LOGGING__TARGETS": "warn,tracing_actix_web=info,actix_server=info",
        "PICTRS__SERVER__API_KEY": KEY,
        "PICTRS__MEDIA__VIDEO_CODEC": "vp9",  # a pict-rs 0.4 name: one warning
    }
    srv = Server(tmp_path, env=env).start()
    try:
        with srv.client() as c:
            up = c.post("/image", files={"images[]": ("cat.jpg", samples["cat.jpg"].read_bytes())})
            entry = up.json()["files"][0]
            alias, token = entry["file"], entry["delete_token"]
            assert c.get(f"/image/process.webp?src={alias}&thumbnail=64").status_code == 200
            headers = {"X-Api-Token": KEY}
            assert c.get(f"/internal/aliases?alias={alias}", headers=headers).status_code == 200
            assert c.get(f"/image/delete/{token}/{alias}").status_code == 204
    finally:
        assert srv.stop() == 0
    assert srv.errors.read_text() == ""  # nothing but log lines, all on stdout
    lines = srv.log.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line one JSON object
    for record in records:
        assert isinstance(record, dict)
        assert {"timestamp", "level", "target", "message"} <= set(record), record
        assert record["timestamp"].endswith("Z")
    requests = [r["message"] for r in records if r["target"] == "pictrs_trio.http.access_log"]
    assert ["GET", "/healthz", "200"] in [m.split()[:3] for m in requests]  # Server.start's
    assert [m.split()[:3] for m in requests if "/healthz" not in m] == [
        ["POST", "/image", "201"],
        ["GET", "/image/process.webp", "200"],
        ["GET", "/internal/aliases", "200"],
        ["GET", f"/image/delete/-/{alias}", "204"],
    ]
    warnings = [r["message"] for r in records if r["level"] == "WARN"]
    assert any(
        "media.video_codec" in w and "PICTRS__MEDIA__VIDEO__VIDEO_CODEC" in w for w in warnings
    )
    # info lines of other targets are filtered out by "warn"; hypercorn's pass as actix_server
    assert not [r for r in records if r["target"].startswith("pictrs_trio.services")]
    assert any(r["target"].startswith("hypercorn") for r in records)
    text = srv.log.read_text()
    assert KEY not in text and token not in text


def test_a_filter_that_does_not_parse_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pictrs_trio", "--log-targets", "info,pictrs_trio=loud", "run"],
        cwd=REPO,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: tracing.logging.targets = 'info,pictrs_trio=loud'")
    assert len(done.stderr.strip().splitlines()) == 1
