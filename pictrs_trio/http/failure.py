"""One mapping from a failed request to its answer, for the Quart app and the fast path."""

from __future__ import annotations

from loguru import logger

from pictrs_trio.rules.errors import PictrsError, error_response


def innermost(exc: BaseException) -> BaseException:
    """Unwrap single-member exception groups that nurseries add around one failure."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if isinstance(inner, PictrsError):
                return inner
    return exc


def failure_answer(exc: BaseException) -> tuple[int, bytes]:
    """Status and pict-rs error JSON for ``exc`` (already unwrapped); logs what an operator
    needs: unexpected errors with their traceback, server-side failures as warnings."""
    if not isinstance(exc, PictrsError):
        logger.opt(exception=exc).error("unhandled error")
    elif exc.status >= 500:
        logger.warning("request failed: {} ({})", exc.msg, exc.code)
    return error_response(exc)
