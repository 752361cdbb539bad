"""The OpenAPI document (``http/openapi.py`` from ``http/operations.py``): a valid OpenAPI
3.1 document, whose query keys are the parsers' own and whose JSON schemas are the Structs
the routes encode."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import schemathesis

from pictrs_trio.http import internal, openapi, operations, wire
from pictrs_trio.rules import query
from pictrs_trio.rules.errors import ErrorBody, ErrorCode

DOC: Any = openapi.document(operations.OPERATIONS, "0.0.0")


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOC["openapi"] == "3.1.0"
    schemathesis.openapi.from_dict(DOC).validate()  # against the OpenAPI 3.1 meta-schema


def test_a_broken_document_would_be_noticed() -> None:
    broken = msgspec.json.decode(msgspec.json.encode(DOC))
    broken["paths"]["/healthz"]["get"]["responses"]["200"]["content"] = {"x": 3}
    with pytest.raises(Exception, match="content"):
        schemathesis.openapi.from_dict(broken).validate()


def operation(method: str, path: str) -> Any:
    return DOC["paths"][path][method]


def params(method: str, path: str) -> list[str]:
    return [p["name"] for p in operation(method, path)["parameters"] if "name" in p]


def test_query_keys_are_the_parsers() -> None:
    assert set(operations.OPERATION_SCHEMAS) == query.PROCESS_OPERATIONS
    upload_keys = [*query.LIMIT_INTS, *query.LIMIT_BOOLS, *operations.OPERATION_SCHEMAS]
    assert params("post", "/image") == upload_keys
    assert params("get", "/image/download") == ["url", "backgrounded", *upload_keys]
    process = params("get", "/image/process.{ext}")
    assert process[:4] == ["ext", "src", "alias", "proxy"]
    assert set(process[4:]) >= query.PROCESS_OPERATIONS


def test_json_bodies_are_the_structs_schemas() -> None:
    schemas = DOC["components"]["schemas"]
    _, expected = msgspec.json.schema_components(
        [wire.UploadResponse, internal.Page], ref_template=openapi.REF
    )
    for name in ("UploadResponse", "UploadedFile", "WireDetails", "PageJson", "HashJson"):
        assert schemas[name]["properties"] == expected[name]["properties"], name
        assert schemas[name]["required"] == expected[name]["required"], name
    created = operation("post", "/image")["responses"]["201"]
    assert created["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/UploadResponse"
    }


def test_every_error_answer_is_the_error_json_with_every_code() -> None:
    error = DOC["components"]["schemas"]["ErrorBody"]
    assert error["required"] == ["msg", "code"]
    assert error["properties"]["code"]["enum"] == [c.value for c in ErrorCode]
    assert set(ErrorBody.__struct_fields__) == {"msg", "code"}
    ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            for status in ("400", "408", "500"):
                assert status in op["responses"], (method, path, status)
            for status, answer in op["responses"].items():
                json_schema = answer.get("content", {}).get("application/json", {}).get("schema")
                if int(status) >= 400 and json_schema is not None:
                    assert json_schema == ref, (method, path, status)


def test_internal_routes_need_the_api_key_and_no_other_does() -> None:
    schemes = DOC["components"]["securitySchemes"]
    assert schemes["ApiToken"] == {"type": "apiKey", "in": "header", "name": "X-Api-Token"}
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            internal_route = path.startswith("/internal/")
            assert ("security" in op) == internal_route, (method, path)
            assert ("401" in op["responses"]) == internal_route, (method, path)


def test_every_operation_takes_the_deadline_header() -> None:
    ref = {"$ref": "#/components/parameters/RequestDeadline"}
    for item in DOC["paths"].values():
        for op in item.values():
            assert ref in op["parameters"]
    assert DOC["components"]["parameters"]["RequestDeadline"]["name"] == "X-Request-Deadline"


def test_operation_ids_are_unique() -> None:
    ids = [op["operationId"] for item in DOC["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)) == len(operations.OPERATIONS)
