"""Ingest: turn an uploaded byte stream into a stored file, a hash, details and an alias.

    spool (size cap) -> discover (sniff + header probe) -> validate -> decide
      -> strip / convert / video -> hash -> external validation (media.external_validation)
      -> store.save_file -> repo.commit_upload

Each arrow's step is a span under an ``ingest`` span (``ingest.spool``, ``ingest.discover``,
``ingest.strip`` | ``ingest.convert`` | ``ingest.video``, ``ingest.process``, ``ingest.hash``,
``ingest.external_validation``, ``ingest.store``; services/tracing.py).

Everything an attempt creates is recorded on an ``IngestSession``; unless the caller
disarms it after success, leaving the session removes it all again, so a failed or
cancelled upload leaves nothing behind (pict-rs ``src/ingest.rs`` ``Session``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import AsyncIterable, Sequence
from pathlib import Path
from types import TracebackType

import msgspec
import trio
from loguru import logger

from pictrs_trio.metrics.names import INGEST_END
from pictrs_trio.repo.records import Details, Hash
from pictrs_trio.rules import ids, jobs, policy, variants
from pictrs_trio.rules.errors import EmptyFile
from pictrs_trio.rules.formats import Fmt, Kind, MediaFormat
from pictrs_trio.rules.policy import Discovery
from pictrs_trio.rules.validate import UploadLimits, validate
from pictrs_trio.rules.variants import Op
from pictrs_trio.services.external_validation import validate_externally
from pictrs_trio.services.local import local_file, remove_scratch, spool
from pictrs_trio.services.state import AppState
from pictrs_trio.services.storing import CLEANUP_SECONDS, discard, save_new


class Ingested(msgspec.Struct, frozen=True, kw_only=True):
    alias: str
    delete_token: str
    details: Details


class IngestSession:
    """Tracks temp files, stored files and aliases one request (or job) created; unless
    disarmed after success, leaving it removes them again (pict-rs ``src/ingest.rs``
    ``Session``). Stored files are saved write-ahead (``services/storing.py``), so a crash
    that skips this cleanup leaves nothing either."""

    def __init__(self, state: AppState) -> None:
        self._state = state
        self._temps: list[Path] = []
        self._identifiers: list[str] = []
        self._aliases: list[str] = []
        self._armed = True

    def temp_path(self, suffix: str = "") -> Path:
        path = self._state.tmp_dir / f"{uuid.uuid4().hex}{suffix}"
        self._temps.append(path)
        return path

    async def save(self, src: Path, *, extension: str, content_type: str) -> str:
        """Store ``src`` under a fresh identifier (intent first); returns it."""
        identifier = await save_new(
            self._state, src, extension=extension, content_type=content_type
        )
        self._identifiers.append(identifier)
        return identifier

    def forget_stored(self, identifier: str) -> None:
        """A row now owns ``identifier`` (a backgrounded upload's raw bytes)."""
        self._identifiers.remove(identifier)

    def committed(self, alias: str, identifier: str | None) -> None:
        """The repo now owns ``identifier`` (None: a file it had already) through ``alias``:
        undoing removes the alias and deletes only what the repo reports orphaned (another
        upload may share the file)."""
        self._aliases.append(alias)
        if identifier is not None:
            self._identifiers.remove(identifier)

    async def discard(self, identifier: str) -> None:
        """Our copy of ``identifier`` is not needed (the content was stored already)."""
        self._identifiers.remove(identifier)
        await discard(self._state, identifier)

    def disarm(self) -> None:
        self._armed = False

    async def __aenter__(self) -> IngestSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Bounded cleanup: it must run even when the request was cancelled.
        with trio.move_on_after(CLEANUP_SECONDS, shield=True):
            temps, self._temps = self._temps, []
            await trio.to_thread.run_sync(remove_scratch, temps)
            if self._armed:
                await self._undo()

    async def _undo(self) -> None:
        repo = self._state.repo
        for alias in self._aliases:
            try:
                removed = await repo.remove_alias(alias)
            except Exception:
                logger.exception("could not remove alias {} of a failed upload", alias)
                continue
            if removed is not None and removed.orphaned_identifiers:
                # their rows went with a cleanup job that deletes the files
                self._state.journal.notify(jobs.CLEANUP, pushed=1)
        for identifier in dict.fromkeys(self._identifiers):
            await discard(self._state, identifier)


def upload_operations(state: AppState, pairs: list[tuple[str, str]]) -> list[Op]:
    """Operations from the upload query, or else ``media.preprocess_steps`` (pict-rs: the
    query's replace the configured ones). Not filtered by ``media.filters``."""
    if not pairs and state.config.media.preprocess_steps:
        return list(variants.parse_steps(state.config.media.preprocess_steps))
    return variants.parse_operations(pairs, allowed=None)


def details_now(found: Discovery) -> Details:
    """The details to record for a file just discovered, created now."""
    return Details(
        width=found.width,
        height=found.height,
        frames=found.frames,
        format=found.format,
        created_at=dt.datetime.now(dt.UTC),
    )


async def ensure_details(state: AppState, identifier: str) -> Details:
    """A stored file's details, computed from the file when missing (older records).
    Raises ReadOnly when they would have to be written, AliasNotFound when the file cannot
    be read."""
    details = await state.repo.details(identifier)
    if details is not None:
        return details
    state.require_writable()
    if state.config.server.danger_dummy_mode:
        return details_now(DUMMY)  # pict-rs src/lib.rs ensure_details_identifier
    async with local_file(state, identifier) as path:
        details = details_now(await state.media.discover(path))
    await state.repo.relate_details(identifier, details)
    return details


def _hash_file(path: Path) -> tuple[bytes, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(1024 * 1024):
            h.update(block)
            size += len(block)
    return h.digest(), size


# What ``server.danger_dummy_mode`` records for any upload (pict-rs ``Details::danger_dummy``).
DUMMY = Discovery(format=MediaFormat(kind=Kind.IMAGE, fmt=Fmt.PNG), width=0, height=0, frames=None)


async def _prepare(
    state: AppState,
    session: IngestSession,
    raw: Path,
    size: int,
    limits: UploadLimits,
    operations: Sequence[Op],
) -> tuple[Path, Discovery, tuple[bytes, int] | None]:
    """Discover, validate, strip or convert, apply ``operations``: the file to store, what
    it is, and its (sha256, size) when already known."""
    media_cfg, tracer = state.config.media, state.tracer
    with tracer.span(__name__, "ingest.discover") as span:
        source = await state.media.discover(raw)
        span.set("pictrs.media.type", source.format.content_type)
        span.set("pictrs.media.width", source.width)
        span.set("pictrs.media.height", source.height)
        validate(source, size, limits, media_cfg)
        plan = policy.decide(source, media_cfg)

    final: Discovery
    hashed: tuple[bytes, int] | None = None
    with tracer.span(__name__, f"ingest.{plan.action}") as span:
        span.set("pictrs.media.output_type", plan.output.content_type)
        if plan.action == "strip":
            # No suffix: exiftool's -o treats a suffix unlike the source's as "create a new
            # file".
            out = session.temp_path()
            hashed = await state.media.strip(raw, out, source.format)
            final = source  # stripping changes no dimension, frame or format
        elif plan.action == "convert":
            out = session.temp_path(plan.output.extension)
            final = await state.media.convert(raw, out, source=source, plan=plan)
        else:
            out = session.temp_path(plan.output.extension)
            final = await state.media.video(raw, out, source=source, plan=plan)

    if operations and final.format.kind is not Kind.VIDEO:
        processed = session.temp_path(final.format.extension)
        with tracer.span(__name__, "ingest.process") as span:
            span.set("pictrs.operations", len(operations))
            final = await state.media.render(
                out,
                processed,
                source=final,
                ops=list(operations),
                output=final.format,
                quality=plan.quality,
            )
        out = processed
        hashed = None
    return out, final, hashed


async def ingest(
    state: AppState,
    session: IngestSession,
    chunks: AsyncIterable[bytes],
    *,
    limits: UploadLimits,
    operations: Sequence[Op] = (),
    alias: str | None = None,
    upload_id: str | None = None,
) -> Ingested:
    """Ingest one file. ``operations`` (upload query or ``media.preprocess_steps``) are
    applied to images and animations, never to videos. Raises the PictrsError of the first
    step that refuses it (FailedExternalValidation from ``media.external_validation``,
    asked before anything is stored, in dummy mode too, as in pict-rs). Counted in
    ``pict-rs.ingest.end``: completed, or not (failed or cancelled)."""
    try:
        with state.tracer.span(__name__, "ingest"):
            done = await _ingest(state, session, chunks, limits, operations, alias, upload_id)
    except BaseException:
        state.metrics.count(INGEST_END, {"completed": "false"})
        raise
    state.metrics.count(INGEST_END, {"completed": "true"})
    return done


async def _ingest(
    state: AppState,
    session: IngestSession,
    chunks: AsyncIterable[bytes],
    limits: UploadLimits,
    operations: Sequence[Op],
    alias: str | None,
    upload_id: str | None,
) -> Ingested:
    media_cfg, tracer = state.config.media, state.tracer
    raw = session.temp_path()
    with tracer.span(__name__, "ingest.spool") as span:
        size = await spool(chunks, raw, limits.byte_cap(media_cfg))
        span.set("pictrs.bytes", size)
    if size == 0:
        raise EmptyFile("Uploaded file is empty")
    if state.config.server.danger_dummy_mode:
        # pict-rs src/ingest.rs dummy_ingest: the bytes as they came, called a PNG of 0x0
        out, final, hashed = raw, DUMMY, None
    else:
        out, final, hashed = await _prepare(state, session, raw, size, limits, operations)

    if hashed is None:
        with tracer.span(__name__, "ingest.hash"):
            hashed = await trio.to_thread.run_sync(_hash_file, out)
    sha, stored_size = hashed
    fmt = final.format
    await validate_externally(state, out, size=stored_size, content_type=fmt.content_type)
    details = details_now(final)
    new_alias = alias if alias is not None else ids.new_alias(fmt.extension)
    token = ids.new_delete_token()
    with tracer.span(__name__, "ingest.store") as span:
        span.set("pictrs.bytes", stored_size)
        identifier = await session.save(out, extension=fmt.extension, content_type=fmt.content_type)
        commit = await state.repo.commit_upload(
            hash=Hash(sha256=sha, size=stored_size, format=fmt),
            identifier=identifier,
            details=details,
            alias=new_alias,
            delete_token=token,
            owner=state.journal.owner,
            upload_id=upload_id,
        )
        span.set("pictrs.deduplicated", commit.deduplicated)
        if commit.deduplicated:
            # Same content is stored already: our copy is redundant and no row points at it.
            await session.discard(identifier)
            session.committed(new_alias, None)
        else:
            session.committed(new_alias, identifier)
    logger.bind(alias=new_alias).info(
        "ingested {} {}x{} {} bytes{}",
        fmt.content_type,
        details.width,
        details.height,
        stored_size,
        " (deduplicated)" if commit.deduplicated else "",
    )
    return Ingested(alias=new_alias, delete_token=token, details=commit.details)
