"""The error tree, and the one table from an error to its HTTP status.

    PictrsError                      every error a client may see; carries a code (no status)
    ├── UploadError                  multipart problems            file-upload-error    400
    ├── NoFiles                      no images[] part              validate-no-files    400
    ├── EmptyFile                    zero bytes                    validate-file-empty  400
    ├── FileTooLarge                 over a size limit             validate-file-size   413
    │   ├── DownloadTooLarge         a remote body over the limit                       400
    │   └── BodyTooLarge             a request body over the cap                        413
    ├── BodyTimeout                  a request body arriving too slowly  stream-too-slow 408
    ├── StreamTooSlow                a remote body not received in time  stream-too-slow 400
    ├── ValidationError              width/height/area/frames      validate-*           400
    ├── MediaDisallowed, VideoDisabled                                                  400
    ├── UnsupportedMedia             bytes are not a format we take command-failure     400
    ├── MediaToolError               a tool could not run properly command-error        500
    │   ├── ToolMissing              binary missing / not executable command-not-found  500
    │   ├── ToolTimeout              past media.process_timeout    command-timeout      400
    │   ├── ToolFailed               the tool refused the input    command-failure      400
    │   └── EngineBusy               no engine worker free in time command-timeout      500
    ├── VariantTimeout               waited too long for a render  command-timeout      500
    ├── StoreError, StoreNotFound    a store backend failed        file-io-error, ...   500
    ├── RepoError                    the repo failed               sqlite-error         500
    ├── ScratchError                 the temporary folder failed   io-error             500
    ├── HttpClientError, DownloadFailed  outbound fetch failed     http-client-error, … 500
    ├── UrlNotAllowed                a URL the SSRF guard refuses  url-not-allowed      400
    ├── FailedExternalValidation     the validator refused    failed-external-validation 400
    │   └── ExternalValidationUnavailable  it timed out or was unreachable              500
    ├── AliasNotFound, ProxyNotFound                                                    404
    ├── RouteNotFound                no route has this path        not-found            404
    ├── InvalidDeleteToken                                                              403
    ├── InvalidApiToken                                                                 401
    ├── RangeNotSatisfiable                                                             416
    ├── RequestTimeout               X-Request-Deadline passed     request-timeout      408
    ├── Unhealthy                    /healthz: a part is down      the part's code      503
    └── InvalidQuery, ReadOnly, ParseDeadline, ...                                      400

Errors carry a code, never a status: ``STATUS`` below maps each class (through its bases) to
the status pict-rs answers for that kind of error (``src/error.rs`` picks the status from the
error's kind, not from its code, so one code can have two statuses: ``command-timeout`` is 400
for a tool and 500 for a variant wait, ``validate-file-size`` 413 for an upload and 400 for a
download). ``error_answer`` alone turns any exception into the answer every path sends.
Errors of the domain-free journal map here too.
"""

from __future__ import annotations

import enum
import sys
from typing import Annotated

import msgspec


