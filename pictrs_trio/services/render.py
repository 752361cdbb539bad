"""Variants: find a processed rendition of a file, or render it once.

    request -> parse_request -> repo.find_variant
      hit  -> serve from the store
      miss -> _single_flight (one render per key: in this process by an event
              (single_flight.SingleFlight), across processes by a journal lease)
                -> input: the original, or its motion still (videos; animations to stills)
                -> media.process -> storing.save_new -> repo.commit_variant

Spans (services/tracing.py): ``render`` for a miss, with ``render.wait`` (another task or
process renders the key), ``render.engine`` (the engine job, submitted from here: the worker
process itself is not traced), ``render.store`` (save and commit); ``render.motion_still``
for the still of a video or animation.

A GET renders in the request's own cancel scope: a request that gives up cancels its render,
and the next request for the key renders again. ``process_backgrounded`` queues a
``Generate`` job instead (jobs.py), which renders through the same path.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import msgspec
import trio
from loguru import logger

from pictrs_trio.metrics.names import GENERATE, GENERATE_PROCESS
from pictrs_trio.repo.records import Details, Hash
from pictrs_trio.rules import variants
from pictrs_trio.rules.errors import AliasNotFound, MediaToolError, VariantTimeout
from pictrs_trio.rules.formats import Fmt
from pictrs_trio.rules.policy import Discovery
from pictrs_trio.services.ingest import details_now, ensure_details
from pictrs_trio.services.local import local_file
from pictrs_trio.services.state import AppState
from pictrs_trio.services.storing import CLEANUP_SECONDS, discard, save_new

POLL_SECONDS = 0.05  # waiting on a render in another process
WAIT_SECONDS = 35.0  # pict-rs waits ~35 s for a variant, then command-timeout


class Rendered(msgspec.Struct, frozen=True, kw_only=True):
    identifier: str
    details: Details


class VariantRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A parsed ``process.{ext}`` query: output format, operations, and the variant key."""

    ext: Fmt
    operations: list[variants.Op]
    key: str


def parse_request(
    ext: str, pairs: Iterable[tuple[str, str]], *, allowed: Iterable[str]
) -> VariantRequest:
    """Raises InvalidFileExtension, InvalidProcessPath."""
    fmt = variants.parse_ext(ext)
    operations = variants.parse_operations(pairs, allowed=frozenset(allowed))
    return VariantRequest(ext=fmt, operations=operations, key=variants.variant_key(operations, fmt))


async def forget(state: AppState, alias: str, request: VariantRequest, identifier: str) -> None:
    """Drop the record of a variant whose file is missing (variants are stored without
    fsync, so a power cut can lose one); the next request renders it again."""
    found = await state.repo.find_variant(alias, request.key)
    if found is not None:
        await state.repo.forget_variant(found.hash, request.key, identifier)


def record_access(state: AppState, hash: Hash, key: str) -> None:
    """Note a variant request for retention (pict-rs: not in read-only mode)."""
    if not state.config.server.read_only:
        state.accesses.record(hash.key(), key)


def discovery_of(details: Details) -> Discovery:
    """What the media tools know of a stored file, from its recorded details."""
    return Discovery(
        format=details.format, width=details.width, height=details.height, frames=details.frames
    )


async def _single_flight(state: AppState, key: str, render: _Render) -> None:
    """Run ``render`` unless someone (here or in another process) already is; in that case
    wait until they are done. Returns when the caller should look in the repo again.

    In this process an event decides (``SingleFlight``); across processes a journal lease on
    ``key``, which a process that dies releases at once (journal/owners.py): a waiting
    request takes a dead renderer's work over instead of waiting it out."""
    tracer = state.tracer
    waiting = tracer.span(__name__, "render.wait")
    async with state.generations.lead_or_wait(key, waiting) as leading:
        if not leading:
            return
        journal = state.journal
        # A live holder stuck past what pict-rs allows a render (4 x process_timeout) is
        # passed by: its commit checks its own work, so rendering again loses nothing.
        stale_after = 4 * state.config.media.process_timeout
        if not await journal.lease(key, stale_after):
            with tracer.span(__name__, "render.wait") as span:
                span.set("pictrs.render.elsewhere", True)
                while True:
                    # Another process renders it: wait for its lease to go (released, or its
                    # owner dead), looking for its result meanwhile.
                    await trio.sleep(POLL_SECONDS)
                    if await render.done():
                        return
                    if await journal.lease(key, stale_after):
                        break
        try:
            # Another process may have finished and released its lease between our first
            # look and our lease: look again (a point read) rather than render twice.
            if await render.done():
                return
            with state.metrics.timed(GENERATE_PROCESS):
                await render.run(key)
        finally:
            if not render.released:  # a successful render releases with its commit
                with trio.move_on_after(CLEANUP_SECONDS, shield=True):
                    await journal.release(key)


