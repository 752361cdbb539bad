"""OpenTelemetry as an operator runs it: the real server exporting to a real OTLP/gRPC
collector (tests/otlp.py), a caller's ``traceparent`` joined, shutdown bounded when the
collector is dead, and no OpenTelemetry at all in a server without a collector."""

from __future__ import annotations

import secrets
import socket
import time
from pathlib import Path

from tests.e2e.conftest import Server
from tests.otlp import Collector, Received

URL_ENV = "PICTRS__TRACING__OPENTELEMETRY__URL"


def by_name(spans: list[Received], name: str) -> list[Received]:
    return [span for span in spans if span.name == name]


def descends_from(span: Received, ancestor: Received, spans: list[Received]) -> bool:
    ids = {s.span_id: s for s in spans}
    while span.parent_span_id:
        if span.parent_span_id == ancestor.span_id:
            return True
        parent = ids.get(span.parent_span_id)
        if parent is None:
            return False
        span = parent
    return False


def test_spans_join_the_callers_trace_and_reach_the_collector(
    tmp_path: Path, samples: dict[str, Path]
) -> None:
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    with Collector() as collector:
        srv = Server(tmp_path, env={URL_ENV: collector.url}).start()
        with srv.client() as c:
            up = c.post(
                "/image",
                files={"images[]": ("cat.jpg", samples["cat.jpg"].read_bytes())},
                headers={"traceparent": f"00-{trace_id}-{caller_span}-01"},
            )
            assert up.status_code == 201, up.text
            entry = up.json()["files"][0]
            alias, token = entry["file"], entry["delete_token"]
            got = c.get(f"/image/process.webp?src={alias}&thumbnail=64")
            assert got.status_code == 200
            assert c.get(f"/image/original/{alias}").status_code == 200
        began = time.monotonic()
        assert srv.stop() == 0
        took = time.monotonic() - began
        spans = collector.spans()  # all exported before the process ended
    assert took < 5, f"stopping took {took:.1f} s"
    assert srv.errors.read_text() == ""  # nothing from gRPC (its fork handlers, say) on stderr
    assert spans
    assert {span.resource.get("service.name") for span in spans} == {"pict-rs"}

    (upload,) = by_name(spans, "POST /image")
    assert (upload.kind, upload.trace_id, upload.parent_span_id) == (
        "SERVER",
        trace_id,
        caller_span,
    )
    assert upload.attributes["http.route"] == "/image"
    assert upload.attributes["http.request.method"] == "POST"
    assert upload.attributes["http.response.status_code"] == 201

    # the ingest steps are in the caller's trace, under the request span
    (ingest,) = by_name(spans, "ingest")
    assert ingest.trace_id == trace_id and ingest.parent_span_id == upload.span_id
    steps = [s for s in spans if s.name.startswith("ingest.")]
    assert {"ingest.spool", "ingest.discover", "ingest.store"} <= {s.name for s in steps}
    assert {"ingest.strip", "ingest.convert"} & {s.name for s in steps}
    for step in steps:
        assert step.trace_id == trace_id and step.parent_span_id == ingest.span_id, step
    (spool,) = by_name(steps, "ingest.spool")
    assert spool.attributes["pictrs.bytes"] == samples["cat.jpg"].stat().st_size

    # a request without traceparent starts its own trace; its render is in it
    (process,) = by_name(spans, "GET /image/process.{ext}")
    assert process.trace_id != trace_id and process.parent_span_id == ""
    assert process.attributes["http.route"] == "/image/process.{ext}"
    assert process.attributes["http.response.status_code"] == 200
    for name in ("render", "render.engine", "render.store"):
        (span,) = by_name(spans, name)
        assert span.trace_id == process.trace_id and descends_from(span, process, spans), name

    # routes, never paths: no alias or delete token in any span
    (original,) = by_name(spans, "GET /image/original/{alias}")
    assert original.attributes["http.route"] == "/image/original/{alias}"
    for span in spans:
        text = repr((span.name, span.attributes))
        assert alias not in text and token not in text, span
    assert by_name(spans, "GET /healthz")  # Server.start's probes


def test_a_dead_collector_does_not_hold_up_shutdown(
    tmp_path: Path, samples: dict[str, Path]
) -> None:
    """A collector that takes connections and never answers: the last spans get two
    seconds at SIGTERM, then go."""
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(16)
        port = black_hole.getsockname()[1]
        srv = Server(tmp_path, env={URL_ENV: f"http://127.0.0.1:{port}"}).start()
        with srv.client() as c:
            up = c.post("/image", files={"images[]": ("a.png", samples["test.png"].read_bytes())})
            assert up.status_code == 201
        began = time.monotonic()
        assert srv.stop() == 0
        took = time.monotonic() - began
    assert took < 4.5, f"stopping took {took:.1f} s"
    assert "did not take the last spans within 2.0 s" in srv.output()


def test_without_a_url_opentelemetry_is_never_imported(
    tmp_path: Path, samples: dict[str, Path]
) -> None:
    """Python's own import log (PYTHONPROFILEIMPORTTIME, on stderr) of the real server
    through an upload, a render and shutdown."""
    srv = Server(tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"}).start()
    with srv.client() as c:
        up = c.post("/image", files={"images[]": ("cat.jpg", samples["cat.jpg"].read_bytes())})
        alias = up.json()["files"][0]["file"]
        assert c.get(f"/image/process.webp?src={alias}&thumbnail=64").status_code == 200
    assert srv.stop() == 0
    imported = [line.rsplit("|", 1)[-1].strip() for line in srv.errors.read_text().splitlines()]
    assert "pictrs_trio.services.tracing" in imported  # the log works
    assert "pictrs_trio.services.ingest" in imported
    loaded = [m for m in imported if m.split(".")[0] in ("opentelemetry", "grpc", "google")]
    assert loaded == []
