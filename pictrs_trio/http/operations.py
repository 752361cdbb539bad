"""Every operation the HTTP API answers, as data: what ``GET /openapi.json`` is built from
(``http/openapi.py``). docs/api.md is the prose of the same; pict-rs's routes are in its
``src/lib.rs``.

Paths are the routing modules' own constants where the routing has them (the raw routes of
``http/serve.py``, ``http/upload.py``, ``http/internal_raw.py``); the quart-trio routes are
held to this table by tests/inprocess/test_openapi.py, which walks the app's url_map and raw
route tables and this table both ways. Query keys come from the parsers' own tables
(``rules/query.py``, ``rules/variants.py``). Answers every operation can give (400
parse-deadline, 408, 500; 401 on /internal; 413 where a body is read; the JSON 404 of a
path parameter holding a slash) are added by ``openapi.document``.
"""

from __future__ import annotations

import msgspec

from pictrs_trio.http import image, internal, internal_raw, openapi, serve, upload, wire
from pictrs_trio.http.openapi import Body, Json, Kind, Operation, Param, Reply
from pictrs_trio.rules import query, variants
from pictrs_trio.rules.errors import ErrorCode as C
from pictrs_trio.services.prune import Progress

STRING: Json = {"type": "string"}
URL: Json = {"type": "string", "format": "uri"}
BOOL: Json = {"type": "boolean"}
MEDIA_HEADERS = ("ETag", "Last-Modified", "Cache-Control", "Accept-Ranges")

EXAMPLE_ALIAS = "3f0c9a57-1d2e-4b8a-9c61-0e5f4b2a7d10.jpeg"
EXAMPLE_URL = "https://example.com/cat.jpg"
ALIAS_PATH = Param(
    name="alias",
    where="path",
    says="An alias (file name) of an upload",
    schema=STRING,
    example=EXAMPLE_ALIAS,
)
ALIAS = Param(name="alias", says="An alias of an upload", schema=STRING, example=EXAMPLE_ALIAS)
PROXY = Param(
    name="proxy",
    says="Remote media by URL, taken before alias; see docs/api.md, Media proxy",
    schema=URL,
    example=EXAMPLE_URL,
)
SRC = Param(
    name="src",
    says="The alias to process (taken before alias and proxy)",
    schema=STRING,
    example=EXAMPLE_ALIAS,
)
EXT = Param(
    name="ext",
    where="path",
    says="Output format; 400 invalid-file-extension for any other",
    schema={"type": "string", "enum": sorted(variants.PROCESS_EXTENSIONS)},
    example="webp",
)

_SIZE: Json = {"type": "integer", "minimum": 1, "maximum": variants.MAX_SIZE}
_PART = "([1-9]|1[0-9]|20)"  # 1..MAX_CROP_PART
# Each operation's value: its schema, what it does, an example.
OPERATION_SCHEMAS: dict[str, tuple[Json, str, object]] = {
    "identity": (STRING, "nothing (the value is ignored)", None),
    "thumbnail": (_SIZE, "shrink to fit NxN, nearest-neighbour", 256),
    "resize": (
        {"type": "string", "pattern": r"^([A-Za-z0-9]*\.a*)?\+?0*[1-9][0-9]{0,8}$"},
        "N, FILTER.N, .aN (area) or FILTER.aN: filtered shrink (N at most 65535, or 65535² pixels)",
        "Mitchell.200",
    ),
    "crop": (
        {"type": "string", "pattern": f"^{_PART}x{_PART}$"},
        f"WxH, W and H in 1..{variants.MAX_CROP_PART}: the largest centred region of that aspect",
        "16x9",
    ),
    "blur": (
        {"type": "number", "minimum": 0, "maximum": variants.MAX_SIGMA},
        "Gaussian blur, sigma in pixels",
        2.5,
    ),
}
OPERATIONS_QUERY = tuple(
    Param(
        name=name,
        says=f"{says}; applied in query order (docs/processing.md)",
        schema=schema,
        example=example,
    )
    for name, (schema, says, example) in OPERATION_SCHEMAS.items()
)
LIMITS_QUERY = (
    *(
        Param(
            name=key,
            says="Upload limit (max_file_size in MiB)",
            schema={
                "type": "integer",
                "minimum": 0,
                "maximum": query.LIMIT_MAX.get(key, 2**32 - 1),
            },
        )
        for key in query.LIMIT_INTS
    ),
    *(
        Param(name=key, says="Upload limit (default true)", schema=BOOL)
        for key in query.LIMIT_BOOLS
    ),
)
UPLOAD_QUERY = (*LIMITS_QUERY, *OPERATIONS_QUERY)
READ_HEADERS = tuple(
    Param(name=name, where="header", says=says, schema=STRING)
    for name, says in (
        ("Range", "One bytes= range: 206; several, or another unit: 416"),
        ("If-Match", "Strong comparison with the ETag; no match: 412"),
        ("If-None-Match", "Weak comparison with the ETag; a match: 304"),
        ("If-Modified-Since", "An HTTP-date; not modified since: 304"),
        ("If-Unmodified-Since", "An HTTP-date; modified since: 412"),
        ("If-Range", "An ETag or HTTP-date: the Range applies only when it matches"),
    )
)


