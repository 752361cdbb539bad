"""In-process single flight: one task does the work for a key, the others wait for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


class SingleFlight:
    """Lives on AppState; one per process. (Across processes the repo's claims do this.)"""

    def __init__(self) -> None:
        self._running: dict[str, trio.Event] = {}

    @asynccontextmanager
    async def lead_or_wait(self, key: str) -> AsyncIterator[bool]:
        """Yields True to the one task that should do ``key`` now; the others wait until
        it is done, however it ends, and get False (then they look again)."""
        event = self._running.get(key)
        if event is not None:
            await event.wait()
            yield False
            return
        event = self._running[key] = trio.Event()
        try:
            yield True
        finally:
            del self._running[key]
            event.set()
