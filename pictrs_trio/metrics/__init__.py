"""What pictrs-trio records for Prometheus (``metrics.prometheus_address``; the series and
their labels: docs/operations.md, "Metrics").

``Metrics`` is the recorder every part is given (``AppState.metrics``, the store, the media
tools, the journal's monitor). This class records nothing: it is what runs when metrics are
off, so each call costs a method call and no more, and prometheus-client is not even
imported. ``metrics.prometheus.PrometheusMetrics`` records for real.

    metrics.count(names.FILES, {"upload": "inline"})
    with metrics.guard(names.PROCESS, {"command": "ffmpeg"}):   # start, end, duration
        ...
    with metrics.timed(names.INGEST_EXTERNAL_VALIDATION):      # duration, complete=...
        ...

Labels are given by their exported keys (``worker_id``, not ``worker-id``); a label a
series has but a call leaves out is empty, which Prometheus reads as absent (pict-rs's
``pict-rs.files`` carries one of ``upload``, ``import`` or ``download``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from journal import Ending
    from pictrs_trio.metrics.names import Guard

__all__ = ["MULTIPROC_ENV", "Labels", "Metrics"]

Labels = Mapping[str, str]
# Where prometheus-client's multiprocess mode keeps a process's series; read when
# prometheus-client is first imported, so it is set before the process starts.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Stateless and reentrant: one instance serves every ``with`` while metrics are off.
_OFF: AbstractContextManager[None] = contextlib.nullcontext()


class Metrics:
    """The recorder, off: every method does nothing. Also a ``journal.Monitor``."""

    enabled: ClassVar[bool] = False

    def count(self, name: str, labels: Labels | None = None, amount: float = 1.0) -> None:
        """Add ``amount`` to the counter ``name`` (a ``names`` constant)."""

    def observe(self, name: str, seconds: float, labels: Labels | None = None) -> None:
        """Record ``seconds`` in the histogram ``name``."""

    def guard(self, guard: Guard, labels: Labels | None = None) -> AbstractContextManager[None]:
        """Count ``guard.start`` now; on leaving, ``guard.end`` and ``guard.duration`` with
        ``completed`` true when the block finished, false when it raised (or was
        cancelled)."""
        return _OFF

    def timed(self, name: str, labels: Labels | None = None) -> AbstractContextManager[None]:
        """Record the block's duration in the histogram ``name``, with ``complete`` true
        when it finished, false when it raised (pict-rs's ``with_metrics``)."""
        return _OFF

    # -- journal.Monitor --

    def pushed(self, queue: str, count: int, *, completed: bool) -> None:
        pass

    def popped(self, queue: str, seconds: float, *, completed: bool) -> None:
        pass

    def job_started(self, queue: str, worker: str) -> None:
        pass

    def job_ended(self, queue: str, worker: str, seconds: float, ending: Ending) -> None:
        pass
