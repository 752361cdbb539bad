"""Start the service: one server process, or a light supervisor over several.

    check settings, files and tools -> listen -> preflight (repo, store, temp folder)
      server.workers = 1: service.run on that socket
      server.workers > 1: supervisor.supervise, whose children all accept on it

The port is taken before anything is opened: a second instance started by mistake fails
there, before it could migrate the running one's database; so is the scrape listener's
(``metrics.prometheus_address``), served by the one server process or by the supervisor.
Kept apart from ``service`` so that the supervisor process of ``server.workers`` > 1 does
not import the web stack (but for the scrape listener's hypercorn, when metrics are on).
"""

from __future__ import annotations

from collections.abc import Sequence

import trio
from loguru import logger

from pictrs_trio.config import Config
from pictrs_trio.runtime import logging as pictrs_logging
from pictrs_trio.runtime import startup


def run(config: Config, warnings: Sequence[str] = ()) -> None:
    """Serve until SIGTERM/SIGINT. Blocks. Raises ConfigError (a setting that cannot work:
    exit status 2) and StartupError (exit status 1), each one line naming what. ``warnings``:
    the configuration's ignored and not-acting keys, logged once logging is set up."""
    startup.check_config(config)
    startup.check_files(config)
    if not config.server.danger_dummy_mode:  # pict-rs: dummy mode runs without the tools
        startup.check_tools()
    pictrs_logging.setup(config.tracing.logging)
    for message in warnings:
        logger.warning("configuration: {}", message)
    if config.server.danger_dummy_mode:
        logger.warning(
            "server.danger_dummy_mode is on: uploads are stored as they come, unvalidated and "
            "with made-up details, and every variant is the original; for tests only"
        )
    listener = startup.open_listener(config)
    try:
        scrape = startup.open_metrics_listener(config)
    except BaseException:
        listener.close()
        raise
    try:
        trio.run(startup.preflight, config)
    except BaseException:
        listener.close()
        if scrape is not None:
            scrape.close()
        raise
    # hypercorn owns the scrape listener from here, wherever it runs.
    scrape_fd = scrape.detach() if scrape is not None else None
    if config.server.workers > 1:
        from pictrs_trio.runtime import supervisor

        with listener:  # each child serves (and closes) its inherited copy
            trio.run(supervisor.supervise, config, listener, scrape_fd)
        return
    from pictrs_trio.runtime import service

    service.run(config, listener.detach(), scrape_fd)  # hypercorn owns the socket from here