class ErrorCode(enum.StrEnum):
    """pict-rs's machine-readable codes (``src/error_code.rs``), plus our own few."""

    COMMAND_TIMEOUT = "command-timeout"
    COMMAND_ERROR = "command-error"
    COMMAND_FAILURE = "command-failure"
    COMMAND_NOT_FOUND = "command-not-found"
    COMMAND_PERMISSION_DENIED = "command-permission-denied"
    NOT_FOUND = "not-found"
    FILE_IO_ERROR = "file-io-error"
    FILE_EXISTS = "file-exists"
    OBJECT_REQUEST_ERROR = "object-request-error"
    OBJECT_IO_ERROR = "object-io-error"
    PANIC = "panic"
    ALREADY_CLAIMED = "already-claimed"
    SQLITE_ERROR = "sqlite-error"
    EXTRACT_DETAILS = "extract-details"
    FILE_UPLOAD_ERROR = "file-upload-error"
    IO_ERROR = "io-error"
    VALIDATE_WIDTH = "validate-width"
    VALIDATE_HEIGHT = "validate-height"
    VALIDATE_AREA = "validate-area"
    VALIDATE_FRAMES = "validate-frames"
    VALIDATE_FILE_EMPTY = "validate-file-empty"
    VALIDATE_FILE_SIZE = "validate-file-size"
    VIDEO_DISABLED = "video-disabled"
    MEDIA_DISALLOWED = "media-disallowed"
    HTTP_CLIENT_ERROR = "http-client-error"
    DOWNLOAD_FILE_ERROR = "download-file-error"
    READ_ONLY = "read-only"
    INVALID_FILE_EXTENSION = "invalid-file-extension"
    INVALID_PROCESS_PATH = "invalid-process-path"
    VALIDATE_NO_FILES = "validate-no-files"
    PROXY_NOT_FOUND = "proxy-not-found"
    ALIAS_NOT_FOUND = "alias-not-found"
    LOST_FILE = "lost-file"
    INVALID_DELETE_TOKEN = "invalid-delete-token"
    DUPLICATE_ALIAS = "duplicate-alias"
    RANGE_NOT_SATISFIABLE = "range-not-satisfiable"
    STREAM_TOO_SLOW = "stream-too-slow"
    UNKNOWN_ERROR = "unknown-error"
    FAILED_EXTERNAL_VALIDATION = "failed-external-validation"
    INVALID_QUERY = "invalid-query"
    INVALID_JSON = "invalid-json"
    INVALID_API_TOKEN = "invalid-api-token"
    PARSE_DEADLINE = "parse-deadline"
    REQUEST_TIMEOUT = "request-timeout"
    PROXY_NOT_ALLOWED = "proxy-not-allowed"
    URL_NOT_ALLOWED = "url-not-allowed"
    MIGRATING = "migrating"  # ours: migrate-store holds the address (503)


class PictrsError(Exception):
    """Base of every error with a pict-rs code. Subclasses set ``code``; ``STATUS`` gives the
    HTTP status."""

    code: ErrorCode = ErrorCode.UNKNOWN_ERROR

    def __init__(self, msg: str, *, code: ErrorCode | None = None):
        super().__init__(msg)
        self.msg = msg
        if code is not None:
            self.code = code


class UploadError(PictrsError):
    """Malformed multipart, too many files, a part without filename."""

    code = ErrorCode.FILE_UPLOAD_ERROR


class NoFiles(PictrsError):
    code = ErrorCode.VALIDATE_NO_FILES


class EmptyFile(PictrsError):
    code = ErrorCode.VALIDATE_FILE_EMPTY


class FileTooLarge(PictrsError):
    """A file over the size limit of its upload, kind or request."""

    code = ErrorCode.VALIDATE_FILE_SIZE


class DownloadTooLarge(FileTooLarge):
    """A remote body (download, proxy) over the limit: pict-rs answers 400 here."""


class BodyTooLarge(FileTooLarge):
    """The request body is over what the route accepts (declared or received)."""


class BodyTimeout(PictrsError):
    """The request body did not arrive fast enough (server.body_timeout and
    server.body_min_rate). pict-rs answers a slow upload with 400; a request timeout is
    what it is, so 408."""

    code = ErrorCode.STREAM_TOO_SLOW


class StreamTooSlow(PictrsError):
    """A remote body (download, proxy) not received within its time."""

    code = ErrorCode.STREAM_TOO_SLOW


class ValidationError(PictrsError):
    """A dimension or frame limit; ``code`` says which (validate-width, ...)."""


class MediaDisallowed(PictrsError):
    code = ErrorCode.MEDIA_DISALLOWED


class VideoDisabled(PictrsError):
    code = ErrorCode.VIDEO_DISABLED


class UnsupportedMedia(PictrsError):
    """The bytes are not a format pict-rs accepts, or are corrupt/truncated."""

    code = ErrorCode.COMMAND_FAILURE


class MediaToolError(PictrsError):
    """An external tool (ffmpeg, ffprobe, exiftool, the engine) could not run properly."""

    code = ErrorCode.COMMAND_ERROR


