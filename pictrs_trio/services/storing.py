"""Putting files into the store write-ahead, so that a crash leaves nothing behind.

    identifier = store.new_identifier(ext)
    journal.intend(identifier, undo=RemoveFiles)   -- before a byte is written
    store.save_file(src, identifier)
    repo.commit_…(…, identifier)                     -- fulfils the intent, with the rows

If the process dies anywhere in between, the next owner to look (``Journal.reap``: at once on
this host) turns the intent into its RemoveFiles job, which removes the file and any partial
write of it (a temp file; an object's unfinished multipart upload). Nothing is ever removed
because no row mentions it: a store may hold files of another program (docs/migration.md).
"""

from __future__ import annotations

from pathlib import Path

import trio
from loguru import logger

from pictrs_trio.rules import jobs
from pictrs_trio.rules.errors import ErrorCode, StoreError
from pictrs_trio.services.state import AppState

CLEANUP_SECONDS = 10.0


async def save_new(
    state: AppState, src: Path, *, extension: str, content_type: str, durable: bool = True
) -> str:
    """Save ``src`` under a fresh identifier, with its intent recorded first. Returns the
    identifier; the caller's commit fulfils the intent, or ``discard`` undoes both. Raises
    StoreError, JournalError (nothing is left then)."""
    identifier = state.store.new_identifier(extension)
    undo = jobs.RemoveFiles(identifiers=[identifier], partial=True)
    await state.journal.intend([identifier], jobs.CLEANUP, undo)
    try:
        await state.store.save_file(
            src, identifier=identifier, content_type=content_type, durable=durable
        )
    except StoreError as exc:
        if exc.code is ErrorCode.FILE_EXISTS:  # not ours: leave it, drop only the intent
            with trio.move_on_after(CLEANUP_SECONDS, shield=True):
                await state.journal.abandon([identifier])
        else:
            await discard(state, identifier)
        raise
    except BaseException:
        await discard(state, identifier)
        raise
    return identifier


async def discard(state: AppState, identifier: str) -> None:
    """Remove a file this process saved and did not commit (or that lost a race to an
    identical one), then its intent. Bounded, and done even when cancelled; if it cannot be
    done now, the intent stays and the file goes when this process stops."""
    with trio.move_on_after(CLEANUP_SECONDS, shield=True):
        try:
            await state.store.remove(identifier, partial=True)
            await state.journal.abandon([identifier])
        except Exception:
            logger.opt(exception=True).warning("could not remove {} now", identifier)
