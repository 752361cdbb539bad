"""Records the repo stores and returns. msgspec Structs, frozen; new fields get defaults."""

from __future__ import annotations

import datetime as dt

import msgspec

from pictrs_trio.rules.formats import FORMAT_FROM_HASH_BYTE, MediaFormat


class Hash(msgspec.Struct, frozen=True, kw_only=True):
    """Identity of one stored file: sha256 of the stored bytes, their length, their format.

    ``key()`` is pict-rs's 39-byte hash key (sha256 ‖ 48-bit size ‖ format byte).
    """

    sha256: bytes
    size: int
    format: MediaFormat

    def key(self) -> bytes:
        return (
            self.sha256
            + (self.size & 0xFFFF_FFFF_FFFF).to_bytes(6, "big")
            + bytes([self.format.hash_byte])
        )

    @classmethod
    def from_key(cls, key: bytes) -> Hash:
        if len(key) != 39:
            raise ValueError("hash key must be 39 bytes")
        return cls(
            sha256=key[:32],
            size=int.from_bytes(key[32:38], "big"),
            format=FORMAT_FROM_HASH_BYTE[key[38]],
        )


class Details(msgspec.Struct, frozen=True, kw_only=True):
    """What we know about one stored file (original, variant, or motion still)."""

    width: int
    height: int
    frames: int | None
    format: MediaFormat
    created_at: dt.datetime  # aware, UTC

    @property
    def content_type(self) -> str:
        return self.format.content_type


class UploadCommit(msgspec.Struct, frozen=True, kw_only=True):
    """Outcome of ``Repo.commit_upload``."""

    identifier: str  # the identifier now holding the content (the existing one when deduped)
    details: Details  # the stored details (the existing ones when deduped)
    deduplicated: bool  # True: the hash existed; the caller's freshly stored file is unused


class RemovedAlias(msgspec.Struct, frozen=True, kw_only=True):
    """Outcome of ``Repo.remove_alias``."""

    hash: Hash
    # When the alias was the file's last one, the file's rows are gone too and these are the
    # store identifiers (original, variants, motion still) to delete; otherwise empty.
    orphaned_identifiers: list[str] = []


class Found(msgspec.Struct, frozen=True, kw_only=True):
    """A joined look-up: an alias's hash and the identifier (and details) asked for."""

    hash: Hash
    identifier: str | None  # None: the original or variant is not stored (yet)
    details: Details | None  # None: no details recorded for that identifier


class UploadOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """How a backgrounded upload ended: an alias, or the error a client claims (422)."""

    alias: str | None = None
    delete_token: str | None = None
    error_msg: str | None = None
    error_code: str | None = None


class PendingUpload(msgspec.Struct, frozen=True, kw_only=True):
    """A backgrounded upload to record: the raw bytes' identifier and its ingest job."""

    upload_id: str
    raw_identifier: str
    query: list[tuple[str, str]] = []


class Proxied(msgspec.Struct, frozen=True, kw_only=True):
    """A URL fetched through ``?proxy=``: the alias it was ingested as, and when a client
    last asked for it (unix ns; proxied media expires by ``media.retention.proxy``)."""

    alias: str
    accessed_ns: int


class HashEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One stored file on a page of ``GET /internal/hashes``: its aliases (sorted) and the
    original's details (None when none are recorded)."""

    hash: Hash
    aliases: list[str]
    details: Details | None


class HashPage(msgspec.Struct, frozen=True, kw_only=True):
    """Up to ``limit`` files, newest first (pict-rs ``src/repo.rs`` ``HashPage``). ``prev``
    is the first file of the page before (newer; None on the first page), ``next`` the first
    of the page after (older; None on the last)."""

    limit: int
    hashes: list[HashEntry]
    prev: Hash | None = None
    next: Hash | None = None


class StoredHash(msgspec.Struct, frozen=True, kw_only=True):
    """A stored file in the order pages list them: (``created_ns``, hash key) descending."""

    hash: Hash
    identifier: str
    created_ns: int

    @property
    def position(self) -> tuple[int, bytes]:
        """Where a walk resumes after this file (``HashRepo.hashes_after``)."""
        return self.created_ns, self.hash.key()


class StoreMigration(msgspec.Struct, frozen=True, kw_only=True):
    """A ``migrate-store`` run as the repo records it (services/migrate.py). ``from_store``
    and ``to_store`` describe the stores as the command line names them; ``moved`` counts
    the files recorded as moved while the run is unfinished (0 once it finished). A run
    with id 0 stands for progress rows no run names (a repo whose migration another program
    began). ``command``: the command line that last ran it (secrets left out), None for
    runs recorded before schema version 7."""

    id: int
    from_store: str
    to_store: str
    started_ns: int
    finished_ns: int | None = None
    moved: int = 0
    command: str | None = None

    @property
    def finished(self) -> bool:
        return self.finished_ns is not None


class FileToMove(msgspec.Struct, frozen=True, kw_only=True):
    """A stored file some row names, not moved yet: its identifier, what names it
    (``original``, ``motion``, ``variant`` or ``upload``: the raw bytes of a pending
    backgrounded upload) and its details when recorded."""

    identifier: str
    what: str
    details: Details | None = None


class MovePosition(msgspec.Struct, frozen=True, kw_only=True):
    """Where a walk over the files to move resumes: after the hash ``hash_key`` (None: from
    the first), then, with ``uploads``, after the upload ``upload_id``."""

    hash_key: bytes | None = None
    uploads: bool = False
    upload_id: str | None = None


class MovePage(msgspec.Struct, frozen=True, kw_only=True):
    """Files to move from one batch of the walk; ``next`` None once the walk is over."""

    files: list[FileToMove]
    next: MovePosition | None
