"""The pure half of the object store: where a key lives (path-style or virtual-host URLs),
how a request is signed (AWS Signature V4 by botocore's signer), what S3's XML answers say,
and what an operator is told when the bucket refuses us. No I/O here; ``object.py`` sends.

Addressing follows pict-rs (``src/store/object_store.rs``): path style puts the bucket in
the path (``{endpoint}/{bucket}/{key}``); virtual-host style puts it in front of the
endpoint's host (``{bucket}.{host}/{key}``) unless the host already starts with it.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit, urlunsplit

import msgspec

from pictrs_trio.config import redact_url
from pictrs_trio.rules.egress import url_for_log

if TYPE_CHECKING:
    from botocore.credentials import Credentials

__all__ = [
    "Addressing",
    "S3Failure",
    "Signer",
    "addressing",
    "describe_denied_read",
    "describe_failure",
    "is_denied_read",
    "parse_error",
    "public_url",
]

# Unreserved characters (RFC 3986) stay; everything else is %-encoded, once, as SigV4's
# canonical URI and query want it (S3 does not encode a second time).
_KEY_SAFE = "/-_.~"
_QUERY_SAFE = "-_.~"


class Addressing(msgspec.Struct, frozen=True, kw_only=True):
    """Where the bucket's keys live. ``base`` ends without a slash; a key's URL is
    ``base + "/" + key``."""

    base: str
    where: str  # endpoint and bucket as messages name them (no userinfo, no query)


def addressing(endpoint: str, bucket: str, path_style: bool) -> Addressing:
    """The URLs of ``bucket`` at ``endpoint``. Raises ValueError for an endpoint that is not
    an http(s) URL with a host, or that carries a user, a query or a fragment."""
    typed = redact_url(endpoint)  # as the operator wrote it: urlsplit mangles "minio:9000"
    try:
        parts = urlsplit(endpoint)
    except ValueError as exc:  # "Invalid IPv6 URL"
        raise ValueError(f"store.endpoint {typed!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        fix = "it needs http:// or https://"
        if "://" not in endpoint:
            fix += " in front" + ("" if "@" in endpoint else f", like 'http://{endpoint}'")
        raise ValueError(f"store.endpoint {typed!r} is not an http(s) URL: {fix}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("store.endpoint must not carry a user or password: use access_key")
    if parts.query or parts.fragment:
        raise ValueError(f"store.endpoint {url_for_log(endpoint)} must not have a query")
    try:
        parts.port  # noqa: B018  (raises for a port that is not a number)
    except ValueError:
        raise ValueError(f"store.endpoint {url_for_log(endpoint)} has a bad port") from None
    path = parts.path.rstrip("/")
    where = f"{url_for_log(endpoint).rstrip('/')} bucket {bucket}"
    if path_style:
        base = urlunsplit((parts.scheme, parts.netloc, f"{path}/{quote(bucket, safe='')}", "", ""))
        return Addressing(base=base, where=where)
    netloc = parts.netloc
    if not parts.hostname.startswith(bucket):
        netloc = f"{bucket}.{netloc}"
    return Addressing(base=urlunsplit((parts.scheme, netloc, path, "", "")), where=where)


def key_url(address: Addressing, key: str = "", query: Mapping[str, str] | None = None) -> str:
    """The URL of ``key`` (or of the bucket, for ``""``) with ``query`` encoded as SigV4's
    canonical query wants it: each name and value %-encoded, names sorted."""
    url = f"{address.base}/{quote(key, safe=_KEY_SAFE)}" if key else f"{address.base}/"
    if query:
        pairs = sorted(
            (quote(k, safe=_QUERY_SAFE), quote(v, safe=_QUERY_SAFE)) for k, v in query.items()
        )
        url += "?" + "&".join(f"{k}={v}" for k, v in pairs)
    return url


def public_url(public_endpoint: str, key: str) -> str:
    """Where clients fetch ``key`` themselves: the public endpoint's path, then the key's
    segments (pict-rs ``public_url``: a trailing slash of the endpoint is not doubled)."""
    parts = urlsplit(public_endpoint)
    path = parts.path.rstrip("/") + "/" + quote(key, safe=_KEY_SAFE)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


# --- signing ---------------------------------------------------------------------------------


class FileSlice:
    """Bytes ``[start, start+length)`` of an open file, as the file-like object botocore's
    signer hashes in ``PAYLOAD_BUFFER`` pieces (``read``, ``seek``, ``tell``): the payload's
    SHA-256 without the part in memory. Used only inside one thread."""

    def __init__(self, fd: int, start: int, length: int) -> None:
        self._fd, self._start, self._length, self._pos = fd, start, length, 0

    def read(self, size: int = -1) -> bytes:
        left = self._length - self._pos
        size = left if size < 0 else min(size, left)
        data = os.pread(self._fd, size, self._start + self._pos) if size > 0 else b""
        if len(data) < size:
            raise OSError(f"file shrank while it was uploaded (at byte {self._pos + len(data)})")
        self._pos += len(data)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = pos if whence == 0 else (self._pos + pos if whence == 1 else self._length + pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return self._length


class Signer:
    """Signs S3 requests with botocore's SigV4 (``S3SigV4Auth``), never by hand. The payload
    is always signed (its SHA-256 in ``x-amz-content-sha256``): plain-HTTP endpoints need it,
    and over TLS it costs one read of the bytes, which catches a body changed on the way."""

    def __init__(
        self, *, access_key: str, secret_key: str, session_token: str | None, region: str
    ) -> None:
        from botocore.credentials import Credentials

        self._credentials: Credentials = Credentials(access_key, secret_key, session_token)
        self._region = region

    def __repr__(self) -> str:  # never the keys
        return f"Signer(region={self._region!r})"

    def sign(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | FileSlice | None
    ) -> dict[str, str]:
        """The headers to send: ``headers`` plus the date, payload hash, session token and
        ``Authorization``. ``Host`` is not among them: it is signed as the URL's host, which
        is what httpx sends. Blocks to hash a FileSlice body (call it in a thread then)."""
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
        S3SigV4Auth(self._credentials, "s3", self._region).add_auth(request)
        return {name: str(value) for name, value in request.headers.items()}


# --- answers ---------------------------------------------------------------------------------


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def xml_root(body: bytes) -> ET.Element | None:
    """The parsed document, or None when it is not XML. Namespaces are kept in tags; use
    ``children`` and ``text`` to ignore them (some servers omit S3's namespace)."""
    try:
        return ET.fromstring(body)
    except ET.ParseError:
        return None


def children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if _local(child.tag) == name]


