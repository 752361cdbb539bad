"""The error tree and the one place that maps an exception to an HTTP answer.

    PictrsError                      every error a client may see; has .code and .status
    ├── UploadError                  multipart problems            file-upload-error   400
    ├── NoFiles                      no images[] part              validate-no-files   400
    ├── EmptyFile                    zero bytes                    validate-file-empty 400
    ├── FileTooLarge                 over a size limit             validate-file-size  413/400
    ├── ValidationError              width/height/area/frames      validate-*          400
    ├── MediaDisallowed / VideoDisabled                            400
    ├── UnsupportedMedia             bytes are not a format we take command-failure   400
    ├── MediaToolError               an external tool failed       command-*           400/500
    ├── StoreError                   a store backend failed        file-io-error ...   500
    ├── RepoError                    a repo backend failed         sqlite-error        500
    ├── HttpClientError / DownloadFailed  outbound download failed http-client-error /
    │                                                              download-file-error 500
    ├── AliasNotFound, ProxyNotFound, InvalidDeleteToken, ...
    └── DeadlineError / RequestTimeout                             parse-deadline 400 / 408

Lower layers raise their own subclass; ``error_response`` alone turns any exception into
``(status, {"msg": ..., "code": ...})`` the way pict-rs's ``src/error.rs`` does.
"""

from __future__ import annotations

import enum

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


class PictrsError(Exception):
    """Base of every error with a pict-rs code. Subclasses set ``code`` and ``status``."""

    code: ErrorCode = ErrorCode.UNKNOWN_ERROR
    status: int = 500

    def __init__(self, msg: str, *, code: ErrorCode | None = None, status: int | None = None):
        super().__init__(msg)
        self.msg = msg
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class UploadError(PictrsError):
    """Malformed multipart, too many files, a part without filename."""

    code = ErrorCode.FILE_UPLOAD_ERROR
    status = 400


class NoFiles(PictrsError):
    code = ErrorCode.VALIDATE_NO_FILES
    status = 400


class EmptyFile(PictrsError):
    code = ErrorCode.VALIDATE_FILE_EMPTY
    status = 400


class FileTooLarge(PictrsError):
    """413 from multipart and per-type limits; downloads pass ``status=400``."""

    code = ErrorCode.VALIDATE_FILE_SIZE
    status = 413


class ValidationError(PictrsError):
    """A dimension or frame limit; ``code`` says which (validate-width, ...)."""

    status = 400


class MediaDisallowed(PictrsError):
    code = ErrorCode.MEDIA_DISALLOWED
    status = 400


class VideoDisabled(PictrsError):
    code = ErrorCode.VIDEO_DISABLED
    status = 400


class UnsupportedMedia(PictrsError):
    """The bytes are not a format pict-rs accepts, or are corrupt/truncated."""

    code = ErrorCode.COMMAND_FAILURE
    status = 400


class MediaToolError(PictrsError):
    """An external tool (ffmpeg, ffprobe, exiftool, the vips worker) failed or timed out."""

    code = ErrorCode.COMMAND_ERROR
    status = 500


class StoreError(PictrsError):
    code = ErrorCode.FILE_IO_ERROR
    status = 500


class StoreNotFound(StoreError):
    """The identifier has no stored bytes."""

    code = ErrorCode.NOT_FOUND


class RepoError(PictrsError):
    code = ErrorCode.SQLITE_ERROR
    status = 500


class HttpClientError(PictrsError):
    """An outbound request (download, proxy) failed before the remote answered."""

    code = ErrorCode.HTTP_CLIENT_ERROR
    status = 500


class DownloadFailed(PictrsError):
    """The remote server answered a download or proxy fetch with a non-2xx status."""

    code = ErrorCode.DOWNLOAD_FILE_ERROR
    status = 500


class AliasNotFound(PictrsError):
    code = ErrorCode.ALIAS_NOT_FOUND
    status = 404


class ProxyNotFound(PictrsError):
    code = ErrorCode.PROXY_NOT_FOUND
    status = 404


class InvalidDeleteToken(PictrsError):
    code = ErrorCode.INVALID_DELETE_TOKEN
    status = 403


class DuplicateAlias(PictrsError):
    code = ErrorCode.DUPLICATE_ALIAS
    status = 400


class InvalidQuery(PictrsError):
    code = ErrorCode.INVALID_QUERY
    status = 400


class InvalidJson(PictrsError):
    code = ErrorCode.INVALID_JSON
    status = 400


class ReadOnly(PictrsError):
    code = ErrorCode.READ_ONLY
    status = 400


class RangeNotSatisfiable(PictrsError):
    code = ErrorCode.RANGE_NOT_SATISFIABLE
    status = 416


class StreamTooSlow(PictrsError):
    code = ErrorCode.STREAM_TOO_SLOW
    status = 400


class InvalidApiToken(PictrsError):
    code = ErrorCode.INVALID_API_TOKEN
    status = 401


class ParseDeadline(PictrsError):
    code = ErrorCode.PARSE_DEADLINE
    status = 400


class RequestTimeout(PictrsError):
    code = ErrorCode.REQUEST_TIMEOUT
    status = 408


class InvalidFileExtension(PictrsError):
    code = ErrorCode.INVALID_FILE_EXTENSION
    status = 400


class InvalidProcessPath(PictrsError):
    """pict-rs answers 500 here (a quirk); we answer 400, which api.md §5.3 allows."""

    code = ErrorCode.INVALID_PROCESS_PATH
    status = 400


class AlreadyClaimed(PictrsError):
    """A backgrounded upload that is unknown or was claimed before."""

    code = ErrorCode.ALREADY_CLAIMED
    status = 400


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    msg: str
    code: str


_encode = msgspec.json.Encoder().encode


def error_response(exc: BaseException) -> tuple[int, bytes]:
    """Status and JSON body for any exception; unknown ones become 500 unknown-error."""
    if isinstance(exc, PictrsError):
        return exc.status, _encode(ErrorBody(msg=exc.msg, code=str(exc.code)))
    return 500, _encode(ErrorBody(msg="Request failed", code=str(ErrorCode.UNKNOWN_ERROR)))
