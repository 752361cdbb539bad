"""The metadata repo: small Protocols, one per concern, that a backend implements.

    HealthRepo    is the database there and writable
    MediaRepo     originals: hashes, details, aliases and their delete tokens
    VariantRepo   variants and motion stills, their access times and expiry
    UploadRepo    backgrounded uploads and their outcomes
    ProxyRepo     proxied URLs and their access times
    HashRepo      every stored file at once: pages newest first, counts, blurhashes, and
                  pruning the records of files gone from the store
    SettingsRepo  server-wide settings: the not-found image, job progress
    StoreMigrationRepo  ``migrate-store``: its runs, the files to move, repointing rows
    BackupRepo    a consistent copy of the whole database (``/internal/export``)
    Repo          all of them, plus the journal's view of the database

Backends: ``sqlite.SqliteRepo`` (APSW, the embedded default); a postgres one implements the
same Protocols. Handlers and services only ever see these; SQL stays in the backend, which
translates its own exceptions into ``RepoError`` (and ``DuplicateAlias`` for a taken alias)
in one place.

Write-ahead: methods that make a new store file part of the state take ``owner``, the
journal owner whose intent on that file (``services/storing.py``) they fulfil in the same
transaction; they raise ``journal.IntentLost`` (nothing written) if that intent is gone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import apsw

from pictrs_trio.repo.records import (
    Details,
    FileToMove,
    Found,
    Hash,
    HashEntry,
    HashPage,
    MovePage,
    MovePosition,
    PendingUpload,
    Proxied,
    RemovedAlias,
    StoredHash,
    StoreMigration,
    UploadCommit,
    UploadOutcome,
)

__all__ = [
    "BackupRepo",
    "Details",
    "FileToMove",
    "Found",
    "Hash",
    "HashEntry",
    "HashPage",
    "HashRepo",
    "HealthRepo",
    "JournalDb",
    "MediaRepo",
    "MovePage",
    "MovePosition",
    "PendingUpload",
    "Proxied",
    "ProxyRepo",
    "RemovedAlias",
    "Repo",
    "SettingsRepo",
    "StoreMigration",
    "StoreMigrationRepo",
    "StoredHash",
    "UploadCommit",
    "UploadOutcome",
    "UploadRepo",
    "VariantRepo",
]

T = TypeVar("T")


class HealthRepo(Protocol):
    async def health(self) -> None:
        """Write and read back a value. Raises RepoError when the database does not answer."""


class MediaRepo(Protocol):
    async def commit_upload(
        self,
        *,
        hash: Hash,
        identifier: str,
        details: Details,
        alias: str,
        delete_token: str,
        owner: str,
        upload_id: str | None = None,
    ) -> UploadCommit:
        """In one transaction: create the hash (or find it), store details, create the alias
        (and, with ``upload_id``, record that backgrounded upload's outcome, once, and let
        go of its raw bytes with their RemoveFiles job); fulfil ``owner``'s intent on
        ``identifier``.

        If the hash exists already the existing identifier and details are kept and returned
        with ``deduplicated=True`` (the intent stays: the caller discards its copy). Raises
        DuplicateAlias if ``alias`` is taken, AlreadyClaimed if the upload has an outcome
        already (an ingest that ran twice), RepoError; nothing is written then.
        """
        ...

    def find_original_now(self, alias: str) -> Found | None:
        """``find_original`` without leaving the event loop thread (the read path)."""
        ...

    async def find_original(self, alias: str) -> Found | None:
        """The alias's file with its details, in one read; None for an unknown alias."""
        ...

    async def alias_hash(self, alias: str) -> Hash | None: ...

    async def delete_token(self, alias: str) -> str | None: ...

    async def aliases_for_hash(self, hash: Hash) -> list[str]: ...

    async def details(self, identifier: str) -> Details | None: ...

    async def relate_details(self, identifier: str, details: Details) -> None: ...

    async def remove_alias(self, alias: str) -> RemovedAlias | None:
        """Remove the alias (and its token) in one transaction; None if it did not exist.

        If it was the file's last alias, the hash, its details and its variant rows go too,
        with a queued RemoveFiles job for their identifiers (also returned).
        """
        ...

    async def identifiers(self) -> set[str]:
        """Every store identifier some row references (what the store should hold)."""
        ...

    async def known_identifiers(self, identifiers: Sequence[str]) -> set[str]:
        """Which of ``identifiers`` some row references: one indexed look-up each, for a
        page of a store's listing (the store audit), where ``identifiers`` reads them all."""
        ...


