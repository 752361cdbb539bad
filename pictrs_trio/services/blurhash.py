"""``GET /image/blurhash``: a file's BlurHash, computed once by an engine worker and kept
with the file's hash (pict-rs ``src/lib.rs`` ``blurhash``, ``src/blurhash.rs``)."""

from __future__ import annotations

from loguru import logger

from pictrs_trio.rules.errors import AliasNotFound
from pictrs_trio.rules.formats import Kind
from pictrs_trio.services import render
from pictrs_trio.services.ingest import ensure_details
from pictrs_trio.services.local import local_file
from pictrs_trio.services.state import AppState


async def blurhash_of(state: AppState, alias: str) -> str:
    """The BlurHash of ``alias``'s file: the stored one, else computed from its first
    frame (a video's from its motion still, made and kept as for its still variants) and
    stored. Raises AliasNotFound, ReadOnly (not stored yet and read-only),
    UnsupportedMedia or MediaToolError."""
    found = await state.repo.find_original(alias)
    if found is None or found.identifier is None:
        raise AliasNotFound("Alias not found")
    stored = await state.repo.blurhash(found.hash)
    if stored is not None:
        return stored
    state.require_writable()  # computing one writes it (pict-rs writes it even then)
    details = found.details or await ensure_details(state, found.identifier)
    source_id, source_details = found.identifier, details
    if details.format.kind is Kind.VIDEO:
        source_id, source_details = await render.motion_still(
            state, found.hash, found.identifier, details
        )
    async with local_file(state, source_id) as path:
        value = await state.media.blurhash(path, source=render.discovery_of(source_details))
    # Concurrent requests may both compute it: the same pixels give the same string.
    await state.repo.relate_blurhash(found.hash, value)
    logger.bind(alias=alias).debug("blurhash {}", value)
    return value