def text(element: ET.Element, name: str) -> str | None:
    for child in element:
        if _local(child.tag) == name:
            return child.text or ""
    return None


def is_error(root: ET.Element) -> bool:
    return _local(root.tag) == "Error"


class S3Failure(msgspec.Struct, frozen=True, kw_only=True):
    """What a refused request said: the status, S3's error code and message (when the body
    had them) and the region the server says the bucket is in."""

    status: int
    code: str | None = None
    message: str | None = None
    bucket_region: str | None = None


def parse_error(status: int, body: bytes, headers: Mapping[str, str]) -> S3Failure:
    root = xml_root(body) if body else None
    code = message = None
    if root is not None and is_error(root):
        code, message = text(root, "Code"), text(root, "Message")
    return S3Failure(
        status=status,
        code=code,
        message=message,
        bucket_region=headers.get("x-amz-bucket-region")
        or (text(root, "Region") if root is not None and is_error(root) else None),
    )


_REGION_CODES = frozenset(
    {
        "AuthorizationHeaderMalformed",
        "PermanentRedirect",
        "IllegalLocationConstraintException",
        "InvalidRegion",
        "AuthorizationQueryParametersError",
    }
)
_SPACE = re.compile(r"\s+")


def _short(message: str | None) -> str:
    """S3's own message on one line, cut short (bodies of refused signatures carry the whole
    canonical request, which is not for a log)."""
    if not message:
        return ""
    one = _SPACE.sub(" ", message).strip()
    return f": {one[:160]}" if one else ""


def is_region_problem(failure: S3Failure) -> bool:
    if failure.code in _REGION_CODES or failure.status in (301, 307):
        return True
    # What pict-rs's README shows for a wrong region (or a path-style endpoint without
    # use_path_style): 400 InvalidRequest "Authorization header's Credential is malformed".
    return failure.code == "InvalidRequest" and "credential" in (failure.message or "").lower()


def describe_failure(failure: S3Failure, *, where: str, region: str, bucket: str) -> str:
    """One line for the operator: what the object storage at ``where`` refused and what to
    check, with the hints of pict-rs's README. No key, secret or token appears in it."""
    code = failure.code or f"HTTP {failure.status}"
    if failure.code == "InvalidAccessKeyId":
        return (
            f"object storage {where} does not know the access key (InvalidAccessKeyId): "
            "check store.access_key"
        )
    if failure.code == "SignatureDoesNotMatch":
        return (
            f"object storage {where} refused the request signature (SignatureDoesNotMatch): "
            "check store.secret_key (and store.session_token if set)"
        )
    if failure.code in ("InvalidToken", "ExpiredToken", "TokenRefreshRequired"):
        return (
            f"object storage {where} refused the session token ({code}): renew store.session_token"
        )
    if failure.code == "NoSuchBucket":
        return (
            f"object storage {where}: bucket {bucket!r} does not exist (NoSuchBucket); create "
            "it first (pictrs-trio does not create buckets), or check store.bucket_name and "
            "store.use_path_style"
        )
    if is_region_problem(failure):
        there = (
            f"; the server says the bucket is in {failure.bucket_region!r}"
            if failure.bucket_region
            else ""
        )
        return (
            f"object storage {where} rejected store.region = {region!r} ({code}){there}: the "
            "region was set improperly, or a path-style endpoint is used without "
            "store.use_path_style = true"
        )
    if failure.code == "RequestTimeTooSkewed":
        return (
            f"object storage {where} refused the request time (RequestTimeTooSkewed): "
            "check this machine's clock"
        )
    if failure.code == "AccessDenied" or failure.status == 403:
        return (
            f"object storage {where} denied access ({code}): check that the access key may "
            "read, write, list and delete in the bucket"
        )
    return f"object storage {where} failed ({code}){_short(failure.message)}"


def is_denied_read(failure: S3Failure) -> bool:
    """A plain refusal of a HEAD or GET (403 without a code, as HEAD answers have no body,
    or AccessDenied): what S3 answers for a missing key when the access key lacks
    s3:ListBucket. Other 403 codes (a bad signature, an unknown key) say what they are."""
    return failure.status == 403 and failure.code in (None, "AccessDenied")


def describe_denied_read(failure: S3Failure, *, where: str, key: str) -> str:
    """One line for a refused read of ``key``: it is never taken for a missing key (that
    would make prune-missing forget, or migrate-store skip, a file that exists), but the
    line says that it may be one, and how to make S3 say so."""
    code = failure.code or f"HTTP {failure.status}"
    return (
        f"object storage {where} denied reading {key} ({code}): the key may be missing (S3 "
        "answers 403, not 404, for a missing key unless the access key has s3:ListBucket "
        "on the bucket), or the access key may not read it (s3:GetObject)"
    )
