"""metrics.prometheus_address: the real server's scrape listener, under pict-rs's series
names, for one server process and for two (whose counts add up)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Server, free_port
from tests.e2e.test_startup_health import data_args, start
from tests.e2e.test_supervision import children_of
from tests.e2e.test_upload_serve_delete import upload
from tests.s3 import MotoServer

Key = tuple[str, frozenset[tuple[str, str]]]
PROCESS_PATH = 'Some("/image/process.{ext}")'
QUEUES = ("cleanup", "ingest", "process", "migrate")
STATUSES = ("pending", "running", "done", "dead")


def parse(text: str) -> dict[Key, float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(url: str) -> dict[Key, float]:
    answer = httpx.get(url + "/metrics", timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(answer.text)


def value(samples: dict[Key, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def metrics_server(
    root: Path, *, workers: int = 1, moto: MotoServer | None = None
) -> tuple[Server, str]:
    port = free_port()
    env = {"PICTRS__SERVER__WORKERS": str(workers)}
    args = ["--metrics-prometheus-address", f"127.0.0.1:{port}"]
    store = "object" if moto is not None else "filesystem"
    srv = Server(root, args, env=env, store=store, moto=moto)
    return srv.start(), f"http://127.0.0.1:{port}"


def test_one_server_process(tmp_path: Path, samples: dict[str, Path]) -> None:
    srv, metrics = metrics_server(tmp_path)
    try:
        before = scrape(metrics)
        with srv.client() as c:
            alias = upload(c, samples["test.png"]).json()["files"][0]["file"]
            assert c.get(f"/image/process.webp?src={alias}&thumbnail=20").status_code == 200
            assert c.get(f"/image/process.webp?src={alias}&thumbnail=20").status_code == 200
            assert c.get("/no/such/route").status_code == 404
        after = scrape(metrics)
        # pict-rs's counters keep pict-rs's shape: no _total, only the labels they carry
        assert value(before, "pict_rs_files", upload="inline") == 0
        assert value(after, "pict_rs_files", upload="inline") == 1
        assert value(after, "pict_rs_ingest_end", completed="true") == 1
        assert value(after, "pict_rs_generate_start") == 1  # the second GET was a hit
        assert value(after, "pict_rs_generate_end", completed="true") == 1
        assert value(after, "pict_rs_generate_duration_count", completed="true") == 1
        assert value(after, "pict_rs_process_end", command="vips", completed="true") >= 1
        upload_path = {"path": 'Some("/image")', "status": "201 Created"}
        assert value(after, "pict_rs_request_end", **upload_path) == 1
        timed = {"path": PROCESS_PATH, "status": "200 OK"}
        assert value(after, "pict_rs_request_timings_count", **timed) == 2
        assert value(after, "pict_rs_request_timings_bucket", le="+Inf", **timed) == 2
        assert value(after, "pict_rs_request_timings_sum", **timed) > 0
        assert value(after, "pict_rs_request_start", path=PROCESS_PATH) == 2
        assert value(after, "pict_rs_request_end", path="None", status="404 Not Found") == 1
        # pictrs-trio's own: what the repo holds, read at the scrape
        for queue in QUEUES:
            for status in STATUSES:
                assert (
                    "pictrs_trio_queue_jobs",
                    frozenset({("queue", queue), ("status", status)}),
                ) in after
        assert value(after, "pictrs_trio_store_files", kind="original") == 1
        assert value(after, "pictrs_trio_store_files", kind="variant") == 1
        assert value(after, "pictrs_trio_aliases") == 1
        stored = sorted(p.stat().st_size for p in srv.stored_files())
        assert value(after, "pictrs_trio_store_original_bytes") in stored
        # the start-up audit ran as a job, counted in both pict-rs's and our series
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done = value(after, "pictrs_trio_job_outcomes_total", queue="cleanup", outcome="done")
            if done:
                break
            time.sleep(0.1)
            after = scrape(metrics)
        assert done >= 1
        assert any(
            name == "pict_rs_job_end" and ("queue", "cleanup") in labels for name, labels in after
        )
        # OpenMetrics when asked for; any path answers
        om = httpx.get(metrics + "/", headers={"Accept": "application/openmetrics-text"})
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        assert om.text.endswith("# EOF\n")
        assert value(parse(om.text), "pict_rs_files", upload="inline") == 1
        assert httpx.post(metrics + "/metrics").status_code == 405
    finally:
        assert srv.stop() == 0


def child_counts(folder: Path, pid: int, tmp: Path) -> dict[Key, float]:
    """What one child recorded: its own files, summed alone."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    alone = tmp / str(pid)
    alone.mkdir(exist_ok=True)
    for kind in ("counter", "histogram"):
        shutil.copy(folder / f"{kind}_{pid}.db", alone)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(alone))
    return parse(generate_latest(registry).decode())


