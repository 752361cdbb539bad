"""Single byte-range requests, as pict-rs answers them (``src/range.rs``). Pure."""

from __future__ import annotations

import re

from pictrs_trio.rules.errors import RangeNotSatisfiable

_SPEC = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")


class Unsatisfiable(Exception):
    """A single range that does not fit the stored length: 416 with an empty body."""


def parse_range(header: str | None, length: int) -> tuple[int, int] | None:
    """The inclusive ``(start, end)`` to serve, or None for the whole file.

    A header that does not parse is ignored (None). Several ranges or another unit raise
    RangeNotSatisfiable (416 JSON); one range that does not fit raises Unsatisfiable.
    """
    if header is None:
        return None
    unit, sep, rest = header.partition("=")
    if not sep:
        return None
    unit = unit.strip().lower()
    specs = [s for s in rest.split(",")]
    parsed = [_SPEC.match(s) for s in specs]
    if not specs or any(m is None or m.group(0).strip() in ("", "-") for m in parsed):
        return None
    if unit != "bytes":
        raise RangeNotSatisfiable("Unsupported range unit")
    if len(parsed) != 1:
        raise RangeNotSatisfiable("Multiple ranges are not supported")
    m = parsed[0]
    assert m is not None
    # Positions past 2**63 are beyond any file; capping the digits also keeps int() from
    # refusing a hostile thousands-digit number.
    first, last = _cap(m.group(1)), _cap(m.group(2))
    if length == 0:
        raise Unsatisfiable
    if first == "":
        n = int(last)
        if n == 0:
            raise Unsatisfiable
        return max(0, length - n), length - 1
    start = int(first)
    if start >= length:
        raise Unsatisfiable
    if last == "":
        return start, length - 1
    end = int(last)
    if start > end:
        raise Unsatisfiable
    return start, min(end, length - 1)


def _cap(digits: str) -> str:
    digits = digits.lstrip("0") or ("0" if digits else "")
    return "9" * 19 if len(digits) > 19 else digits
