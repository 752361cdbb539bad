"""A failed request's answer, for every path (raw routes and Quart): ``errors.error_answer``
plus the log line an operator needs."""

from __future__ import annotations

from loguru import logger

from pictrs_trio.rules.errors import PictrsError, error_answer


def innermost(exc: BaseException) -> BaseException:
    """Unwrap the exception groups nurseries add around one failure (the first pict-rs
    error of a group with several)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if isinstance(inner, PictrsError):
                return inner
    return exc


def answer_for(exc: BaseException) -> tuple[int, bytes]:
    """Status and pict-rs error JSON for ``exc`` (unwrapped); logs unexpected errors with
    their traceback and server-side failures as warnings."""
    status, body = error_answer(exc)
    if not isinstance(exc, PictrsError):
        logger.opt(exception=exc).error("unhandled error")
    elif status >= 500:
        logger.warning("request failed: {} ({})", exc.msg, exc.code)
    return status, body