class VariantRepo(Protocol):
    def find_variant_now(self, alias: str, variant: str) -> Found | None:
        """``find_variant`` without leaving the event loop thread (the read path)."""
        ...

    async def find_variant(self, alias: str, variant: str) -> Found | None:
        """The alias's hash and that variant (identifier None when not rendered yet)."""
        ...

    async def commit_variant(
        self,
        hash: Hash,
        variant: str,
        identifier: str,
        details: Details,
        *,
        owner: str,
        lease: str | None = None,
    ) -> tuple[str, bool]:
        """Record a rendered variant with its details, fulfilling ``owner``'s intent on its
        file and releasing the render's journal ``lease``, in one transaction. Returns the
        identifier on record and whether it is ours (False: another render won; the caller
        discards its file). Raises RepoError (also when the hash is gone)."""
        ...

    async def motion_identifier(self, hash: Hash) -> str | None: ...

    async def commit_motion(
        self,
        hash: Hash,
        identifier: str,
        details: Details,
        *,
        owner: str,
        lease: str | None = None,
    ) -> tuple[str, bool]:
        """Record the file's motion still (first writer wins), like ``commit_variant``."""
        ...

    async def forget_variant(self, hash: Hash, variant: str, identifier: str) -> None:
        """Drop a variant row whose file is missing (variants are stored without fsync, so
        a power cut can lose one); the next request renders it again."""
        ...

    async def touch_variants(self, items: list[tuple[bytes, str, int]]) -> None:
        """Record last-access times: (hash key, variant, unix ns) per accessed variant."""
        ...

    async def expire_variants(self, accessed_before_ns: int, limit: int) -> int:
        """Remove up to ``limit`` variants last accessed before the time (their RemoveFiles
        job queued in the same transaction); returns how many."""
        ...

    async def remove_all_variants(self, limit: int) -> int: ...


class UploadRepo(Protocol):
    async def create_uploads(self, uploads: list[PendingUpload], *, owner: str) -> None:
        """Record pending uploads and queue their ingest jobs in one transaction; the rows
        own the raw files from then on (``owner``'s intents on them are fulfilled)."""
        ...

    async def upload_outcome(self, upload_id: str) -> tuple[bool, UploadOutcome | None]:
        """(exists, outcome): outcome None while the ingest has not finished."""
        ...

    async def finish_upload(self, upload_id: str, outcome: UploadOutcome) -> bool:
        """Record a failed ingest's outcome (unless it has one) and let go of the raw bytes
        with their RemoveFiles job, in one transaction; True when that job was queued."""
        ...

    async def claim_upload(self, upload_id: str) -> tuple[bool, bool]:
        """Delete a finished upload record: (claimed, a RemoveFiles job was queued for raw
        bytes it still held). claimed is False when it was gone already."""
        ...

    async def upload_raw_identifier(self, upload_id: str) -> str | None:
        """Where the upload's raw bytes are now (``migrate-store`` moves them: the row is
        repointed, its queued ingest job still names the old identifier); None once let
        go of, or for an unknown upload."""
        ...

    async def release_upload_raw(self, upload_id: str) -> bool:
        """The upload's raw bytes are done with: the row lets go of them and their
        RemoveFiles job is queued, in one transaction. False when there was nothing."""
        ...


class ProxyRepo(Protocol):
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


class HashRepo(Protocol):
    async def hash_page(
        self, *, start: Hash | None = None, before_ns: int | None = None, limit: int
    ) -> HashPage:
        """Up to ``limit`` files newest first, each with its aliases and details, from the
        file ``start`` (unknown: from the newest), else from the newest created strictly
        before ``before_ns`` (unix ns), else from the newest; one snapshot. Raises
        RepoError."""
        ...

    async def hashes_after(
        self, position: tuple[int, bytes] | None, limit: int
    ) -> list[StoredHash]:
        """The next ``limit`` files in page order after ``position`` (a file's
        ``StoredHash.position``; None: from the newest): a walk over every file, batch by
        batch, that files added or removed meanwhile cannot upset."""
        ...

    async def count_hashes(self) -> int: ...

    async def prune_hash(
        self, hash: Hash, identifier: str, *, counter: str | None = None
    ) -> list[str] | None:
        """Remove every record of a file whose original ``identifier`` is gone from the
        store (aliases, variants, motion still, details, the hash), queue the removal of
        every file they named, and add one to the setting ``counter``, in one transaction.
        Returns the identifiers queued for removal, or None when the hash is gone or now
        names another identifier (nothing changed). Raises RepoError."""
        ...

    async def blurhash(self, hash: Hash) -> str | None: ...

    async def relate_blurhash(self, hash: Hash, blurhash: str) -> None:
        """Record the file's blurhash (pict-rs keeps it with the hash: computed once)."""
        ...


