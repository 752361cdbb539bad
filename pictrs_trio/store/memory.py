"""``Store`` in a dict, for tests. Same contract as the file store; ``local_path`` is None.

Like the file store it consumes ``src`` in ``save_file`` (unless ``keep_source``) and refuses
unsafe identifiers, so
code tested against it behaves the same on disk.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path

import trio

from pictrs_trio.rules import ids
from pictrs_trio.rules.errors import ErrorCode, StoreError, StoreNotFound
from pictrs_trio.store import Reading

__all__ = ["MemoryStore"]

CHUNK = 64 * 1024


def _take(src: Path, keep_source: bool) -> bytes:
    data = src.read_bytes()
    if not keep_source:
        src.unlink(missing_ok=True)
    return data


class MemoryStore:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def new_identifier(self, extension: str) -> str:
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
        try:
            data = await trio.to_thread.run_sync(_take, Path(src), keep_source)
        except OSError as exc:
            raise StoreError(f"Failed to store file: {exc}") from exc
        return await self.save_bytes(data, identifier=identifier, content_type=content_type)

    async def save_bytes(self, data: bytes, *, identifier: str, content_type: str) -> str:
        if not ids.is_safe_identifier(identifier):
            raise StoreError(f"Refusing invalid identifier {identifier!r}")
        if identifier in self.files:
            raise StoreError(f"Refusing to overwrite {identifier}", code=ErrorCode.FILE_EXISTS)
        self.files[identifier] = bytes(data)
        return identifier

    def _get(self, identifier: str) -> bytes:
        try:
            return self.files[identifier]
        except KeyError:
            raise StoreNotFound(f"No file for {identifier}") from None

    async def length(self, identifier: str) -> int:
        return len(self._get(identifier))

    async def read(
        self, identifier: str, start: int = 0, end: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        data = self._get(identifier)
        stop = len(data) if end is None else min(end, len(data))
        for offset in range(start, stop, CHUNK):
            yield data[offset : min(offset + CHUNK, stop)]
            await trio.lowlevel.checkpoint()

    @asynccontextmanager
    async def open_read(
        self, identifier: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[Reading]:
        data = self._get(identifier)
        async with aclosing(self.read(identifier, start, end)) as chunks:
            yield Reading(len(data), chunks)

    def read_now(self, identifier: str, limit: int) -> bytes | None:
        data = self.files.get(identifier)
        return data if data is not None and len(data) <= limit else None

    async def local_path(self, identifier: str) -> Path | None:
        self._get(identifier)
        return None

    def public_url(self, identifier: str) -> str | None:
        return None

    async def remove(self, identifier: str, *, partial: bool = False) -> None:
        if not ids.is_safe_identifier(identifier):
            raise StoreError(f"Refusing to remove invalid identifier {identifier!r}")
        self.files.pop(identifier, None)

    async def identifiers(self, *, after: str | None = None) -> AsyncGenerator[str, None]:
        for identifier in sorted(self.files):
            if after is None or identifier > after:
                yield identifier

    async def health(self, *, write: bool = True) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        return None
