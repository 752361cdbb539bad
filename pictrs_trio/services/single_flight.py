"""In-process single flight: one task does the work for a key, the others wait for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from pictrs_trio.rules.errors import PictrsError
from pictrs_trio.services.tracing import NO_SPAN, Span


class _Flight:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: PictrsError | None = None


class SingleFlight:
    """Lives on AppState; one per process. (Across processes the repo's claims do this.)"""

    def __init__(self) -> None:
        self._running: dict[str, _Flight] = {}

    @asynccontextmanager
    async def lead_or_wait(self, key: str, waiting: Span = NO_SPAN) -> AsyncIterator[bool]:
        """Yields True to the one task that should do ``key`` now; the others wait until
        it is done and get False (then they look again). If the leader failed with a
        client-facing error (a dead URL, media a tool rejects), the waiters raise that same
        error instead of each trying again in turn; after any other ending (cancelled, a
        crash) they get False and may try themselves. ``waiting`` is a span entered only
        while waiting."""
        flight = self._running.get(key)
        if flight is not None:
            with waiting:
                await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            yield False
            return
        flight = self._running[key] = _Flight()
        try:
            yield True
        except PictrsError as exc:
            flight.error = exc
            raise
        finally:
            del self._running[key]
            flight.done.set()