class _Render:
    """One render job: what to check for completion, and how to do it. ``run`` gets the
    lease key and sets ``released`` when its commit released the lease."""

    released = False

    async def done(self) -> bool:
        raise NotImplementedError

    async def run(self, claim_key: str) -> None:
        raise NotImplementedError


async def _store(
    state: AppState,
    out: Path,
    result: Discovery,
    commit: Callable[[str, Details], Awaitable[bool]],
) -> tuple[str, Details, bool]:
    """Store the render at ``out`` write-ahead (not fsynced: a variant can be rendered
    again), then ``commit`` it: its identifier, details, and whether the commit was ours (it
    released the lease either way). A commit that fails discards the stored file."""
    fmt = result.format
    with state.tracer.span(__name__, "render.store"):
        identifier = await save_new(
            state, out, extension=fmt.extension, content_type=fmt.content_type, durable=False
        )
        details = details_now(result)
        try:
            ours = await commit(identifier, details)
        except BaseException:
            await discard(state, identifier)
            raise
    return identifier, details, ours


class _MotionRender(_Render):
    def __init__(self, state: AppState, hash: Hash, original: str, details: Details) -> None:
        self.state, self.hash, self.original, self.details = state, hash, original, details

    async def done(self) -> bool:
        return await self.state.repo.motion_identifier(self.hash) is not None

    async def run(self, claim_key: str) -> None:
        state = self.state
        out = state.tmp_dir / f"motion-{uuid.uuid4().hex}"

        async def commit(identifier: str, details: Details) -> bool:
            _, ours = await state.repo.commit_motion(
                self.hash, identifier, details, owner=state.journal.owner, lease=claim_key
            )
            return ours

        try:
            async with local_file(state, self.original) as src:
                with state.tracer.span(__name__, "render.engine"):
                    result = await state.media.motion_still(
                        src, out, source=discovery_of(self.details), media=state.config.media
                    )
            identifier, _, ours = await _store(state, out, result, commit)
        finally:
            out.unlink(missing_ok=True)
        self.released = True
        if not ours:
            await discard(state, identifier)


async def motion_still(
    state: AppState, hash: Hash, original: str, details: Details
) -> tuple[str, Details]:
    """The file's first-frame still (videos, animations), rendered once and kept."""
    repo = state.repo
    for _ in range(3):
        identifier = await repo.motion_identifier(hash)
        if identifier is not None:
            still = await repo.details(identifier)
            if still is not None:
                return identifier, still
        state.require_writable()
        with state.tracer.span(__name__, "render.motion_still"):
            await _single_flight(
                state, f"{hash.key().hex()}:motion", _MotionRender(state, hash, original, details)
            )
    raise MediaToolError("Motion still could not be generated")