class ToolMissing(MediaToolError):
    """The tool's binary is missing (``command-not-found``) or not executable
    (``command-permission-denied``, pass it as ``code``)."""

    code = ErrorCode.COMMAND_NOT_FOUND


class ToolTimeout(MediaToolError):
    """A tool ran past ``media.process_timeout``."""

    code = ErrorCode.COMMAND_TIMEOUT


class ToolFailed(MediaToolError):
    """A tool exited with failure on the input it was given."""

    code = ErrorCode.COMMAND_FAILURE


class EngineBusy(MediaToolError):
    """No engine worker became free in time (none can start, or all are stuck)."""

    code = ErrorCode.COMMAND_TIMEOUT


class VariantTimeout(PictrsError):
    """A request waited too long for a variant to be rendered (pict-rs: ~35 s)."""

    code = ErrorCode.COMMAND_TIMEOUT


class StoreError(PictrsError):
    code = ErrorCode.FILE_IO_ERROR


class StoreNotFound(StoreError):
    """The identifier has no stored bytes."""

    code = ErrorCode.NOT_FOUND


class RepoError(PictrsError):
    code = ErrorCode.SQLITE_ERROR


class ScratchError(PictrsError):
    """This process's temporary folder could not be written (full, gone, not writable): pict-rs
    answers its io errors with ``io-error``, 500."""

    code = ErrorCode.IO_ERROR


class HttpClientError(PictrsError):
    """An outbound request (download, proxy) failed before the remote answered."""

    code = ErrorCode.HTTP_CLIENT_ERROR


class DownloadFailed(PictrsError):
    """The remote server answered a download or proxy fetch with a non-2xx status."""

    code = ErrorCode.DOWNLOAD_FILE_ERROR


class AliasNotFound(PictrsError):
    code = ErrorCode.ALIAS_NOT_FOUND


class ProxyNotFound(PictrsError):
    code = ErrorCode.PROXY_NOT_FOUND


class InvalidDeleteToken(PictrsError):
    code = ErrorCode.INVALID_DELETE_TOKEN


class DuplicateAlias(PictrsError):
    code = ErrorCode.DUPLICATE_ALIAS


class InvalidQuery(PictrsError):
    code = ErrorCode.INVALID_QUERY


class InvalidJson(PictrsError):
    code = ErrorCode.INVALID_JSON


class ReadOnly(PictrsError):
    code = ErrorCode.READ_ONLY


class RangeNotSatisfiable(PictrsError):
    code = ErrorCode.RANGE_NOT_SATISFIABLE


class InvalidApiToken(PictrsError):
    code = ErrorCode.INVALID_API_TOKEN


class ParseDeadline(PictrsError):
    code = ErrorCode.PARSE_DEADLINE


class RequestTimeout(PictrsError):
    code = ErrorCode.REQUEST_TIMEOUT


class InvalidFileExtension(PictrsError):
    code = ErrorCode.INVALID_FILE_EXTENSION


class InvalidProcessPath(PictrsError):
    """pict-rs answers 500 here (a quirk); we answer 400: clients only look at the status class."""

    code = ErrorCode.INVALID_PROCESS_PATH


class AlreadyClaimed(PictrsError):
    """A backgrounded upload that is unknown or was claimed before."""

    code = ErrorCode.ALREADY_CLAIMED


class FailedExternalValidation(PictrsError):
    """``media.external_validation`` refused the upload (answered other than 2xx)."""

    code = ErrorCode.FAILED_EXTERNAL_VALIDATION


class ExternalValidationUnavailable(FailedExternalValidation):
    """``media.external_validation`` did not answer in time or could not be reached: the
    upload is refused all the same, with the server's status (pict-rs answers 500, with
    ``http-client-error``, for these)."""


class UrlNotAllowed(PictrsError):
    """A download or proxy URL this server will not fetch: not http(s), or it leads (at
    first or after a redirect) to an address outside the public internet that
    ``client.allowed_networks`` does not list (``rules/egress.py``). pict-rs has no such
    guard, hence a code of our own."""

    code = ErrorCode.URL_NOT_ALLOWED


