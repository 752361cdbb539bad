"""``GET /openapi.json``: an OpenAPI 3.1 document of the HTTP API, built once at start-up.

The document is made from two things the server itself uses, so it cannot drift from them:

- the msgspec Structs every JSON answer is encoded from (``http/wire.py``, the routes' own
  Structs, and ``rules/errors.py``'s ``ErrorBody``), turned into component schemas by
  ``msgspec.json.schema_components`` (JSON Schema 2020-12, which OpenAPI 3.1 uses as is);
- the table of operations in ``http/operations.py``, whose paths are the routing modules'
  own constants and which tests/inprocess/test_openapi.py holds against the routes the app
  answers, both ways.

``document(operations)`` is pure; ``encode_document`` is what ``create_app`` stores on the
Quart app, and the route serves those bytes without building anything per request.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Iterable
from typing import cast

import msgspec
from quart import Blueprint, Response, current_app

from pictrs_trio.rules.errors import ErrorBody, ErrorCode

PATH = "/openapi.json"
EXTENSION_KEY = "pictrs_trio.openapi"
REF = "#/components/schemas/{name}"
API_KEY_HEADER = "X-Api-Token"

# A JSON Schema (or OpenAPI object) as plain data.
Json = dict[str, object]


class Kind(enum.StrEnum):
    """Bodies that are not a Struct's JSON."""

    EMPTY = "empty"  # no body (pict-rs's bodiless 202, 204 and some 400/404)
    MEDIA = "media"  # a stored file's bytes, with its own Content-Type
    ERROR = "error"  # the error JSON, ``ErrorBody``
    DOCUMENT = "document"  # this document


Body = type[msgspec.Struct] | Kind


class Param(msgspec.Struct, frozen=True, kw_only=True):
    """A path, query or header parameter."""

    name: str
    says: str
    schema: Json
    where: str = "query"
    required: bool = False
    example: object = None


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    """One status an operation answers, and the bodies it can carry. A status whose body may
    be empty or something else documents no content: OpenAPI cannot say "maybe a body"."""

    status: int
    says: str
    bodies: tuple[Body, ...]
    codes: tuple[ErrorCode, ...] = ()  # the error codes this route answers with the status
    headers: tuple[str, ...] = ()  # headers always sent with it, names in RESPONSE_HEADERS


class Operation(msgspec.Struct, frozen=True, kw_only=True):
    method: str  # lower case, as OpenAPI keys operations
    path: str  # an OpenAPI path template
    id: str
    summary: str
    tag: str
    params: tuple[Param, ...] = ()
    replies: tuple[Reply, ...] = ()
    json_body: type[msgspec.Struct] | None = None  # an optional JSON request body
    files: bool = False  # a multipart body of ``images[]`` file parts
    internal: bool = False  # behind X-Api-Token


# Response headers a reply can promise, always sent with it.
RESPONSE_HEADERS = {
    "Location": "Where the store serves the file (object storage's public_endpoint)",
    "Content-Range": "The span sent: bytes START-END/LENGTH",
    "ETag": "Strong entity tag of the stored file (pictrs-trio's addition)",
    "Last-Modified": "Upload time of the original, render time of a variant",
    "Cache-Control": "public, max-age=604800, immutable",
    "Accept-Ranges": "bytes",
}

