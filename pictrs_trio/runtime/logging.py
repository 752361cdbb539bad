"""Log sinks, set once at start-up. Everything else just uses ``loguru.logger``."""

from __future__ import annotations

import logging
import sys

from loguru import logger

from pictrs_trio.config import Logging

_FORMATS = {
    "normal": "{time:YYYY-MM-DDTHH:mm:ss.SSSSSS!UTC}Z {level: <5} {name}: {message} {extra}",
    "compact": "{time:HH:mm:ss} {level: <5} {message}",
    "pretty": "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <8}</level> "
    "<cyan>{name}</cyan> {message} <dim>{extra}</dim>",
}


def _level(targets: str) -> str:
    """The default level of a RUST_LOG-style filter (``warn,pict_rs=debug`` -> WARNING)."""
    for part in targets.split(","):
        part = part.strip()
        if part and "=" not in part:
            return {"warn": "WARNING", "trace": "TRACE"}.get(part.lower(), part.upper())
    return "INFO"


class _Intercept(logging.Handler):
    """Route stdlib logging (hypercorn) into loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def setup(cfg: Logging) -> None:
    logger.remove()
    level = _level(cfg.targets)
    if cfg.format == "json":
        logger.add(sys.stderr, level=level, serialize=True)
    else:
        colorize = False if cfg.no_ansi else None
        logger.add(sys.stderr, level=level, format=_FORMATS[cfg.format], colorize=colorize)
    logging.basicConfig(handlers=[_Intercept()], level=logging.INFO, force=True)
