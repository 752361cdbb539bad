"""Backgrounded uploads: the raw bytes are stored as they are, and an ingest job is queued
with the upload's record in one transaction; the job survives a crash and runs after the
restart (``handlers.handle_ingest``). A client claims the outcome later (pict-rs
``src/backgrounded.rs``; docs/api.md).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterable

from pictrs_trio.metrics.names import BACKGROUND_UPLOAD
from pictrs_trio.repo.records import PendingUpload
from pictrs_trio.rules import jobs
from pictrs_trio.rules.query import parse_upload_query
from pictrs_trio.services.ingest import IngestSession
from pictrs_trio.services.local import spool
from pictrs_trio.services.state import AppState


async def store_raw(
    state: AppState,
    session: IngestSession,
    chunks: AsyncIterable[bytes],
    query: list[tuple[str, str]],
) -> PendingUpload:
    """Spool and store one upload's bytes as they are (validated later, by the job). One
    that fails counts as a ``pict-rs.background.upload`` that did not complete."""
    limits, _ = parse_upload_query(query)
    raw = session.temp_path()
    try:
        await spool(chunks, raw, limits.byte_cap(state.config.media))
        identifier = await session.save(raw, extension="", content_type="application/octet-stream")
    except BaseException:
        state.metrics.count(BACKGROUND_UPLOAD, {"completed": "false"})
        raise
    return PendingUpload(upload_id=str(uuid.uuid4()), raw_identifier=identifier, query=query)


async def queue_uploads(
    state: AppState, session: IngestSession, pending: list[PendingUpload]
) -> list[str]:
    """Record the uploads with their ingest jobs; returns their upload ids. Each counts as
    a ``pict-rs.background.upload``, completed or not."""
    try:
        await state.repo.create_uploads(pending, owner=state.journal.owner)
    except BaseException:
        state.metrics.count(BACKGROUND_UPLOAD, {"completed": "false"}, len(pending))
        raise
    state.metrics.count(BACKGROUND_UPLOAD, {"completed": "true"}, len(pending))
    for upload in pending:  # the rows own the raw files now
        session.forget_stored(upload.raw_identifier)
    session.disarm()
    state.journal.notify(jobs.INGEST, pushed=len(pending))
    return [upload.upload_id for upload in pending]
