"""Payloads of the durable jobs pictrs-trio queues on the journal. Pure records.

Each is a tagged msgspec Struct (the tag is the journal's ``kind``); a field added later
gets a default so rows written by an older version still decode.
"""

from __future__ import annotations

import msgspec

CLEANUP = "cleanup"
INGEST = "ingest"
PROCESS = "process"
# Undo jobs of migrate-store's writes into the store it moves media to (services/migrate.py):
# a queue apart from CLEANUP, whose workers act on the server's store.
MIGRATE = "migrate"

_JOB = {"frozen": True, "kw_only": True, "tag_field": "type"}


class RemoveFiles(msgspec.Struct, tag="remove_files", **_JOB):
    """Delete store files whose rows are already gone (same transaction as the job), or,
    with ``partial``, files a dead process was writing (the undo of its journal intent)."""

    identifiers: list[str]
    partial: bool = False


class IngestUpload(msgspec.Struct, tag="ingest_upload", **_JOB):
    """A backgrounded upload: the raw bytes are stored under ``raw_identifier``."""

    upload_id: str
    raw_identifier: str
    query: list[tuple[str, str]] = []  # limits and operations, as the upload's query had


class Generate(msgspec.Struct, tag="generate", **_JOB):
    """Render a variant (process_backgrounded)."""

    alias: str
    ext: str
    query: list[tuple[str, str]]


class ExpireVariants(msgspec.Struct, tag="expire_variants", **_JOB):
    """Remove variants not accessed since ``media.retention.variants``."""


class ExpireProxies(msgspec.Struct, tag="expire_proxies", **_JOB):
    """Remove proxied aliases not accessed since ``media.retention.proxy``."""


class RemoveAllVariants(msgspec.Struct, tag="remove_all_variants", **_JOB):
    """DELETE /internal/variants."""


class SweepOrphans(msgspec.Struct, tag="sweep_orphans", **_JOB):
    """Retired: queued by versions that swept stores for unreferenced files. Rows of it still
    decode, and are skipped."""


class AuditStore(msgspec.Struct, tag="audit_store", **_JOB):
    """One batch of the walk that counts store files the repo does not know, and says so
    once at its end. Never deletes: they may belong to another program (docs/migration.md).
    ``run`` names the walk (a newer one replaces it); ``after`` is where the batch starts
    in the store's listing (None: a new walk); ``seen``, ``unknown`` and ``example`` are the
    counts so far (services/audit.py)."""

    run: str = ""
    after: str | None = None
    seen: int = 0
    unknown: int = 0
    example: str | None = None


class PruneMissing(msgspec.Struct, tag="prune_missing", **_JOB):
    """``POST /internal/prune_missing``: one batch of the walk over every file that removes
    the records of those whose original is gone from the store (pict-rs
    ``src/queue/cleanup.rs`` ``prune``); it queues the next batch (services/prune.py).
    ``run`` names the walk (a forced restart begins another and this one stops);
    ``after_*`` is where the batch starts (after that file, in page order; None: the
    newest)."""

    run: str
    after_ns: int | None = None
    after_key: bytes | None = None


CleanupJob = (
    RemoveFiles
    | ExpireVariants
    | ExpireProxies
    | RemoveAllVariants
    | SweepOrphans
    | AuditStore
    | PruneMissing
)
