"""Response bodies as msgspec Structs, and the one JSON encoder for them."""

from __future__ import annotations

import datetime as dt

import msgspec

from pictrs_trio.repo.records import Details


class WireDetails(msgspec.Struct, frozen=True, kw_only=True):
    """The details object clients see; field order is pict-rs's."""

    width: int
    height: int
    frames: int | None
    content_type: str
    created_at: str
    format: str


class UploadedFile(msgspec.Struct, frozen=True, kw_only=True):
    delete_token: str
    details: WireDetails
    file: str


class UploadResponse(msgspec.Struct, frozen=True, kw_only=True):
    files: list[UploadedFile]
    msg: str = "ok"


class UploadId(msgspec.Struct, frozen=True, kw_only=True):
    upload_id: str


class UploadsResponse(msgspec.Struct, frozen=True, kw_only=True):
    """202 of a backgrounded upload or download."""

    msg: str = "ok"
    uploads: list[UploadId]


encode = msgspec.json.Encoder().encode


def rfc3339(t: dt.datetime) -> str:
    """UTC, 'Z' suffix, fractional seconds only when non-zero, trailing zeros dropped."""
    t = t.astimezone(dt.UTC)
    base = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        base += "." + f"{t.microsecond:06d}".rstrip("0")
    return base + "Z"


def uploads_response(upload_ids: list[str]) -> bytes:
    return encode(UploadsResponse(uploads=[UploadId(upload_id=u) for u in upload_ids]))


def wire_details(d: Details) -> WireDetails:
    return WireDetails(
        width=d.width,
        height=d.height,
        frames=d.frames,
        content_type=d.content_type,
        created_at=rfc3339(d.created_at),
        format=d.format.kind.value,
    )