# Answers every operation can give: the deadline header (parse-deadline, request-timeout),
# a body arriving too slowly (stream-too-slow), and failures of the server's own parts.
COMMON = (
    Reply(
        status=400,
        says="A malformed X-Request-Deadline",
        bodies=(Kind.ERROR,),
        codes=(ErrorCode.PARSE_DEADLINE,),
    ),
    Reply(
        status=408,
        says="X-Request-Deadline passed, or the request body arrived too slowly",
        bodies=(Kind.ERROR,),
        codes=(ErrorCode.REQUEST_TIMEOUT, ErrorCode.STREAM_TOO_SLOW),
    ),
    Reply(
        status=500,
        says="The repo, the store, a media tool or a remote server failed",
        bodies=(Kind.ERROR,),
    ),
)
INTERNAL = Reply(
    status=401,
    says="No X-Api-Token, or not the configured server.api_key",
    bodies=(Kind.ERROR,),
    codes=(ErrorCode.INVALID_API_TOKEN,),
)
SLASHED = Reply(
    status=404,
    says="A path parameter holding a slash: no such route",
    bodies=(Kind.ERROR,),
    codes=(ErrorCode.NOT_FOUND,),
)
TOO_LARGE = Reply(
    status=413,
    says="The body is over what the route takes (declared or received)",
    bodies=(Kind.ERROR,),
    codes=(ErrorCode.VALIDATE_FILE_SIZE,),
)

DEADLINE = {
    "name": "X-Request-Deadline",
    "in": "header",
    "required": False,
    "description": (
        "Absolute deadline in nanoseconds since the Unix epoch (pict-rs's header): no answer "
        "begun by then is 408 request-timeout; not an integer, 400 parse-deadline."
    ),
    "schema": {"type": "string", "pattern": "^[+-]?[0-9]+$"},
}

INFO = (
    "pict-rs 0.5's HTTP API as pictrs-trio answers it (docs/api.md). Every error is "
    '`{"msg","code"}` JSON; clients should rely on the status, not on `msg`. The WebSocket '
    "`/internal/events` (docs/api.md, Live events) is not described here: OpenAPI describes "
    "HTTP exchanges."
)

TAGS = (
    ("uploads", "Uploads, downloads and claims of backgrounded uploads"),
    ("media", "Stored originals: the file, its details, its blurhash, deleting it"),
    ("variants", "Processed variants of a stored original"),
    ("internal", f"Admin routes, behind {API_KEY_HEADER}"),
    ("server", "Health and this document"),
)


def _struct_types(operations: Iterable[Operation]) -> list[type[msgspec.Struct]]:
    found: list[type[msgspec.Struct]] = [ErrorBody]
    for op in operations:
        bodies = [b for r in op.replies for b in r.bodies]
        for t in [*bodies, op.json_body]:
            if isinstance(t, type) and t not in found:
                found.append(t)
    return found


def _json(schema: Json) -> Json:
    return {"application/json": {"schema": schema}}


def _content(bodies: tuple[Body, ...], refs: dict[type[msgspec.Struct], Json]) -> Json | None:
    """The ``content`` of a reply, or None when its body may be empty."""
    if Kind.EMPTY in bodies:
        return None
    content: Json = {}
    for body in bodies:
        if body is Kind.MEDIA:
            content["image/*"] = {}
            content["video/*"] = {}
        elif body is Kind.ERROR:
            content.update(_json(refs[ErrorBody]))
        elif body is Kind.DOCUMENT:
            content.update(_json({"type": "object"}))
        elif isinstance(body, type):
            content.update(_json(refs[body]))
    return content


def _merge(replies: Iterable[Reply]) -> dict[int, Reply]:
    """One reply per status: an operation's own first, the common ones added to it."""
    merged: dict[int, Reply] = {}
    for reply in replies:
        had = merged.get(reply.status)
        if had is None:
            merged[reply.status] = reply
            continue
        merged[reply.status] = Reply(
            status=reply.status,
            says=f"{had.says}; {reply.says[:1].lower()}{reply.says[1:]}",
            bodies=(*had.bodies, *(b for b in reply.bodies if b not in had.bodies)),
            codes=(*had.codes, *(c for c in reply.codes if c not in had.codes)),
            headers=(*had.headers, *(h for h in reply.headers if h not in had.headers)),
        )
    return merged


