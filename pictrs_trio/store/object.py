"""The object store: media in an S3-compatible bucket, over httpx on trio, each request
signed with AWS Signature V4 by botocore (pict-rs ``src/store/object_store.rs``).

Keys are the identifiers, in the file store's layout (``aa/…/jj/<12 hex>.ext``, pict-rs
``src/file_path.rs`` ``generate_object``). Make one with ``open_object_store(config)``.

* **Uploads stream from the file.** Below ``PART_SIZE`` (pict-rs's 8 MiB) one PUT; from it a
  multipart upload of ``PART_SIZE`` parts, ``PARTS_IN_FLIGHT`` at a time. Each request's
  body is read from the file as it is sent (after a first read that hashes it for the
  signature), so no part is ever whole in memory. A failed or cancelled multipart upload is
  aborted; one that a dead process left is aborted by recovery (``remove(partial=True)``).
* **Connections**: one httpx pool of ``MAX_CONNECTIONS``. Request bodies from files (a small
  file's PUT, a part) go ``UPLOADS_IN_FLIGHT`` at a time store-wide, however many saves
  run (migrate-store runs dozens): the rest of the pool stays free for reads and deletes,
  and an upload waiting for its turn is not yet signed or timed.
* **Reads stream** in chunks of at most 64 KiB and ask the server for ``Range``; a body cut
  off half-way is resumed from where it stopped. ``open_read`` learns the object's length
  from the same GET (its ``Content-Range`` or ``Content-Length``), so serving costs one
  request, not a HEAD and a GET.
* **Retries** (``_retrying``, the one loop): connection errors, timeouts and 5xx answers are
  tried ``ATTEMPTS`` times in all, with doubling pauses; whatever else the server says is
  final. Starting a multipart upload is the one request that is not idempotent: it is
  tried again only when it surely never reached the server (``_never_sent``).
* **Time**: ``client_timeout`` bounds each wait on the server: to connect, for each write of
  a body to go out, for each read of the answer, for a free connection of the pool. That is
  the meaning pict-rs documents ("how long pict-rs will wait for a response from object
  storage", ``pict-rs.toml``), though ``src/store/object_store.rs`` hands it to its client
  as one deadline for a whole request: here a large part on a slow uplink takes as long as
  it needs while it moves, and a server that stops moving is given up on all the same.

An S3 PUT overwrites, and S3 has no create-only PUT every provider honours, so unlike the
file store this one cannot refuse to overwrite: identifiers are fresh UUID v7 values, which
makes a collision a bug elsewhere, not a race.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing, asynccontextmanager, suppress
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast
from xml.sax.saxutils import escape

import msgspec
import trio
from loguru import logger

from pictrs_trio.config import ObjectStorageStore
from pictrs_trio.metrics import Metrics
from pictrs_trio.metrics.names import OBJECT_STORAGE
from pictrs_trio.rules import ids
from pictrs_trio.rules.errors import ErrorCode, StoreError, StoreNotFound
from pictrs_trio.store import Reading, s3

if TYPE_CHECKING:
    import httpx

__all__ = ["ObjectStore", "open_object_store"]

MIB = 1024 * 1024
CHUNK = 64 * 1024
PART_SIZE = 8 * MIB  # pict-rs's CHUNK_SIZE; S3 wants every part but the last >= 5 MiB
PARTS_IN_FLIGHT = 4  # per multipart upload
MAX_CONNECTIONS = 100  # httpx's default pool, made explicit
KEEPALIVE_CONNECTIONS = 20  # httpx's default
# File bodies in flight store-wide: on a slow uplink more would only share it thinner, each
# write then taking longer than client_timeout; the other connections stay free for reads.
UPLOADS_IN_FLIGHT = 16
UPLOAD_READ = 256 * 1024  # file bytes per thread hop while a body is sent
ATTEMPTS = 4
FIRST_PAUSE = 0.2  # seconds; doubled after each failed attempt, with jitter
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
# What S3 may put in a 200 answer to CompleteMultipartUpload that is worth trying again.
RETRY_CODES = frozenset({"InternalError", "SlowDown", "ServiceUnavailable"})
PROBE_KEY = "health-check"  # pict-rs's health-check object
CLEANUP_SECONDS = 10.0
LIST_PAGE = 1000
GET_OBJECT = OBJECT_STORAGE + "get-object-request"  # until the answer's head
GET_OBJECT_STREAM = OBJECT_STORAGE + "get-object-request.stream"  # until its body was read


class _FileBody(msgspec.Struct, frozen=True):
    """Bytes ``[start, start+length)`` of ``path``, read afresh by each attempt."""

    path: Path
    start: int
    length: int


Body = bytes | _FileBody | None


class _Answer(msgspec.Struct, frozen=True):
    status: int
    headers: dict[str, str]
    body: bytes


class _Retry(Exception):
    """One attempt failed in a way worth trying again; the message says how."""


T = TypeVar("T")


def _read_range(fd: int, offset: int, size: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) < size:
        raise OSError("the file shrank while it was uploaded")
    return data


def _file_stream(fd: int, start: int, length: int) -> httpx.AsyncByteStream:
    """Bytes ``[start, start+length)`` of the open file ``fd`` as a request body, read in
    ``UPLOAD_READ`` pieces, each in a thread, as httpx sends them."""
    import httpx

    class FileStream(httpx.AsyncByteStream):
        # A plain iterator, not an async generator: httpx wraps an iterable body in a
        # generator of its own that httpcore leaves unclosed when a write times out. The
        # file is closed by whoever opened it.
        def __init__(self) -> None:
            self.sent = 0

        def __aiter__(self) -> FileStream:
            return self

        async def __anext__(self) -> bytes:
            if self.sent >= length:
                raise StopAsyncIteration
            size = min(UPLOAD_READ, length - self.sent)
            data = await trio.to_thread.run_sync(_read_range, fd, start + self.sent, size)
            self.sent += size
            return data

    return FileStream()


def operation(method: str, key: str, query: Mapping[str, str] | None) -> str:
    """The name of a request in ``pict-rs.object-storage.<operation>`` (the series of its
    timings): pict-rs's names, and ``list-…`` for the listings only pictrs-trio makes."""
    query = query or {}
    if not key:
        return "list-multipart-uploads-request" if "uploads" in query else "list-objects-request"
    if method == "PUT":
        return "create-upload-part-request" if "partNumber" in query else "put-object-request"
    if method == "POST":
        return "create-multipart-request" if "uploads" in query else "complete-multipart-request"
    if method == "DELETE":
        return "abort-multipart-request" if "uploadId" in query else "delete-object-request"
    if method == "HEAD":
        return "head-object-request"
    return "get-object-request"


