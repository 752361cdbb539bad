"""GET /openapi.json in process: served without the API key, built once, and in step with
the routes the app answers, both ways (the quart-trio url_map, the raw route tables, the
read router)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import msgspec

from pictrs_trio import version
from pictrs_trio.http import openapi, operations, serve
from pictrs_trio.http.app import PictrsApp
from pictrs_trio.http.state import CATCH_ALL  # unknown /internal paths: 401, or 404

# Methods werkzeug adds to every rule on its own: OPTIONS answers with Allow, HEAD is
# refused (405; HEAD is a route only for stored media, http/serve.py).
IMPLICIT = {"HEAD", "OPTIONS"}


def documented() -> set[tuple[str, str]]:
    return {(op.method.upper(), op.path) for op in operations.OPERATIONS}


def template(rule: str) -> str:
    """werkzeug's ``<alias>``/``<path:rest>`` as OpenAPI's ``{alias}``."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def sample(path: str) -> str:
    return path.replace("{ext}", "webp").replace("{", "").replace("}", "")


async def test_served_without_the_key_as_built_at_start(
    client: httpx.AsyncClient, app: PictrsApp
) -> None:
    built = app.quart.extensions[openapi.EXTENSION_KEY]
    assert built == openapi.encode_document(operations.OPERATIONS, version())
    first, second = await client.get("/openapi.json"), await client.get("/openapi.json")
    assert first.status_code == 200
    assert first.headers["content-type"] == "application/json"
    assert first.content == second.content == built
    doc: Any = msgspec.json.decode(first.content)
    assert doc["info"]["version"] == version()
    assert (await client.post("/openapi.json")).status_code == 405


async def test_every_route_answered_is_documented(app: PictrsApp) -> None:
    doc = documented()
    for rule in app.quart.url_map.iter_rules():
        if rule.endpoint == CATCH_ALL:
            continue
        for method in (rule.methods or set()) - IMPLICIT:
            assert (method, template(rule.rule)) in doc, (method, rule.rule)
    for path in app.raw_routes:
        assert ("POST", path) in doc, path
    reads = {serve.route(sample(p)) for m, p in doc if m in ("GET", "HEAD")} - {None}
    assert reads == {"original", "original?", "process"}  # every answer of serve.route


async def test_every_documented_route_is_answered_by_its_handler(app: PictrsApp) -> None:
    adapter = app.quart.url_map.bind("pictrs.test")
    for method, path in sorted(documented()):
        concrete = sample(path)
        if serve.route(concrete) is not None:
            assert method in ("GET", "HEAD"), path
        elif concrete in app.raw_routes:
            assert method == "POST", path
        else:
            endpoint, _ = adapter.match(concrete, method=method)
            assert endpoint != CATCH_ALL, (method, path)
            assert method in {
                m
                for r in app.quart.url_map.iter_rules()
                if r.endpoint == endpoint
                for m in r.methods or ()
            }