def reply(
    status: int,
    says: str,
    *bodies: Body,
    codes: tuple[C, ...] = (),
    headers: tuple[str, ...] = (),
) -> Reply:
    return Reply(status=status, says=says, bodies=bodies, codes=codes, headers=headers)


def op(
    route: str,
    id: str,
    summary: str,
    *replies: Reply,
    params: tuple[Param, ...] = (),
    files: bool = False,
    json_body: type[msgspec.Struct] | None = None,
) -> Operation:
    """``route`` is "METHOD /path"; the tag is set by ``tagged``."""
    method, path = route.split(" ")
    return Operation(
        method=method.lower(),
        path=path,
        id=id,
        tag="",
        summary=summary,
        replies=replies,
        params=params,
        files=files,
        json_body=json_body,
        internal=path.startswith("/internal/"),
    )


def tagged(tag: str, *ops: Operation | list[Operation]) -> list[Operation]:
    flat = [o for each in ops for o in (each if isinstance(each, list) else [each])]
    return [msgspec.structs.replace(o, tag=tag) for o in flat]


BAD_PROCESS = (C.INVALID_QUERY, C.INVALID_FILE_EXTENSION, C.INVALID_PROCESS_PATH, C.URL_NOT_ALLOWED)
BAD_QUERY = reply(
    400, "A bad query", Kind.ERROR, codes=(C.INVALID_QUERY, C.URL_NOT_ALLOWED, C.READ_ONLY)
)
NO_ALIAS = reply(
    404, "No such alias or proxy URL", Kind.ERROR, codes=(C.ALIAS_NOT_FOUND, C.PROXY_NOT_FOUND)
)
INGEST_FAILED = reply(
    400,
    "A file was refused (format, limits, external validation) or the request is malformed",
    Kind.ERROR,
    codes=(
        C.FILE_UPLOAD_ERROR,
        C.VALIDATE_NO_FILES,
        C.VALIDATE_FILE_EMPTY,
        C.VALIDATE_WIDTH,
        C.VALIDATE_HEIGHT,
        C.VALIDATE_AREA,
        C.VALIDATE_FRAMES,
        C.MEDIA_DISALLOWED,
        C.VIDEO_DISABLED,
        C.COMMAND_FAILURE,
        C.INVALID_PROCESS_PATH,
        C.INVALID_QUERY,
        C.FAILED_EXTERNAL_VALIDATION,
        C.READ_ONLY,
    ),
)


