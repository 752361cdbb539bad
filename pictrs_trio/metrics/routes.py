"""The ``path`` and ``status`` labels of the request series, as pict-rs writes them. Pure.

pict-rs labels a request with the pattern of the route it matched, rendered the way Rust
debug-prints an ``Option<String>``: ``Some("/image/process.{ext}")``, or ``None`` for a path
no route matches (pict-rs ``src/middleware/metrics.rs``, the routes of ``src/lib.rs``). The
status is actix's rendering of the status code: ``200 OK``, ``413 Payload Too Large``.
"""

from __future__ import annotations

import http
import re

# pict-rs's routes (their patterns as actix reports them), then pictrs-trio's own.
PATTERNS = (
    "/healthz",
    "/image",
    "/image/backgrounded",
    "/image/backgrounded/claim",
    "/image/download",
    "/image/delete/{delete_token}/{filename}",
    "/image/original",
    "/image/original/{filename}",
    "/image/blurhash",
    "/image/process.{ext}",
    "/image/process_backgrounded.{ext}",
    "/image/details/original",
    "/image/details/original/{filename}",
    "/image/details/process.{ext}",
    "/internal/import",
    "/internal/variants",
    "/internal/purge",
    "/internal/delete",
    "/internal/aliases",
    "/internal/identifier",
    "/internal/set_not_found",
    "/internal/hashes",
    "/internal/prune_missing",
    "/internal/export",
    "/internal/jobs",
)

NONE = "None"

_EXACT = {pattern: f'Some("{pattern}")' for pattern in PATTERNS if "{" not in pattern}
# A ``{name}`` segment matches what actix's default does: one or more characters but ``/``.
_TEMPLATED = tuple(
    (re.compile(re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(pattern))), f'Some("{pattern}")')
    for pattern in PATTERNS
    if "{" in pattern
)

# The HTTP reason phrases of the Rust ``http`` crate where Python's differ.
_REASONS = {
    413: "Payload Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    418: "I'm a teapot",
    422: "Unprocessable Entity",
}


def path_label(path: str) -> str:
    """The ``path`` label of a request for ``path``: its route pattern, as pict-rs renders
    it, or ``None``."""
    label = _EXACT.get(path)
    if label is not None:
        return label
    for pattern, rendered in _TEMPLATED:
        if pattern.fullmatch(path):
            return rendered
    return NONE


def status_label(status: int) -> str:
    """``200 OK``: the code and its reason phrase, as actix renders a status code."""
    reason = _REASONS.get(status)
    if reason is None:
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "<unknown status code>"
    return f"{status} {reason}"