class SettingsRepo(Protocol):
    async def setting(self, key: str) -> bytes | None: ...

    async def counter(self, key: str) -> int:
        """A setting kept as a count (0 when absent)."""
        ...

    async def set_settings(self, values: dict[str, bytes | None]) -> None:
        """Set the values (None: remove the key) in one transaction."""
        ...

    def not_found_now(self) -> tuple[str, Found] | None:
        """(alias, its file) of the image served in place of unknown aliases, or None when
        none is set or its alias is gone; on the event loop thread (the read path's misses
        ask, never its hits)."""
        ...

    async def set_not_found(self, alias: str) -> bool:
        """Make ``alias`` the not-found image; False (nothing set) when it does not exist."""
        ...


class StoreMigrationRepo(Protocol):
    """What ``migrate-store`` keeps in the repo (services/migrate.py): one run at a time,
    and per file, once its copy is in the new store, the rows repointed to it."""

    async def store_migration(self) -> StoreMigration | None:
        """The unfinished run if any (the server refuses to start then), else the last
        finished one, else None."""
        ...

    async def begin_store_migration(
        self, from_store: str, to_store: str, command: str | None = None
    ) -> StoreMigration:
        """A new run, or the unfinished one as it is (its stores may differ: the caller
        checks). ``command``: the command line running it, recorded with the run (the
        unfinished one's too when its stores are these: the latest that ran it)."""
        ...

    async def files_to_move(self, position: MovePosition, limit: int) -> MovePage:
        """The files not moved yet that the next ``limit`` hashes name (motion still,
        variants, original), then the raw bytes of pending uploads; ``next`` None at the
        end. Files moved meanwhile drop out, so a resumed walk skips what is done."""
        ...

    async def move_counts(self) -> tuple[int, int]:
        """(files the rows name, files recorded as moved by the unfinished run)."""
        ...

    async def commit_moved_file(self, old: str, new: str, *, owner: str) -> int:
        """Repoint every row naming ``old`` (and its details) to ``new``, record the move,
        and fulfil ``owner``'s intent on ``new``, in one transaction. Returns how many rows
        were repointed; 0 (nothing written, the intent stays) when none named ``old``.
        Raises IntentLost, RepoError."""
        ...

    async def finish_store_migration(self) -> None:
        """Record the run as finished and forget the per-file progress, together."""
        ...

    async def moved_files(self, after: str, limit: int) -> list[tuple[str, str]]:
        """(old, new) identifiers of the next ``limit`` files the unfinished run moved,
        by old identifier after ``after`` ("" for the first)."""
        ...

    async def move_back(self, pairs: list[tuple[str, str]], remove: list[str]) -> int:
        """``migrate-store --abandon``: repoint every row naming each ``new`` (and its
        details) back to its ``old`` and forget the pair, and queue the removal of
        ``remove`` (copies in the new store) on the ``migrate`` queue, in one transaction.
        Returns how many pairs were moved back."""
        ...

    async def abandon_store_migration(self) -> bool:
        """Record the unfinished run as abandoned, if no moved file is left (then the
        latest run is the last finished one again). False when some are left."""
        ...


class BackupRepo(Protocol):
    async def export(self, folder: Path) -> Path:
        """Write a consistent copy of the database into a new folder inside ``folder``,
        atomically (complete or absent), while the repo stays in use; returns the new
        folder. Raises RepoError."""
        ...


class JournalDb(Protocol):
    """The journal's ``Database``: its SQL on the repo's connections."""

    async def write(self, fn: Callable[[apsw.Connection], T]) -> T: ...

    async def read(self, fn: Callable[[apsw.Connection], T]) -> T: ...


class Repo(
    HealthRepo,
    MediaRepo,
    VariantRepo,
    UploadRepo,
    ProxyRepo,
    HashRepo,
    SettingsRepo,
    StoreMigrationRepo,
    BackupRepo,
    Protocol,
):
    def journal_db(self) -> JournalDb:
        """The journal's view of this database: its writes queue with the repo's own."""
        ...

    async def aclose(self) -> None: ...
