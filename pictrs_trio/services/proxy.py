"""Proxied media: ``?proxy=url`` on the original, details, process and internal routes.

A URL is downloaded and ingested on its first GET of an original or a variant, then
related to the alias it got; later requests use that alias. Every access through
``?proxy=`` refreshes the relation's last-access time (not in read-only mode), and
``ExpireProxies`` removes the aliases unused for ``media.retention.proxy``.

Concurrent first requests for one URL download once in this process (single flight keyed by
the URL); across processes the repo's first-writer-wins relation decides, and the loser's
freshly ingested alias is removed again (pict-rs 0.5.16).
"""

from __future__ import annotations

import time

from pictrs_trio.config import Config, parse_retention
from pictrs_trio.rules.errors import ProxyNotFound
from pictrs_trio.rules.validate import UploadLimits
from pictrs_trio.services.fetch import download_and_ingest
from pictrs_trio.services.ingest import IngestSession, upload_operations
from pictrs_trio.services.state import AppState

TOUCH_MAX_SECONDS = 60.0


def touch_interval_ns(config: Config) -> int:
    """How stale a proxy's access time may be before a request writes a new one.

    pict-rs writes on every access; Lemmy sends each proxied image view through here, so a
    write per hit would queue every read behind the writer. Retention is measured in days,
    so an access time a minute old (or an eighth of a short test retention) is as good.
    """
    retention = parse_retention(config.media.retention.proxy).total_seconds()
    return int(min(TOUCH_MAX_SECONDS, retention / 8) * 1e9)


async def lookup(state: AppState, url: str) -> str | None:
    """The alias ``url`` was proxied as (access refreshed), or None; never downloads."""
    found = await state.repo.proxy_alias(url)
    if found is None:
        return None
    if (
        not state.config.server.read_only
        and time.time_ns() - found.accessed_ns >= touch_interval_ns(state.config)
    ):
        await state.repo.touch_proxy(url)
    return found.alias


async def existing(state: AppState, url: str) -> str:
    """Like ``lookup``; raises ProxyNotFound (404 proxy-not-found) for an unknown URL."""
    alias = await lookup(state, url)
    if alias is None:
        raise ProxyNotFound("No proxied media for that URL")
    return alias


async def fetch(state: AppState, url: str) -> str:
    """The alias for ``url``, downloading and ingesting it first if it was never proxied.

    Raises ReadOnly for an unknown URL in read-only mode, and whatever the download or
    ingest raises (DownloadFailed, HttpClientError, FileTooLarge, validation errors).
    """
    while True:
        alias = await lookup(state, url)
        if alias is not None:
            return alias
        state.require_writable()
        async with state.generations.lead_or_wait(f"proxy:{url}") as leading:
            if leading:
                # A fetch that ended between our look-up and now has related it already.
                alias = await lookup(state, url)
                return alias if alias is not None else await _download(state, url)
        # Someone else fetched it: look again (if they failed, we try ourselves).


async def _download(state: AppState, url: str) -> str:
    async with IngestSession(state) as session:
        done = await download_and_ingest(
            state, session, url, limits=UploadLimits(), operations=upload_operations(state, [])
        )
        winner = await state.repo.relate_proxy(url, done.alias)
        if winner == done.alias:
            session.disarm()
        # else another process related the URL first: leaving the armed session removes
        # our alias (and our file, unless it is the same content as theirs).
    return winner
