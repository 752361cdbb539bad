"""Every route in process: its answers for unknown media, for stored media by each of its
forms, and the parity of the forms (one read path answers them all)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.inprocess.conftest import API_KEY, upload

UNKNOWN = "00000000-0000-0000-0000-000000000000.png"
KEY = {"X-Api-Token": API_KEY}


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "code"),
    [
        ("GET", f"/image/original/{UNKNOWN}", {}, 404, None),
        ("HEAD", f"/image/original/{UNKNOWN}", {}, 404, None),
        ("GET", f"/image/original?alias={UNKNOWN}", {}, 404, None),
        ("GET", "/image/original", {}, 400, "invalid-query"),
        ("HEAD", "/image/original?proxy=http://127.0.0.1:9/x.png", {}, 404, None),
        ("GET", f"/image/process.webp?src={UNKNOWN}&thumbnail=10", {}, 404, None),
        ("HEAD", f"/image/process.webp?src={UNKNOWN}&thumbnail=10", {}, 404, None),
        ("GET", f"/image/process.bmp?src={UNKNOWN}", {}, 400, "invalid-file-extension"),
        ("GET", f"/image/process.webp?src={UNKNOWN}&thumbnail=x", {}, 400, "invalid-process-path"),
        ("GET", "/image/process.webp?thumbnail=10", {}, 400, "invalid-query"),
        ("GET", f"/image/details/original/{UNKNOWN}", {}, 404, "alias-not-found"),
        ("GET", f"/image/details/process.webp?src={UNKNOWN}", {}, 404, "alias-not-found"),
        ("GET", f"/image/process_backgrounded.webp?src={UNKNOWN}", {}, 400, None),
        ("DELETE", f"/image/delete/token/{UNKNOWN}", {}, 204, None),
        ("GET", "/image/backgrounded/claim?upload_id=nope", {}, 400, "invalid-query"),
        ("GET", "/image/download?url=notaurl", {}, 400, "invalid-query"),
        ("GET", "/internal/aliases?alias=x", {}, 401, "invalid-api-token"),
        ("GET", "/internal/nope", KEY, 404, "not-found"),
        ("PUT", "/internal/aliases", KEY, 405, None),
        ("GET", "/internal/purge", KEY, 405, None),
        ("PUT", "/internal/aliases", {}, 401, "invalid-api-token"),
        # HEAD only on stored media, as in pict-rs (werkzeug would add it to every GET).
        ("HEAD", f"/image/delete/token/{UNKNOWN}", {}, 405, None),
        ("HEAD", "/image/backgrounded/claim?upload_id=nope", {}, 405, None),
        ("HEAD", "/image/download?url=notaurl", {}, 405, None),
        ("HEAD", "/healthz", {}, 405, None),
        ("HEAD", "/internal/aliases", {}, 401, None),  # the key first; a HEAD has no body
        ("HEAD", "/internal/aliases", KEY, 405, None),
        ("HEAD", "/internal/prune_missing", KEY, 405, None),
        ("HEAD", "/internal/nope", KEY, 404, None),
        ("GET", "/internal/nope", {}, 401, "invalid-api-token"),
        ("POST", f"/internal/delete?alias={UNKNOWN}", KEY, 404, None),
        ("POST", f"/image/original/{UNKNOWN}", {}, 405, None),
        ("GET", "/image", {}, 405, None),
        ("PUT", "/image/details/original/x", {}, 405, None),
        ("GET", "/no/such/route", {}, 404, "not-found"),
        ("POST", "/image/nope", {}, 404, "not-found"),
        ("GET", "/image/blurhash", {}, 400, "invalid-query"),
        ("GET", f"/image/blurhash?alias={UNKNOWN}", {}, 404, "alias-not-found"),
        ("GET", "/image/blurhash?alias=a/b", {}, 404, "alias-not-found"),
        ("POST", "/internal/import", {}, 401, "invalid-api-token"),
        ("GET", "/internal/import", {}, 401, "invalid-api-token"),
        ("GET", "/internal/import", KEY, 405, None),
        ("POST", "/internal/set_not_found", {}, 401, "invalid-api-token"),
        ("POST", "/internal/set_not_found", KEY, 400, "invalid-json"),
        ("POST", f"/internal/set_not_found?alias={UNKNOWN}", KEY, 404, "alias-not-found"),
        ("GET", "/internal/hashes", {}, 401, "invalid-api-token"),
        ("GET", "/internal/hashes?limit=-1", KEY, 400, "invalid-query"),
        ("GET", "/internal/hashes?timestamp=yesterday", KEY, 400, "invalid-query"),
        ("POST", "/internal/prune_missing", {}, 401, "invalid-api-token"),
        ("POST", "/internal/prune_missing?force=yes", KEY, 400, "invalid-query"),
        ("POST", "/internal/export", {}, 401, "invalid-api-token"),
        ("GET", "/healthz", {}, 200, None),
    ],
)
async def test_route_answers(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    headers: dict[str, str],
    status: int,
    code: str | None,
) -> None:
    r = await client.request(method, path, headers=headers)
    assert r.status_code == status, r.text
    if status == 405:
        assert r.headers["allow"]  # RFC 9110 section 15.5.6: what the path takes
        assert ("HEAD" in r.headers["allow"]) == path.startswith("/image/original")
    if code is None:
        assert r.content == b""
    else:
        assert r.headers["content-type"] == "application/json"
        assert r.json()["code"] == code


async def test_a_head_of_a_delete_deletes_nothing(
    client: httpx.AsyncClient, samples: dict[str, Path]
) -> None:
    """Link checkers and caches send HEAD: it must not do what the GET of a delete does."""
    done = (await upload(client, samples["test.png"])).json()["files"][0]
    url = f"/image/delete/{done['delete_token']}/{done['file']}"
    head = await client.head(url)
    assert head.status_code == 405 and head.headers["allow"] == "DELETE, GET, OPTIONS"
    assert (await client.get(f"/image/original/{done['file']}")).status_code == 200
    assert (await client.get(url)).status_code == 204
    assert (await client.get(f"/image/original/{done['file']}")).status_code == 404
    allow = (await client.head("/internal/prune_missing", headers=KEY)).headers["allow"]
    assert allow == "GET, OPTIONS, POST"


async def test_every_form_of_a_read_answers_alike(
    client: httpx.AsyncClient, samples: dict[str, Path]
) -> None:
    alias = (await upload(client, samples["test.png"])).json()["files"][0]["file"]
    forms = [f"/image/original/{alias}", f"/image/original?alias={alias}"]
    answers = [await client.get(form) for form in forms]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].content == answers[1].content
    assert answers[0].content.startswith(b"\x89PNG")
    assert dict(answers[0].headers) == dict(answers[1].headers)
    heads = [await client.head(form) for form in forms]
    for head in heads:
        assert head.status_code == 200 and head.content == b""
        assert dict(head.headers) == dict(answers[0].headers)
    variant = f"/image/process.webp?src={alias}&thumbnail=64"
    by_src = await client.get(variant)
    by_alias = await client.get(f"/image/process.webp?alias={alias}&thumbnail=64")
    assert by_src.status_code == by_alias.status_code == 200
    assert by_src.content == by_alias.content
    assert by_src.headers["etag"] == by_alias.headers["etag"]
    assert (await client.head(variant)).headers == by_src.headers


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"If-None-Match": "*"}, 304),
        ({"If-None-Match": "{etag}"}, 304),
        ({"If-None-Match": "W/{etag}"}, 304),
        ({"If-None-Match": '"other"'}, 200),
        ({"Range": "bytes=0-9", "If-Range": "W/{etag}"}, 200),
        ({"Range": "bytes=0-9", "If-Range": "{etag}"}, 206),
        ({"If-Match": "W/{etag}"}, 412),
        ({"Range": "bytes=5-1,8-9"}, 416),
    ],
)
async def test_conditionals_on_every_read_route(
    client: httpx.AsyncClient, samples: dict[str, Path], headers: dict[str, str], status: int
) -> None:
    alias = (await upload(client, samples["test.png"])).json()["files"][0]["file"]
    routes = [
        f"/image/original/{alias}",
        f"/image/original?alias={alias}",
        f"/image/process.webp?src={alias}&thumbnail=32",
    ]
    for route in routes:
        etag = (await client.get(route)).headers["etag"]
        sent = {k: v.format(etag=etag) for k, v in headers.items()}
        for method in ("GET", "HEAD"):
            r = await client.request(method, route, headers=sent)
            assert r.status_code == status, (route, method, sent)
            if status in (304, 412):
                assert r.content == b""