def served_by(folder: Path, children: list[int], tmp: Path, labels: dict[str, str]) -> list[float]:
    """Each child's own count of requests (prometheus-client's name: with ``_total``)."""
    return [
        value(child_counts(folder, pid, tmp), "pict_rs_request_end_total", **labels)
        for pid in children
    ]


def test_two_server_processes_add_up(tmp_path: Path, samples: dict[str, Path]) -> None:
    root = tmp_path / "srv"
    root.mkdir()
    srv, metrics = metrics_server(root, workers=2)
    assert srv.proc is not None
    folder = root / "tmp" / "pictrs-trio" / f"{srv.proc.pid}-metrics"
    try:
        children = [p for p, c in children_of(srv.proc.pid).items() if "runtime.supervisor" in c]
        assert len(children) == 2
        health = {"path": 'Some("/healthz")', "status": "200 OK"}
        with srv.client() as c:
            alias = upload(c, samples["test.png"]).json()["files"][0]["file"]
            assert c.get(f"/image/process.webp?src={alias}&thumbnail=20").status_code == 200
        before = scrape(metrics)
        sent = 0
        # A new connection each: the kernel hands them to either child. Until both served.
        while sent < 400:
            for _ in range(10):
                assert httpx.get(srv.url + "/healthz").status_code == 200
            sent += 10
            if all(served_by(folder, children, tmp_path, health)):
                break
        # A request is counted just after its answer went out: let the last one land.
        time.sleep(0.5)
        per_child = served_by(folder, children, tmp_path, health)
        assert all(per_child), per_child
        after = scrape(metrics)
        served = value(after, "pict_rs_request_end", **health)
        assert served - value(before, "pict_rs_request_end", **health) == sent
        assert served == sum(per_child)  # the instance is the sum of its processes
        assert value(after, "pict_rs_files", upload="inline") == 1
        assert value(after, "pict_rs_generate_end", completed="true") == 1
        assert value(after, "pictrs_trio_store_files", kind="variant") == 1
        # a child that dies is replaced, and what it counted still counts
        os.kill(children[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = [p for p, c in children_of(srv.proc.pid).items() if "runtime.supervisor" in c]
            if len(now) == 2 and children[0] not in now:
                break
            time.sleep(0.1)
        assert value(scrape(metrics), "pict_rs_request_end", **health) >= served
        assert srv.stop() == 0
    finally:
        srv.stop()
    assert not folder.exists()  # the supervisor's folder goes with it


def test_object_storage_requests_are_timed(
    tmp_path: Path, samples: dict[str, Path], moto: MotoServer
) -> None:
    srv, metrics = metrics_server(tmp_path, moto=moto)
    try:
        with srv.client() as c:
            alias = upload(c, samples["test.png"]).json()["files"][0]["file"]
            assert c.get(f"/image/process.webp?src={alias}&thumbnail=20").status_code == 200
            assert c.get(f"/image/original/{alias}").status_code == 200
        after = scrape(metrics)
        done = {"complete": "true"}
        prefix = "pict_rs_object_storage_"
        # the original and the variant (the start-up probe's PUT came before the listener)
        assert value(after, prefix + "put_object_request_count", **done) >= 2
        assert value(after, prefix + "get_object_request_count", **done) >= 2
        assert value(after, prefix + "get_object_request_stream_count", **done) >= 2
        assert value(after, prefix + "put_object_request_count", complete="false") == 0
    finally:
        assert srv.stop() == 0


def test_off_by_default_and_a_taken_port_is_named(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        address = f"127.0.0.1:{port}"
        code, stderr = start(
            tmp_path, "-a", f"127.0.0.1:{free_port()}", "--metrics-prometheus-address", address,
            *data_args(tmp_path),
        )  # fmt: skip
    assert code == 1
    assert stderr.strip().startswith(
        f"error: cannot listen on {address} (metrics.prometheus_address): Address already in use"
    )
    (tmp_path / "off").mkdir()
    srv = Server(tmp_path / "off").start()
    try:
        assert "metrics for Prometheus" not in srv.log.read_text()
        assert "prometheus" not in srv.log.read_text().lower()
    finally:
        srv.stop()
