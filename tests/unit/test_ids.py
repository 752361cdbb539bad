from __future__ import annotations

import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pictrs_trio.rules import ids

LAYOUT = re.compile(r"(?:[0-9a-f]{2}/){10}[0-9a-f]{12}\.webp")


def test_uuid7_fields() -> None:
    ns = 1_719_322_481_123_456_789
    u = ids.uuid7(ns)
    assert u.version == 7
    assert u.variant == uuid.RFC_4122
    assert u.int >> 80 == ns // 1_000_000  # 48-bit milliseconds
    sub_ms = (u.int >> 64) & 0xFFF
    assert sub_ms == (ns % 1_000_000) * 4096 // 1_000_000


def test_uuid7_sorts_by_time_and_is_random() -> None:
    base = 1_719_322_481_000_000_000
    made = [ids.uuid7(base + step * 1_000) for step in range(500)]  # 1 µs apart
    assert made == sorted(made, key=lambda u: u.int)
    assert len({u.int for u in made}) == 500
    same = {ids.uuid7(base).int for _ in range(100)}
    assert len(same) == 100  # same instant, different random bits


def test_uuid7_monotonic_ish_from_clock() -> None:
    made = [ids.uuid7() for _ in range(2000)]
    millis = [u.int >> 80 for u in made]
    assert millis == sorted(millis)


def test_identifier_layout_exact() -> None:
    ident = ids.new_identifier(".webp")
    assert LAYOUT.fullmatch(ident), ident
    digits = ident.removesuffix(".webp").replace("/", "")
    assert len(digits) == 32
    u = uuid.UUID(hex=digits)
    assert u.version == 7
    parts = ident.split("/")
    assert len(parts) == 11
    assert [len(p) for p in parts[:10]] == [2] * 10
    assert ids.is_safe_identifier(ident)


def test_identifier_without_extension_and_bad_extension() -> None:
    assert re.fullmatch(r"(?:[0-9a-f]{2}/){10}[0-9a-f]{12}", ids.new_identifier(""))
    for bad in ("webp", "./x", ".we/bp", "../..", ".a b", ".\x00"):
        with pytest.raises(ValueError, match="extension"):
            ids.new_identifier(bad)


def test_identifiers_unique() -> None:
    assert len({ids.new_identifier(".png") for _ in range(1000)}) == 1000


def test_new_alias_and_token_are_canonical() -> None:
    alias = ids.new_alias(".jpeg")
    u = uuid.UUID(alias.removesuffix(".jpeg"))
    assert u.version == 4
    assert ids.parse_alias(alias) == alias
    token = ids.new_delete_token()
    assert str(uuid.UUID(token)) == token
    assert ids.normalise_token(token) == token


CANON = "3f0c9a57-1d2e-4b8a-9c61-0e5f4b2a7d10"


@pytest.mark.parametrize(
    "given",
    [
        CANON,
        CANON.upper(),
        CANON.replace("-", ""),
        CANON.replace("-", "").upper(),
        "{" + CANON + "}",
        "urn:uuid:" + CANON,
        "urn:uuid:" + CANON.upper(),
    ],
)
def test_parse_alias_uuid_forms(given: str) -> None:
    assert ids.parse_alias(given + ".webp") == CANON + ".webp"
    assert ids.normalise_token(given) == CANON


@pytest.mark.parametrize(
    "name",
    [
        "lkWZDRvugm.jpg",
        "cat.jpg",
        "cat",
        "URN:UUID:" + CANON + ".png",  # the prefix is case-sensitive in the Rust crate
        CANON[:-1] + ".png",  # 35 characters
        CANON.replace("-", "_") + ".png",
        "3f0c9a571d2e-4b8a-9c61-0e5f4b2a7d10.png",  # hyphens misplaced
        "{" + CANON.replace("-", "") + "}.png",  # braces need the hyphenated form
        "+" + CANON.replace("-", "")[1:] + ".png",  # int() would take this, we must not
    ],
)
def test_parse_alias_keeps_names(name: str) -> None:
    assert ids.parse_alias(name) == name


def test_parse_alias_splits_at_first_dot_and_keeps_extension_case() -> None:
    assert ids.parse_alias(CANON.upper() + ".tar.GZ") == CANON + ".tar.GZ"
    assert ids.parse_alias(CANON + ".PNG") != ids.parse_alias(CANON + ".png")


@pytest.mark.parametrize("bad", ["", "a/b.png", "../x", "a\\b", "a\x00b", "a\nb", "\x7f", ".png"])
def test_parse_alias_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="malformed"):
        ids.parse_alias(bad)


def test_tokens_equal() -> None:
    assert ids.tokens_equal(CANON.upper(), CANON)
    assert ids.tokens_equal("{" + CANON + "}", CANON.replace("-", ""))
    assert ids.tokens_equal("legacyTok1", "legacyTok1")
    assert not ids.tokens_equal("legacytok1", "legacyTok1")
    assert not ids.tokens_equal(CANON, CANON[:-1] + "1")
    assert not ids.tokens_equal("", CANON)


@pytest.mark.parametrize(
    ("identifier", "safe"),
    [
        ("01/90/4f/3a/2b/7c/7d/e1/a2/b3/c4d5e6f7a8b9.webp", True),
        ("legacy-name.png", True),
        ("a/..b/c", True),
        ("", False),
        ("/etc/passwd", False),
        ("../x", False),
        ("a/../../x", False),
        ("a/./b", False),
        ("a//b", False),
        ("a/b/", False),
        ("a\\b", False),
        ("a\x00b", False),
        ("a\nb", False),
        (".", False),
    ],
)
def test_is_safe_identifier(identifier: str, safe: bool) -> None:
    assert ids.is_safe_identifier(identifier) is safe


@given(st.uuids())
def test_any_uuid_form_round_trips(u: uuid.UUID) -> None:
    for form in (str(u), u.hex, u.hex.upper(), "{" + str(u) + "}", u.urn):
        assert ids.parse_uuid(form) == u
        assert ids.parse_alias(form + ".gif") == str(u) + ".gif"


@given(st.text(min_size=1, max_size=40))
def test_parse_alias_never_yields_path_separators(text: str) -> None:
    try:
        parsed = ids.parse_alias(text)
    except ValueError:
        return
    assert "/" not in parsed
    assert "\x00" not in parsed
    assert parsed.partition(".")[2] == text.partition(".")[2]
