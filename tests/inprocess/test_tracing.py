"""Request spans in process: the app of a real AppState with a live tracer that exports into
the SDK's in-memory exporter. Each route's span is named by its pattern, never its path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from pictrs_trio.config import OpenTelemetry
from pictrs_trio.http.app import create_app
from pictrs_trio.services.otel import LiveTracer
from pictrs_trio.services.state import AppState
from tests.inprocess.conftest import API_KEY, asgi_client, upload

UNKNOWN = "00000000-0000-0000-0000-000000000000.png"
KEY = {"X-Api-Token": API_KEY}


async def traced_requests(
    state: AppState, requests: list[tuple[str, str, dict[str, str]]], targets: str = "info"
) -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    tracer = LiveTracer(OpenTelemetry(targets=targets), exporter)
    app = create_app(dataclasses.replace(state, tracer=tracer))
    async with asgi_client(app) as client:
        for method, path, headers in requests:
            await client.request(method, path, headers=headers)
    await tracer.aclose()
    return list(exporter.get_finished_spans())


def attributes(span: ReadableSpan) -> dict[str, object]:
    return dict(span.attributes or {})


@pytest.mark.parametrize(
    ("method", "path", "headers", "name", "status"),
    [
        ("GET", f"/image/original/{UNKNOWN}", {}, "GET /image/original/{alias}", 404),
        ("HEAD", f"/image/original?alias={UNKNOWN}", {}, "HEAD /image/original", 404),
        ("GET", f"/image/process.webp?src={UNKNOWN}", {}, "GET /image/process.{ext}", 404),
        (
            "GET",
            f"/image/details/original/{UNKNOWN}",
            {},
            "GET /image/details/original/{alias}",
            404,
        ),
        (
            "DELETE",
            f"/image/delete/secret-token/{UNKNOWN}",
            {},
            "DELETE /image/delete/{token}/{alias}",
            204,
        ),
        ("GET", "/image/details/process.webp", {}, "GET /image/details/process.{ext}", 400),
        ("GET", "/internal/nope/deeper", KEY, "GET /internal/{rest}", 404),
        ("GET", "/internal/import", KEY, "GET /internal/import", 405),
        ("PUT", "/image/details/original/x", {}, "PUT /image/details/original/{alias}", 405),
        ("GET", "/image", {}, "GET /image", 405),
        ("GET", "/no/such/route", {}, "GET", 404),
        ("GET", "/healthz", {}, "GET /healthz", 200),
    ],
)
async def test_a_request_span_names_the_route(
    state: AppState, method: str, path: str, headers: dict[str, str], name: str, status: int
) -> None:
    (span,) = await traced_requests(state, [(method, path, headers)])
    assert span.name == name
    got = attributes(span)
    route = name.partition(" ")[2]
    assert got.get("http.route") == (route or None)
    assert got["http.request.method"] == method
    assert got["http.response.status_code"] == status
    assert span.status.status_code is StatusCode.UNSET  # 4xx is the client's
    assert "secret-token" not in repr(got) and UNKNOWN not in repr(got)


async def test_upload_spans_and_the_targets_filter(
    state: AppState, samples: dict[str, Path], tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    # only request spans: the ingest steps' target is off
    tracer = LiveTracer(OpenTelemetry(targets="warn,pictrs_trio.http=info"), exporter)
    app = create_app(dataclasses.replace(state, tracer=tracer))
    async with asgi_client(app) as client:
        await upload(client, samples["test.png"])
    await tracer.aclose()
    assert [span.name for span in exporter.get_finished_spans()] == ["POST /image"]
