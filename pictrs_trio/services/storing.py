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

from journal import Journal, JournalError
from pictrs_trio.rules import jobs
from pictrs_trio.rules.errors import ErrorCode, PictrsError, StoreError
from pictrs_trio.services.state import AppState
from pictrs_trio.store import Store

CLEANUP_SECONDS = 10.0


async def save_new(
    state: AppState, src: Path, *, extension: str, content_type: str, durable: bool = True
) -> str:
    """Save ``src`` under a fresh identifier, with its intent recorded first. Returns the
    identifier; the caller's commit fulfils the intent, or ``discard`` undoes both. Raises
    StoreError, JournalError (nothing is left then)."""
    return await save_into(
        state.store,
        state.journal,
        src,
        extension=extension,
        content_type=content_type,
        durable=durable,
    )


async def discard(state: AppState, identifier: str) -> None:
    """Remove a file this process saved and did not commit (or that lost a race to an
    identical one), then its intent. Bounded, and done even when cancelled; if it cannot be
    done now, the intent stays and the file goes when this process stops."""
    await discard_from(state.store, state.journal, identifier)


async def save_into(
    store: Store,
    journal: Journal,
    src: Path,
    *,
    extension: str,
    content_type: str,
    durable: bool = True,
    queue: str = jobs.CLEANUP,
    keep_source: bool = False,
) -> str:
    """``save_new`` into any store: the undo job of the intent goes to ``queue``, whose
    workers must act on that store (``migrate-store`` writes to a store the server's
    cleanup workers do not use, so its undo jobs have a queue of their own).
    ``keep_source``: ``src`` is another store's file, read and left as it is
    (``Store.save_file``)."""
    identifier = store.new_identifier(extension)
    undo = jobs.RemoveFiles(identifiers=[identifier], partial=True)
    await journal.intend([identifier], queue, undo)
    try:
        await store.save_file(
            src,
            identifier=identifier,
            content_type=content_type,
            durable=durable,
            keep_source=keep_source,
        )
    except StoreError as exc:
        if exc.code is ErrorCode.FILE_EXISTS:  # not ours: leave it, drop only the intent
            with trio.move_on_after(CLEANUP_SECONDS, shield=True):
                await journal.abandon([identifier])
        else:
            await discard_from(store, journal, identifier)
        raise
    except BaseException:
        await discard_from(store, journal, identifier)
        raise
    return identifier


async def discard_from(store: Store, journal: Journal, identifier: str) -> None:
    """``discard`` from any store."""
    with trio.move_on_after(CLEANUP_SECONDS, shield=True):
        try:
            await store.remove(identifier, partial=True)
            await journal.abandon([identifier])
        except (PictrsError, JournalError) as exc:
            # Expected when the store or the database is down (what failed the caller, most
            # often): the store's or journal's message says it all, a traceback nothing more.
            why = f"{exc.msg} ({exc.code})" if isinstance(exc, PictrsError) else str(exc)
            logger.warning(
                "could not remove {} now: {}; its intent stays, so it is removed once this "
                "process has stopped",
                identifier,
                why,
            )
        except Exception:
            logger.opt(exception=True).warning("could not remove {} now", identifier)
