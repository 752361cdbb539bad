"""Variant access times, for retention (``media.retention.variants``).

pict-rs writes "accessed now" on every variant request. A write per cached hit would cost
more than the hit itself, so accesses are gathered in memory and written in one transaction
every few seconds. A crash loses at most that interval of access times, which only matters
for retention measured in days.
"""

from __future__ import annotations

import time

import trio
from loguru import logger

from pictrs_trio.repo import Repo

FLUSH_SECONDS = 5.0


class AccessLog:
    """Lives on AppState; ``run`` flushes it from the service nursery."""

    def __init__(self) -> None:
        self._pending: dict[tuple[bytes, str], int] = {}

    def record(self, hash_key: bytes, variant: str) -> None:
        self._pending[(hash_key, variant)] = time.time_ns()

    async def flush(self, repo: Repo) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        try:
            await repo.touch_variants([(h, v, t) for (h, v), t in batch.items()])
        except Exception:
            logger.exception("could not record {} variant accesses", len(batch))
            for key, t in batch.items():  # keep them for the next round
                self._pending.setdefault(key, t)

    async def run(self, repo: Repo, *, interval: float = FLUSH_SECONDS) -> None:
        try:
            while True:
                await trio.sleep(interval)
                await self.flush(repo)
        finally:
            with trio.move_on_after(5, shield=True):
                await self.flush(repo)
