"""Spans for OpenTelemetry (``tracing.opentelemetry``; docs/operations.md "Tracing").

    with state.tracer.span(__name__, "ingest.spool") as span:   a child of the current span
        span.set("pictrs.bytes", size)

    Tracer       tracing.opentelemetry.url unset: every span is NO_SPAN, which does nothing,
                 and nothing of OpenTelemetry is ever imported
    LiveTracer   url set (services/otel.py, imported only then): spans go over OTLP/gRPC

The first argument is the span's target, the module's name as for its logger: the
``tracing.opentelemetry.targets`` filter (pict-rs's RUST_LOG syntax, ``config/logfilter.py``)
picks which targets' spans are exported. Every span is at level INFO, as pict-rs's
``#[tracing::instrument]`` spans are: a target at ``info``, ``debug`` or ``trace`` exports
its spans; ``warn``, ``error`` or ``off`` drops them (their children then hang off the
nearest exported ancestor).

The current span is a contextvar (OpenTelemetry's context), and trio gives each task its own
context, copied from the task that called ``start_soon``/``start``: a child task started
inside a span has that span as parent. ``trio.to_thread.run_sync`` also runs its function in
a copy of the calling task's context (``trio/_threads.py``), so a span made in such a thread
has the right parent too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, MutableMapping
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Literal

from pictrs_trio.config import OpenTelemetry

Attribute = str | int | float | bool
# OpenTelemetry's span kinds that occur here: a request is a server span, a job a consumer
# span, a download or validation request a client span, anything else internal.
Kind = Literal["internal", "server", "client", "consumer"]


class Span:
    """A span as its ``with`` block sees it. This base does nothing: it is the span of a
    tracer that is off and of a target the filter drops (``NO_SPAN``)."""

    __slots__ = ()

    def __enter__(self) -> Span:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def set(self, key: str, value: Attribute) -> None:
        """Set an attribute (OpenTelemetry's semantic names where one fits, else
        ``pictrs.*``)."""

    def error(self, description: str) -> None:
        """Mark the span failed without an exception (a request answered 5xx)."""

    def inject(self, headers: MutableMapping[str, str]) -> None:
        """Add this span's W3C ``traceparent`` (and ``tracestate``) to outgoing headers."""


NO_SPAN = Span()


class Tracer:
    """The tracer of a server process without ``tracing.opentelemetry.url``: off, and as
    cheap as a ``with nullcontext()`` (bench/tracing_noop.py)."""

    enabled = False

    def span(
        self,
        target: str,
        name: str,
        *,
        kind: Kind = "internal",
        parent: Mapping[str, str] | None = None,
        current: bool = True,
    ) -> Span:
        """A span named ``name`` for the ``with`` statement; it starts when entered.

        ``parent``: W3C trace-context headers (``traceparent``, ``tracestate``) naming the
        parent, as an incoming request carries them; without them the parent is the current
        span. ``current=False``: the span is not made current, so spans started inside its
        block are not its children (a download that streams into the ingest beside it).
        """
        return NO_SPAN

    async def aclose(self) -> None:
        """Export what is still queued, within a bounded time."""


@asynccontextmanager
async def open_tracer(settings: OpenTelemetry) -> AsyncIterator[Tracer]:
    """The tracer for this process: off without ``settings.url``; else a LiveTracer, flushed
    (for at most ``otel.FLUSH_SECONDS``) when the block ends."""
    if settings.url is None:
        yield Tracer()
        return
    # Only here: a server without a collector never imports OpenTelemetry or gRPC (~40 MB
    # and ~0.3 s of imports).
    from pictrs_trio.services.otel import LiveTracer

    tracer = LiveTracer(settings)
    try:
        yield tracer
    finally:
        await tracer.aclose()
