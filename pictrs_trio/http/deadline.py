"""``X-Request-Deadline`` (pict-rs ``src/middleware/deadline.rs``): the header's value as
a trio deadline. Pure.

The header is an absolute deadline in nanoseconds since the Unix epoch; ``run_exchange``
(``http/exchange.py``) puts the request under it until the response head goes out.
"""

from __future__ import annotations

import math
import time

import trio

from pictrs_trio.rules.errors import ParseDeadline


def parse_deadline(raw: bytes) -> float:
    """The trio-clock deadline for a header value. Raises ParseDeadline."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ParseDeadline("Deadline header is not valid text") from None
    try:
        nanos = int(text.strip())
    except ValueError:
        raise ParseDeadline("Deadline header is not an integer") from None
    if abs(nanos) > 2**126:
        raise ParseDeadline("Deadline is not a representable timestamp")
    remaining = nanos / 1e9 - time.time()
    if not math.isfinite(remaining):
        raise ParseDeadline("Deadline cannot be converted to a duration")
    return trio.current_time() + max(remaining, 0.0)
