"""The object store: media in an S3-compatible bucket, over httpx on trio, each request
signed with AWS Signature V4 by botocore (pict-rs ``src/store/object_store.rs``).

Keys are the identifiers, in the file store's layout (``aa/…/jj/<12 hex>.ext``, pict-rs
``src/file_path.rs`` ``generate_object``). Make one with ``open_object_store(config)``.

* **Uploads stream from the file.** Below ``PART_SIZE`` (pict-rs's 8 MiB) one PUT; from it a
  multipart upload of ``PART_SIZE`` parts, ``PARTS_IN_FLIGHT`` at a time. Each request's
  body is read from the file as it is sent (after a first read that hashes it for the
  signature), so no part is ever whole in memory. A failed or cancelled multipart upload is
  aborted; one that a dead process left is aborted by recovery (``remove(partial=True)``).
* **Reads stream** in chunks of at most 64 KiB and ask the server for ``Range``; a body cut
  off half-way is resumed from where it stopped.
* **Retries**: connection errors, timeouts and 5xx answers are tried ``ATTEMPTS`` times in
  all, with doubling pauses; whatever else the server says is final.
* **Time**: ``client_timeout`` bounds each request and its whole answer, except an object's
  body being read out to a client, where it bounds each wait for more bytes instead (a large
  video served to a slow client may take longer than that, and should).

An S3 PUT overwrites, and S3 has no create-only PUT every provider honours, so unlike the
file store this one cannot refuse to overwrite: identifiers are fresh UUID v7 values, which
makes a collision a bug elsewhere, not a race.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing, asynccontextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, cast
from xml.sax.saxutils import escape

import msgspec
import trio
from loguru import logger

from pictrs_trio.config import ObjectStorageStore
from pictrs_trio.rules import ids
from pictrs_trio.rules.errors import ErrorCode, StoreError, StoreNotFound
from pictrs_trio.store import s3

if TYPE_CHECKING:
    import httpx

__all__ = ["ObjectStore", "open_object_store"]

MIB = 1024 * 1024
CHUNK = 64 * 1024
PART_SIZE = 8 * MIB  # pict-rs's CHUNK_SIZE; S3 wants every part but the last >= 5 MiB
PARTS_IN_FLIGHT = 4
UPLOAD_READ = 256 * 1024  # file bytes per thread hop while a body is sent
ATTEMPTS = 4
FIRST_PAUSE = 0.2  # seconds; doubled after each failed attempt, with jitter
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
PROBE_KEY = "health-check"  # pict-rs's health-check object
CLEANUP_SECONDS = 10.0
LIST_PAGE = 1000


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


def _read_range(fd: int, offset: int, size: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) < size:
        raise OSError("the file shrank while it was uploaded")
    return data


async def _file_chunks(fd: int, start: int, length: int) -> AsyncGenerator[bytes, None]:
    sent = 0
    while sent < length:
        size = min(UPLOAD_READ, length - sent)
        yield await trio.to_thread.run_sync(_read_range, fd, start + sent, size)
        sent += size


class ObjectStore:
    """``Store`` over an S3 bucket."""

    def __init__(self, config: ObjectStorageStore, client: httpx.AsyncClient) -> None:
        """Raises StoreError for an endpoint that cannot be used."""
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
        self._public = config.public_endpoint or None
        self._region, self._bucket = config.region, config.bucket_name

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
        self, method: str, url: str, headers: Mapping[str, str], body: Body
    ) -> _Answer:
        """One request, its whole answer read. Raises _Retry, StoreError (local file)."""
        import httpx

        fd = None
        chunks: AsyncGenerator[bytes, None] | None = None
        try:
            if isinstance(body, _FileBody):
                try:
                    fd = await trio.to_thread.run_sync(os.open, body.path, os.O_RDONLY)
                except FileNotFoundError as exc:
                    raise StoreError(f"Source file missing: {body.path}") from exc
            signed = await self._sign(method, url, headers, body, fd)
            content: bytes | AsyncIterator[bytes] | None = None
            if isinstance(body, _FileBody):
                assert fd is not None
                content = chunks = _file_chunks(fd, body.start, body.length)
                signed["Content-Length"] = str(body.length)  # sent as is, never chunked
            elif body is not None:
                content = body
            with trio.move_on_after(self._timeout):
                response = await self._client.request(method, url, headers=signed, content=content)
                answer = _Answer(response.status_code, dict(response.headers), response.content)
                if answer.status in RETRY_STATUS:
                    raise _Retry(str(self._error(answer)))
                return answer
            raise _Retry(f"object storage {self.where} did not answer within {self._timeout:g} s")
        except httpx.TransportError as exc:
            raise _Retry(f"cannot reach object storage {self.where}: {_transport(exc)}") from None
        except OSError as exc:
            where = body.path if isinstance(body, _FileBody) else "the request body"
            raise StoreError(f"Cannot read {where}: {exc}", code=ErrorCode.OBJECT_IO_ERROR) from exc
        finally:
            if chunks is not None:  # a body cut off (timeout, cancel) is closed, not left to gc
                await chunks.aclose()
            if fd is not None:
                os.close(fd)

    async def _request(
        self,
        method: str,
        key: str = "",
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: Body = None,
    ) -> _Answer:
        """Send with retries; returns the answer, whatever its status but a retryable one
        on the last attempt. Raises StoreError after the last failed attempt."""
        url = s3.key_url(self._address, key, query)
        pause = FIRST_PAUSE
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return await self._attempt(method, url, headers or {}, body)
            except _Retry as exc:
                if attempt == ATTEMPTS:
                    raise StoreError(str(exc), code=ErrorCode.OBJECT_REQUEST_ERROR) from None
                logger.debug("{} {}: {}; trying again", method, key or "bucket", exc)
                await trio.sleep(pause * (0.5 + random.random()))
                pause *= 2
        raise AssertionError("unreachable")

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
        answer = self._check(
            await self._request(
                "POST", key, query={"uploads": ""}, headers={"Content-Type": content_type}
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
        for attempt in range(1, ATTEMPTS + 1):
            answer = await self._request("POST", key, query=query, body=body)
            root = s3.xml_root(answer.body) if answer.status == 200 else None
            # S3 may answer 200 and still fail: the error is then in the body.
            if answer.status == 200 and not (root is not None and s3.is_error(root)):
                return
            failure = s3.parse_error(answer.status, answer.body, answer.headers)
            if failure.code == "NoSuchUpload" and await self._has(key, size):
                return  # an earlier attempt completed it; its answer was lost
            if failure.code not in ("InternalError", "SlowDown") or attempt == ATTEMPTS:
                raise self._error(_Answer(max(answer.status, 400), answer.headers, answer.body))
            await trio.sleep(FIRST_PAUSE * attempt)

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
        self._check(answer, 200)
        try:
            return int(answer.headers["content-length"])
        except (KeyError, ValueError):
            raise StoreError(
                f"object storage {self.where} gave no length for {identifier}",
                code=ErrorCode.OBJECT_REQUEST_ERROR,
            ) from None

    async def read(
        self, identifier: str, start: int = 0, end: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        import httpx

        if not ids.is_safe_identifier(identifier):
            raise StoreNotFound(f"Invalid identifier {identifier!r}")
        if end is not None and end <= start:
            await self.length(identifier)  # StoreNotFound when missing, as the file store
            return
        offset, resumed = start, 0
        while end is None or offset < end:
            response = await self._open(identifier, offset, end)
            if response is None:
                return  # nothing at or past ``offset`` (416)
            try:
                # A server that ignored Range sends it all: skip what is before ``offset``.
                skip = offset if response.status_code == 200 else 0
                # aiter_raw is an async generator (typed as an iterator): close it, too.
                raw = cast(AsyncGenerator[bytes, None], response.aiter_raw(CHUNK))
                async with aclosing(raw) as body:
                    async for data in body:
                        if skip:
                            cut = min(skip, len(data))
                            data, skip = data[cut:], skip - cut
                        if end is not None and offset + len(data) > end:
                            data = data[: end - offset]
                        if data:
                            offset += len(data)
                            yield data
                        if end is not None and offset >= end:
                            return
                return
            except httpx.TransportError as exc:
                resumed += 1
                if resumed >= ATTEMPTS:
                    raise StoreError(
                        f"reading {identifier} from object storage {self.where} failed: "
                        f"{_transport(exc)}",
                        code=ErrorCode.OBJECT_REQUEST_ERROR,
                    ) from None
                logger.debug("read of {} cut off at byte {}; resuming", identifier, offset)
            finally:
                await response.aclose()

    async def _open(self, key: str, start: int, end: int | None) -> httpx.Response | None:
        """The response to a GET of ``key`` from ``start``, its head read and its body not;
        None when nothing is there (416). Raises StoreNotFound, StoreError."""
        import httpx

        url = s3.key_url(self._address, key)
        headers = {"Accept-Encoding": "identity"}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        pause = FIRST_PAUSE
        for attempt in range(1, ATTEMPTS + 1):
            why = f"object storage {self.where} did not answer within {self._timeout:g} s"
            try:
                with trio.move_on_after(self._timeout):
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
                    if answer.status == 416:
                        return None
                    if answer.status == 404:
                        raise StoreNotFound(f"No file for {key}")
                    if answer.status not in RETRY_STATUS:
                        raise self._error(answer)
                    why = str(self._error(answer))
            except httpx.TransportError as exc:
                why = f"cannot reach object storage {self.where}: {_transport(exc)}"
            if attempt == ATTEMPTS:
                raise StoreError(why, code=ErrorCode.OBJECT_REQUEST_ERROR)
            await trio.sleep(pause * (0.5 + random.random()))
            pause *= 2
        raise AssertionError("unreachable")

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

    async def identifiers(self) -> AsyncGenerator[str, None]:
        """Every key in the bucket but the health probe, a page of 1000 at a time
        (ListObjectsV2)."""
        query = {"list-type": "2", "max-keys": str(LIST_PAGE)}
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


def _transport(exc: Exception) -> str:
    """An httpx transport error in a few words (its text never holds a header)."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _client(timeout: float, transport: httpx.AsyncBaseTransport | None) -> httpx.AsyncClient:
    import httpx

    import pictrs_trio

    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,  # a 301 means a wrong region or endpoint: say so
        transport=transport,
        headers={"User-Agent": f"pictrs-trio/{pictrs_trio.version()}"},
    )


@asynccontextmanager
async def open_object_store(
    config: ObjectStorageStore, *, transport: httpx.AsyncBaseTransport | None = None
) -> AsyncIterator[ObjectStore]:
    """An ``ObjectStore`` for ``config`` (not yet checked: call ``health``). ``transport``
    replaces httpx's network (tests). Raises StoreError for an unusable endpoint."""
    # Importing httpx and botocore and building a TLS context take a while: not on the loop.
    client = await trio.to_thread.run_sync(_client, config.client_timeout, transport)
    try:
        store = ObjectStore(config, client)
    except BaseException:
        await client.aclose()
        raise
    try:
        yield store
    finally:
        await store.aclose()
