"""Typed query-string values, parsed the way pict-rs's serde_urlencoded does. Pure."""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable

from pictrs_trio.rules.errors import InvalidProcessPath, InvalidQuery
from pictrs_trio.rules.validate import UploadLimits

PROCESS_OPERATIONS = frozenset({"identity", "thumbnail", "resize", "crop", "blur"})
LIMIT_INTS = ("max_width", "max_height", "max_area", "max_frame_count", "max_file_size")
LIMIT_BOOLS = ("allow_image", "allow_animation", "allow_video")
LIMIT_MAX = {"max_width": 0xFFFF, "max_height": 0xFFFF}


def parse_bool(key: str, value: str) -> bool:
    if value == "true":
        return True
    if value == "false":
        return False
    raise InvalidQuery(f"Invalid query: {key} must be true or false")


def parse_uint(key: str, value: str, maximum: int = 0xFFFF_FFFF) -> int:
    digits = value[1:] if value.startswith("+") else value
    if not digits.isascii() or not digits.isdigit():
        raise InvalidQuery(f"Invalid query: {key} must be a non-negative integer")
    digits = digits.lstrip("0") or "0"
    if len(digits) > 20:  # beyond any limit; and int() refuses very long strings
        raise InvalidQuery(f"Invalid query: {key} is out of range")
    n = int(digits)
    if n > maximum:
        raise InvalidQuery(f"Invalid query: {key} is out of range")
    return n


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


NS_MIN, NS_MAX = -(2**63), 2**63 - 1


def parse_rfc3339_ns(key: str, value: str) -> int:
    """An RFC 3339 date-time (offset required) as unix nanoseconds; digits past the
    nanosecond are dropped. Raises InvalidQuery."""
    m = _RFC3339.fullmatch(value)
    if m is None or not value.isascii():
        raise InvalidQuery(f"Invalid query: {key} must be an RFC 3339 date-time")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    fraction, zulu, sign, off_h, off_m = m.group(7, 8, 9, 10, 11)
    valid = (
        year >= 1
        and 1 <= month <= 12
        and 1 <= day <= calendar.monthrange(year, month)[1]
        and hour <= 23
        and minute <= 59
        and second <= 60  # a leap second counts as the next one's start
        and (zulu is not None or (int(off_h) <= 23 and int(off_m) <= 59))
    )
    if not valid:
        raise InvalidQuery(f"Invalid query: {key} must be an RFC 3339 date-time")
    seconds = calendar.timegm((year, month, day, hour, minute, second))
    if zulu is None:
        offset = (int(off_h) * 60 + int(off_m)) * 60
        seconds -= offset if sign == "+" else -offset
    nanos = int((fraction or "0")[:9].ljust(9, "0"))
    # Stored times are signed 64-bit nanoseconds (years 1677 to 2262): a time beyond them
    # pages as the nearest one does.
    return max(NS_MIN, min(NS_MAX, seconds * 1_000_000_000 + nanos))


def parse_upload_query(
    pairs: Iterable[tuple[str, str]],
) -> tuple[UploadLimits, list[tuple[str, str]]]:
    """Split an upload's query into limits and preprocess operations (in query order).

    A key that is neither a limit nor an operation name fails the upload with
    invalid-process-path, as pict-rs does.
    """
    limits: dict[str, int | bool] = {}
    operations: list[tuple[str, str]] = []
    for key, value in pairs:
        if key in LIMIT_INTS:
            limits[key] = parse_uint(key, value, LIMIT_MAX.get(key, 0xFFFF_FFFF))
        elif key in LIMIT_BOOLS:
            limits[key] = parse_bool(key, value)
        elif key.lower() in PROCESS_OPERATIONS:
            operations.append((key, value))
        else:
            raise InvalidProcessPath(f"Invalid process path: unknown operation {key!r}")
    return UploadLimits(**limits), operations  # type: ignore[arg-type]