def _reply(reply: Reply, refs: dict[type[msgspec.Struct], Json]) -> Json:
    says = reply.says
    if reply.codes:
        says += " (code: " + ", ".join(f"`{c}`" for c in reply.codes) + ")"
    if Kind.EMPTY in reply.bodies and len(set(reply.bodies)) > 1:
        kinds = ", ".join(sorted(_body_name(b) for b in reply.bodies if b is not Kind.EMPTY))
        says += f". The body is empty or: {kinds}"
    out: Json = {"description": says}
    content = _content(reply.bodies, refs)
    if content:
        out["content"] = content
    if reply.headers:
        out["headers"] = {
            name: {
                "description": RESPONSE_HEADERS[name],
                "required": True,
                "schema": {"type": "string"},
            }
            for name in reply.headers
        }
    return out


def _body_name(body: Body) -> str:
    if isinstance(body, Kind):
        return {Kind.MEDIA: "the media file", Kind.ERROR: "the error JSON"}.get(body, body.value)
    return body.__name__


def _param(p: Param) -> Json:
    out: Json = {"name": p.name, "in": p.where, "description": p.says, "schema": p.schema}
    if p.required or p.where == "path":
        out["required"] = True
    if p.example is not None:
        out["example"] = p.example
    return out


def _operation(op: Operation, refs: dict[type[msgspec.Struct], Json]) -> Json:
    extra: tuple[Reply, ...] = (INTERNAL,) if op.internal else ()
    if op.files or op.json_body is not None:
        extra += (TOO_LARGE,)
    if "{" in op.path:
        extra += (SLASHED,)
    replies = _merge((*op.replies, *extra, *COMMON))
    out: Json = {
        "operationId": op.id,
        "summary": op.summary,
        "tags": [op.tag],
        "parameters": [
            *(_param(p) for p in op.params),
            {"$ref": "#/components/parameters/RequestDeadline"},
        ],
    }
    if op.files:
        out["requestBody"] = {
            "required": True,
            "content": {"multipart/form-data": _multipart()},
        }
    elif op.json_body is not None:
        out["requestBody"] = {"required": False, "content": _json(refs[op.json_body])}
    out["responses"] = {str(s): _reply(replies[s], refs) for s in sorted(replies)}
    if op.internal:
        out["security"] = [{"ApiToken": []}]
    return out


def _multipart() -> Json:
    files = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}
    return {
        "schema": {
            "type": "object",
            "properties": {
                "images[]": {
                    "description": (
                        "One part per file (at most server.max_file_count); the format is "
                        "read from the bytes, never from the part's name or Content-Type"
                    ),
                    "type": "array",
                    "items": files,
                    "minItems": 1,
                }
            },
            "required": ["images[]"],
        },
        "encoding": {"images[]": {"contentType": "application/octet-stream"}},
    }


def document(operations: Iterable[Operation], version: str) -> Json:
    """The OpenAPI 3.1 document of ``operations``."""
    operations = list(operations)
    types = _struct_types(operations)
    schemas, components = msgspec.json.schema_components(types, ref_template=REF)
    for component in components.values():  # msgspec keeps a docstring's indentation
        if "description" in component:
            component["description"] = inspect.cleandoc(component["description"])
    refs = dict(zip(types, cast(list[Json], schemas), strict=True))
    paths: dict[str, Json] = {}
    for op in operations:
        item = paths.setdefault(op.path, {})
        if op.method in item:
            raise ValueError(f"{op.method.upper()} {op.path} is described twice")
        item[op.method] = _operation(op, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "pictrs-trio", "version": version, "description": INFO},
        "tags": [{"name": n, "description": d} for n, d in TAGS],
        "paths": paths,
        "components": {
            "schemas": components,
            "parameters": {"RequestDeadline": DEADLINE},
            "securitySchemes": {
                "ApiToken": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER}
            },
        },
    }


def encode_document(operations: Iterable[Operation], version: str) -> bytes:
    return msgspec.json.encode(document(operations, version))


bp = Blueprint("openapi", __name__)


@bp.get(PATH)
async def openapi() -> Response:
    """The document ``create_app`` built; no API key needed."""
    body = cast(bytes, current_app.extensions[EXTENSION_KEY])
    return Response(body, status=200, content_type="application/json")
