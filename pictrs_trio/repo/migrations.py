"""Schema versions of the SQLite repo, in code.

``PRAGMA user_version`` holds how many entries of ``MIGRATIONS`` a database has had applied.
``migrate`` applies the missing ones in order, all in one IMMEDIATE transaction, so a crash
or a second process opening the file at the same moment never sees a half-upgraded schema.
Migrations are append-only: never edit one that has shipped, add the next.

The tables translate pict-rs's postgres model (pict-rs ``src/repo/postgres/``). Times are
UTC nanoseconds since the epoch in INTEGER columns; hash keys are the raw 39 bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import apsw

from journal.schema import transaction

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SchemaTooNew", "migrate", "schema_version"]

Migration = Callable[[apsw.Connection], None]


class SchemaTooNew(Exception):
    """The file was written by a newer pictrs-trio; refusing to guess at its schema."""


def _v1_base(conn: apsw.Connection) -> None:
    """The postgres V0001–V0009 tables (the job queue lives in ``journal``, not here)."""
    conn.execute(
        """
        CREATE TABLE hashes (
            hash BLOB PRIMARY KEY CHECK (length(hash) = 39),
            identifier TEXT NOT NULL UNIQUE,
            motion_identifier TEXT UNIQUE,
            created_at INTEGER NOT NULL
        );
        CREATE INDEX hashes_created_at ON hashes (created_at, hash);

        CREATE TABLE variants (
            id INTEGER PRIMARY KEY,
            hash BLOB NOT NULL REFERENCES hashes (hash) ON DELETE CASCADE,
            variant TEXT NOT NULL,
            identifier TEXT NOT NULL,
            accessed INTEGER NOT NULL,
            UNIQUE (hash, variant)
        );

        -- No cascade from hashes: a file must lose its aliases before it can go.
        CREATE TABLE aliases (
            alias TEXT PRIMARY KEY,
            hash BLOB NOT NULL REFERENCES hashes (hash),
            token TEXT NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX aliases_hash ON aliases (hash);

        CREATE TABLE settings (
            key TEXT PRIMARY KEY,
            value BLOB NOT NULL
        ) WITHOUT ROWID;

        CREATE TABLE details (
            identifier TEXT PRIMARY KEY,
            json BLOB NOT NULL
        ) WITHOUT ROWID;

        CREATE TABLE store_migrations (
            old_identifier TEXT PRIMARY KEY,
            new_identifier TEXT NOT NULL UNIQUE
        ) WITHOUT ROWID;

        -- Removing a proxied alias removes its proxy row with it.
        CREATE TABLE proxies (
            url TEXT PRIMARY KEY,
            alias TEXT NOT NULL REFERENCES aliases (alias) ON DELETE CASCADE,
            accessed INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX proxies_alias ON proxies (alias);
        CREATE INDEX proxies_accessed ON proxies (accessed);

        CREATE TABLE uploads (
            id TEXT PRIMARY KEY,
            result BLOB,
            created_at INTEGER NOT NULL
        ) WITHOUT ROWID;
        """
    )


def _v2_blurhash_and_access(conn: apsw.Connection) -> None:
    """postgres V0012 (blurhash) plus an index for variant retention by last access."""
    conn.execute(
        """
        ALTER TABLE hashes ADD COLUMN blurhash TEXT;
        CREATE INDEX variants_accessed ON variants (accessed);
        CREATE INDEX variants_hash ON variants (hash);
        """
    )


def _v3_generation_claims(conn: apsw.Connection) -> None:
    """Who is rendering which variant right now (postgres V0014 ``keyed_notifications``):
    one row per key makes generation single-flight across processes sharing the file."""
    conn.execute(
        """
        CREATE TABLE generation_claims (
            key TEXT PRIMARY KEY,
            heartbeat INTEGER NOT NULL
        ) WITHOUT ROWID;
        """
    )


def _v4_upload_raw_identifier(conn: apsw.Connection) -> None:
    """Backgrounded uploads remember where their raw bytes are, so the orphan sweep keeps
    them while the ingest job is pending."""
    conn.execute("ALTER TABLE uploads ADD COLUMN raw_identifier TEXT")


def _v5_claims_move_to_the_journal(conn: apsw.Connection) -> None:
    """Render claims are journal leases now, held by owners whose death is noticed at once
    (journal/owners.py): the table of claims with their own heartbeats goes."""
    conn.execute("DROP TABLE generation_claims")


def _v6_store_migration_runs(conn: apsw.Connection) -> None:
    """``migrate-store`` runs (services/migrate.py): which stores one moves media between,
    and whether it finished; a run without ``finished`` keeps the server from starting.
    Per-file progress stays in ``store_migrations`` (postgres V0007). Rows are repointed by
    identifier, so variants and the raw bytes of pending uploads get an index on it."""
    conn.execute(
        """
        CREATE TABLE store_migration_runs (
            id INTEGER PRIMARY KEY,
            from_store TEXT NOT NULL,
            to_store TEXT NOT NULL,
            started INTEGER NOT NULL,
            finished INTEGER
        );
        CREATE INDEX variants_identifier ON variants (identifier);
        CREATE INDEX uploads_raw_identifier ON uploads (raw_identifier)
            WHERE raw_identifier IS NOT NULL;
        """
    )


def _v7_store_migration_command_and_abandoned(conn: apsw.Connection) -> None:
    """Per ``migrate-store`` run, the command line that started it (its secrets left out),
    so the server names the exact command that finishes it; and when it was abandoned
    (``--abandon``: its moved files were moved back), which makes it history, neither
    unfinished nor finished."""
    conn.execute(
        """
        ALTER TABLE store_migration_runs ADD COLUMN command TEXT;
        ALTER TABLE store_migration_runs ADD COLUMN abandoned INTEGER;
        """
    )


MIGRATIONS: Sequence[Migration] = (
    _v1_base,
    _v2_blurhash_and_access,
    _v3_generation_claims,
    _v4_upload_raw_identifier,
    _v5_claims_move_to_the_journal,
    _v6_store_migration_runs,
    _v7_store_migration_command_and_abandoned,
)
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: apsw.Connection) -> int:
    version = conn.pragma("user_version")
    assert isinstance(version, int)
    return version


def migrate(conn: apsw.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring the database to ``target`` (default: latest); returns the version before.

    Raises SchemaTooNew if the file is ahead of this code, apsw.Error on database failure
    (the transaction is rolled back then and the file keeps its old version).
    """
    # IMMEDIATE (``transaction``): take the write lock before reading the version, so two
    # processes opening a fresh file at once run the migrations once, one after the other.
    with transaction(conn):
        current = schema_version(conn)
        if current > len(MIGRATIONS):
            raise SchemaTooNew(
                f"database schema version {current} is newer than this program ({len(MIGRATIONS)})"
            )
        for step in MIGRATIONS[current:target]:
            step(conn)
        if target > current:
            conn.pragma("user_version", target)
    return current
