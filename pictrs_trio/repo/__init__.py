"""The metadata repo: the interface the rest of pictrs-trio talks to.

Backends: ``sqlite.SqliteRepo`` (APSW, the embedded default); postgres later. Handlers and
ingest only ever see ``Repo``; SQL stays in the backend. Backends translate their own
exceptions into ``RepoError`` (and ``DuplicateAlias`` for a taken alias) in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import apsw

from pictrs_trio.repo.records import (
    Details,
    Found,
    Hash,
    PendingUpload,
    Proxied,
    RemovedAlias,
    UploadCommit,
    UploadOutcome,
)

__all__ = [
    "Details",
    "Found",
    "Hash",
    "JournalDb",
    "PendingUpload",
    "Proxied",
    "RemovedAlias",
    "Repo",
    "UploadCommit",
    "UploadOutcome",
]

T = TypeVar("T")


class Repo(Protocol):
    async def health(self) -> None:
        """Write and read back a value. Raises RepoError when the database does not answer."""

    async def commit_upload(
        self,
        *,
        hash: Hash,
        identifier: str,
        details: Details,
        alias: str,
        delete_token: str,
        upload_id: str | None = None,
    ) -> UploadCommit:
        """In one transaction: create the hash (or find it), store details, create the alias
        (and, with ``upload_id``, record that backgrounded upload's outcome).

        If the hash exists already the existing identifier and details are kept and returned
        with ``deduplicated=True``. Raises DuplicateAlias if ``alias`` is taken (nothing is
        written then), RepoError on database failure.
        """
        ...

    async def alias_hash(self, alias: str) -> Hash | None: ...

    async def delete_token(self, alias: str) -> str | None: ...

    async def hash_identifier(self, hash: Hash) -> str | None: ...

    async def aliases_for_hash(self, hash: Hash) -> list[str]: ...

    async def details(self, identifier: str) -> Details | None: ...

    async def relate_details(self, identifier: str, details: Details) -> None: ...

    async def remove_alias(self, alias: str) -> RemovedAlias | None:
        """Remove the alias (and its token) in one transaction; None if it did not exist.

        If it was the file's last alias, the hash, its details and its variant rows go too
        and their identifiers are returned for the caller to delete from the store.
        """
        ...

    async def identifiers(self) -> set[str]:
        """Every store identifier some row references (for orphan sweeps)."""
        ...

    async def variant_identifier(self, hash: Hash, variant: str) -> str | None:
        """The stored identifier of ``variant`` (the variant key) of ``hash``, or None."""
        ...

    async def relate_variant(self, hash: Hash, variant: str, identifier: str) -> str:
        """Record ``identifier`` as ``variant`` of ``hash``; returns the identifier now on
        record, an earlier one if another generation won (the caller removes its own file).
        Raises RepoError, also when the hash is gone."""
        ...

    async def get_setting(self, key: str) -> bytes | None: ...

    async def set_setting(self, key: str, value: bytes) -> None: ...

    def find_variant_now(self, alias: str, variant: str) -> Found | None:
        """``find_variant`` without leaving the event loop thread (serving fast path)."""
        ...

    def find_original_now(self, alias: str) -> Found | None: ...

    async def find_original(self, alias: str) -> Found | None: ...

    async def find_variant(self, alias: str, variant: str) -> Found | None: ...

    async def motion_identifier(self, hash: Hash) -> str | None: ...

    async def commit_variant(
        self,
        hash: Hash,
        variant: str,
        identifier: str,
        details: Details,
        release: str | None = None,
    ) -> tuple[str, bool]: ...

    async def commit_motion(
        self, hash: Hash, identifier: str, details: Details
    ) -> tuple[str, bool]: ...

    async def forget_variant(self, hash: Hash, variant: str, identifier: str) -> None:
        """Drop a variant row whose file is missing (variants are stored without fsync, so
        a power cut can lose one); the next request renders it again."""
        ...

    async def touch_variants(self, items: list[tuple[bytes, str, int]]) -> None: ...

    async def claim_generation(self, key: str, *, stale_after: float) -> bool: ...

    async def heartbeat_generation(self, key: str) -> None: ...

    async def release_generation(self, key: str) -> None: ...

    # -- backgrounded uploads --

    async def create_uploads(self, uploads: list[PendingUpload]) -> None:
        """Record pending uploads and queue their ingest jobs, in one transaction."""
        ...

    async def upload_outcome(self, upload_id: str) -> tuple[bool, UploadOutcome | None]:
        """(exists, outcome): outcome None while the ingest has not finished."""
        ...

    async def finish_upload(self, upload_id: str, outcome: UploadOutcome) -> None: ...

    async def claim_upload(self, upload_id: str) -> bool:
        """Delete a finished upload record; False when it was gone already."""
        ...

    async def forget_upload_raw(self, upload_id: str) -> None:
        """The upload's raw bytes are about to be deleted: stop counting them as used."""
        ...

    # -- variant upkeep (each pushes the job that deletes the files) --

    async def expire_variants(self, accessed_before_ns: int, limit: int) -> int: ...

    async def remove_all_variants(self, limit: int) -> int: ...

    # -- proxied media (``?proxy=url``) --

    async def proxy_alias(self, url: str) -> Proxied | None:
        """The alias ``url`` was ingested as, with its last access; None if never proxied."""
        ...

    async def relate_proxy(self, url: str, alias: str) -> str:
        """Relate ``url`` to ``alias``; returns the alias now on record, another one if a
        concurrent fetch related the URL first (the caller then removes its own alias)."""
        ...

    async def touch_proxy(self, url: str) -> None:
        """Record an access now (retention counts from the last one)."""
        ...

    async def expire_proxies(self, accessed_before_ns: int, limit: int) -> int:
        """Remove up to ``limit`` proxied aliases last accessed before the time; a file left
        without aliases goes too (its RemoveFiles job is queued in the same transaction).
        Returns how many were removed."""
        ...

    def journal_db(self) -> JournalDb:
        """The journal's view of this database: its writes queue with the repo's own."""
        ...

    async def aclose(self) -> None: ...


class JournalDb(Protocol):
    async def write(self, fn: Callable[[apsw.Connection], T]) -> T: ...

    async def read(self, fn: Callable[[apsw.Connection], T]) -> T: ...
