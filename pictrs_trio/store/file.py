"""The filesystem store: each identifier is a relative path under ``root`` (pict-rs
``src/store/file_store.rs``).

Make it with ``open_file_store(root)`` (creates ``root``), or ``FileStore(root)`` plus
``await store.prepare()``; ``aclose`` holds nothing today but keeps the Store shape.

Writes are all-or-nothing: bytes go to a temp name in the final directory
(``.<name>.tmp-<random>``), are fsynced, and are then hard-linked into place. ``link`` fails if
the target exists, so a file is never overwritten (``file-exists``), which ``rename`` would do
silently. When ``src`` is on the same filesystem it is linked directly, no copy (a 3 MB file
costs what its fsync costs). New directory entries are fsynced so a stored identifier survives
a crash once ``save_*`` returns. Every blocking step runs in ``trio.to_thread.run_sync``, one
hop per operation (reads: one hop per 1 MiB).

A source that is not ours (``keep_source``: another store's file, read by ``migrate-store``)
is copied that same way (temp file, fsync, link into place), never linked itself. Stored
files are never written in place, so a shared inode would hold the right bytes today; but
linking would change the old store's file (its mode), and whatever the operator later does
to the old store's files in place (``shred`` when retiring it, an ``rsync --inplace``
restore, a ``chown``) would reach the new store's. After a migration the two stores share
nothing, as if they were on two disks.

Identifiers are checked with ``ids.is_safe_identifier`` before any path is built from them.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager, suppress
from pathlib import Path

import trio

from pictrs_trio.rules import ids
from pictrs_trio.rules.errors import ErrorCode, StoreError, StoreNotFound
from pictrs_trio.store import Reading

__all__ = ["FileStore", "open_file_store"]

CHUNK = 64 * 1024
CHUNKS_PER_HOP = 4  # 256 KiB per thread hop when streaming: bounded memory per response
FILE_MODE = 0o644  # media is public; the same mode whether linked or copied
TEMP_MARKER = ".tmp-"
PROBE_PREFIX = ".health-"
LIST_BATCH = 1000  # names per thread hop of ``identifiers``
_DIR_RETRIES = 5  # a concurrent remove may prune a directory we just made
# link() errors that mean "cannot link here", so copy instead.
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES}


def _temp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}{TEMP_MARKER}{secrets.token_hex(6)}")


def _is_ours_hidden(name: str) -> bool:
    return name.startswith(".") and (TEMP_MARKER in name or name.startswith(PROBE_PREFIX))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(directory: Path) -> list[Path]:
    """Create ``directory`` and missing parents; returns the directories whose entries
    changed (the deepest existing ancestor and each new one but the leaf), to fsync later."""
    missing: list[Path] = []
    probe = directory
    while not probe.is_dir():
        missing.append(probe)
        probe = probe.parent
    changed = [probe] if missing else []
    for new in reversed(missing):
        with suppress(FileExistsError):  # a concurrent save made it
            os.mkdir(new)
        changed.append(new)
    return changed[:-1]  # the leaf is fsynced anyway once the file is in it


def _prune(directory: Path, root: Path) -> None:
    """Remove empty directories from ``directory`` up to (not including) ``root``."""
    while directory != root and root in directory.parents:
        try:
            os.rmdir(directory)
        except OSError:  # not empty (or gone): stop
            return
        directory = directory.parent


def _link_no_replace(src: Path, final: Path) -> None:
    try:
        os.link(src, final, follow_symlinks=False)
    except FileExistsError as exc:
        raise StoreError(
            f"Refusing to overwrite existing file {final.name}", code=ErrorCode.FILE_EXISTS
        ) from exc


def _write_temp(final: Path, fill: Callable[[int], None], durable: bool) -> Path:
    tmp = _temp_name(final)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # umask must not make a copy differ from a link
        fill(fd)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def _place(
    root: Path,
    identifier: str,
    src: Path | None,
    fill: Callable[[int], None],
    durable: bool = True,
) -> None:
    """Make ``root/identifier`` hold the bytes: link ``src`` if given and possible, else
    write them with ``fill`` into a temp file and link that. On failure nothing is left.
    ``durable=False`` skips the fsyncs (for files that can be made again, like variants:
    a power cut may lose them, never a process kill)."""
    final = root / identifier
    for attempt in range(_DIR_RETRIES):
        try:
            # A concurrent remove prunes directories left empty: one of ours may go between
            # making it and putting the file in it. Then all of it is tried again.
            changed = _make_dirs(final.parent)
            if src is not None and _try_link_source(src, final, durable):
                break
            tmp = _write_temp(final, fill, durable)
            try:
                _link_no_replace(tmp, final)
            finally:
                tmp.unlink(missing_ok=True)
            break
        except FileNotFoundError:
            # A directory was pruned under us (a missing src raises StoreError instead).
            if attempt == _DIR_RETRIES - 1:
                raise
    if not durable:
        return
    try:
        for directory in [*changed, final.parent]:
            _fsync_dir(directory)
    except BaseException:
        final.unlink(missing_ok=True)
        raise


def _try_link_source(src: Path, final: Path, durable: bool) -> bool:
    """Link ``src`` into place after making its bytes durable; False if it cannot be linked
    here (another filesystem, no hard links), so the caller copies instead."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError as exc:
        raise StoreError(f"Source file missing: {src}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StoreError(f"Source is not a regular file: {src}")
        if durable:
            os.fsync(fd)
        try:
            os.fchmod(fd, FILE_MODE)
        except PermissionError:
            return False  # not our file: copy it
    finally:
        os.close(fd)
    try:
        _link_no_replace(src, final)
    except OSError as exc:
        if exc.errno in _NO_LINK:
            return False
        raise
    return True


def _copy_from(src: Path) -> Callable[[int], None]:
    def fill(fd_out: int) -> None:
        try:
            fd_in = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise StoreError(f"Source file missing: {src}") from exc
        try:
            size = os.fstat(fd_in).st_size
            offset = 0
            while offset < size:  # in-kernel copy, no Python buffers
                sent = os.sendfile(fd_out, fd_in, offset, size - offset)
                if sent == 0:
                    break
                offset += sent
        finally:
            os.close(fd_in)

    return fill


def _write_all(data: bytes) -> Callable[[int], None]:
    def fill(fd: int) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    return fill


def _save_file_sync(
    root: Path, identifier: str, src: Path, durable: bool = True, keep_source: bool = False
) -> None:
    try:
        # A kept source is copied, never linked: see the module's docstring.
        _place(root, identifier, None if keep_source else src, _copy_from(src), durable)
    except BaseException:
        _prune((root / identifier).parent, root)
        raise
    if keep_source:
        return
    # Consumed: the Store owns the bytes now. A src we may not delete (copy path) stays.
    with suppress(OSError):
        src.unlink(missing_ok=True)


def _save_bytes_sync(root: Path, identifier: str, data: bytes) -> None:
    try:
        _place(root, identifier, None, _write_all(data))
    except BaseException:
        _prune((root / identifier).parent, root)
        raise


def _open_and_read(path: Path, start: int, end: int | None) -> tuple[int, int, int, list[bytes]]:
    """Open, check, and read the first batch: (fd, size, stop offset, chunks)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileNotFoundError(errno.ENOENT, "not a regular file", str(path))
        stop = info.st_size if end is None else min(end, info.st_size)
        return fd, info.st_size, stop, _read_batch(fd, start, stop)
    except BaseException:
        os.close(fd)
        raise


def _read_batch(fd: int, offset: int, stop: int) -> list[bytes]:
    chunks: list[bytes] = []
    while offset < stop and len(chunks) < CHUNKS_PER_HOP:
        chunk = os.pread(fd, min(CHUNK, stop - offset), offset)
        if not chunk:  # the file shrank under us
            break
        chunks.append(chunk)
        offset += len(chunk)
    return chunks


def _regular_size(path: Path) -> int:
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise FileNotFoundError(errno.ENOENT, "not a regular file", str(path))
    return info.st_size


def _remove_sync(root: Path, path: Path, partial: bool = False) -> None:
    if partial:  # temporary files of a save of this identifier (``_temp_name``)
        prefix = f".{path.name}{TEMP_MARKER}"
        with suppress(FileNotFoundError):
            for entry in os.scandir(path.parent):
                if entry.name.startswith(prefix):
                    with suppress(FileNotFoundError):
                        os.unlink(entry.path)
    with suppress(FileNotFoundError):
        os.unlink(path)
    _prune(path.parent, root)


def _walk_after(root: Path, after: tuple[str, ...], limit: int) -> list[str]:
    """Up to ``limit`` stored files (temp and probe files left out) that come after the
    path ``after`` (its components; () for the start) in a walk of sorted directories."""
    found: list[str] = []

    def visit(directory: str, prefix: tuple[str, ...]) -> bool:
        """False once ``limit`` files are found."""
        depth = len(prefix)
        # On the path to ``after``: what sorts before its next component is done.
        bound = after[depth] if depth < len(after) and after[:depth] == prefix else None
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except (FileNotFoundError, NotADirectoryError):  # pruned by a remove meanwhile
            return True
        for entry in entries:
            if bound is not None and entry.name < bound:
                continue
            path = (*prefix, entry.name)
            if entry.is_dir(follow_symlinks=False):
                if not visit(entry.path, path):
                    return False
            elif path != after and not entry.is_dir() and not _is_ours_hidden(entry.name):
                found.append("/".join(path))
                if len(found) >= limit:
                    return False
        return True

    visit(os.fspath(root), ())
    return found


def _health_sync(root: Path, write: bool) -> None:
    if not root.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "store root is not a directory", str(root))
    if not write:
        os.listdir(root)
        return
    probe = root / f"{PROBE_PREFIX}{secrets.token_hex(6)}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, b"ok")
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


async def _chunks(
    identifier: str, fd: int, offset: int, stop: int, chunks: list[bytes]
) -> AsyncGenerator[bytes, None]:
    """``chunks`` (the first batch, read from ``offset``), then the rest of ``fd`` up to
    ``stop``, a batch per thread hop. The caller closes ``fd``."""
    while chunks:
        for chunk in chunks:
            yield chunk
            offset += len(chunk)
        if offset >= stop:
            break
        try:
            chunks = await trio.to_thread.run_sync(_read_batch, fd, offset, stop)
        except OSError as exc:
            raise StoreError(f"Cannot read {identifier}: {exc}") from exc


class FileStore:
    """``Store`` over a directory tree."""

    def __init__(self, root: Path):
        self.root = Path(root).absolute()
        self._prefix = os.fspath(self.root) + os.sep  # for the hot path: no Path objects

    def _path(self, identifier: str) -> Path | None:
        return self.root / identifier if ids.is_safe_identifier(identifier) else None

    def _existing(self, identifier: str) -> Path:
        path = self._path(identifier)
        if path is None:
            raise StoreNotFound(f"Invalid identifier {identifier!r}")
        return path

    async def prepare(self) -> None:
        """Create the root directory. Raises StoreError."""
        try:
            await trio.to_thread.run_sync(lambda: self.root.mkdir(parents=True, exist_ok=True))
        except OSError as exc:
            raise StoreError(f"Cannot create store root {self.root}: {exc}") from exc

    def new_identifier(self, extension: str) -> str:
        """A fresh identifier in pict-rs 0.5.7's layout (``src/file_path.rs``):
        ``aa/…/jj/<12 hex><extension>``."""
        return ids.new_identifier(extension)

    async def save_file(
        self,
        src: Path,
        *,
        identifier: str,
        content_type: str,
        durable: bool = True,
        keep_source: bool = False,
    ) -> str:
        """Consumes ``src`` on success (moved or copied, then unlinked); on failure ``src``
        is left as it was and nothing is stored. ``durable=False``: no fsync (derived files
        that can be rendered again). ``keep_source``: ``src`` is copied and left as it was
        (another store's file). Raises StoreError (``file-exists`` if the identifier exists:
        it is never overwritten)."""
        self._existing(identifier)  # refuses an unsafe one
        try:
            await trio.to_thread.run_sync(
                _save_file_sync, self.root, identifier, Path(src), durable, keep_source
            )
        except OSError as exc:
            raise StoreError(f"Failed to store file: {exc}") from exc
        return identifier

    async def save_bytes(self, data: bytes, *, identifier: str, content_type: str) -> str:
        self._existing(identifier)
        try:
            await trio.to_thread.run_sync(_save_bytes_sync, self.root, identifier, data)
        except OSError as exc:
            raise StoreError(f"Failed to store file: {exc}") from exc
        return identifier

    async def length(self, identifier: str) -> int:
        path = self._existing(identifier)
        try:
            return await trio.to_thread.run_sync(_regular_size, path)
        except FileNotFoundError as exc:
            raise StoreNotFound(f"No file for {identifier}") from exc
        except OSError as exc:
            raise StoreError(f"Cannot stat {identifier}: {exc}") from exc

    async def _open(
        self, identifier: str, start: int, end: int | None
    ) -> tuple[int, int, int, list[bytes]]:
        path = self._existing(identifier)
        try:
            return await trio.to_thread.run_sync(_open_and_read, path, start, end)
        except FileNotFoundError as exc:
            raise StoreNotFound(f"No file for {identifier}") from exc
        except OSError as exc:
            raise StoreError(f"Cannot read {identifier}: {exc}") from exc

    async def read(
        self, identifier: str, start: int = 0, end: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        fd, _size, stop, chunks = await self._open(identifier, start, end)
        try:
            async with aclosing(_chunks(identifier, fd, start, stop, chunks)) as rest:
                async for chunk in rest:
                    yield chunk
        finally:
            os.close(fd)  # no await in an async generator's finally

    @asynccontextmanager
    async def open_read(
        self, identifier: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[Reading]:
        """One thread hop opens the file, learns its size and reads the first batch."""
        fd, size, stop, chunks = await self._open(identifier, start, end)
        try:
            async with aclosing(_chunks(identifier, fd, start, stop, chunks)) as rest:
                yield Reading(size, rest)
        finally:
            os.close(fd)

    def read_now(self, identifier: str, limit: int) -> bytes | None:
        """The whole file, read without leaving the calling thread, if it is at most
        ``limit`` bytes; None if larger, missing, or not a plain file. For the serving hot
        path: a small, page-cached file costs microseconds, a thread hop ~100 µs."""
        if not ids.is_safe_identifier(identifier):
            return None
        try:
            fd = os.open(self._prefix + identifier, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            size = os.fstat(fd).st_size
            if size > limit:
                return None
            data = os.read(fd, size + 1)
            return data if len(data) == size else None
        finally:
            os.close(fd)

    async def local_path(self, identifier: str) -> Path:
        """The file's real path. Raises StoreNotFound if there is no file.

        The check is a stat on the calling thread: microseconds for a local file, where a
        thread hop costs ~100 µs (see ``read_now``); it runs once per render."""
        path = self._existing(identifier)
        try:
            _regular_size(path)
        except FileNotFoundError as exc:
            raise StoreNotFound(f"No file for {identifier}") from exc
        except OSError as exc:
            raise StoreError(f"Cannot stat {identifier}: {exc}") from exc
        await trio.lowlevel.checkpoint()
        return path

    def public_url(self, identifier: str) -> str | None:
        """None: files are served by this server."""
        return None

    async def remove(self, identifier: str, *, partial: bool = False) -> None:
        """Delete and prune directories left empty. Missing is fine; an unsafe identifier
        raises StoreError. ``partial``: also what an unfinished save of it may have left (its
        temporary files), for recovery after a crash."""
        path = self._path(identifier)
        if path is None:
            raise StoreError(f"Refusing to remove invalid identifier {identifier!r}")
        try:
            await trio.to_thread.run_sync(_remove_sync, self.root, path, partial)
        except OSError as exc:
            raise StoreError(f"Cannot remove {identifier}: {exc}") from exc

    async def identifiers(self, *, after: str | None = None) -> AsyncGenerator[str, None]:
        """Every stored file, temp files excluded, in a walk of sorted directories, a batch
        of ``LIST_BATCH`` per thread hop (each picks the walk up after the last one's final
        file, so only a batch is ever held)."""
        position = tuple(after.split("/")) if after is not None else ()
        while True:
            try:
                batch = await trio.to_thread.run_sync(_walk_after, self.root, position, LIST_BATCH)
            except OSError as exc:
                raise StoreError(f"Cannot list store: {exc}") from exc
            for identifier in batch:
                yield identifier
            if len(batch) < LIST_BATCH:
                return
            position = tuple(batch[-1].split("/"))

    async def health(self, *, write: bool = True) -> None:
        try:
            await trio.to_thread.run_sync(_health_sync, self.root, write)
        except OSError as exc:
            what = "writable" if write else "readable"
            raise StoreError(f"Store root {self.root} is not {what}: {exc}") from exc

    async def aclose(self) -> None:
        return None


@asynccontextmanager
async def open_file_store(root: Path) -> AsyncIterator[FileStore]:
    """A ``FileStore`` with its root created. Raises StoreError."""
    store = FileStore(root)
    await store.prepare()
    try:
        yield store
    finally:
        await store.aclose()
