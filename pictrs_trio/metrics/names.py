"""The series pictrs-trio records, under pict-rs's names (pict-rs ``src/init_metrics.rs``),
and how a name becomes a Prometheus one. Pure.

pict-rs names its series with dots and dashes (``pict-rs.request.timings``) and exports them
through metrics-exporter-prometheus, which turns every character Prometheus does not allow
into ``_`` (``pict_rs_request_timings``), label keys too (``worker-id`` -> ``worker_id``).
``sanitize`` and ``sanitize_label`` do the same, so the exported names, and the dashboards
built on them, are pict-rs's. Series of pictrs-trio's own start with ``pictrs_trio_`` and
follow Prometheus's conventions instead (docs/operations.md, "Metrics").
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

Kind = Literal["counter", "histogram"]

_NAME_START = re.compile(r"[^a-zA-Z_:]")
_NAME_REST = re.compile(r"[^a-zA-Z0-9_:]")
_LABEL_START = re.compile(r"[^a-zA-Z_]")
_LABEL_REST = re.compile(r"[^a-zA-Z0-9_]")


def sanitize(name: str) -> str:
    """A series name as Prometheus allows it: the first character from ``[a-zA-Z_:]``, the
    others from ``[a-zA-Z0-9_:]``, each other character replaced by ``_``
    (``pict-rs.object-storage.get-object-request`` -> ``pict_rs_object_storage_get_object_
    request``)."""
    return _NAME_START.sub("_", name[:1]) + _NAME_REST.sub("_", name[1:])


def sanitize_label(key: str) -> str:
    """A label key as Prometheus allows it: ``[a-zA-Z_][a-zA-Z0-9_]*``, each other character
    replaced by ``_`` (``worker-id`` -> ``worker_id``)."""
    return _LABEL_START.sub("_", key[:1]) + _LABEL_REST.sub("_", key[1:])


def flag(value: bool) -> str:
    """A ``completed``/``complete`` label value, as pict-rs writes a bool."""
    return "true" if value else "false"


class Series(msgspec.Struct, frozen=True, kw_only=True):
    """One recorded series: its name as pict-rs spells it (or pictrs-trio's, already valid),
    what it is, and its label keys (pict-rs's spelling)."""

    name: str
    kind: Kind
    labels: tuple[str, ...] = ()
    help: str

    @property
    def exported(self) -> str:
        return sanitize(self.name)

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(sanitize_label(key) for key in self.labels)


class Guard(msgspec.Struct, frozen=True, kw_only=True):
    """pict-rs's guard pattern: ``start`` counted on entry (when there is one), then ``end``
    and ``duration`` with ``completed`` true when the work finished, false when it failed or
    was abandoned."""

    start: str | None
    end: str
    duration: str


# --- pict-rs's series ------------------------------------------------------------------------

REQUEST_START = "pict-rs.request.start"
REQUEST_END = "pict-rs.request.end"
REQUEST_TIMINGS = "pict-rs.request.timings"
FILES = "pict-rs.files"
BACKGROUND_UPLOAD = "pict-rs.background.upload"
BACKGROUND_UPLOAD_CLAIM = "pict-rs.background.upload.claim"
BACKGROUND_UPLOAD_INGEST = "pict-rs.background.upload.ingest"
BACKGROUND_UPLOAD_INGEST_DURATION = "pict-rs.background.upload.ingest.duration"
INGEST_END = "pict-rs.ingest.end"
INGEST_EXTERNAL_VALIDATION = "pict-rs.ingest.external-validation"
PROCESS_START = "pict-rs.process.start"
PROCESS_END = "pict-rs.process.end"
PROCESS_DURATION = "pict-rs.process.duration"
GENERATE_START = "pict-rs.generate.start"
GENERATE_END = "pict-rs.generate.end"
GENERATE_DURATION = "pict-rs.generate.duration"
GENERATE_PROCESS = "pict-rs.generate.process"
JOB_START = "pict-rs.job.start"
JOB_END = "pict-rs.job.end"
JOB_DURATION = "pict-rs.job.duration"
QUEUE_PUSH = "pict-rs.queue.push"
QUEUE_POP = "pict-rs.queue.pop"
QUEUE_POP_DURATION = "pict-rs.queue.pop.duration"
UPLOAD_WAIT = "pict-rs.upload.wait"
UPLOAD_WAIT_DURATION = "pict-rs.upload.wait.duration"
CLEANUP_OUTDATED_VARIANT = "pict-rs.cleanup.outdated-variant"
CLEANUP_OUTDATED_PROXY = "pict-rs.cleanup.outdated-proxy"

# Object storage calls by operation (pict-rs times each request future; here each request
# with its retries). The two listings are pictrs-trio's: pict-rs never lists a bucket.
OBJECT_STORAGE = "pict-rs.object-storage."
OBJECT_OPERATIONS = (
    "put-object-request",
    "create-multipart-request",
    "create-upload-part-request",
    "complete-multipart-request",
    "abort-multipart-request",
    "get-object-request",
    "get-object-request.stream",
    "head-object-request",
    "delete-object-request",
    "list-objects-request",
    "list-multipart-uploads-request",
)

PROCESS = Guard(start=PROCESS_START, end=PROCESS_END, duration=PROCESS_DURATION)
GENERATE = Guard(start=GENERATE_START, end=GENERATE_END, duration=GENERATE_DURATION)
BACKGROUND_INGEST = Guard(
    start=None, end=BACKGROUND_UPLOAD_INGEST, duration=BACKGROUND_UPLOAD_INGEST_DURATION
)

# The ``command`` of a run of the libvips engine. pict-rs runs ImageMagick (``magick``) where
# pictrs-trio gives the job to an engine worker (docs/operations.md).
ENGINE_COMMAND = "vips"

# --- pictrs-trio's own -----------------------------------------------------------------------

JOB_OUTCOMES = "pictrs_trio_job_outcomes"
ENGINE_RESTARTS = "pictrs_trio_engine_worker_restarts"


def _c(name: str, labels: tuple[str, ...], help: str) -> Series:
    return Series(name=name, kind="counter", labels=labels, help=help)


def _h(name: str, labels: tuple[str, ...], help: str) -> Series:
    return Series(name=name, kind="histogram", labels=labels, help=help)


DONE = ("completed",)
COMMAND = ("command",)
JOB = ("queue", "worker-id")

SERIES: tuple[Series, ...] = (
    _c(REQUEST_START, ("path",), "Requests received, by route pattern"),
    _c(REQUEST_END, ("path", "status"), "Requests finished (no status: never answered)"),
    _h(REQUEST_TIMINGS, ("path", "status"), "Request durations, answer body included"),
    _c(FILES, ("upload", "import", "download"), "Files received, by way and mode"),
    _c(BACKGROUND_UPLOAD, DONE, "Backgrounded uploads stored and queued (or not)"),
    _c(BACKGROUND_UPLOAD_CLAIM, (), "Backgrounded uploads claimed"),
    _c(BACKGROUND_UPLOAD_INGEST, DONE, "Ingest jobs of backgrounded uploads"),
    _h(BACKGROUND_UPLOAD_INGEST_DURATION, DONE, "Ingest job durations"),
    _c(INGEST_END, DONE, "Ingests ended (false: what they made was removed again)"),
    _h(INGEST_EXTERNAL_VALIDATION, ("complete",), "Calls to the external validator"),
    _c(PROCESS_START, COMMAND, "Tool and engine runs started"),
    _c(PROCESS_END, (*COMMAND, *DONE), "Tool and engine runs ended"),
    _h(PROCESS_DURATION, (*COMMAND, *DONE), "Tool and engine run durations"),
    _c(GENERATE_START, (), "Variant renders started"),
    _c(GENERATE_END, DONE, "Variant renders ended"),
    _h(GENERATE_DURATION, DONE, "Variant render durations"),
    _h(GENERATE_PROCESS, ("complete",), "Renders under their lease, motion stills included"),
    _c(JOB_START, JOB, "Jobs started"),
    _c(JOB_END, (*JOB, *DONE), "Jobs ended (false: failed or stopped)"),
    _h(JOB_DURATION, (*JOB, *DONE), "Job durations"),
    _c(QUEUE_PUSH, ("queue", *DONE), "Jobs queued"),
    _c(QUEUE_POP, ("queue", *DONE), "Waits of job workers for a job"),
    _h(QUEUE_POP_DURATION, ("queue", *DONE), "How long job workers waited for a job"),
    _c(UPLOAD_WAIT, DONE, "Claims waiting on a backgrounded upload"),
    _h(UPLOAD_WAIT_DURATION, DONE, "How long claims waited"),
    _c(CLEANUP_OUTDATED_VARIANT, (), "Variants expired by media.retention.variants"),
    _c(CLEANUP_OUTDATED_PROXY, (), "Proxied media expired by media.retention.proxy"),
    *(
        _h(OBJECT_STORAGE + operation, ("complete",), f"Object storage {operation} timings")
        for operation in OBJECT_OPERATIONS
    ),
    _c(JOB_OUTCOMES, ("queue", "outcome"), "Jobs ended: done, retry, dead or lost"),
    _c(ENGINE_RESTARTS, ("reason",), "Engine workers replaced: killed (timeout, crash) or exited"),
)

# Seconds: from a cached read (about a millisecond) to a job's time limit (600 s).
BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
