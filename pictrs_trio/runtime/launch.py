"""Start the service: one server process, or a light supervisor over several.

Kept apart from ``service`` so that the supervisor process of ``server.workers`` > 1 does
not import the web stack, the repo or the media tools it never uses.
"""

from __future__ import annotations

from pictrs_trio.config import Config


def check(config: Config) -> None:
    """Settings that parse but cannot work stop start-up with a message (exit status 1)."""
    if config.server.danger_dummy_mode:
        raise SystemExit("error: server.danger_dummy_mode is not supported by pictrs-trio")
    if config.media.preprocess_steps:
        from pictrs_trio.rules import variants
        from pictrs_trio.rules.errors import PictrsError

        try:
            variants.parse_steps(config.media.preprocess_steps)
        except PictrsError as exc:
            raise SystemExit(f"error: media.preprocess_steps: {exc.msg}") from None


def run(config: Config) -> None:
    """Serve until SIGTERM/SIGINT. Blocks."""
    check(config)
    if config.server.workers > 1:
        import trio

        from pictrs_trio.runtime import logging as pictrs_logging
        from pictrs_trio.runtime import supervisor

        pictrs_logging.setup(config.tracing.logging)
        trio.run(supervisor.supervise, config)
        return
    from pictrs_trio.runtime import service

    service.run(config)
