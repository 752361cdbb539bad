"""Start the service: one server process, or a light supervisor over several.

    check settings, files and tools -> preflight (repo, store, temp folder) -> listen
      server.workers = 1: service.run on that socket
      server.workers > 1: supervisor.supervise, whose children all accept on it

Kept apart from ``service`` so that the supervisor process of ``server.workers`` > 1 does
not import the web stack or the media tools it never uses.
"""

from __future__ import annotations

import trio

from pictrs_trio.config import Config
from pictrs_trio.runtime import logging as pictrs_logging
from pictrs_trio.runtime import startup


def run(config: Config) -> None:
    """Serve until SIGTERM/SIGINT. Blocks. Raises ConfigError (a setting that cannot work:
    exit status 2) and StartupError (exit status 1), each one line naming what."""
    startup.check_config(config)
    startup.check_files(config)
    startup.check_tools()
    pictrs_logging.setup(config.tracing.logging)
    trio.run(startup.preflight, config)
    listener = startup.open_listener(config)
    if config.server.workers > 1:
        from pictrs_trio.runtime import supervisor

        with listener:  # each child serves (and closes) its inherited copy
            trio.run(supervisor.supervise, config, listener.fileno())
        return
    from pictrs_trio.runtime import service

    service.run(config, listener.detach())  # hypercorn owns the socket from here