READ_REPLIES = (
    reply(200, "The file", Kind.MEDIA, headers=MEDIA_HEADERS),
    reply(206, "One range of the file", Kind.MEDIA, headers=(*MEDIA_HEADERS, "Content-Range")),
    reply(303, "Served from the store's public endpoint", Kind.EMPTY, headers=("Location",)),
    reply(304, "Not modified (If-None-Match, If-Modified-Since)", Kind.EMPTY),
    reply(
        400,
        "A bad query or operation, or a proxy URL that could not be downloaded",
        Kind.ERROR,
        codes=(*BAD_PROCESS, C.READ_ONLY, C.VALIDATE_FILE_SIZE, C.STREAM_TOO_SLOW),
    ),
    reply(
        404,
        "Unknown: empty, or (GET, once set) the not-found image, or proxy-not-found (HEAD)",
        Kind.EMPTY,
        Kind.MEDIA,
        Kind.ERROR,
        codes=(C.PROXY_NOT_FOUND,),
    ),
    reply(412, "A precondition failed (If-Match, If-Unmodified-Since)", Kind.EMPTY),
    reply(
        416,
        "No such range (empty), or several ranges or another unit",
        Kind.EMPTY,
        Kind.ERROR,
        codes=(C.RANGE_NOT_SATISFIABLE,),
    ),
)


def _reads(path: str, id: str, summary: str, *params: Param) -> list[Operation]:
    """GET and HEAD of stored media (``http/serve.py``, ``http/read.py``)."""
    every = (*params, *READ_HEADERS)
    return [
        op(f"{m} {path}", f"{id}_{m.lower()}", summary, *READ_REPLIES, params=every)
        for m in ("GET", "HEAD")
    ]


UPLOADED = reply(201, "Stored; one entry per file", wire.UploadResponse)
QUEUED = reply(202, "Stored raw; claim each upload id", wire.UploadsResponse)
DETAILS = reply(200, "The details", wire.WireDetails)
READ_ONLY = reply(400, "Read-only mode", Kind.ERROR, codes=(C.READ_ONLY,))
BY_ALIAS = (ALIAS, PROXY)
PROCESS_QUERY = (EXT, SRC, *BY_ALIAS, *OPERATIONS_QUERY)
UPLOAD_ID = Param(
    name="upload_id",
    says="From the 202",
    schema={"type": "string", "format": "uuid"},
    example="0d2c7d3e-5b7e-4f53-9a49-0f1f3f1f9d10",
)
DELETE = (Param(name="token", where="path", says="The delete token", schema=STRING), ALIAS_PATH)
HASHES = (
    Param(name="slug", says="Start at this file (from a page)", schema=STRING),
    Param(
        name="timestamp",
        says="Start before this time (RFC 3339; wins over slug)",
        schema={"type": "string", "format": "date-time"},
        example="2024-06-25T15:34:41Z",
    ),
    Param(
        name="limit",
        says="Files per page (default 20)",
        schema={"type": "integer", "minimum": 0, "maximum": internal.MAX_PAGE_LIMIT},
        example=internal.DEFAULT_PAGE_LIMIT,
    ),
)
DOWNLOAD = (
    Param(
        name="url",
        says="What to fetch (http or https)",
        schema=URL,
        required=True,
        example=EXAMPLE_URL,
    ),
    Param(name="backgrounded", says="Queue it as a backgrounded upload", schema=BOOL),
    *UPLOAD_QUERY,
)

