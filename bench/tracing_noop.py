"""What a span costs when tracing is off, against a bare ``with nullcontext():``.

    .venv/bin/python bench/tracing_noop.py            # 100k enters, best of 7
    .venv/bin/python bench/tracing_noop.py -n 1000000 --live

Off (no ``tracing.opentelemetry.url``) every ``state.tracer.span(...)`` returns the shared
``NO_SPAN``; this times ``with tracer.span(__name__, "ingest.spool") as span:
span.set(...)`` and the bare block, each in a loop of ``-n`` iterations, and prints the
time per enter and the ratio. ``--live`` also times a LiveTracer whose filter drops the
target, and one that makes real SDK spans into a BatchSpanProcessor with an exporter that
drops every batch (that imports OpenTelemetry, after the off runs).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext

from pictrs_trio.config import OpenTelemetry
from pictrs_trio.services.tracing import Tracer

TARGET = "pictrs_trio.services.ingest"


def bare(n: int) -> None:
    for _ in range(n):
        with nullcontext():
            pass


def spans(tracer: Tracer) -> Callable[[int], None]:
    def run(n: int) -> None:
        span_of = tracer.span
        for _ in range(n):
            with span_of(TARGET, "ingest.spool") as span:
                span.set("pictrs.bytes", 1)

    return run


def best(run: Callable[[int], None], n: int, rounds: int) -> float:
    """Seconds per iteration, best of ``rounds``."""
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        run(n)
        times.append(time.perf_counter() - began)
    return min(times) / n


def live_tracers() -> list[tuple[str, Tracer]]:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from pictrs_trio.services.otel import LiveTracer

    class Dropping(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    return [
        ("live, target filtered out", LiveTracer(OpenTelemetry(targets="off"), Dropping())),
        ("live, exported (SDK span)", LiveTracer(OpenTelemetry(), Dropping())),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000, help="enters per round")
    parser.add_argument("-r", "--rounds", type=int, default=7)
    parser.add_argument("--live", action="store_true", help="also time live tracers")
    args = parser.parse_args()
    n, rounds = args.n, args.rounds
    base = best(bare, n, rounds)
    off = best(spans(Tracer()), n, rounds)
    rows = [("with nullcontext()", base), ("tracer off (NO_SPAN) + set()", off)]
    assert "opentelemetry" not in sys.modules
    if args.live:
        for name, tracer in live_tracers():
            rows.append((name, best(spans(tracer), min(n, 20_000), rounds)))
    print(f"{n} enters per round, best of {rounds}")
    for name, seconds in rows:
        print(f"  {name:<30} {seconds * 1e9:8.0f} ns   x{seconds / base:5.2f}")


if __name__ == "__main__":
    main()
