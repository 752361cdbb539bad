"""Online backup of the SQLite repo (``POST /internal/export``, pict-rs's sled export in
``src/repo/sled.rs``): SQLite's backup API copies the database as one consistent snapshot
while the server keeps writing (in WAL mode a reader never blocks the writer).

Each export is a folder ``<export_path>/<UTC time, RFC 3339>/`` holding ``pictrs.sqlite3``,
a standalone database file (rollback journal, nothing beside it), so restoring is copying
that folder back as the repo's path (docs/operations.md). It is written under a hidden
temporary name in the same folder and renamed into place when complete and synced: an
export that fails or is cut short by a crash never looks finished.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import uuid
from pathlib import Path

import apsw

from pictrs_trio.rules.errors import RepoError

PARTIAL_PREFIX = ".partial-"


def export_name(now_ns: int) -> str:
    """The folder name of an export made at ``now_ns``: RFC 3339 UTC with nanoseconds, as
    pict-rs names its exports (``2023-07-08T22:26:21.194126713Z``)."""
    seconds, nanos = divmod(now_ns, 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def export_from(conn: apsw.Connection, folder: Path, name: str, db_file_name: str) -> Path:
    """Copy the database ``conn`` reads into ``folder/name/db_file_name``; returns the
    export's folder. Raises RepoError (nothing is left behind then)."""
    final = folder / name
    partial = folder / f"{PARTIAL_PREFIX}{name}-{uuid.uuid4().hex}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        partial.mkdir()
        target = partial / db_file_name
        dest = apsw.Connection(str(target))
        try:
            with dest.backup("main", conn, "main") as copy:
                # One step copies every page under one read transaction of the source:
                # a consistent snapshot, however much is written meanwhile.
                copy.step(-1)
            dest.pragma("journal_mode", "delete")  # standalone: no -wal or -shm beside it
            check = dest.pragma("quick_check")
            if check != "ok":
                raise RepoError(f"Exported database failed its check: {check}")
        finally:
            dest.close()
        _fsync(target)
        _fsync(partial)
        os.rename(partial, final)  # complete, or not there at all
        _fsync(folder)
    except BaseException as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(exc, apsw.Error | OSError):
            raise RepoError(f"Could not export the database to {folder}: {exc}") from exc
        raise
    return final