OPERATIONS: tuple[Operation, ...] = (
    *tagged(
        "uploads",
        op(
            f"POST {upload.UPLOAD}",
            "upload",
            "Upload media",
            UPLOADED,
            INGEST_FAILED,
            files=True,
            params=UPLOAD_QUERY,
        ),
        op(
            f"POST {upload.BACKGROUNDED}",
            "upload_backgrounded",
            "Upload; a job ingests it",
            QUEUED,
            INGEST_FAILED,
            files=True,
            params=UPLOAD_QUERY,
        ),
        op(
            "GET /image/backgrounded/claim",
            "claim",
            "Claim a backgrounded upload (waits 10 s)",
            reply(200, "Ingested; the record is gone now", wire.UploadResponse),
            reply(204, "Not done yet", Kind.EMPTY),
            reply(
                400,
                "Unknown, already claimed, or not a UUID",
                Kind.ERROR,
                codes=(C.ALREADY_CLAIMED, C.INVALID_QUERY),
            ),
            reply(422, "The ingest failed: its error", Kind.ERROR),
            params=(UPLOAD_ID,),
        ),
        op(
            "GET /image/download",
            "download",
            "Download a URL and ingest it",
            UPLOADED,
            QUEUED,
            reply(
                400,
                "A bad URL or query, or the download was refused",
                Kind.ERROR,
                codes=(C.URL_NOT_ALLOWED, C.STREAM_TOO_SLOW, *INGEST_FAILED.codes),
            ),
            reply(
                500,
                "The remote failed or answered other than 2xx",
                Kind.ERROR,
                codes=(C.DOWNLOAD_FILE_ERROR, C.HTTP_CLIENT_ERROR),
            ),
            params=DOWNLOAD,
        ),
    ),
    *tagged(
        "media",
        _reads(serve.ORIGINAL_PATH + "{alias}", "original", "Serve an original", ALIAS_PATH),
        _reads(
            serve.ORIGINAL_QUERY,
            "original_query",
            "Serve an original by alias or proxy URL (a new URL is downloaded on GET)",
            *BY_ALIAS,
        ),
        op(
            "GET /image/details/original/{alias}",
            "details",
            "Details of an original",
            DETAILS,
            READ_ONLY,
            reply(404, "No such alias", Kind.ERROR, codes=(C.ALIAS_NOT_FOUND,)),
            params=(ALIAS_PATH,),
        ),
        op(
            "GET /image/details/original",
            "details_query",
            "Details by alias or proxy URL",
            DETAILS,
            BAD_QUERY,
            NO_ALIAS,
            params=BY_ALIAS,
        ),
        op(
            "GET /image/blurhash",
            "blurhash",
            "BlurHash of an original (proxy: downloaded)",
            reply(200, "The blurhash", image.Blurhash),
            BAD_QUERY,
            NO_ALIAS,
            params=BY_ALIAS,
        ),
        *(
            op(
                f"{m} /image/delete/{{token}}/{{alias}}",
                f"delete_{m.lower()}",
                "Delete an alias with its delete token",
                reply(204, "Deleted, or no such alias", Kind.EMPTY),
                READ_ONLY,
                reply(403, "Not the alias's token", Kind.ERROR, codes=(C.INVALID_DELETE_TOKEN,)),
                params=DELETE,
            )
            for m in ("GET", "DELETE")
        ),
    ),
    *tagged(
        "variants",
        _reads(
            serve.PROCESS + "{ext}",
            "process",
            "Serve a variant, rendered on the first GET",
            *PROCESS_QUERY,
        ),
        op(
            "GET /image/process_backgrounded.{ext}",
            "process_backgrounded",
            "Queue the rendering of a variant",
            reply(202, "Queued, or rendered already", Kind.EMPTY),
            reply(
                400,
                "A bad query (error JSON), or no such alias (empty)",
                Kind.EMPTY,
                Kind.ERROR,
                codes=(*BAD_PROCESS, C.READ_ONLY),
            ),
            reply(404, "No such proxy URL", Kind.EMPTY),
            params=PROCESS_QUERY,
        ),
        op(
            "GET /image/details/process.{ext}",
            "process_details",
            "Details of a variant",
            DETAILS,
            reply(400, "A bad query", Kind.ERROR, codes=BAD_PROCESS),
            reply(
                404,
                "Not rendered yet, or no such alias or proxy URL",
                Kind.ERROR,
                codes=(C.ALIAS_NOT_FOUND, C.PROXY_NOT_FOUND),
            ),
            params=PROCESS_QUERY,
        ),
    ),
    *tagged(
        "internal",
        op(
            f"POST {internal_raw.IMPORT}",
            "import",
            "Upload, the part's file name the alias",
            UPLOADED,
            reply(
                400,
                "As POST /image, or a file name unfit for an alias",
                Kind.ERROR,
                codes=(*INGEST_FAILED.codes, C.DUPLICATE_ALIAS),
            ),
            files=True,
            params=UPLOAD_QUERY,
        ),
        op(
            f"POST {internal_raw.SET_NOT_FOUND}",
            "set_not_found",
            "Set the image served in place of unknown aliases",
            reply(201, "Set", internal.Ok),
            reply(
                400,
                "Not that JSON, a proxy URL, or read-only",
                Kind.ERROR,
                codes=(C.INVALID_JSON, C.PROXY_NOT_ALLOWED, C.READ_ONLY),
            ),
            reply(404, "No such alias", Kind.ERROR, codes=(C.ALIAS_NOT_FOUND,)),
            json_body=internal_raw.AliasBody,
            params=BY_ALIAS,
        ),
        op(
            "DELETE /internal/variants",
            "delete_variants",
            "Remove every variant (a job)",
            reply(204, "Queued", Kind.EMPTY),
            READ_ONLY,
        ),
        op(
            "POST /internal/delete",
            "delete_alias",
            "Remove an alias without its token",
            reply(200, "Removed", internal.Ok),
            BAD_QUERY,
            reply(
                404,
                "No such alias (empty), or no such proxy URL",
                Kind.EMPTY,
                Kind.ERROR,
                codes=(C.ALIAS_NOT_FOUND, C.PROXY_NOT_FOUND),
            ),
            params=BY_ALIAS,
        ),
        op(
            "POST /internal/purge",
            "purge",
            "Remove a file and all its aliases",
            reply(200, "The aliases removed", internal.Aliases),
            BAD_QUERY,
            NO_ALIAS,
            params=BY_ALIAS,
        ),
        op(
            "GET /internal/aliases",
            "aliases",
            "Every alias of a file",
            reply(200, "The aliases (none for an unknown alias)", internal.Aliases),
            BAD_QUERY,
            NO_ALIAS,
            params=BY_ALIAS,
        ),
        op(
            "GET /internal/identifier",
            "identifier",
            "Where the store keeps a file",
            reply(200, "The identifier", internal.Identifier),
            BAD_QUERY,
            NO_ALIAS,
            params=BY_ALIAS,
        ),
        op(
            "GET /internal/jobs",
            "jobs",
            "The job journal (pictrs-trio only)",
            reply(200, "Counts per queue and status, and dead jobs", internal.JobsReport),
        ),
        op(
            "GET /internal/hashes",
            "hashes",
            "A page of stored files, newest first",
            reply(200, "The page", internal.Page),
            BAD_QUERY,
            params=HASHES,
        ),
        op(
            "POST /internal/prune_missing",
            "prune_missing",
            "Forget files gone from the store",
            reply(200, "The progress before this call", Progress),
            BAD_QUERY,
            params=(Param(name="force", says="Start a new walk", schema=BOOL),),
        ),
        op(
            "GET /internal/prune_missing",
            "prune_missing_progress",
            "Progress of the prune walk (pictrs-trio only)",
            reply(200, "The progress", Progress),
        ),
        op(
            "POST /internal/export",
            "export",
            "A copy of the database in repo.export_path",
            reply(201, "Written; export is the folder's name", internal.Exported),
        ),
    ),
    *tagged(
        "server",
        op(
            "GET /healthz",
            "healthz",
            "Whether every part a request needs works",
            reply(200, "Healthy", Kind.EMPTY),
            reply(503, "A part is down: the message names it, the code is its own", Kind.ERROR),
        ),
        op(
            f"GET {openapi.PATH}",
            "openapi",
            "This document",
            reply(200, "The OpenAPI 3.1 document", Kind.DOCUMENT),
        ),
    ),
)
