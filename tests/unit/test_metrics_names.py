"""Metric names and labels as pict-rs's exporter writes them (metrics/names.py,
metrics/routes.py), and the reshaping of prometheus-client's output into that form."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pictrs_trio.metrics import Metrics
from pictrs_trio.metrics import names as n
from pictrs_trio.metrics.names import sanitize, sanitize_label
from pictrs_trio.metrics.prometheus import PrometheusMetrics, served_registry
from pictrs_trio.metrics.routes import PATTERNS, path_label, status_label

ROOT = Path(__file__).resolve().parents[2]
VALID_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
VALID_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@pytest.mark.parametrize(
    ("name", "exported"),
    [
        ("pict-rs.request.timings", "pict_rs_request_timings"),
        ("pict-rs.ingest.external-validation", "pict_rs_ingest_external_validation"),
        (
            "pict-rs.object-storage.get-object-request.stream",
            "pict_rs_object_storage_get_object_request_stream",
        ),
        ("pict-rs.postgres.hashes.create-hash", "pict_rs_postgres_hashes_create_hash"),
        ("already_fine:total", "already_fine:total"),  # colons are allowed in names
        ("9lives", "_lives"),  # not as a first character
        ("a9", "a9"),  # but after it
        ("naïve µs", "na_ve__s"),  # one underscore per character, not per byte
        ("", ""),
    ],
)
def test_names_become_prometheus_names_as_pict_rs_exports_them(name: str, exported: str) -> None:
    assert sanitize(name) == exported


@pytest.mark.parametrize(
    ("key", "exported"),
    [
        ("worker-id", "worker_id"),
        ("completed", "completed"),
        ("a:b", "a_b"),  # no colons in label keys
        ("1st", "_st"),
        ("_x1", "_x1"),
    ],
)
def test_label_keys_become_prometheus_label_names(key: str, exported: str) -> None:
    assert sanitize_label(key) == exported


def test_every_series_has_a_valid_unique_name_and_labels() -> None:
    exported = [series.exported for series in n.SERIES]
    assert len(set(exported)) == len(exported)
    for series in n.SERIES:
        assert VALID_NAME.fullmatch(series.exported), series
        assert all(VALID_LABEL.fullmatch(label) for label in series.label_names), series
        if series.name.startswith("pict-rs."):
            assert series.exported.startswith("pict_rs_")
        else:
            assert series.name.startswith("pictrs_trio_") and series.name == series.exported
    # every name a call site uses is one of the series
    known = {series.name for series in n.SERIES}
    for guard in (n.PROCESS, n.GENERATE, n.BACKGROUND_INGEST):
        assert {guard.end, guard.duration} <= known and guard.start in {None, *known}
    PrometheusMetrics()  # prometheus-client accepts them all side by side


def test_route_patterns_are_labelled_as_pict_rs_renders_them() -> None:
    assert path_label("/image") == 'Some("/image")'
    assert path_label("/image/process.webp") == 'Some("/image/process.{ext}")'
    assert path_label("/image/process_backgrounded.webp") == (
        'Some("/image/process_backgrounded.{ext}")'
    )
    assert path_label("/image/details/process.avif") == 'Some("/image/details/process.{ext}")'
    assert path_label("/image/original/abc.png") == 'Some("/image/original/{filename}")'
    assert path_label("/image/delete/tok/abc.png") == (
        'Some("/image/delete/{delete_token}/{filename}")'
    )
    assert path_label("/internal/jobs") == 'Some("/internal/jobs")'
    # no route: pict-rs's None; a segment never spans a slash
    for path in ("/", "/image/", "/nope", "/image/original/a/b", "/internal/nope"):
        assert path_label(path) == "None", path
    # every pattern labels itself (a literal path matches its own template)
    for pattern in PATTERNS:
        assert path_label(pattern) == f'Some("{pattern}")'


def test_statuses_are_labelled_as_actix_renders_them() -> None:
    assert status_label(200) == "200 OK"
    assert status_label(201) == "201 Created"
    assert status_label(404) == "404 Not Found"
    assert status_label(413) == "413 Payload Too Large"
    assert status_label(416) == "416 Range Not Satisfiable"
    assert status_label(599) == "599 <unknown status code>"


def test_the_exposition_has_pict_rs_shape() -> None:
    metrics = PrometheusMetrics()
    metrics.count(n.FILES, {"import": "inline"})
    metrics.count(n.FILES, {"import": "inline"})
    metrics.count(n.GENERATE_START)
    metrics.job_ended("cleanup", "w", 0.5, "retry")
    with pytest.raises(ValueError, match="tool"), metrics.guard(n.PROCESS, {"command": "ffmpeg"}):
        raise ValueError("tool failed")
    with metrics.timed(n.INGEST_EXTERNAL_VALIDATION):
        pass
    text = generate_latest(served_registry(metrics.registry)).decode()
    # counters of pict-rs: its sample name, only the labels given, untyped; no _created
    assert 'pict_rs_files{import="inline"} 2.0' in text.splitlines()
    assert "# TYPE pict_rs_files untyped" in text
    assert "pict_rs_generate_start 1.0" in text.splitlines()
    assert "_created" not in text
    assert 'pict_rs_process_end{command="ffmpeg",completed="false"} 1.0' in text
    assert 'pict_rs_process_start{command="ffmpeg"} 1.0' in text
    assert 'pict_rs_ingest_external_validation_count{complete="true"} 1.0' in text
    assert 'pict_rs_job_end{completed="false",queue="cleanup",worker_id="w"} 1.0' in text
    # pictrs-trio's own counters are Prometheus counters
    assert "# TYPE pictrs_trio_job_outcomes_total counter" in text
    assert 'pictrs_trio_job_outcomes_total{outcome="retry",queue="cleanup"} 1.0' in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["pict_rs_job_duration"].type == "histogram"
    assert families["pict_rs_files"].type == "unknown"


def test_off_records_nothing_and_is_the_same_interface() -> None:
    off = Metrics()
    assert not off.enabled and PrometheusMetrics.enabled
    off.count(n.FILES, {"upload": "inline"})
    off.observe(n.REQUEST_TIMINGS, 1.0)
    with off.guard(n.PROCESS), off.timed(n.GENERATE_PROCESS), off.guard(n.GENERATE):
        pass  # one shared no-op context, nestable
    public = {name for name in dir(Metrics) if not name.startswith("_")}
    assert public <= set(dir(PrometheusMetrics))
    overridden = {name for name in public if name != "enabled"}
    assert all(getattr(PrometheusMetrics, m) is not getattr(Metrics, m) for m in overridden)


def test_off_a_server_process_never_imports_prometheus_client() -> None:
    """Everything a server process (and the supervisor) imports to serve, without metrics:
    prometheus-client is not among it."""
    code = (
        "import sys\n"
        "from pictrs_trio.runtime import launch, service, supervisor\n"
        "from pictrs_trio.http import app\n"
        "from pictrs_trio.services import handlers, ingest, render\n"
        "from pictrs_trio.config import Config\n"
        "assert type(service.recorder(Config())).__name__ == 'Metrics'\n"
        "print(sorted(m for m in sys.modules if m.startswith('prometheus_client')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
