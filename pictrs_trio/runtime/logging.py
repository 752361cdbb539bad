"""Log sinks, set once at start-up (pict-rs's ``[tracing.logging]``). Everything else just
uses ``loguru.logger``.

Lines go to stdout, as pict-rs's do, and nothing else does. ``format``:

    normal   2026-12-04T10:00:00.123456Z  INFO pictrs_trio.services.ingest: ingested … alias=…
    compact  10:00:00  INFO ingested … alias=…
    pretty   coloured, for a terminal
    json     one flat object per line: timestamp, level, target, message, then the fields

``targets`` is pict-rs's filter (``config/logfilter.py``). Nothing logs request headers or
query strings, so the API key never reaches a line; the request log leaves delete tokens out
(``http/access_log.py``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import traceback
from typing import TYPE_CHECKING, Any

from loguru import logger

from pictrs_trio.config import Logging, logfilter

if TYPE_CHECKING:
    from loguru import Message, Record

_FORMATS = {
    "normal": "{time:YYYY-MM-DDTHH:mm:ss.SSSSSS!UTC}Z {extra[_level]: >5} {name}: {message}"
    "{extra[_fields]}",
    "compact": "{time:HH:mm:ss} {extra[_level]: >5} {message}{extra[_fields]}",
    "pretty": "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{extra[_level]: >5}</level> "
    "<cyan>{name}</cyan> {message}<dim>{extra[_fields]}</dim>",
}
# tracing's level names, which pict-rs's lines carry
_TRACING_LEVELS = {"WARNING": "WARN", "CRITICAL": "ERROR", "SUCCESS": "INFO"}


def _tracing_style(record: Record) -> None:
    """Add what the text formats show: the tracing level name and the fields as ` k=v`
    (keys starting with ``_`` are the formats' own, never fields)."""
    extra = record["extra"]
    fields = "".join(f" {k}={v}" for k, v in extra.items() if not k.startswith("_"))
    level = record["level"].name
    extra.update(_level=_TRACING_LEVELS.get(level, level), _fields=fields)


class _Intercept(logging.Handler):
    """Route stdlib logging (hypercorn) into loguru, under the stdlib logger's name."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        name = record.name

        def rename(entry: Record) -> None:
            entry["name"] = name

        logger.patch(rename).opt(exception=record.exc_info).log(level, record.getMessage())


def _json_line(record: Record) -> str:
    """One flat JSON object: timestamp, level, target, message, then the record's fields."""
    line: dict[str, Any] = {
        "timestamp": record["time"]
        .astimezone(dt.UTC)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z"),
        "level": _TRACING_LEVELS.get(record["level"].name, record["level"].name),
        "target": record["name"],
        "message": record["message"],
    }
    for key, value in record["extra"].items():
        if not key.startswith("_"):
            line.setdefault(key, value)
    if record["exception"] is not None:
        kind, value, tb = record["exception"]
        line["exception"] = "".join(traceback.format_exception(kind, value, tb)).rstrip()
    return json.dumps(line, default=str)


def _json_sink(message: Message) -> None:
    sys.stdout.write(_json_line(message.record) + "\n")
    sys.stdout.flush()


def setup(cfg: Logging) -> None:
    """Replace every sink with the one ``cfg`` describes. Raises ValueError for a filter that
    does not parse (the configuration's check catches that first, with the key named)."""
    log_filter = logfilter.parse(cfg.targets)
    floors: dict[str | None, int | None] = {}

    def allow(record: Record) -> bool:
        name = record["name"]
        if name not in floors:
            level = log_filter.level_of(name or "")
            floors[name] = None if level is None else logger.level(level).no
        floor = floors[name]
        return floor is not None and record["level"].no >= floor

    logger.remove()
    logger.configure(patcher=_tracing_style)
    if cfg.format == "json":
        logger.add(_json_sink, level=0, filter=allow)
    else:
        colorize = False if cfg.no_ansi else None
        logger.add(
            sys.stdout,
            level=0,
            filter=allow,
            format=_FORMATS[cfg.format],
            colorize=colorize,
            # loguru's defaults print every frame's variables with a traceback: a request's
            # headers (the API key), its query, a delete token. A plain traceback only.
            backtrace=False,
            diagnose=False,
        )
    # stdlib loggers (hypercorn, httpx) build records only down to the lowest level let through.
    levels = [log_filter.default, *log_filter.targets.values()]
    lowest = min((logger.level(level).no for level in levels if level is not None), default=50)
    logging.basicConfig(handlers=[_Intercept()], level=lowest, force=True)
    # httpx logs every request's full URL at info: a validator's credentials, a client's
    # signed download URL. botocore's signer logs the canonical request at debug, session
    # token included. Only their warnings pass.
    for noisy in ("httpx", "httpcore", "botocore"):
        logging.getLogger(noisy).setLevel(max(lowest, logging.WARNING))
