"""A real OTLP/gRPC trace collector in the test process, on a free loopback port: grpcio's
server with opentelemetry-proto's TraceService, keeping every span it is sent."""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any

import grpc
import msgspec
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status


class Received(msgspec.Struct, frozen=True, kw_only=True):
    """One exported span, with its resource's attributes; ids in hex."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root
    kind: str  # SERVER, INTERNAL, CLIENT, CONSUMER
    attributes: dict[str, Any]
    resource: dict[str, Any]
    error: bool


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    return getattr(value, which) if which else None


def _attributes(pairs: list[KeyValue]) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received = []
        for resource_spans in request.resource_spans:
            resource = _attributes(list(resource_spans.resource.attributes))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        Received(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                            attributes=_attributes(list(span.attributes)),
                            resource=resource,
                            error=span.status.code == Status.STATUS_CODE_ERROR,
                        )
                    )
        with self.collector.lock:
            self.collector.received.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()


class Collector:
    """``url`` is what ``tracing.opentelemetry.url`` takes; ``spans()`` what arrived."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.url = f"http://127.0.0.1:{self.port}"
        self.server.start()

    def spans(self) -> list[Received]:
        with self.lock:
            return list(self.received)

    def stop(self) -> None:
        self.server.stop(grace=None).wait(5)

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