class ProxyNotAllowed(PictrsError):
    """A route that takes only an alias was given a proxy URL (``set_not_found``)."""

    code = ErrorCode.PROXY_NOT_ALLOWED


class RouteNotFound(PictrsError):
    """No route has this path: JSON, where pict-rs (actix's default service) sends an
    empty 404, so a client always gets ``{"msg","code"}`` to show."""

    code = ErrorCode.NOT_FOUND


class Unhealthy(PictrsError):
    """A part a request needs is down (``/healthz``); the message names the part, the code
    is the part's own error code."""


# The one table from an error to its status. Looked up along the class's bases, so a
# subclass without an entry answers as its parent does; anything not here is a 500.
STATUS: dict[type[BaseException], int] = {
    PictrsError: 500,
    UploadError: 400,
    NoFiles: 400,
    EmptyFile: 400,
    FileTooLarge: 413,
    DownloadTooLarge: 400,
    BodyTimeout: 408,
    StreamTooSlow: 400,
    ValidationError: 400,
    MediaDisallowed: 400,
    VideoDisabled: 400,
    UnsupportedMedia: 400,
    MediaToolError: 500,
    ToolTimeout: 400,
    ToolFailed: 400,
    VariantTimeout: 500,
    StoreError: 500,
    RepoError: 500,
    ScratchError: 500,
    HttpClientError: 500,
    DownloadFailed: 500,
    AliasNotFound: 404,
    ProxyNotFound: 404,
    InvalidDeleteToken: 403,
    DuplicateAlias: 400,
    InvalidQuery: 400,
    InvalidJson: 400,
    ReadOnly: 400,
    RangeNotSatisfiable: 416,
    InvalidApiToken: 401,
    ParseDeadline: 400,
    RequestTimeout: 408,
    InvalidFileExtension: 400,
    InvalidProcessPath: 400,
    AlreadyClaimed: 400,
    FailedExternalValidation: 400,
    ExternalValidationUnavailable: 500,
    ProxyNotAllowed: 400,
    RouteNotFound: 404,
    UrlNotAllowed: 400,
    Unhealthy: 503,
}


def _journal_error(exc: BaseException) -> bool:
    """A ``journal.JournalError`` (the journal lives in the repo's database: 500
    sqlite-error). Looked up only if the journal is loaded: the engine workers import these
    rules and must not load trio and apsw for it."""
    journal = sys.modules.get("journal")
    return journal is not None and isinstance(exc, journal.JournalError)


def status_of(exc: BaseException) -> int:
    """The HTTP status for ``exc``: its class's entry in ``STATUS``, else its nearest
    base's, else 500 (journal errors included)."""
    for cls in type(exc).__mro__:
        status = STATUS.get(cls)
        if status is not None:
            return status
    return 500


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """pict-rs's error JSON. ``code`` is always an ``ErrorCode`` value (a failed backgrounded
    upload's is read back from the repo as text); its schema, and so GET /openapi.json's,
    lists them all."""

    msg: str
    code: Annotated[str, msgspec.Meta(extra_json_schema={"enum": [c.value for c in ErrorCode]})]


_encode = msgspec.json.Encoder().encode
UNKNOWN = ErrorBody(msg="Request failed", code=str(ErrorCode.UNKNOWN_ERROR))


def error_body(exc: BaseException) -> ErrorBody:
    """pict-rs's ``{"msg", "code"}`` for ``exc``; anything unexpected is "Request failed"
    (its text may hold paths or secrets, so it goes to the log, not to the client)."""
    if isinstance(exc, PictrsError):
        return ErrorBody(msg=exc.msg, code=str(exc.code))
    if _journal_error(exc):
        return ErrorBody(msg="Database error in the job journal", code=str(ErrorCode.SQLITE_ERROR))
    return UNKNOWN


def error_answer(exc: BaseException) -> tuple[int, bytes]:
    """The status and JSON body every path answers ``exc`` with."""
    return status_of(exc), _encode(error_body(exc))
