"""The live tracer: spans exported over OTLP/gRPC to ``tracing.opentelemetry.url``, as pict-rs
does (``src/init_tracing.rs``: resource ``service.name``, a batch exporter, W3C
trace-context). The only module that imports OpenTelemetry; ``tracing.open_tracer`` imports
it only when the url is set.

    span ends (event loop: appended to a queue) -> BatchSpanProcessor's thread
      -> OTLPSpanExporter (gRPC, its own threads) -> the collector

The SDK's global provider and propagator are left alone: the provider, its tracer and the
propagator belong to this object, on AppState. At shutdown the queue gets ``FLUSH_SECONDS``
to go out; a collector that is down or slow cannot hold SIGTERM up longer, and the SDK's
own exit hook (which would wait up to 30 s) is not installed.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from contextvars import Token
from types import TracebackType

import trio
from loguru import logger
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import pictrs_trio
from pictrs_trio.config import OpenTelemetry, logfilter
from pictrs_trio.rules.egress import url_for_log
from pictrs_trio.rules.errors import PictrsError
from pictrs_trio.services.tracing import NO_SPAN, Attribute, Kind, Span, Tracer

FLUSH_SECONDS = 2.0
EXPORTED_LEVELS = frozenset({"INFO", "DEBUG", "TRACE"})  # filter levels that let INFO through

_KINDS = {
    "internal": SpanKind.INTERNAL,
    "server": SpanKind.SERVER,
    "client": SpanKind.CLIENT,
    "consumer": SpanKind.CONSUMER,
}


class _Exporter(OTLPSpanExporter):
    """pict-rs's exporter (tonic, to ``url``). Shut down once: ``aclose`` may stop it
    early, and the processor's own shutdown would then log that it already was."""

    _stopped = False

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: object) -> None:
        if not self._stopped:
            self._stopped = True
            super().shutdown(timeout_millis, **kwargs)


class LiveSpan(Span):
    """A span of the SDK, started on enter and ended on exit; an exception leaving the block
    marks it failed (``error.type``: the pict-rs error code, else the exception's class;
    ``cancelled`` when trio cancelled it)."""

    __slots__ = ("_current", "_kind", "_name", "_parent", "_span", "_token", "_tracer")

    def __init__(
        self,
        tracer: LiveTracer,
        name: str,
        kind: Kind,
        parent: Mapping[str, str] | None,
        current: bool,
    ) -> None:
        self._tracer, self._name, self._kind = tracer, name, kind
        self._parent, self._current = parent, current
        self._token: Token[Context] | None = None

    def __enter__(self) -> LiveSpan:
        tracer = self._tracer
        parent = None if self._parent is None else tracer.propagator.extract(self._parent)
        span = tracer.sdk.start_span(self._name, context=parent, kind=_KINDS[self._kind])
        self._span = span
        if self._current:
            self._token = otel_context.attach(trace.set_span_in_context(span, parent))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        try:
            if isinstance(exc, Exception):
                code = str(exc.code) if isinstance(exc, PictrsError) else type(exc).__name__
                span.set_attribute("error.type", code)
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            elif exc is not None:  # trio.Cancelled (a client left, shutdown), KeyboardInterrupt
                span.set_attribute("error.type", "cancelled")
                span.set_status(Status(StatusCode.ERROR, "cancelled"))
            span.end()
        finally:
            if self._token is not None:
                otel_context.detach(self._token)

    def set(self, key: str, value: Attribute) -> None:
        self._span.set_attribute(key, value)

    def error(self, description: str) -> None:
        self._span.set_status(Status(StatusCode.ERROR, description))

    def inject(self, headers: MutableMapping[str, str]) -> None:
        self._tracer.propagator.inject(headers, trace.set_span_in_context(self._span))


class LiveTracer(Tracer):
    """Spans of the targets ``settings.targets`` lets through, exported to ``settings.url``
    (or to ``exporter``: tests give the SDK's in-memory one) by a BatchSpanProcessor."""

    enabled = True

    def __init__(self, settings: OpenTelemetry, exporter: SpanExporter | None = None) -> None:
        assert settings.url is not None or exporter is not None
        where = url_for_log(settings.url) if settings.url else "its exporter"
        # Exported targets, decided once per target (a handful of module names).
        self._filter = logfilter.parse(settings.targets)
        self._exported: dict[str, bool] = {}
        self._exporter = exporter if exporter is not None else _Exporter(endpoint=settings.url)
        resource = Resource.create({SERVICE_NAME: settings.service_name})
        self._provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self._provider.add_span_processor(BatchSpanProcessor(self._exporter))
        self.sdk = self._provider.get_tracer("pictrs_trio", pictrs_trio.version())
        self.propagator = TraceContextTextMapPropagator()
        self._where = f"{where} (OTLP/gRPC)" if exporter is None else where
        logger.info(
            "tracing: exporting spans to {} as service {}, targets {}",
            self._where,
            settings.service_name,
            settings.targets,
        )

    def exports(self, target: str) -> bool:
        """Whether spans of ``target`` (a module name) are exported."""
        exported = self._exported.get(target)
        if exported is None:
            exported = self._filter.level_of(target) in EXPORTED_LEVELS
            self._exported[target] = exported
        return exported

    def span(
        self,
        target: str,
        name: str,
        *,
        kind: Kind = "internal",
        parent: Mapping[str, str] | None = None,
        current: bool = True,
    ) -> Span:
        if not self.exports(target):
            return NO_SPAN
        return LiveSpan(self, name, kind, parent, current)

    async def aclose(self) -> None:
        """Export what is queued, for at most FLUSH_SECONDS (in a thread: the SDK blocks)."""
        with trio.move_on_after(FLUSH_SECONDS, shield=True) as waited:
            await trio.to_thread.run_sync(self._provider.shutdown, abandon_on_cancel=True)
        if waited.cancelled_caught:
            # The abandoned thread may be waiting to retry a dead collector: stop it.
            self._exporter.shutdown()
            logger.warning(
                "tracing: the collector at {} did not take the last spans within {} s; they "
                "are dropped",
                self._where,
                FLUSH_SECONDS,
            )