class ObjectStore:
    """``Store`` over an S3 bucket."""

    def __init__(
        self,
        config: ObjectStorageStore,
        client: httpx.AsyncClient,
        metrics: Metrics | None = None,
    ) -> None:
        """Raises StoreError for an endpoint that cannot be used. Each request (with its
        retries) is timed in ``metrics``."""
        try:
            self._address = s3.addressing(
                config.endpoint, config.bucket_name, config.use_path_style
            )
        except ValueError as exc:
            raise StoreError(str(exc), code=ErrorCode.OBJECT_REQUEST_ERROR) from None
        self._signer = s3.Signer(
            access_key=config.access_key,
            secret_key=config.secret_key,
            session_token=config.session_token,
            region=config.region,
        )
        self._client = client
        self._timeout = config.client_timeout
        self._uploads = trio.CapacityLimiter(UPLOADS_IN_FLIGHT)
        self._public = config.public_endpoint or None
        self._region, self._bucket = config.region, config.bucket_name
        self._metrics = metrics if metrics is not None else Metrics()

    def __repr__(self) -> str:
        return f"ObjectStore({self._address.where})"

    @property
    def where(self) -> str:
        """Endpoint and bucket, as messages name them."""
        return self._address.where

    # --- requests ----------------------------------------------------------------------------

    def _error(self, answer: _Answer) -> StoreError:
        failure = s3.parse_error(answer.status, answer.body, answer.headers)
        message = s3.describe_failure(
            failure, where=self.where, region=self._region, bucket=self._bucket
        )
        return StoreError(message, code=ErrorCode.OBJECT_REQUEST_ERROR)

    async def _sign(
        self, method: str, url: str, headers: Mapping[str, str], body: Body, fd: int | None
    ) -> dict[str, str]:
        if isinstance(body, _FileBody):
            assert fd is not None
            piece = s3.FileSlice(fd, body.start, body.length)
            # Hashing the body reads it: in a thread, not on the event loop.
            return await trio.to_thread.run_sync(self._signer.sign, method, url, headers, piece)
        return self._signer.sign(method, url, headers, body)

    async def _attempt(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Body,
        *,
        once: bool = False,
        body_errors: bool = False,
    ) -> _Answer:
        """One request, its whole answer read. ``once``: the request is not idempotent, so
        a failure after it may have reached the server is final. ``body_errors``: a 200
        answer may hold S3's error (CompleteMultipartUpload). Raises _Retry, StoreError."""
        import httpx

        try:
            if method == "PUT" and body is not None:
                # Waiting here is neither signed nor timed: the signature's clock and
                # client_timeout start once the body may go.
                async with self._uploads:
                    answer = await self._send(method, url, headers, body)
            else:
                answer = await self._send(method, url, headers, body)
        except httpx.TransportError as exc:
            why = self._transport_failure(exc)
            if once and not _never_sent(exc):
                raise StoreError(
                    f"{why}; not tried again, as the request may have reached it",
                    code=ErrorCode.OBJECT_REQUEST_ERROR,
                ) from None
            raise _Retry(why) from None
        if answer.status in RETRY_STATUS:
            raise _Retry(str(self._error(answer)))
        if body_errors and answer.status == 200:
            root = s3.xml_root(answer.body)
            if root is not None and s3.is_error(root) and s3.text(root, "Code") in RETRY_CODES:
                raise _Retry(str(self._error(_Answer(500, answer.headers, answer.body))))
        return answer

    async def _send(self, method: str, url: str, headers: Mapping[str, str], body: Body) -> _Answer:
        """Sign and send; the file of a ``_FileBody`` is open only meanwhile. Raises
        httpx.TransportError, StoreError (the local file)."""
        fd = None
        try:
            if isinstance(body, _FileBody):
                try:
                    fd = await trio.to_thread.run_sync(os.open, body.path, os.O_RDONLY)
                except FileNotFoundError as exc:
                    raise StoreError(f"Source file missing: {body.path}") from exc
            signed = await self._sign(method, url, headers, body, fd)
            if isinstance(body, _FileBody):
                assert fd is not None
                signed["Content-Length"] = str(body.length)  # sent as is, never chunked
                request = self._client.build_request(method, url, headers=signed)
                request.stream = _file_stream(fd, body.start, body.length)
            else:
                request = self._client.build_request(method, url, headers=signed, content=body)
            response = await self._client.send(request)
            return _Answer(response.status_code, dict(response.headers), response.content)
        except OSError as exc:
            where = body.path if isinstance(body, _FileBody) else "the request body"
            raise StoreError(f"Cannot read {where}: {exc}", code=ErrorCode.OBJECT_IO_ERROR) from exc
        finally:
            if fd is not None:
                os.close(fd)

    def _transport_failure(self, exc: Exception) -> str:
        """What an httpx transport error means, in one line: which wait ran out, or what
        broke the connection (its text never holds a header)."""
        import httpx

        t = f"{self._timeout:g} s"
        if isinstance(exc, httpx.PoolTimeout):
            return (
                f"no connection to object storage {self.where} came free within {t} "
                f"({MAX_CONNECTIONS} in use)"
            )
        if isinstance(exc, httpx.ConnectTimeout):
            return f"object storage {self.where} did not accept a connection within {t}"
        if isinstance(exc, httpx.WriteTimeout):
            return f"object storage {self.where} took none of the request body for {t}"
        if isinstance(exc, httpx.TimeoutException):
            return f"object storage {self.where} did not answer within {t}"
        return f"cannot reach object storage {self.where}: {_transport(exc)}"

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()`` until it stops raising _Retry, ``ATTEMPTS`` times at most, with
        doubling pauses (and jitter) between. Raises StoreError after the last."""
        pause = FIRST_PAUSE
        for n in range(1, ATTEMPTS + 1):
            try:
                return await attempt()
            except _Retry as exc:
                if n == ATTEMPTS:
                    raise StoreError(str(exc), code=ErrorCode.OBJECT_REQUEST_ERROR) from None
                logger.debug("{}: {}; trying again", what, exc)
                await trio.sleep(pause * (0.5 + random.random()))
                pause *= 2
        raise AssertionError("unreachable")

    async def _request(
        self,
        method: str,
        key: str = "",
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        once: bool = False,
        body_errors: bool = False,
    ) -> _Answer:
        """Send with retries (``_attempt`` says which); returns the answer, whatever its
        status but a retryable one. Raises StoreError after the last failed attempt."""
        url = s3.key_url(self._address, key, query)
        with self._metrics.timed(OBJECT_STORAGE + operation(method, key, query)):
            return await self._retrying(
                f"{method} {key or 'bucket'}",
                partial(
                    self._attempt,
                    method,
                    url,
                    headers or {},
                    body,
                    once=once,
                    body_errors=body_errors,
                ),
            )

    def _check(self, answer: _Answer, *ok: int) -> _Answer:
        if answer.status not in ok:
            raise self._error(answer)
        return answer

    # --- Store -------------------------------------------------------------------------------

    def new_identifier(self, extension: str) -> str:
        return ids.new_identifier(extension)

    def _safe(self, identifier: str) -> str:
        if not ids.is_safe_identifier(identifier) or identifier == PROBE_KEY:
            raise StoreError(f"Refusing invalid identifier {identifier!r}")
        return identifier

    async def save_file(
        self,
        src: Path,
        *,
        identifier: str,
        content_type: str,
        durable: bool = True,
        keep_source: bool = False,
    ) -> str:
        """Upload ``src`` (then unlink it, unless ``keep_source``) under ``identifier``;
        ``durable`` changes nothing (a stored object is durable once the server says so).
        Raises StoreError; on failure nothing is left (a multipart upload is aborted)."""
        key = self._safe(identifier)
        src = Path(src)
        try:
            size = await trio.to_thread.run_sync(os.path.getsize, src)
        except OSError as exc:
            raise StoreError(f"Source file missing: {src}") from exc
        body = _FileBody(src, 0, size)
        if size < PART_SIZE:
            await self._put(key, body, content_type)
        else:
            await self._multipart(key, src, size, content_type)
        if not keep_source:
            with suppress(OSError):
                await trio.to_thread.run_sync(lambda: src.unlink(missing_ok=True))
        return identifier

    async def save_bytes(self, data: bytes, *, identifier: str, content_type: str) -> str:
        await self._put(self._safe(identifier), bytes(data), content_type)
        return identifier

    async def _put(self, key: str, body: Body, content_type: str) -> None:
        answer = await self._request("PUT", key, headers={"Content-Type": content_type}, body=body)
        self._check(answer, 200, 201, 204)

    async def _multipart(self, key: str, src: Path, size: int, content_type: str) -> None:
        # Not idempotent: a second start after a lost answer would leave the first upload
        # unfinished (and billed). A failure that may have reached the server is final; the
        # caller's partial removal (services/storing.py) then aborts whatever it started.
        answer = self._check(
            await self._request(
                "POST",
                key,
                query={"uploads": ""},
                headers={"Content-Type": content_type},
                once=True,
            ),
            200,
        )
        root = s3.xml_root(answer.body)
        upload_id = s3.text(root, "UploadId") if root is not None else None
        if not upload_id:
            raise StoreError(
                f"object storage {self.where} started a multipart upload without an UploadId",
                code=ErrorCode.OBJECT_REQUEST_ERROR,
            )
        try:
            etags = await self._put_parts(key, upload_id, src, size)
            await self._complete(key, upload_id, etags, size)
        except BaseException:
            with trio.move_on_after(CLEANUP_SECONDS, shield=True):
                try:
                    await self._abort(key, upload_id)
                except StoreError as exc:  # recovery aborts it later (remove partial=True)
                    logger.warning("could not abort the multipart upload of {}: {}", key, exc.msg)
            raise

    async def _put_parts(self, key: str, upload_id: str, src: Path, size: int) -> list[str]:
        count = -(-size // PART_SIZE)
        etags = [""] * count
        failure: list[StoreError] = []
        limiter = trio.CapacityLimiter(PARTS_IN_FLIGHT)

        async def put_part(number: int, cancel: trio.CancelScope) -> None:
            start = (number - 1) * PART_SIZE
            body = _FileBody(src, start, min(PART_SIZE, size - start))
            query = {"partNumber": str(number), "uploadId": upload_id}
            try:
                async with limiter:
                    answer = self._check(
                        await self._request("PUT", key, query=query, body=body), 200
                    )
            except StoreError as exc:  # the first failure stops the others
                failure.append(exc)
                cancel.cancel()
                return
            etags[number - 1] = answer.headers.get("etag", "")

        # Failures are collected by hand, so the caller sees one StoreError, not a group.
        async with trio.open_nursery() as nursery:
            for number in range(1, count + 1):
                nursery.start_soon(put_part, number, nursery.cancel_scope)
        if failure:
            raise failure[0]
        return etags

    async def _complete(self, key: str, upload_id: str, etags: list[str], size: int) -> None:
        parts = "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{escape(etag)}</ETag></Part>"
            for n, etag in enumerate(etags, start=1)
        )
        body = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
        query = {"uploadId": upload_id}
        # ``_request`` tries again, also after a 200 that holds InternalError or SlowDown.
        answer = await self._request("POST", key, query=query, body=body, body_errors=True)
        root = s3.xml_root(answer.body) if answer.status == 200 else None
        # S3 may answer 200 and still fail: the error is then in the body.
        if answer.status == 200 and not (root is not None and s3.is_error(root)):
            return
        failure = s3.parse_error(answer.status, answer.body, answer.headers)
        if failure.code == "NoSuchUpload" and await self._has(key, size):
            return  # an earlier attempt completed it; its answer was lost
        raise self._error(_Answer(max(answer.status, 400), answer.headers, answer.body))

    async def _has(self, key: str, size: int) -> bool:
        try:
            return await self.length(key) == size
        except StoreNotFound:
            return False

    async def _abort(self, key: str, upload_id: str) -> None:
        answer = await self._request("DELETE", key, query={"uploadId": upload_id})
        if answer.status not in (200, 204, 404):
            raise self._error(answer)

    async def length(self, identifier: str) -> int:
        if not ids.is_safe_identifier(identifier):
            raise StoreNotFound(f"Invalid identifier {identifier!r}")
        answer = await self._request("HEAD", identifier)
        if answer.status == 404:
            raise StoreNotFound(f"No file for {identifier}")
        self._check_read(answer, identifier)
        length = _int(answer.headers.get("content-length"))
        if length is None:
            raise StoreError(
                f"object storage {self.where} gave no length for {identifier}",
                code=ErrorCode.OBJECT_REQUEST_ERROR,
            )
        return length

    def _check_read(self, answer: _Answer, key: str) -> None:
        """A HEAD or GET of ``key`` that is not 200 or 206 raises StoreError; a plain 403
        says the key may be missing (S3's answer to a missing key without s3:ListBucket)."""
        if answer.status in (200, 206):
            return
        failure = s3.parse_error(answer.status, answer.body, answer.headers)
        if s3.is_denied_read(failure):
            message = s3.describe_denied_read(failure, where=self.where, key=key)
            raise StoreError(message, code=ErrorCode.OBJECT_REQUEST_ERROR)
        raise self._error(answer)

    async def read(
        self, identifier: str, start: int = 0, end: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        if not ids.is_safe_identifier(identifier):
            raise StoreNotFound(f"Invalid identifier {identifier!r}")
        if end is not None and end <= start:
            await self.length(identifier)  # StoreNotFound when missing, as the file store
            return
        opened = await self._open(identifier, start, end)
        if isinstance(opened, _Answer):
            return  # nothing at or past ``start`` (416)
        # The whole read, resumptions included (each GET is timed as get-object-request).
        with self._metrics.timed(GET_OBJECT_STREAM):
            async with aclosing(self._body(identifier, opened, start, end)) as chunks:
                async for chunk in chunks:
                    yield chunk

    @asynccontextmanager
    async def open_read(
        self, identifier: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[Reading]:
        """One GET: its ``Content-Range`` (or, for a whole object, ``Content-Length``) gives
        the object's length, its body the bytes. A range past the end (416) takes the
        length from S3's error, else from a HEAD."""
        if not ids.is_safe_identifier(identifier):
            raise StoreNotFound(f"Invalid identifier {identifier!r}")
        if end is not None and end <= start:
            yield Reading(await self.length(identifier), _nothing())
            return
        opened = await self._open(identifier, start, end)
        if isinstance(opened, _Answer):
            length = _unsatisfied_length(opened)
            yield Reading(await self.length(identifier) if length is None else length, _nothing())
            return
        try:
            length = _whole_length(opened)
            if length is None:  # a server that gave neither: ask
                length = await self.length(identifier)
            with self._metrics.timed(GET_OBJECT_STREAM):
                async with aclosing(self._body(identifier, opened, start, end)) as chunks:
                    yield Reading(length, chunks)
        finally:
            await opened.aclose()

    async def _body(
        self, key: str, response: httpx.Response, start: int, end: int | None
    ) -> AsyncGenerator[bytes, None]:
        """Bytes ``[start, end)`` of ``key`` from ``response`` (a GET open at ``start``);
        a body cut off is resumed where it stopped by another GET, ``ATTEMPTS`` times in a
        row at most: the count starts again whenever bytes arrive, so a long read survives
        any number of separate cut-offs, but not a server that sends nothing. Closes every
        response. Raises StoreError, StoreNotFound (the object went meanwhile)."""
        import httpx

        offset, cut_offs, pause = start, 0, FIRST_PAUSE
        while True:
            try:
                # A server that ignored Range sends it all: skip what is before ``offset``.
                skip = offset if response.status_code == 200 else 0
                # aiter_raw is an async generator (typed as an iterator): close it, too. No
                # chunk size: httpx would hold back up to one, lost if the body is cut off.
                raw = cast(AsyncGenerator[bytes, None], response.aiter_raw())
                async with aclosing(raw) as body:
                    async for data in body:
                        if skip:
                            cut = min(skip, len(data))
                            data, skip = data[cut:], skip - cut
                        if end is not None and offset + len(data) > end:
                            data = data[: end - offset]
                        if data:
                            cut_offs, pause = 0, FIRST_PAUSE
                        for at in range(0, len(data), CHUNK):
                            piece = data[at : at + CHUNK]
                            offset += len(piece)
                            yield piece
                        # A 206's body ends here anyway: read on to its end, which lets
                        # httpx's own generators finish. A whole object sent for a range
                        # (200) is not read further.
                        if end is not None and offset >= end and response.status_code == 200:
                            return
                return
            except httpx.TransportError as exc:
                cut_offs += 1
                if cut_offs >= ATTEMPTS:
                    raise StoreError(
                        f"reading {key} from object storage {self.where} failed: "
                        f"{self._transport_failure(exc)}",
                        code=ErrorCode.OBJECT_REQUEST_ERROR,
                    ) from None
                logger.debug("read of {} cut off at byte {}; resuming", key, offset)
            finally:
                await response.aclose()
            await trio.sleep(pause * (0.5 + random.random()))
            pause *= 2
            opened = await self._open(key, offset, end)
            if isinstance(opened, _Answer):
                return  # nothing past ``offset`` any more (416)
            response = opened

    async def _open(self, key: str, start: int, end: int | None) -> httpx.Response | _Answer:
        """The response to a GET of ``key`` from ``start``, its head read and its body not;
        or, when nothing is there (416), that answer. Raises StoreNotFound, StoreError."""
        url = s3.key_url(self._address, key)
        headers = {"Accept-Encoding": "identity"}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        with self._metrics.timed(GET_OBJECT):  # until the answer's head
            opened = await self._retrying(f"GET {key}", partial(self._open_once, url, headers))
        if isinstance(opened, _Answer):
            if opened.status == 404:
                raise StoreNotFound(f"No file for {key}")
            if opened.status != 416:
                self._check_read(opened, key)
        return opened

    async def _open_once(self, url: str, headers: Mapping[str, str]) -> httpx.Response | _Answer:
        """One GET: the streaming response (200, 206), else the whole answer. Raises
        _Retry."""
        import httpx

        try:
            request = self._client.build_request(
                "GET", url, headers=self._signer.sign("GET", url, headers, None)
            )
            response = await self._client.send(request, stream=True)
            if response.status_code in (200, 206):
                return response
            try:
                answer = _Answer(
                    response.status_code, dict(response.headers), await response.aread()
                )
            finally:
                await response.aclose()
        except httpx.TransportError as exc:
            raise _Retry(self._transport_failure(exc)) from None
        if answer.status in RETRY_STATUS:
            raise _Retry(str(self._error(answer)))
        return answer

    def read_now(self, identifier: str, limit: int) -> bytes | None:
        """Always None: nothing in a bucket can be read without waiting."""
        return None

    async def local_path(self, identifier: str) -> Path | None:
        """Always None: the services copy an object to their scratch folder to work on it."""
        await trio.lowlevel.checkpoint()
        return None

    def public_url(self, identifier: str) -> str | None:
        """``public_endpoint`` + the key, where clients are redirected to (pict-rs serves
        with 303 See Other), or None when it is not set."""
        return s3.public_url(self._public, identifier) if self._public else None

    async def remove(self, identifier: str, *, partial: bool = False) -> None:
        """Delete the object; a missing one is fine. ``partial``: also abort every
        unfinished multipart upload of the key (what a process that died mid-upload left).
        The object goes first: a bucket policy without ``s3:ListBucketMultipartUploads``
        (pict-rs never lists them) leaves the uploads to a lifecycle rule, with a warning,
        but never an object behind."""
        key = self._safe(identifier)
        answer = await self._request("DELETE", key)
        if answer.status not in (200, 204, 404):
            raise self._error(answer)
        if not partial:
            return
        try:
            uploads = await self._unfinished_uploads(key)
        except StoreError as exc:
            logger.warning(
                "could not list unfinished uploads of {} ({}); a bucket lifecycle rule that "
                "aborts incomplete multipart uploads cleans them up",
                key,
                exc.msg,
            )
            return
        for upload_id in uploads:
            await self._abort(key, upload_id)

    async def _unfinished_uploads(self, key: str) -> list[str]:
        found: list[str] = []
        query = {"uploads": "", "prefix": key}
        while True:
            answer = self._check(await self._request("GET", query=query), 200)
            root = s3.xml_root(answer.body)
            if root is None:
                return found
            for upload in s3.children(root, "Upload"):
                upload_id = s3.text(upload, "UploadId")
                if s3.text(upload, "Key") == key and upload_id:
                    found.append(upload_id)
            key_marker, id_marker = (
                s3.text(root, "NextKeyMarker"),
                s3.text(root, "NextUploadIdMarker"),
            )
            if s3.text(root, "IsTruncated") != "true" or not (key_marker or id_marker):
                return found
            query = {**query, "key-marker": key_marker or "", "upload-id-marker": id_marker or ""}

    async def identifiers(self, *, after: str | None = None) -> AsyncGenerator[str, None]:
        """Every key in the bucket but the health probe, a page of 1000 at a time
        (ListObjectsV2), in S3's order (by UTF-8 bytes); ``after``: from the key after it
        (``start-after``)."""
        query = {"list-type": "2", "max-keys": str(LIST_PAGE)}
        if after is not None:
            query["start-after"] = after
        while True:
            answer = self._check(await self._request("GET", query=query), 200)
            root = s3.xml_root(answer.body)
            if root is None:
                return
            for item in s3.children(root, "Contents"):
                key = s3.text(item, "Key")
                if key and key != PROBE_KEY:
                    yield key
            token = s3.text(root, "NextContinuationToken")
            if s3.text(root, "IsTruncated") != "true" or not token:
                return
            query = {**query, "continuation-token": token}

    async def health(self, *, write: bool = True) -> None:
        """``write``: PUT and DELETE the ``health-check`` object; else list one key. Raises
        StoreError with the operator's hint (bad keys, missing bucket, wrong region)."""
        if write:
            await self._put(PROBE_KEY, b"", "application/octet-stream")
            self._check(await self._request("DELETE", PROBE_KEY), 200, 204, 404)
        else:
            self._check(await self._request("GET", query={"list-type": "2", "max-keys": "1"}), 200)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._client.aclose()


async def _nothing() -> AsyncGenerator[bytes, None]:
    return
    yield


def _whole_length(response: httpx.Response) -> int | None:
    """The object's length from the head of a GET of it: ``Content-Range``'s total of a
    206, the ``Content-Length`` of a 200 (a whole object, unencoded: we ask for identity)."""
    if response.status_code == 206:
        _, _, total = response.headers.get("content-range", "").rpartition("/")
        return _int(total)
    if response.headers.get("content-encoding", "identity") != "identity":
        return None
    return _int(response.headers.get("content-length"))


def _unsatisfied_length(answer: _Answer) -> int | None:
    """The object's length from a 416: ``Content-Range: bytes */N`` (RFC 9110), or the
    ``ActualObjectSize`` of S3's InvalidRange error."""
    _, _, total = answer.headers.get("content-range", "").rpartition("/")
    if _int(total) is not None:
        return _int(total)
    root = s3.xml_root(answer.body)
    return _int(s3.text(root, "ActualObjectSize")) if root is not None else None


def _int(value: str | None) -> int | None:
    """A count in a header (digits only), else None."""
    return int(value) if value is not None and value.isascii() and value.isdigit() else None


def _never_sent(exc: Exception) -> bool:
    """Whether the request surely never reached the server: no connection was made, or none
    came free in the pool (httpcore raises these before a byte of the request is written)."""
    import httpx

    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def _transport(exc: Exception) -> str:
    """An httpx transport error in a few words (its text never holds a header)."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _client(timeout: float, transport: httpx.AsyncBaseTransport | None) -> httpx.AsyncClient:
    import httpx

    import pictrs_trio

    return httpx.AsyncClient(
        # Each wait (connect, every write, every read, a free connection), never the whole
        # request: see the module's docstring.
        timeout=httpx.Timeout(timeout),
        limits=httpx.Limits(
            max_connections=MAX_CONNECTIONS, max_keepalive_connections=KEEPALIVE_CONNECTIONS
        ),
        follow_redirects=False,  # a 301 means a wrong region or endpoint: say so
        transport=transport,
        headers={"User-Agent": f"pictrs-trio/{pictrs_trio.version()}"},
    )


@asynccontextmanager
async def open_object_store(
    config: ObjectStorageStore,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    metrics: Metrics | None = None,
) -> AsyncIterator[ObjectStore]:
    """An ``ObjectStore`` for ``config`` (not yet checked: call ``health``), its requests
    timed in ``metrics``. ``transport`` replaces httpx's network (tests). Raises StoreError
    for an unusable endpoint."""
    # Importing httpx and botocore and building a TLS context take a while: not on the loop.
    client = await trio.to_thread.run_sync(_client, config.client_timeout, transport)
    try:
        store = ObjectStore(config, client, metrics)
    except BaseException:
        await client.aclose()
        raise
    try:
        yield store
    finally:
        await store.aclose()