class _VariantRender(_Render):
    def __init__(self, state: AppState, alias: str, request: VariantRequest) -> None:
        self.state, self.alias, self.request = state, alias, request
        self.result: Rendered | None = None

    async def done(self) -> bool:
        found = self.state.repo.find_variant_now(self.alias, self.request.key)
        return found is not None and found.identifier is not None

    async def run(self, claim_key: str) -> None:
        with self.state.metrics.guard(GENERATE):  # pict-rs.generate.{start,end,duration}
            await self._run(claim_key)

    async def _run(self, claim_key: str) -> None:
        state, request = self.state, self.request
        found = state.repo.find_original_now(self.alias)
        if found is None or found.identifier is None:
            raise AliasNotFound("Alias not found")
        original_details = found.details or await _details_of(state, found.identifier)
        source_id, source_details = found.identifier, original_details
        if variants.needs_still(original_details.format, request.ext):
            source_id, source_details = await motion_still(
                state, found.hash, found.identifier, original_details
            )
        output = variants.output_format(source_details.format.kind, request.ext)
        out = state.tmp_dir / f"variant-{uuid.uuid4().hex}{output.extension}"

        async def commit(identifier: str, details: Details) -> bool:
            _, ours = await state.repo.commit_variant(
                found.hash,
                request.key,
                identifier,
                details,
                owner=state.journal.owner,
                lease=claim_key,
            )
            return ours

        try:
            async with local_file(state, source_id) as src:
                with state.tracer.span(__name__, "render.engine") as span:
                    span.set("pictrs.media.output_type", output.content_type)
                    result = await state.media.render(
                        src,
                        out,
                        source=discovery_of(source_details),
                        ops=request.operations,
                        output=output,
                        quality=variants.quality_for(state.config.media, output),
                    )
            identifier, details, ours = await _store(state, out, result, commit)
        finally:
            out.unlink(missing_ok=True)
        self.released = True
        if ours:
            self.result = Rendered(identifier=identifier, details=details)
        else:
            await discard(state, identifier)
        logger.bind(alias=self.alias).debug(
            "generated {} {}x{}", request.key, details.width, details.height
        )


async def _details_of(state: AppState, identifier: str) -> Details:
    details = await state.repo.details(identifier)
    if details is None:
        raise AliasNotFound("Details are missing for the original")
    return details


def existing(state: AppState, alias: str, key: str) -> Rendered | None:
    """The variant ``key`` of ``alias`` if it is rendered already (its access recorded),
    else None: a point read on the loop thread, microseconds in WAL."""
    found = state.repo.find_variant_now(alias, key)
    if found is None or found.identifier is None or found.details is None:
        return None
    record_access(state, found.hash, key)
    return Rendered(identifier=found.identifier, details=found.details)


async def find_or_render(
    state: AppState, alias: str, request: VariantRequest, *, wait: float = WAIT_SECONDS
) -> Rendered:
    """The variant ``request`` of ``alias``, rendered now if missing.

    Raises AliasNotFound (unknown alias), ReadOnly (missing and read-only), MediaToolError
    (render failed, or not done within ``wait`` seconds).
    """
    repo = state.repo
    if state.config.server.danger_dummy_mode:
        return await _the_original(state, alias)
    rendered = existing(state, alias, request.key)
    if rendered is not None:  # the common case: no render machinery, no timer
        return rendered
    with trio.move_on_after(wait) as waited:
        while True:
            # Point reads on the loop thread: microseconds in WAL, a thread hop is ~100 µs.
            found = repo.find_variant_now(alias, request.key)
            if found is None:
                raise AliasNotFound("Alias not found")
            if found.identifier is not None and found.details is not None:
                record_access(state, found.hash, request.key)
                return Rendered(identifier=found.identifier, details=found.details)
            state.require_writable()
            render = _VariantRender(state, alias, request)
            with state.tracer.span(__name__, "render") as span:
                span.set("pictrs.variant", request.key)
                await _single_flight(state, f"{found.hash.key().hex()}:{request.key}", render)
            if render.result is not None:  # ours: no need to read it back
                record_access(state, found.hash, request.key)
                return render.result
    assert waited.cancelled_caught
    raise VariantTimeout("Timed out waiting for the variant")


async def _the_original(state: AppState, alias: str) -> Rendered:
    """``server.danger_dummy_mode``: every variant is the original itself, nothing is
    rendered (pict-rs ``src/generate.rs``)."""
    found = state.repo.find_original_now(alias)
    if found is None or found.identifier is None:
        raise AliasNotFound("Alias not found")
    details = found.details or await ensure_details(state, found.identifier)
    return Rendered(identifier=found.identifier, details=details)
