"""The file store: where media bytes live. ``file.FileStore`` (filesystem),
``object.ObjectStore`` (an S3-compatible bucket), ``memory.MemoryStore`` (tests).

Identifiers are opaque strings made by the store (never from client input). A saved file is
either fully visible under its identifier or not at all.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

from pictrs_trio.config import FilesystemStore, ObjectStorageStore
from pictrs_trio.rules.errors import StoreError, StoreNotFound

if TYPE_CHECKING:
    from pictrs_trio.metrics import Metrics

__all__ = ["Reading", "Store", "StoreError", "StoreNotFound", "open_store"]


class Reading(NamedTuple):
    """An open read (``Store.open_read``): the file's whole ``length``, and ``chunks``, the
    bytes asked for, as ``read`` streams them."""

    length: int
    chunks: AsyncIterator[bytes]


class Store(Protocol):
    def new_identifier(self, extension: str) -> str:
        """A fresh identifier ending in ``extension`` (with its dot, may be ""). Callers
        record it as a journal intent before saving under it (``services/storing.py``)."""
        ...

    async def save_file(
        self,
        src: Path,
        *,
        identifier: str,
        content_type: str,
        durable: bool = True,
        keep_source: bool = False,
    ) -> str:
        """Store the complete local file ``src`` (which the store may move away) under
        ``identifier`` (from ``new_identifier``; never overwritten). Returns it.
        ``durable=False`` may skip flushing to stable storage (variants: they can be made
        again, so a power cut may lose them; a process kill never does). ``keep_source``:
        ``src`` is not ours (another store's file, ``migrate-store``): it is read, never
        moved, linked, changed or removed, and the stored file shares nothing with it.
        Raises StoreError; on failure nothing is left under the identifier."""
        ...

    async def save_bytes(self, data: bytes, *, identifier: str, content_type: str) -> str: ...

    async def length(self, identifier: str) -> int:
        """Size in bytes. Raises StoreNotFound."""
        ...

    def read(
        self, identifier: str, start: int = 0, end: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """Stream bytes ``[start, end)`` (end None = to the end) in chunks of at most 64 KiB.
        Raises StoreNotFound (when iteration starts) if the identifier has no bytes."""
        ...

    def open_read(
        self, identifier: str, start: int = 0, end: int | None = None
    ) -> AbstractAsyncContextManager[Reading]:
        """``length`` and ``read`` in one: ``async with store.open_read(i, start, end) as r``
        gives the file's whole length and its bytes ``[start, end)`` (none past the end),
        open until the block ends. For object storage that is one GET where ``length`` then
        ``read`` are a HEAD and a GET (the serving path, ``http/serve.py``). Raises
        StoreNotFound on entering when the identifier has no bytes."""
        ...

    def read_now(self, identifier: str, limit: int) -> bytes | None:
        """The whole content without a thread hop or await, if it is small (at most
        ``limit``) and local; else None and the caller streams with ``read``."""
        ...

    async def local_path(self, identifier: str) -> Path | None:
        """A path the media tools can read directly, or None (object storage: the services
        copy the bytes to their scratch folder, ``services/local.py``)."""
        ...

    def public_url(self, identifier: str) -> str | None:
        """Where clients may fetch the bytes themselves (object storage with a
        ``public_endpoint``: reads are answered with a redirect there), or None."""
        ...

    async def remove(self, identifier: str, *, partial: bool = False) -> None:
        """Delete; a missing identifier is not an error. ``partial``: also whatever an
        unfinished save of it left (temporary files, an unfinished multipart upload)."""
        ...

    def identifiers(self, *, after: str | None = None) -> AsyncGenerator[str, None]:
        """Every stored identifier (for the store audit): ``async for identifier in
        store.identifiers()``, fetched a page at a time, in an order of the store's own that
        can be resumed: ``after`` (an identifier this listing gave) starts with the ones that
        followed it."""
        ...

    async def health(self, *, write: bool = True) -> None:
        """Raises StoreError unless the store is reachable and (``write``) writable."""
        ...

    async def aclose(self) -> None: ...


@asynccontextmanager
async def open_store(
    config: FilesystemStore | ObjectStorageStore, *, metrics: Metrics | None = None
) -> AsyncIterator[Store]:
    """The store a ``[store]`` section describes, open for the block (``run`` uses the
    configured one; ``migrate-store`` opens two). Raises StoreError when it cannot be used.
    An object store times its requests in ``metrics``."""
    if isinstance(config, ObjectStorageStore):
        from pictrs_trio.store.object import open_object_store  # httpx, botocore: only here

        async with open_object_store(config, metrics=metrics) as object_store:
            yield object_store
        return
    from pictrs_trio.store.file import open_file_store

    async with open_file_store(Path(config.path)) as store:
        yield store
