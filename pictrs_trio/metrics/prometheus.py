"""The recorder that records (``PrometheusMetrics``) and what the scrape listener serves
(``served_registry``, ``render``), built with prometheus-client.

One server process keeps its series in a private ``CollectorRegistry``. With several
(``server.workers`` > 1) every child records into files of prometheus-client's multiprocess
mode (``PROMETHEUS_MULTIPROC_DIR``, set by the supervisor before the child starts, so that
prometheus-client picks it up when first imported there), and the supervisor, which owns the
listener, adds the files of all children up (``multiprocess_source``).

pict-rs's exporter writes a counter as ``pict_rs_files{upload="inline"} 3`` and leaves out a
label a series does not carry. prometheus-client calls every counter sample ``…_total`` and
gives each series every label of its family; ``PictrsNames`` turns the ``pict_rs_`` series
back into pict-rs's shape, so dashboards made for pict-rs keep working. Such a counter is
declared ``untyped``: the text format has no way to call a counter without ``_total`` a
counter, and ``rate()`` does not care. pict-rs's histograms (summaries there) are
Prometheus histograms here: ``_sum`` and ``_count`` are as before, quantiles come from
``histogram_quantile`` over the buckets.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from types import TracebackType

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from journal import Ending
from pictrs_trio.metrics import Labels, Metrics
from pictrs_trio.metrics import names as n
from pictrs_trio.metrics.names import Guard, flag

PICT_RS_PREFIX = "pict_rs_"


class PrometheusMetrics(Metrics):
    """Records every series of ``names.SERIES`` into ``registry``."""

    enabled = True

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        # name -> (metric, its label names); a call gives the labels it has, the rest are ""
        self._counters: dict[str, tuple[Counter, tuple[str, ...]]] = {}
        self._histograms: dict[str, tuple[Histogram, tuple[str, ...]]] = {}
        # (name, label values) -> the child: prometheus-client's labels() checks and locks
        # on every call, several times what the recording itself costs
        self._counted: dict[tuple[str, tuple[str, ...]], Counter] = {}
        self._observed: dict[tuple[str, tuple[str, ...]], Histogram] = {}
        for series in n.SERIES:
            keys = series.label_names
            if series.kind == "counter":
                counter = Counter(series.exported, series.help, keys, registry=self.registry)
                self._counters[series.name] = (counter, keys)
            else:
                histogram = Histogram(
                    series.exported, series.help, keys, registry=self.registry, buckets=n.BUCKETS
                )
                self._histograms[series.name] = (histogram, keys)

    def count(self, name: str, labels: Labels | None = None, amount: float = 1.0) -> None:
        counter, keys = self._counters[name]
        if keys:
            values = tuple([labels.get(k, "") for k in keys] if labels else [""] * len(keys))
            child = self._counted.get((name, values))
            if child is None:
                child = self._counted[(name, values)] = counter.labels(*values)
            counter = child
        counter.inc(amount)

    def observe(self, name: str, seconds: float, labels: Labels | None = None) -> None:
        histogram, keys = self._histograms[name]
        if keys:
            values = tuple([labels.get(k, "") for k in keys] if labels else [""] * len(keys))
            child = self._observed.get((name, values))
            if child is None:
                child = self._observed[(name, values)] = histogram.labels(*values)
            histogram = child
        histogram.observe(seconds)

    def guard(self, guard: Guard, labels: Labels | None = None) -> AbstractContextManager[None]:
        return _Guarded(self, guard, labels or {})

    def timed(self, name: str, labels: Labels | None = None) -> AbstractContextManager[None]:
        return _Timed(self, name, labels or {})

    # -- journal.Monitor --

    def pushed(self, queue: str, count: int, *, completed: bool) -> None:
        self.count(n.QUEUE_PUSH, {"queue": queue, "completed": flag(completed)}, count)

    def popped(self, queue: str, seconds: float, *, completed: bool) -> None:
        labels = {"queue": queue, "completed": flag(completed)}
        self.count(n.QUEUE_POP, labels)
        self.observe(n.QUEUE_POP_DURATION, seconds, labels)

    def job_started(self, queue: str, worker: str) -> None:
        self.count(n.JOB_START, {"queue": queue, "worker_id": worker})

    def job_ended(self, queue: str, worker: str, seconds: float, ending: Ending) -> None:
        labels = {"queue": queue, "worker_id": worker, "completed": flag(ending == "done")}
        self.count(n.JOB_END, labels)
        self.observe(n.JOB_DURATION, seconds, labels)
        self.count(n.JOB_OUTCOMES, {"queue": queue, "outcome": ending})


class _Guarded:
    __slots__ = ("_began", "_guard", "_labels", "_metrics")

    def __init__(self, metrics: PrometheusMetrics, guard: Guard, labels: Labels) -> None:
        self._metrics, self._guard, self._labels = metrics, guard, labels
        self._began = 0.0

    def __enter__(self) -> None:
        if self._guard.start is not None:
            self._metrics.count(self._guard.start, self._labels)
        self._began = time.perf_counter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        took = time.perf_counter() - self._began
        labels = {**self._labels, "completed": flag(exc_type is None)}
        self._metrics.observe(self._guard.duration, took, labels)
        self._metrics.count(self._guard.end, labels)


class _Timed:
    __slots__ = ("_began", "_labels", "_metrics", "_name")

    def __init__(self, metrics: PrometheusMetrics, name: str, labels: Labels) -> None:
        self._metrics, self._name, self._labels = metrics, name, labels
        self._began = 0.0

    def __enter__(self) -> None:
        self._began = time.perf_counter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        took = time.perf_counter() - self._began
        labels = {**self._labels, "complete": flag(exc_type is None)}
        self._metrics.observe(self._name, took, labels)


# --- what the listener serves ----------------------------------------------------------------


class PictrsNames:
    """A collector that passes ``source``'s series on in pict-rs's shape: ``pict_rs_``
    counters without ``_total`` (untyped), no ``_created`` series, no empty labels."""

    def __init__(self, source: Collector) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        for family in self._source.collect():
            yield reshape(family)


def reshape(family: Metric) -> Metric:
    """``family`` in pict-rs's shape (``PictrsNames``)."""
    created = family.name + "_created"
    samples = [
        sample._replace(labels={k: v for k, v in sample.labels.items() if v != ""})
        for sample in family.samples
        if sample.name != created
    ]
    if family.type == "counter" and family.name.startswith(PICT_RS_PREFIX):
        out = Metric(family.name, family.documentation, "unknown")
        out.samples = [sample._replace(name=family.name) for sample in samples]
        return out
    out = Metric(family.name, family.documentation, family.type, family.unit)
    out.samples = samples
    return out


def multiprocess_source(path: str) -> CollectorRegistry:
    """The series of every server process, added up from the files in ``path``."""
    source = CollectorRegistry()
    MultiProcessCollector(source, path=path)  # type: ignore[no-untyped-call]
    return source


def served_registry(source: Collector, *more: Collector) -> CollectorRegistry:
    """What the listener serves: ``source`` in pict-rs's shape, then ``more`` (collectors
    that read their values at scrape time)."""
    served = CollectorRegistry()
    served.register(PictrsNames(source))
    for collector in more:
        served.register(collector)
    return served


def render(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """The exposition of ``registry`` in the format ``accept`` asks for (the Prometheus text
    format unless OpenMetrics is asked for), and its content type."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type
