"""server.workers = 2: two server processes behind one port, supervised by a parent."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.e2e.conftest import Server
from tests.e2e.test_supervision import alive, children_of
from tests.e2e.test_upload_serve_delete import upload


def tree(pid: int) -> list[int]:
    out = []
    for child in children_of(pid):
        out.append(child)
        out.extend(tree(child))
    return out


def test_two_workers_serve_and_stop(tmp_path: Path, samples: dict[str, Path]) -> None:
    for how in (signal.SIGTERM, signal.SIGKILL):
        root = tmp_path / how.name
        root.mkdir()
        env = {"PICTRS__SERVER__WORKERS": "2", "PICTRS__MEDIA__EXIFTOOL_IDLE_TIMEOUT": "0"}
        srv = Server(root, env=env).start()  # exiftool running in both from the start
        try:
            assert srv.proc is not None
            workers = [
                p for p, cmd in children_of(srv.proc.pid).items() if "runtime.supervisor" in cmd
            ]
            assert len(workers) == 2
            with srv.client() as c:
                alias = upload(c, samples["test.png"]).json()["files"][0]["file"]
            # new connections land on either worker; each sees the shared repo and store
            for _ in range(8):
                with srv.client() as c:
                    assert c.get(f"/image/original/{alias}").status_code == 200
                    url = f"/image/process.webp?src={alias}&thumbnail=20"
                    assert c.get(url).status_code == 200
            everything = tree(srv.proc.pid)
            assert len(everything) >= 6  # 2 workers, each with exiftool and an engine worker
            code = srv.stop(how)
        finally:
            srv.stop()  # a failed check must not leave the server running
        if how is signal.SIGTERM:
            assert code == 0
        deadline = time.monotonic() + 20
        while any(alive(p) for p in everything) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [p for p in everything if alive(p)] == [], how.name
        assert len(srv.stored_files(expect=2)) == 2  # one original, one variant


def test_a_crashed_worker_is_replaced(tmp_path: Path) -> None:
    srv = Server(tmp_path, env={"PICTRS__SERVER__WORKERS": "2"}).start()
    try:
        assert srv.proc is not None
        before = [p for p, cmd in children_of(srv.proc.pid).items() if "runtime.supervisor" in cmd]
        import os

        os.kill(before[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = [p for p, cmd in children_of(srv.proc.pid).items() if "runtime.supervisor" in cmd]
            if len(now) == 2 and before[0] not in now:
                break
            time.sleep(0.1)
        assert len(now) == 2 and before[0] not in now
        with srv.client() as c:
            for _ in range(4):
                assert c.get("/healthz").status_code == 200
    finally:
        srv.stop()
