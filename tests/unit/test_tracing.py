"""The span helper (services/tracing.py) off and live (services/otel.py, exporting into the
SDK's in-memory exporter): parents across trio tasks and threads, the caller's traceparent,
the targets filter, failures, and the flush at the end."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.lowlevel
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from werkzeug.routing import Map

from pictrs_trio.config import OpenTelemetry
from pictrs_trio.http.exchange import Message, Receive, Scope, Send
from pictrs_trio.http.request_span import traced
from pictrs_trio.rules.errors import UnsupportedMedia
from pictrs_trio.services.otel import LiveTracer
from pictrs_trio.services.tracing import NO_SPAN, Tracer, open_tracer

TARGET = "pictrs_trio.services.ingest"


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


class Live:
    def __init__(self, targets: str = "info") -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer = LiveTracer(OpenTelemetry(targets=targets), self.exporter)

    async def finished(self) -> dict[str, ReadableSpan]:
        await self.tracer.aclose()  # the batch processor's queue goes out
        return by_name(self.exporter.get_finished_spans())


@pytest.fixture
def live() -> Live:
    return Live()


async def test_off_every_span_is_the_no_op() -> None:
    async with open_tracer(OpenTelemetry()) as tracer:
        assert type(tracer) is Tracer and not tracer.enabled
        with tracer.span(TARGET, "ingest", kind="server", parent={"traceparent": "x"}) as span:
            assert span is NO_SPAN
            span.set("pictrs.bytes", 1)
            span.error("nothing happens")
            headers: dict[str, str] = {}
            span.inject(headers)
            assert headers == {}


async def test_children_in_tasks_and_threads_get_the_spawning_span(live: Live) -> None:
    tracer = live.tracer
    threads: list[str] = []

    def in_thread() -> None:
        threads.append(threading.current_thread().name)
        with tracer.span(TARGET, "in thread"):
            pass

    async def child(name: str) -> None:
        await trio.lowlevel.checkpoint()
        with tracer.span(TARGET, name):
            await trio.lowlevel.checkpoint()

    # The nursery is older than the span: trio copies the context of the task that calls
    # start_soon, at that moment.
    async with trio.open_nursery() as nursery:
        with tracer.span(TARGET, "outer"):
            nursery.start_soon(child, "task")
            with tracer.span(TARGET, "inner"):
                await trio.to_thread.run_sync(in_thread)
        nursery.start_soon(child, "after")
    spans = await live.finished()
    outer = spans["outer"]
    assert parent_id(outer) is None
    assert parent_id(spans["task"]) == span_id(outer)
    assert parent_id(spans["inner"]) == span_id(outer)
    assert parent_id(spans["in thread"]) == span_id(spans["inner"])
    assert threads and threads[0] != threading.current_thread().name
    assert parent_id(spans["after"]) is None  # started once "outer" had ended
    assert {s.context.trace_id for s in spans.values() if s.name != "after"} == {  # type: ignore[union-attr]
        outer.context.trace_id  # type: ignore[union-attr]
    }


async def test_a_traceparent_is_the_parent_and_inject_passes_it_on(live: Live) -> None:
    trace_id, caller = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers: dict[str, str] = {}
    parent = {"traceparent": f"00-{trace_id}-{caller}-01"}
    with (
        live.tracer.span("pictrs_trio.http.request_span", "GET", kind="server", parent=parent),
        live.tracer.span(TARGET, "call", kind="client") as call,
    ):
        call.inject(headers)
    spans = await live.finished()
    request, out = spans["GET"], spans["call"]
    assert request.kind is SpanKind.SERVER and out.kind is SpanKind.CLIENT
    assert request.context is not None and out.context is not None
    assert f"{request.context.trace_id:032x}" == trace_id
    assert f"{parent_id(request):016x}" == caller
    assert request.parent is not None and request.parent.is_remote
    assert headers["traceparent"] == f"00-{trace_id}-{out.context.span_id:016x}-01"


async def test_a_span_that_is_not_current_parents_nothing(live: Live) -> None:
    with (
        live.tracer.span(TARGET, "request"),
        live.tracer.span(TARGET, "download", current=False),
        live.tracer.span(TARGET, "spool"),
    ):
        pass
    spans = await live.finished()
    assert parent_id(spans["spool"]) == span_id(spans["request"])
    assert parent_id(spans["download"]) == span_id(spans["request"])


async def test_failures_mark_the_span() -> None:
    live = Live()
    with pytest.raises(UnsupportedMedia), live.tracer.span(TARGET, "refused"):
        raise UnsupportedMedia("not media")
    with trio.move_on_after(0), live.tracer.span(TARGET, "cancelled"):
        await trio.sleep(1)
    with live.tracer.span(TARGET, "answered 503") as span:
        span.error("answered 503")
    spans = await live.finished()
    refused = spans["refused"]
    assert refused.status.status_code is StatusCode.ERROR
    assert refused.attributes is not None
    assert refused.attributes["error.type"] == str(UnsupportedMedia.code)
    assert [event.name for event in refused.events] == ["exception"]
    cancelled = spans["cancelled"]
    assert cancelled.attributes is not None and cancelled.attributes["error.type"] == "cancelled"
    assert cancelled.status.status_code is StatusCode.ERROR
    assert spans["answered 503"].status.description == "answered 503"


@pytest.mark.parametrize(
    ("targets", "exported"),
    [
        ("info", {"pictrs_trio.http.request_span", TARGET, "pictrs_trio.services.render"}),
        ("debug", {"pictrs_trio.http.request_span", TARGET, "pictrs_trio.services.render"}),
        ("warn", set()),
        ("warn,pictrs_trio.services.render=info", {"pictrs_trio.services.render"}),
        ("info,pictrs_trio.services=off", {"pictrs_trio.http.request_span"}),
        (
            "error,pict_rs=trace",
            {"pictrs_trio.http.request_span", TARGET, "pictrs_trio.services.render"},
        ),
        ("pictrs_trio::http=info", {"pictrs_trio.http.request_span"}),
    ],
)
async def test_targets_pick_what_is_exported(targets: str, exported: set[str]) -> None:
    """Every span is at INFO: a target at info, debug or trace exports it."""
    live = Live(targets)
    names = ("pictrs_trio.http.request_span", TARGET, "pictrs_trio.services.render")
    for target in names:
        with live.tracer.span(target, target):
            pass
    assert {target for target in names if live.tracer.exports(target)} == exported
    assert set(await live.finished()) == exported


async def test_a_filtered_parent_leaves_its_children_to_the_next_one_up() -> None:
    live = Live("info,pictrs_trio.services.ingest=off")
    with live.tracer.span("pictrs_trio.http.request_span", "request"):
        assert live.tracer.span(TARGET, "ingest") is NO_SPAN
        with live.tracer.span(TARGET, "ingest"), live.tracer.span("pictrs_trio.x", "step"):
            pass
    spans = await live.finished()
    assert set(spans) == {"request", "step"}
    assert parent_id(spans["step"]) == span_id(spans["request"])


async def test_the_request_span_fails_on_a_5xx_answer(live: Live) -> None:
    async def unavailable(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[Message] = []

    async def record(message: Message) -> None:
        sent.append(message)

    async def nothing() -> Message:
        raise AssertionError("not read")

    app = traced(unavailable, live.tracer, Map())
    scope = {"type": "http", "method": "GET", "path": "/healthz", "headers": []}
    await app(scope, nothing, record)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    (span,) = (await live.finished()).values()
    assert span.name == "GET" and span.kind is SpanKind.SERVER  # no route in an empty map
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 503
    assert span.status.status_code is StatusCode.ERROR


def test_off_the_app_is_not_wrapped() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("not called")

    assert traced(app, Tracer(), Map()) is app
