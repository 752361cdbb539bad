"""GET /openapi.json against the real server: schemathesis generates requests for every
operation of the document (valid ones and hostile ones, from the schema's edges and at
random) and checks each answer: no 5xx, a documented status, a documented content type,
the documented headers, a body that conforms to the documented schema.

What generated data cannot do alone is supplied by hooks, and nothing is excluded:

- URLs (``?proxy=``, ``/image/download?url=``) would be fetched from the internet, which
  tests do not reach (a name that does not resolve is pict-rs's 500 http-client-error):
  every http(s) URL generated is pointed at a local origin serving cat.jpg, so proxies
  and downloads run for real. Other values (no URL, another scheme) are sent as
  generated.
- Aliases: random ones name nothing. The document's example alias, and half the
  generated aliases of reads, name cat.jpg, imported before each operation's run, so
  details, blurhash, variants (with generated operations) and ranges run on a stored file.
  Purge and delete keep their random aliases.
- Upload bodies: schemathesis makes tiny real images for ``format: binary`` parts; half
  the uploads carry cat.jpg instead.
- Extra headers that frame the message (Content-Length, Transfer-Encoding, ...) are
  dropped: HTTP/1.1's parser refuses malformed ones before the app is asked.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pictrs_trio import version
from pictrs_trio.http import openapi, operations
from tests.conftest import shared_media
from tests.e2e.conftest import ALLOW_LOOPBACK, Server
from tests.origin import Origin

pytestmark = pytest.mark.e2e

KEY = "openapi-test-key"
KNOWN = operations.EXAMPLE_ALIAS  # the document's example alias names cat.jpg here
# Per operation and generation mode, in the fuzzing phase (the coverage phase makes its own
# cases). A longer hunt: OPENAPI_FUZZ_EXAMPLES=200, which also draws new cases each run.
MAX_EXAMPLES = int(os.environ.get("OPENAPI_FUZZ_EXAMPLES", "5"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@functools.cache
def cat() -> bytes:
    """The sample photo, read when first needed (not at collection)."""
    return (shared_media() / "cat.jpg").read_bytes()


# Headers that frame the message, which the HTTP/1.1 parser (h11, under hypercorn) judges
# before the app sees a request: a generated "Content-Length: !" gets h11's bare 400.
FRAMING = {"content-length", "transfer-encoding", "host", "connection", "expect", "te", "upgrade"}
# Operations that remove what an alias names: they keep their random aliases.
DESTRUCTIVE = {("POST", "/internal/purge"), ("POST", "/internal/delete")}


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    o = Origin({"cat.jpg": cat()})
    yield o
    o.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("openapi")
    env = {
        "PICTRS__SERVER__API_KEY": KEY,
        "PICTRS__SERVER__MAX_FILE_COUNT": "2",
        "PICTRS__REPO__EXPORT_PATH": str(root / "exports"),
        **ALLOW_LOOPBACK,
    }
    srv = Server(root, env=env).start()
    yield srv
    srv.stop()


@pytest.fixture
def known(live: Server) -> None:
    """cat.jpg under the alias KNOWN, imported again if a generated request removed it (a
    purge or delete given the document's example alias)."""
    with live.client() as client:
        if client.get(f"/image/details/original/{KNOWN}").status_code == 200:
            return
        r = client.post(
            "/internal/import", files={"images[]": (KNOWN, cat())}, headers={"X-Api-Token": KEY}
        )
        assert r.status_code == 201, r.text


def _origin_url(origin: Origin, value: Any) -> Any:
    """An http(s) URL as one on the origin (its path keeps generated URLs apart); anything
    else as it was."""
    if not isinstance(value, str):
        return value
    try:
        split = urlsplit(value)
    except ValueError:
        return value
    if split.scheme.lower() not in ("http", "https") or not split.netloc:
        return value
    return f"{origin.url}/{hashlib.sha256(value.encode()).hexdigest()[:8]}/cat.jpg"


def _schema() -> Any:
    """The document as this code builds it (the server's is checked to be the same bytes),
    loaded at collection time so that each operation is a test of its own. (Loading it from
    the live server in a fixture, ``schemathesis.pytest.from_fixture``, fails on pytest
    9.2: schemathesis 4.32 sets ``Node._nodeid``, which pytest no longer has.)"""
    schema = schemathesis.openapi.from_dict(
        msgspec.json.decode(openapi.encode_document(operations.OPERATIONS, version()))
    )
    schema.config.update(headers={"X-Api-Token": KEY})
    schema.config.generation.update(
        max_examples=MAX_EXAMPLES,
        deterministic="OPENAPI_FUZZ_EXAMPLES" not in os.environ,  # a failure reproduces
        database="none",
        with_security_parameters=False,  # the key is sent as a header above
    )
    schema.config.phases.update(phases=["examples", "coverage", "fuzzing"])
    return schema


schema = _schema()


def _route(context: Any) -> tuple[str, str]:
    return context.operation.method.upper(), context.operation.path


@schema.hook("flatmap_query")
def known_alias_query(context: Any, query: Any) -> Any:
    names = [k for k in ("src", "alias") if isinstance(query, dict) and k in query]
    if not names or _route(context) in DESTRUCTIVE:
        return st.just(query)
    return st.sampled_from([query, {**query, **dict.fromkeys(names, KNOWN)}])


@schema.hook("flatmap_path_parameters")
def known_alias_path(context: Any, path_parameters: Any) -> Any:
    if not isinstance(path_parameters, dict) or "alias" not in path_parameters:
        return st.just(path_parameters)
    return st.sampled_from([path_parameters, {**path_parameters, "alias": KNOWN}])


@schema.hook("flatmap_body")
def real_photo(context: Any, body: Any) -> Any:
    if not isinstance(body, dict) or "images[]" not in body:
        return st.just(body)
    return st.sampled_from([body, {**body, "images[]": [cat()]}])


def test_the_server_serves_this_document(live: Server) -> None:
    r = httpx.get(live.url + "/openapi.json")  # no key: the document is public
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.content == openapi.encode_document(operations.OPERATIONS, version())


@schema.parametrize()
@pytest.mark.usefixtures("known")
def test_every_operation_conforms(case: Any, live: Server, origin: Origin) -> None:
    if isinstance(case.query, dict):
        for key in ("proxy", "url"):
            if key in case.query:
                case.query[key] = _origin_url(origin, case.query[key])
    if isinstance(case.headers, dict):
        for name in [n for n in case.headers if n.lower() in FRAMING]:
            del case.headers[name]
    case.call_and_validate(base_url=live.url, checks=CHECKS)
