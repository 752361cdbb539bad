"""What is checked and opened before serving, and how a failure is told: one line naming
the address, path or key, then exit status 1 (2 for configuration errors; docs/cli.md).

    check_config   settings that parse but cannot work            ConfigError (2)
    check_files    TLS certificate and key                        StartupError (1)
    check_tools    ffmpeg, ffprobe, exiftool, cjxl, djxl, jxlinfo StartupError (1)
    open_listener  the one listening socket, bound by this process StartupError (1)
                   (and the scrape listener's, when metrics are on)
    preflight      the repo opens (and migrates), no migrate-store StartupError (1)
                   run is unfinished nor moved the media to
                   another store, the store (a folder, or a
                   bucket) and the temporary folder are writable

Preflight's look at the migrations is the early, friendly one; the one that counts is made
by each server process once it has joined the repo as a journal owner (runtime/service.py
``start_background``): from then on no ``migrate-store`` can begin beside it.

The listening socket is made here, not by hypercorn, so that a port in use is one clear
line, and so that several server processes share exactly one socket: the supervisor's,
inherited by its children. It does not set SO_REUSEPORT, so no other process can join it.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pictrs_trio.config import (
    Config,
    ConfigError,
    ObjectStorageStore,
    parse_address,
    parse_http_url,
    redact_url,
)

if TYPE_CHECKING:
    from pictrs_trio.repo.records import StoreMigration

BACKLOG = 1024


class StartupError(Exception):
    """pictrs-trio cannot start here: the message says what and where (exit status 1)."""


def parse_preprocess_steps(text: str) -> object:
    """``media.preprocess_steps`` as uploads apply it (the process routes' syntax). Raises
    ValueError."""
    from pictrs_trio.rules import variants
    from pictrs_trio.rules.errors import PictrsError

    try:
        return variants.parse_steps(text)
    except PictrsError as exc:
        raise ValueError(exc.msg) from None


# Values ``config.load_all`` checks with parsers that live above it (its ``checks``): their
# errors name the key, the value and the layer it came from, as the built-in ones do.
VALUE_CHECKS: dict[str, Callable[[str], object]] = {
    "media.preprocess_steps": parse_preprocess_steps,
}


def check_config(config: Config) -> None:
    """Settings that parse but cannot work. Raises ConfigError naming the key. (Loaded with
    VALUE_CHECKS, ``media.preprocess_steps`` was checked already, naming its source.)"""
    if config.media.preprocess_steps:
        try:
            parse_preprocess_steps(config.media.preprocess_steps)
        except ValueError as exc:
            raise ConfigError(
                f"media.preprocess_steps = {config.media.preprocess_steps!r}: {exc}"
            ) from None
    if isinstance(config.store, ObjectStorageStore):
        check_object_storage(config.store)


def check_object_storage(store: ObjectStorageStore) -> None:
    """The endpoints are URLs the store can use (``run``'s store, and migrate-store's FROM and
    TO). Raises ConfigError naming the key (and never a secret)."""
    from urllib.parse import urlsplit

    from pictrs_trio.store.s3 import addressing

    try:
        addressing(store.endpoint, store.bucket_name, store.use_path_style)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not store.use_path_style:
        check_virtual_host(store)
    if not store.bucket_name or "/" in store.bucket_name:
        raise ConfigError(f"store.bucket_name {store.bucket_name!r} is not a bucket name")
    if not store.region:
        raise ConfigError("store.region is empty: set it (any value for MinIO or Garage)")
    if store.public_endpoint is not None:
        from pictrs_trio.rules.egress import url_for_log

        parts = urlsplit(store.public_endpoint)
        secret = parts.username or parts.password or parts.query
        shown = url_for_log(store.public_endpoint) if secret else store.public_endpoint
        try:
            parse_http_url(store.public_endpoint)
        except ValueError as exc:
            raise ConfigError(f"store.public_endpoint {shown!r}: {exc}") from None
        if parts.username is not None or parts.password is not None:
            # every client would get it in the redirect's Location
            raise ConfigError(
                f"store.public_endpoint {shown!r} must not carry a user or password: "
                "clients are redirected to it"
            )
    if store.client_timeout <= 0:
        raise ConfigError("store.client_timeout must be more than 0 seconds")


def check_virtual_host(store: ObjectStorageStore) -> None:
    """Virtual-host style asks for ``<bucket>.<endpoint host>``: no resolver knows such a
    name under an IP address or ``localhost``, so the first request would fail with "Name or
    service not known" for a host that does resolve (pict-rs tries, and fails so). Raises
    ConfigError."""
    import ipaddress
    from urllib.parse import urlsplit

    host = urlsplit(store.endpoint).hostname or ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is None and host != "localhost":
        return
    what = "an IP address" if ip is not None else "localhost"
    named = f"[{host}]" if ip is not None and ip.version == 6 else host
    raise ConfigError(
        f"store.endpoint {redact_url(store.endpoint)!r} is {what}: virtual-host style "
        "(store.use_path_style = false, the default) puts the bucket in front of the host "
        f"name ({store.bucket_name}.{named}), which needs a host name; for this endpoint set "
        "store.use_path_style = true (-u, PICTRS__STORE__USE_PATH_STYLE=true)"
    )


def check_files(config: Config) -> None:
    """The TLS certificate and key load together. Raises StartupError naming the file."""
    cert, key = config.server.certificate, config.server.private_key
    if not (cert and key):
        return
    for what, path in (("server.certificate", cert), ("server.private_key", key)):
        if not os.access(path, os.R_OK):
            reason = "does not exist" if not os.path.exists(path) else "is not readable"
            raise StartupError(f"{what} {path} {reason}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        # Without a password callback OpenSSL asks for a passphrase on the terminal, and
        # start-up waits there for ever (or fails with EINVAL without one).
        context.load_cert_chain(cert, key, password=_refuse_passphrase)
    except _KeyEncrypted:
        raise StartupError(
            f"server.private_key {key} is encrypted with a passphrase, which pictrs-trio "
            f"cannot be given: decrypt it (openssl pkey -in {key} -out {key}.plain), make the "
            "plain copy readable by the service user only, and point server.private_key at it"
        ) from None
    except (ssl.SSLError, OSError) as exc:
        raise StartupError(
            f"server.certificate {cert} and server.private_key {key} do not load: {exc}"
        ) from None


class _KeyEncrypted(Exception):
    """The private key asks for a passphrase."""


def _refuse_passphrase() -> str:
    """OpenSSL's password callback: called only for an encrypted key; answers none."""
    raise _KeyEncrypted


def check_tools() -> None:
    """Every tool the media work runs is on PATH. Raises StartupError naming the missing."""
    from pictrs_trio.media.tools import TOOL_PACKAGES, missing_tools

    missing = missing_tools()
    if missing:
        packages = sorted({TOOL_PACKAGES[tool] for tool in missing})
        raise StartupError(
            f"{', '.join(missing)} not found on PATH (PATH={os.environ.get('PATH', '')}); "
            f"on Debian install: {' '.join(packages)}"
        )


async def preflight(config: Config) -> None:
    """Open the repo (migrating it), and write to the store and the temporary folder, once,
    before any server process starts. Raises StartupError naming the path."""
    import trio

    from pictrs_trio.repo.sqlite import DB_FILE_NAME, open_sqlite_repo
    from pictrs_trio.rules.errors import PictrsError
    from pictrs_trio.store import open_store

    repo_path = Path(config.repo.path)
    try:
        async with open_sqlite_repo(repo_path) as repo:
            await repo.health()
            migration = await repo.store_migration()
    except PictrsError as exc:
        sqlite_files = [DB_FILE_NAME + tail for tail in ("", "-wal", "-shm")]
        why = await trio.to_thread.run_sync(folder_problem, repo_path, sqlite_files)
        raise StartupError(f"repo.path {config.repo.path}: {why or exc.msg}") from None
    if migration is not None:
        check_store_migration(config, migration)
    try:
        async with open_store(config.store) as store:
            await store.health(write=not config.server.read_only)
    except PictrsError as exc:
        if isinstance(config.store, ObjectStorageStore):  # its messages name the bucket
            raise StartupError(exc.msg) from None
        why = await trio.to_thread.run_sync(folder_problem, Path(config.store.path))
        raise StartupError(f"store.path {config.store.path}: {why or exc.msg}") from None
    scratch = temp_root(config)
    try:
        await trio.to_thread.run_sync(_probe_folder, scratch)
    except OSError as exc:
        why = await trio.to_thread.run_sync(folder_problem, scratch)
        raise StartupError(
            f"server.temporary_directory {scratch.parent}: "
            f"{why or f'cannot write there: {exc.strerror or exc}'}"
        ) from None


def check_store_migration(config: Config, migration: StoreMigration) -> None:
    """Refuse to serve while a ``migrate-store`` run is unfinished: some rows name files in
    the old store, some in the new one, so either store would answer 404 for part of the
    media (pict-rs starts anyway; docs/operations.md). Refuse too when the last finished run
    moved the media to another store than the configured one: the rows name files there, so
    this store would answer 404 for them and take new uploads the migration has left behind
    (pict-rs starts anyway). Raises StartupError."""
    from pictrs_trio.services.migrate import describe, finish_command, same_store

    buckets = "object-storage" in (migration.from_store + migration.to_store)
    keys = " (with the region and keys of each bucket)" if buckets else ""
    if not migration.finished:
        if not migration.id:
            raise StartupError(
                f"repo.path {config.repo.path}: the repo records {migration.moved} files moved "
                "by an unfinished migrate-store; finish it with migrate-store before serving"
            )
        raise StartupError(
            f"repo.path {config.repo.path}: a migrate-store from {migration.from_store} to "
            f"{migration.to_store} is unfinished ({migration.moved} files moved); finish it by "
            f"running the same command again: {finish_command(migration, config.repo.path)}; "
            "or end it with migrate-store --abandon (docs/operations.md)"
        )
    configured = describe(config.store)
    if not same_store(migration.to_store, configured):
        raise StartupError(
            f"repo.path {config.repo.path}: the last migrate-store moved the media to "
            f"{migration.to_store}, but the configured store is {configured}: point store at "
            f"{migration.to_store}; or move the media here first{keys}: pictrs-trio "
            f"migrate-store {migration.to_store} {configured} sqlite -p {config.repo.path}"
        )


def folder_problem(folder: Path, files: Sequence[str] = ()) -> str | None:
    """Why this process cannot work in ``folder`` (after it failed to): a file where the
    folder (or one above it) should be; the folder, or the one it would be created in, or
    one of its ``files``, not writable for this user, or on a read-only file system. None
    when none of these is seen (the caller then tells what failed)."""
    folder = Path(os.path.abspath(folder))
    existing = None
    for place in [*reversed(folder.parents), folder]:
        try:
            is_dir = stat.S_ISDIR(os.stat(place).st_mode)
        except OSError:
            break  # missing (it would be created in ``existing``), or not searchable
        if not is_dir:
            return f"{place} is a file, not a folder"
        existing = place
    if existing is None:
        return None
    targets = [existing]
    if existing == folder:
        targets += [folder / name for name in files if os.path.lexists(folder / name)]
    for target in targets:
        is_dir = target.is_dir()
        if os.access(target, os.W_OK | (os.X_OK if is_dir else 0)):
            continue
        why = _not_writable(target, is_dir)
        return why if target != existing or existing == folder else f"cannot create {folder}: {why}"
    return None


def _not_writable(target: Path, is_dir: bool) -> str:
    if os.statvfs(target).f_flag & os.ST_RDONLY:
        return f"{target} is on a read-only file system"
    uid, gid, info = os.geteuid(), os.getegid(), os.stat(target)
    kind, rights = ("folder", "rwx") if is_dir else ("file", "rw")
    fix = f"chmod u+{rights} {target}" if info.st_uid == uid else f"chown -R {uid}:{gid} {target}"
    return (
        f"the {kind} {target} is not writable for uid {uid} (gid {gid}), which pictrs-trio "
        f"runs as; it belongs to uid {info.st_uid} (gid {info.st_gid}), mode "
        f"{stat.S_IMODE(info.st_mode):04o}: give that user write access ({fix})"
    )


def _probe_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".probe-{os.getpid()}"
    probe.write_bytes(b"ok")
    probe.unlink()


def temp_root(config: Config) -> Path:
    """The folder under ``server.temporary_directory`` (default: the OS's) that every
    process of this server keeps its scratch files in, each in a folder of its own."""
    import tempfile

    return Path(config.server.temporary_directory or tempfile.gettempdir()) / "pictrs-trio"


def open_listener(config: Config) -> socket.socket:
    """Bind and listen on ``server.address``. Raises StartupError naming the address."""
    sock = _listen(config.server.address, config.server.send_timeout)
    sock.set_inheritable(True)  # server processes of the supervisor accept on it too
    return sock


def open_metrics_listener(config: Config) -> socket.socket | None:
    """Bind and listen on ``metrics.prometheus_address``, if set (the scrape listener).
    Raises StartupError naming the address."""
    address = config.metrics.prometheus_address
    if address is None:
        return None
    return _listen(address, config.server.send_timeout, key=" (metrics.prometheus_address)")


def _listen(address: str, send_timeout: float, key: str = "") -> socket.socket:
    host, port = parse_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Restarting while old connections sit in TIME_WAIT is fine; a second listener is
        # not (that would take SO_REUSEPORT, which we never set).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it: data the client leaves unacknowledged (it stopped
        # reading, or vanished) for this long drops the connection. hypercorn's writes have
        # no timeout of their own, so this is what frees a task stuck writing to nobody.
        timeout_ms = int(send_timeout * 1000)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, timeout_ms)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        hint = ""
        if exc.errno == errno.EADDRINUSE:
            hint = " (is another pictrs-trio or pict-rs running there?)"
        elif exc.errno == errno.EACCES:
            hint = " (ports below 1024 need privileges)"
        raise StartupError(
            f"cannot listen on {address}{key}: {exc.strerror or exc}{hint}"
        ) from None
    return sock
