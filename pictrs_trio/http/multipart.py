"""Streaming multipart/form-data: yields each file part as an async stream of chunks.

A small incremental parser (RFC 7578 framing): a part's bytes flow to the consumer as they
arrive, and only a delimiter's length of look-behind is buffered, so nothing holds a whole
upload in memory. (werkzeug's sans-io decoder mis-frames the last part for some chunk
splits, appending a stray CR; this parser keeps the exact bytes.) pict-rs takes file parts
named ``images[]`` (also ``images``); other fields are read and ignored.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable

from werkzeug.http import parse_options_header

from pictrs_trio.rules.errors import NoFiles, UploadError

FILE_FIELDS = frozenset({"images[]", "images"})
MAX_HEADER_BYTES = 16 * 1024
MAX_IGNORED_BYTES = 1024 * 1024  # text fields and unknown parts: no client needs more
MAX_IGNORED_PARTS = 64  # ...and no client sends more of them than this


class _Reader:
    """Buffered access to the body stream."""

    def __init__(self, body: AsyncIterable[bytes]) -> None:
        self._it = aiter(body)
        self.buf = bytearray()
        self.eof = False

    async def fill(self) -> None:
        if self.eof:
            raise UploadError("Multipart body ended early")
        try:
            self.buf += await anext(self._it)
        except StopAsyncIteration:
            self.eof = True

    async def read_until(self, marker: bytes, limit: int) -> bytes:
        """Bytes before ``marker`` (consumed with it), at most ``limit`` long."""
        start = 0
        while (i := self.buf.find(marker, start)) < 0:
            if len(self.buf) > limit:
                raise UploadError("Multipart headers are too long")
            start = max(0, len(self.buf) - len(marker) + 1)
            await self.fill()
        out = bytes(self.buf[:i])
        del self.buf[: i + len(marker)]
        return out

    async def need(self, n: int) -> None:
        while len(self.buf) < n:
            await self.fill()

    async def to_end(self, limit: int) -> None:
        """Read the rest of the body and drop it (what follows the closing delimiter, which
        clients do not send), keeping the buffer as it is. Raises UploadError past
        ``limit``."""
        dropped = 0
        while not self.eof:
            try:
                dropped += len(await anext(self._it))
            except StopAsyncIteration:
                self.eof = True
            if dropped > limit:
                raise UploadError("Too much data after the last part")


class FilePart:
    """One uploaded file; iterate ``chunks()`` exactly once, to the end."""

    def __init__(
        self, reader: _Reader, delimiter: bytes, name: str, filename: str, content_type: str | None
    ) -> None:
        self._reader = reader
        self._delimiter = delimiter
        self.name = name
        self.filename = filename
        self.content_type = content_type
        self.done = False

    def chunks(self) -> FilePart:
        return self

    def __aiter__(self) -> FilePart:
        return self

    async def __anext__(self) -> bytes:
        # A plain iterator, not an async generator: abandoning it mid-file (a size limit)
        # needs no finalisation.
        r, delim = self._reader, self._delimiter
        keep = len(delim) - 1  # a delimiter may straddle two reads
        while not self.done:
            i = r.buf.find(delim)
            if i >= 0:
                out = bytes(r.buf[:i])
                del r.buf[: i + len(delim)]
                self.done = True
                await r.need(2)
                if r.buf[:2] == b"--":
                    # The last part: read the body to its end before the caller works on
                    # this one, so the request is complete and a client that leaves while
                    # it is stored is seen (http/exchange.py).
                    await r.to_end(MAX_IGNORED_BYTES)
                if out:
                    return out
                break
            if len(r.buf) > keep:
                out = bytes(r.buf[: len(r.buf) - keep])
                del r.buf[: len(r.buf) - keep]
                return out
            await r.fill()
        raise StopAsyncIteration


def boundary_of(content_type: str | None) -> bytes:
    mime, options = parse_options_header(content_type or "")
    boundary = options.get("boundary", "")
    if mime != "multipart/form-data" or not boundary or len(boundary) > 200:
        raise UploadError("Request is not multipart/form-data")
    return boundary.encode("latin-1")


def _headers(raw: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in raw.decode("utf-8", "replace").split("\r\n"):
        key, sep, value = line.partition(":")
        if not sep:
            raise UploadError("Malformed multipart part header")
        headers[key.strip().lower()] = value.strip()
    return headers


async def _after_delimiter(r: _Reader) -> bool:
    """After a delimiter: True if another part follows, False at the closing ``--``."""
    await r.need(2)
    if r.buf[:2] == b"--":
        return False
    await r.read_until(b"\r\n", 256)  # transport padding, then the line break
    return True


async def iter_file_parts(
    content_type: str | None, body: AsyncIterable[bytes], *, max_files: int
) -> AsyncGenerator[FilePart, None]:
    """Yield file parts in order. The caller must drain each part before asking for the next.

    Raises UploadError (malformed form, too many files, part without filename) and NoFiles.
    """
    boundary = boundary_of(content_type)
    r = _Reader(body)
    # The first delimiter may come without its leading CRLF (RFC 2046 preamble rules).
    await r.read_until(b"--" + boundary, 64 * 1024)
    delimiter = b"\r\n--" + boundary
    count = fields = ignored = 0
    more = await _after_delimiter(r)
    while more:
        headers = _headers(await r.read_until(b"\r\n\r\n", MAX_HEADER_BYTES))
        _, disposition = parse_options_header(headers.get("content-disposition", ""))
        name = disposition.get("name", "")
        part = FilePart(
            r, delimiter, name, disposition.get("filename", ""), headers.get("content-type")
        )
        if name in FILE_FIELDS:
            if not part.filename:
                raise UploadError("File part is missing its filename")
            count += 1
            if count > max_files:
                raise UploadError(f"Too many files in request, max is {max_files}")
            yield part
            if not part.done:
                raise UploadError("File part was not consumed")
        else:
            fields += 1
            if fields > MAX_IGNORED_PARTS:
                raise UploadError(f"Too many fields in request, max is {MAX_IGNORED_PARTS}")
            async for chunk in part.chunks():  # plain fields and other parts are ignored
                ignored += len(chunk)
                if ignored > MAX_IGNORED_BYTES:
                    raise UploadError("Too much data outside the files of the upload")
        more = await _after_delimiter(r)
    if count == 0:
        raise NoFiles("No files present in upload")
