"""A stored file as a local path, for the media tools (ffmpeg, exiftool, the engine), which
read files, not streams.

    async with local_file(state, identifier) as path:
        await state.media.discover(path)

The file store gives its own path (no copy). Object storage has none: the object is streamed
into this process's scratch folder (``state.tmp_dir``), a batch at a time, never whole in
memory, and the copy is removed when the block ends, however it ends. pict-rs streams the
object into the tool's stdin instead (``src/store/object_store.rs`` ``to_stream``); our tools
take paths, so a scratch copy is the one way in for every tool.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from contextlib import aclosing, asynccontextmanager, contextmanager
from pathlib import Path, PurePosixPath

import trio
from loguru import logger

from pictrs_trio.rules.errors import FileTooLarge, ScratchError
from pictrs_trio.services.state import AppState
from pictrs_trio.services.storing import CLEANUP_SECONDS
from pictrs_trio.store import Store

WRITE_BATCH = 1024 * 1024  # bytes per thread hop while copying


@asynccontextmanager
async def local_file(state: AppState, identifier: str) -> AsyncIterator[Path]:
    """A path holding the bytes of ``identifier`` for the block. Raises StoreNotFound,
    StoreError."""
    path = await state.store.local_path(identifier)
    if path is not None:
        yield path
        return
    suffix = PurePosixPath(identifier).suffix
    copy = state.tmp_dir / f"stored-{uuid.uuid4().hex}{suffix if suffix.isascii() else ''}"
    try:
        await copy_out(state.store, identifier, copy)
        yield copy
    finally:
        with trio.move_on_after(CLEANUP_SECONDS, shield=True):
            await trio.to_thread.run_sync(remove_scratch, [copy])


async def copy_out(store: Store, identifier: str, dest: Path) -> int:
    """Stream ``identifier`` from ``store`` into the new file ``dest``; returns the size.
    Raises StoreNotFound, StoreError, OSError."""
    async with aclosing(store.read(identifier)) as chunks:
        return await spool(chunks, dest)


async def spool(chunks: AsyncIterable[bytes], dest: Path, cap: int | None = None) -> int:
    """Write the stream to the new file ``dest``, a batch per thread hop; raise FileTooLarge
    past ``cap`` bytes. Returns the size. How long the bytes may take is the source's
    business: a request body's rate rule (``http/exchange.py``), a download's time limit
    (``services/fetch.py``)."""
    size = 0
    buf = bytearray()
    with _scratch_errors(dest):
        fd = await trio.to_thread.run_sync(
            lambda: os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        )
    try:
        async for chunk in chunks:
            size += len(chunk)
            if cap is not None and size > cap:
                raise FileTooLarge(f"File is larger than {cap // (1024 * 1024)} MB")
            buf += chunk
            if len(buf) >= WRITE_BATCH:
                data, buf = bytes(buf), bytearray()
                with _scratch_errors(dest):
                    await trio.to_thread.run_sync(_write_all, fd, data)
        if buf:
            with _scratch_errors(dest):
                await trio.to_thread.run_sync(_write_all, fd, bytes(buf))
    finally:
        os.close(fd)
    return size


@contextmanager
def _scratch_errors(dest: Path) -> Iterator[None]:
    """An OSError writing ``dest`` (a full disk, a folder removed or made read-only) as
    ScratchError naming the folder and the errno: the chunks' own errors (a client, a
    store) are not caught here, only the file's. The caller's session removes ``dest``."""
    try:
        yield
    except OSError as exc:
        raise ScratchError(
            f"temporary_directory {dest.parent}: cannot write there: "
            f"[Errno {exc.errno}] {exc.strerror}"
        ) from None


def remove_scratch(paths: Iterable[Path]) -> None:
    """Remove scratch files; never raises, as it runs while another error is on its way
    (the one to answer). A folder gone or replaced (ENOENT, ENOTDIR) took them along; any
    other failure is one warning line, and the folder is emptied when the process stops."""
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except NotADirectoryError:
            pass
        except OSError as exc:
            logger.warning("could not remove the scratch file {}: {}", path, exc.strerror or exc)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
