"""pict-rs's log filter (``tracing.logging.targets``, ``RUST_LOG``): tracing-subscriber's
``EnvFilter`` syntax, read for this program's loggers.

    warn                                   everything at warn and above
    info,pictrs_trio.services=debug        a default, and a level for one logger and below
    warn,tracing_actix_web=info            pict-rs's own target names work too (see TARGETS)

A directive is ``LEVEL`` or ``TARGET=LEVEL``; levels are off, error, warn, info, debug, trace
(any case). ``TARGET[span{field=value}]=LEVEL`` parses, but span and field filters have no
meaning here (there are no spans) and only the target counts. Pure: ``parse`` returns the
default level and a level per logger prefix, or raises ValueError.
"""

from __future__ import annotations

import re

import msgspec

LEVELS = {
    "off": None,
    "error": "ERROR",
    "warn": "WARNING",
    "warning": "WARNING",
    "info": "INFO",
    "debug": "DEBUG",
    "trace": "TRACE",
}

# pict-rs's targets, as a pict-rs filter names them, and the loggers that do their work here.
TARGETS = {
    "pict_rs": "pictrs_trio",
    "tracing_actix_web": "pictrs_trio.http.access_log",  # pict-rs's request log
    "actix_web": "pictrs_trio.http",
    "actix_server": "hypercorn",
}

_DIRECTIVE = re.compile(r"(?:(?P<target>[A-Za-z_][\w.:-]*)(?:\[[^\]]*\])?=)?(?P<level>\w+)")


class LogFilter(msgspec.Struct, frozen=True, kw_only=True):
    """A default level (None: off) and levels per logger name prefix."""

    default: str | None = "ERROR"
    targets: dict[str, str | None] = {}

    def level_of(self, name: str) -> str | None:
        """The level for logger ``name``: its longest matching prefix's, else the default."""
        best, level = -1, self.default
        for prefix, value in self.targets.items():
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), value
        return level


def parse(text: str) -> LogFilter:
    """Raises ValueError naming the directive that does not parse."""
    default: str | None = "ERROR"  # EnvFilter with no default directive: errors only
    targets: dict[str, str | None] = {}
    for raw in text.split(","):
        directive = raw.strip()
        if not directive:
            continue
        match = _DIRECTIVE.fullmatch(directive)
        level_name = match["level"].lower() if match else ""
        if match is None or level_name not in LEVELS:
            raise ValueError(
                f"{directive!r} is not a filter directive; expected LEVEL or TARGET=LEVEL with "
                "LEVEL one of off, error, warn, info, debug, trace"
            )
        level = LEVELS[level_name]
        target = match["target"]
        if target is None:
            default = level
        else:
            name = target.replace("::", ".")
            head, _, rest = name.partition(".")
            mapped = TARGETS.get(head)
            if mapped is not None:
                name = f"{mapped}.{rest}" if rest else mapped
            targets[name] = level
    return LogFilter(default=default, targets=targets)
