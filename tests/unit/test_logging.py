"""The log sinks: a traceback in any format shows no variable's value (a request's headers
hold the API key, its path a delete token)."""

from __future__ import annotations

import json

import pytest
from loguru import logger

from pictrs_trio.config import Logging
from pictrs_trio.runtime import logging as pictrs_logging

SECRET = "api-key-in-a-local-variable"


def _fails(headers: dict[str, str]) -> None:
    token = headers["x-api-token"]
    raise RuntimeError(f"failed with {len(token)} characters")


@pytest.mark.parametrize("fmt", ["normal", "compact", "pretty", "json"])
def test_a_traceback_shows_no_local_values(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    pictrs_logging.setup(Logging(format=fmt, no_ansi=True))  # type: ignore[arg-type]
    try:
        _fails({"x-api-token": SECRET})
    except RuntimeError:
        logger.exception("unhandled error")
    finally:
        logger.remove()
    out = capsys.readouterr().out
    assert "unhandled error" in out
    assert "RuntimeError: failed with 27 characters" in out
    assert "_fails" in out  # the traceback is there, its variables are not
    assert SECRET not in out
    if fmt == "json":
        assert json.loads(out.splitlines()[0])["level"] == "ERROR"
