"""Names: store identifiers, aliases, delete tokens. Pure, no I/O.

Store identifiers are made here from fresh randomness only, never from client input
(pict-rs ``src/file_path.rs``). Aliases and tokens are normalised to one canonical text
form so the repo can compare them as plain strings (pict-rs ``src/repo/alias.rs``,
``src/repo/delete_token.rs``): a UUID in any form the Rust ``uuid`` crate reads becomes
hyphenated lower case; anything else is a legacy name kept as it is.
"""

from __future__ import annotations

import hmac
import os
import re
import time
import uuid

__all__ = [
    "is_safe_identifier",
    "new_alias",
    "new_delete_token",
    "new_identifier",
    "normalise_token",
    "parse_alias",
    "parse_uuid",
    "tokens_equal",
    "uuid7",
]

# An extension we put into identifiers and aliases: empty, or a dot and a short alphanumeric
# name. Ours always come from formats.MediaFormat.extension; this only guards misuse.
_EXTENSION = re.compile(r"(?:\.[A-Za-z0-9]{1,16})?")
_HEX32 = re.compile(r"[0-9A-Fa-f]{32}")
_HYPHENATED = re.compile(
    r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_URN_PREFIX = "urn:uuid:"


def uuid7(now_ns: int | None = None) -> uuid.UUID:
    """A UUID version 7 (RFC 9562): 48-bit Unix milliseconds, then randomness.

    The 12 ``rand_a`` bits hold the sub-millisecond fraction of the clock (RFC 9562 §6.2,
    method 3), so ids made in one process sort by creation time to about 250 ns without
    keeping a counter anywhere.
    """
    ns = time.time_ns() if now_ns is None else now_ns
    ms, rem_ns = divmod(ns, 1_000_000)
    sub_ms = rem_ns * 4096 // 1_000_000  # 0..4095
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76  # version
        | sub_ms << 64
        | 0b10 << 62  # RFC 4122/9562 variant
        | rand_b
    )
    return uuid.UUID(int=value)


def _check_extension(extension: str) -> None:
    if not _EXTENSION.fullmatch(extension):
        raise ValueError(f"bad extension {extension!r}")


def new_identifier(extension: str) -> str:
    """A fresh store identifier: ``aa/bb/cc/dd/ee/ff/gg/hh/ii/jj/<12 hex><extension>``.

    The 32 hex digits of a new UUID v7: the first 20 give ten 2-character directory levels,
    the last 12 plus ``extension`` (with its dot, may be "") the file name. Raises ValueError
    for an extension that is not ``.alnum``.
    """
    _check_extension(extension)
    digits = uuid7().hex
    levels = [digits[i : i + 2] for i in range(0, 20, 2)]
    return "/".join([*levels, digits[20:] + extension])


def identifier_time(identifier: str) -> float | None:
    """The creation time (Unix seconds) encoded in an identifier ``new_identifier`` made,
    or None for any other layout (older pict-rs identifiers are opaque)."""
    parts = identifier.split("/")
    if len(parts) != 11:
        return None
    digits = "".join(parts[:10]) + parts[10][:12]
    if len(digits) != 32 or any(c not in "0123456789abcdef" for c in digits):
        return None
    if digits[12] != "7":  # version nibble
        return None
    return int(digits[:12], 16) / 1000.0


def new_alias(extension: str) -> str:
    """``<uuid-v4><extension>`` in canonical form, e.g. ``3f0c…7d10.webp``."""
    _check_extension(extension)
    return str(uuid.uuid4()) + extension


def new_delete_token() -> str:
    return str(uuid.uuid4())


def parse_uuid(text: str) -> uuid.UUID | None:
    """The UUID ``text`` spells in a form the Rust ``uuid`` crate accepts, else None.

    Accepted: 32 hex digits ("simple"), hyphenated 8-4-4-4-12, that wrapped in braces, or
    after a lower-case ``urn:uuid:``; hex digits in any case. Python's ``uuid.UUID`` is more
    lenient (hyphens anywhere), so it only converts what the patterns admitted.
    """
    if len(text) == 32 and _HEX32.fullmatch(text):
        return uuid.UUID(hex=text)
    inner = text
    if len(text) == 38 and text[0] == "{" and text[-1] == "}":
        inner = text[1:-1]
    elif len(text) == 45 and text.startswith(_URN_PREFIX):
        inner = text[len(_URN_PREFIX) :]
    if len(inner) == 36 and _HYPHENATED.fullmatch(inner):
        return uuid.UUID(hex=inner)
    return None


def parse_alias(text: str) -> str:
    """The canonical form of a client-given alias.

    Split at the first ``.``: the id before it becomes hyphenated lower case when it is a
    UUID, else stays a plain name; the extension (dot included) is kept byte for byte.
    Raises ValueError for an empty alias, or one holding ``/``, ``\\`` or control characters
    (they could never have been created, and must never reach a path or a log line raw);
    callers answer that as "alias not found".
    """
    if not text or "/" in text or "\\" in text or _CONTROL.search(text):
        raise ValueError("malformed alias")
    name, dot, extension = text.partition(".")
    parsed = parse_uuid(name)
    if parsed is None:
        if not name:
            raise ValueError("malformed alias")
        return text
    return str(parsed) + dot + extension


def normalise_token(text: str) -> str:
    """A delete token in canonical form: a UUID hyphenated lower case, anything else as is."""
    parsed = parse_uuid(text)
    return text if parsed is None else str(parsed)


def tokens_equal(given: str, stored: str) -> bool:
    """Constant-time comparison of two delete tokens after normalisation (pict-rs
    ``src/repo/delete_token.rs``)."""
    return hmac.compare_digest(
        normalise_token(given).encode("utf-8", "surrogatepass"),
        normalise_token(stored).encode("utf-8", "surrogatepass"),
    )


def is_safe_identifier(identifier: str) -> bool:
    """True when ``identifier`` is a plain relative path a store may join under its root.

    Refused: empty, absolute, ``\\``, NUL or other control characters, and any empty, ``.``
    or ``..`` segment. Identifiers are ours, but they also come back from the database and
    from migrations; the file store checks every one before touching the filesystem.
    """
    if not identifier or identifier.startswith("/") or "\\" in identifier:
        return False
    if _CONTROL.search(identifier):
        return False
    return all(part not in ("", ".", "..") for part in identifier.split("/"))
