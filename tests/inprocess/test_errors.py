"""Every error code: its status and the body's shape through the one error map, and, for
the codes a client can provoke, the whole way through the app."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import msgspec
import pytest

from journal import JournalError
from pictrs_trio.rules import errors as e
from pictrs_trio.rules.errors import ErrorCode as C
from tests.inprocess.conftest import upload

# code -> (an error carrying it, the status pict-rs answers it with: src/error.rs)
EVERY_CODE: dict[C, tuple[BaseException, int]] = {
    C.COMMAND_TIMEOUT: (e.ToolTimeout("ffmpeg timed out"), 400),
    C.COMMAND_ERROR: (e.MediaToolError("engine worker died"), 500),
    C.COMMAND_FAILURE: (e.UnsupportedMedia("not an image"), 400),
    C.COMMAND_NOT_FOUND: (e.ToolMissing("ffmpeg not found"), 500),
    C.COMMAND_PERMISSION_DENIED: (
        e.ToolMissing("ffmpeg not executable", code=C.COMMAND_PERMISSION_DENIED), 500),
    C.NOT_FOUND: (e.StoreNotFound("no file"), 500),
    C.FILE_IO_ERROR: (e.StoreError("disk full"), 500),
    C.FILE_EXISTS: (e.StoreError("exists", code=C.FILE_EXISTS), 500),
    C.OBJECT_REQUEST_ERROR: (e.StoreError("bucket", code=C.OBJECT_REQUEST_ERROR), 500),
    C.OBJECT_IO_ERROR: (e.StoreError("object", code=C.OBJECT_IO_ERROR), 500),
    C.PANIC: (e.PictrsError("task died", code=C.PANIC), 500),
    C.ALREADY_CLAIMED: (e.AlreadyClaimed("claimed"), 400),
    C.SQLITE_ERROR: (e.RepoError("locked"), 500),
    C.EXTRACT_DETAILS: (e.RepoError("bad details", code=C.EXTRACT_DETAILS), 500),
    C.FILE_UPLOAD_ERROR: (e.UploadError("not multipart"), 400),
    C.IO_ERROR: (e.ScratchError("temporary_directory /t: cannot write there"), 500),
    C.VALIDATE_WIDTH: (e.ValidationError("wide", code=C.VALIDATE_WIDTH), 400),
    C.VALIDATE_HEIGHT: (e.ValidationError("tall", code=C.VALIDATE_HEIGHT), 400),
    C.VALIDATE_AREA: (e.ValidationError("big", code=C.VALIDATE_AREA), 400),
    C.VALIDATE_FRAMES: (e.ValidationError("long", code=C.VALIDATE_FRAMES), 400),
    C.VALIDATE_FILE_EMPTY: (e.EmptyFile("empty"), 400),
    C.VALIDATE_FILE_SIZE: (e.FileTooLarge("large"), 413),
    C.VIDEO_DISABLED: (e.VideoDisabled("no video"), 400),
    C.MEDIA_DISALLOWED: (e.MediaDisallowed("no images"), 400),
    C.HTTP_CLIENT_ERROR: (e.HttpClientError("refused"), 500),
    C.DOWNLOAD_FILE_ERROR: (e.DownloadFailed("remote 404"), 500),
    C.READ_ONLY: (e.ReadOnly("read-only"), 400),
    C.INVALID_FILE_EXTENSION: (e.InvalidFileExtension("bmp"), 400),
    C.INVALID_PROCESS_PATH: (e.InvalidProcessPath("resize=x"), 400),
    C.VALIDATE_NO_FILES: (e.NoFiles("no files"), 400),
    C.PROXY_NOT_FOUND: (e.ProxyNotFound("never proxied"), 404),
    C.ALIAS_NOT_FOUND: (e.AliasNotFound("no alias"), 404),
    C.LOST_FILE: (e.StoreError("lost", code=C.LOST_FILE), 500),
    C.INVALID_DELETE_TOKEN: (e.InvalidDeleteToken("wrong token"), 403),
    C.DUPLICATE_ALIAS: (e.DuplicateAlias("taken"), 400),
    C.RANGE_NOT_SATISFIABLE: (e.RangeNotSatisfiable("two ranges"), 416),
    C.STREAM_TOO_SLOW: (e.StreamTooSlow("remote too slow"), 400),
    C.UNKNOWN_ERROR: (RuntimeError("/secret/path"), 500),
    C.FAILED_EXTERNAL_VALIDATION: (e.FailedExternalValidation("refused"), 400),
    C.INVALID_QUERY: (e.InvalidQuery("bad query"), 400),
    C.INVALID_JSON: (e.InvalidJson("bad json"), 400),
    C.INVALID_API_TOKEN: (e.InvalidApiToken("no key"), 401),
    C.PARSE_DEADLINE: (e.ParseDeadline("not a number"), 400),
    C.REQUEST_TIMEOUT: (e.RequestTimeout("deadline"), 408),
    C.PROXY_NOT_ALLOWED: (e.ProxyNotAllowed("alias only"), 400),
    C.URL_NOT_ALLOWED: (e.UrlNotAllowed("loopback"), 400),
    C.MIGRATING: (e.Unhealthy("migrate-store runs", code=C.MIGRATING), 503),
}  # fmt: skip

# The same code, another kind, another status (pict-rs picks it by kind).
SECOND_STATUS = [
    (e.VariantTimeout("waited 35 s"), "command-timeout", 500),
    (e.DownloadTooLarge("remote body"), "validate-file-size", 400),
    (e.BodyTooLarge("request body"), "validate-file-size", 413),
    (e.BodyTimeout("trickle"), "stream-too-slow", 408),
    (e.EngineBusy("no worker free"), "command-timeout", 500),
    (e.RouteNotFound("no such route"), "not-found", 404),
    (e.ToolFailed("exit 1"), "command-failure", 400),
    (e.Unhealthy("store: not writable", code=C.FILE_IO_ERROR), "file-io-error", 503),
    (JournalError("database is locked"), "sqlite-error", 500),
    (e.ExternalValidationUnavailable("no answer"), "failed-external-validation", 500),
]


class Body(msgspec.Struct, forbid_unknown_fields=True):
    msg: str
    code: str


def test_the_table_covers_every_code() -> None:
    assert set(EVERY_CODE) == set(C)


@pytest.mark.parametrize("code", list(C))
def test_every_code_has_its_status_and_shape(code: C) -> None:
    error, status = EVERY_CODE[code]
    got_status, body = e.error_answer(error)
    parsed = msgspec.json.decode(body, type=Body)
    assert (got_status, parsed.code) == (status, str(code))
    if isinstance(error, e.PictrsError):
        assert parsed.msg == error.msg
    else:
        assert parsed.msg == "Request failed"  # an unexpected error's text stays in the log


@pytest.mark.parametrize(("error", "code", "status"), SECOND_STATUS)
def test_one_code_two_statuses(error: BaseException, code: str, status: int) -> None:
    got_status, body = e.error_answer(error)
    assert (got_status, msgspec.json.decode(body, type=Body).code) == (status, code)


async def test_codes_a_client_provokes(client: httpx.AsyncClient, samples: dict[str, Path]) -> None:
    """Through the app: each request answered with its pict-rs code and status."""
    png = samples["test.png"].read_bytes()
    alias = (await upload(client, samples["test.png"])).json()["files"][0]["file"]
    past = {"X-Request-Deadline": str(time.time_ns() - 10**9)}
    cases: list[tuple[dict[str, object], int, str]] = [
        (dict(method="POST", url="/image", content=b"plain", headers={"content-type": "x/y"}),
         400, "file-upload-error"),
        (dict(method="POST", url="/image", files={"other": ("a.txt", b"x")}), 400,
         "validate-no-files"),
        (dict(method="POST", url="/image", files={"images[]": ("e.png", b"")}), 400,
         "validate-file-empty"),
        (dict(method="POST", url="/image", files={"images[]": ("r.png", b"\x00" * 999)}), 400,
         "command-failure"),
        (dict(method="POST", url="/image?max_width=10", files={"images[]": ("a.png", png)}),
         400, "validate-width"),
        (dict(method="POST", url="/image?allow_image=false", files={"images[]": ("a.png", png)}),
         400, "media-disallowed"),
        (dict(method="POST", url="/image?max_file_size=0", files={"images[]": ("a.png", png)}),
         413, "validate-file-size"),
        (dict(method="POST", url="/image", files={"images[]": ("a.png", png)}, headers=past),
         408, "request-timeout"),
        (dict(method="GET", url="/healthz", headers={"X-Request-Deadline": "soon"}), 400,
         "parse-deadline"),
        (dict(method="GET", url="/image/backgrounded/claim?upload_id="
              "00000000-0000-0000-0000-000000000000"), 400, "already-claimed"),
        (dict(method="DELETE", url=f"/image/delete/wrong/{alias}"), 403, "invalid-delete-token"),
        (dict(method="GET", url=f"/image/original/{alias}", headers={"Range": "bytes=0-1,4-5"}),
         416, "range-not-satisfiable"),
        (dict(method="GET", url="/image/download?url=http://127.0.0.1:9/x.png"), 400,
         "url-not-allowed"),
        (dict(method="GET", url="/image/original?proxy=ftp://example.com/x.png"), 400,
         "url-not-allowed"),
    ]  # fmt: skip
    for request, status, code in cases:
        r = await client.request(**request)  # type: ignore[arg-type]
        assert (r.status_code, r.json()["code"]) == (status, code), request
        msgspec.json.decode(r.content, type=Body)
