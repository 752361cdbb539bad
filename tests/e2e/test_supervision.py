"""Supervised children of the real server: engine workers and exiftool."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from tests.e2e.conftest import Server
from tests.e2e.test_upload_serve_delete import upload


def children_of(pid: int) -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(entry.name)] = cmdline
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def cpu_ticks(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def engine_workers(server: Server) -> list[int]:
    assert server.proc is not None
    return [p for p, cmd in children_of(server.proc.pid).items() if "vips_worker" in cmd]


def test_killed_engine_worker_costs_one_request(tmp_path: Path, samples: dict[str, Path]) -> None:
    import pyvips

    big = tmp_path / "big.jpg"
    pyvips.Image.gaussnoise(5000, 4000).cast("uchar").jpegsave(str(big))
    srv = Server(tmp_path, env={"PICTRS__MEDIA__ENGINE_WORKERS": "1"}).start()
    try:
        with srv.client() as c:
            alias = upload(c, big).json()["files"][0]["file"]
            (victim,) = engine_workers(srv)
            result: dict[str, object] = {}

            def slow_request() -> None:
                # a heavy blur keeps the only worker busy long enough to kill it mid-job
                r = c.get(f"/image/process.png?src={alias}&blur=100")
                result["status"], result["body"] = r.status_code, r.json()

            start_ticks = cpu_ticks(victim)
            t = threading.Thread(target=slow_request)
            t.start()
            deadline = time.monotonic() + 20
            while cpu_ticks(victim) < start_ticks + 10 and time.monotonic() < deadline:
                time.sleep(0.01)  # until the worker has spent 0.1 s of CPU on the job
            os.kill(victim, signal.SIGKILL)
            t.join(30)
            assert 400 <= int(result["status"]) < 600  # type: ignore[call-overload]
            assert set(result["body"]) == {"msg", "code"}  # type: ignore[arg-type]
            ok = c.get(f"/image/process.webp?src={alias}&thumbnail=50")
            assert ok.status_code == 200
            assert engine_workers(srv) and victim not in engine_workers(srv)
            assert c.get("/healthz").status_code == 200
    finally:
        srv.stop()


def test_no_child_outlives_the_server(tmp_path: Path, samples: dict[str, Path]) -> None:
    for how in (signal.SIGTERM, signal.SIGKILL):
        (tmp_path / how.name).mkdir()
        # exiftool started at once (it is otherwise started only for formats we do not
        # strip ourselves), so it is among the children that must not outlive the server
        env = {"PICTRS__MEDIA__EXIFTOOL_IDLE_TIMEOUT": "0"}
        srv = Server(tmp_path / how.name, env=env).start()
        try:
            with srv.client() as c:
                upload(c, samples["test.png"])
            assert srv.proc is not None
            kids = children_of(srv.proc.pid)
            assert any("exiftool" in cmd for cmd in kids.values())
            assert any("vips_worker" in cmd for cmd in kids.values())
            srv.stop(how)
        finally:
            srv.stop()  # a failed check must not leave the server running
        deadline = time.monotonic() + 10
        while any(alive(p) for p in kids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [p for p in kids if alive(p)] == [], how.name


def test_children_live_as_long_as_the_server(tmp_path: Path, samples: dict[str, Path]) -> None:
    """Long-lived children must not die with the thread that happened to fork them: trio
    retires idle worker threads after 10 s, and Linux's parent-death signal follows the
    forking thread. The children are forked on the event loop's thread instead."""
    # exiftool would stop on its own after 10 idle seconds: keep it running for this test.
    srv = Server(tmp_path, env={"PICTRS__MEDIA__EXIFTOOL_IDLE_TIMEOUT": "0"}).start()
    try:
        assert srv.proc is not None
        with srv.client() as c:
            upload(c, samples["test.png"])
        before = children_of(srv.proc.pid)
        time.sleep(12)  # past trio's idle-thread lifetime
        after = children_of(srv.proc.pid)
        assert set(after) == set(before)
        with srv.client() as c:
            assert upload(c, samples["cat.jpg"]).status_code == 201
    finally:
        srv.stop()
