"""End-to-end fixtures: the real server process on a free port, and real sample media.

The server stores media in a folder, or in a bucket of moto's S3 server (tests/s3.py). A
module that sets ``STORES = ("filesystem", "object")`` and uses the ``store_kind`` fixture
(``pytestmark = pytest.mark.usefixtures("store_kind")``) runs each of its tests on both;
every ``Server`` a test starts then uses that test's store. A test of such a module whose
store does nothing it would not do on the folder (the store contract,
tests/integration/test_store_contract.py, covers the bucket's own behaviour) says so with
``@pytest.mark.stores("filesystem")``, and runs once.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.s3 import MotoServer

REPO = Path(__file__).resolve().parents[2]


class StoreChoice:
    """The store of the running test's servers (``_store_for_test`` sets it)."""

    kind = "filesystem"
    moto: MotoServer | None = None


CURRENT = StoreChoice()


class StoredObject:
    """A stored file in a bucket, as ``Server.stored_files`` lists them."""

    def __init__(self, moto: MotoServer, bucket: str, key: str) -> None:
        self.moto, self.bucket, self.key = moto, bucket, key
        self.name = key.rsplit("/", 1)[-1]

    def read_bytes(self) -> bytes:
        return self.moto.get(self.bucket, self.key)

    def unlink(self) -> None:
        self.moto.client().delete_object(Bucket=self.bucket, Key=self.key)

    def __lt__(self, other: StoredObject) -> bool:
        return self.key < other.key

    def __repr__(self) -> str:
        return f"StoredObject({self.key!r})"


# Downloads from the tests' own servers on loopback, which the SSRF guard refuses by default.
ALLOW_LOOPBACK = {"PICTRS__CLIENT__ALLOWED_NETWORKS": "127.0.0.0/8,::1/128"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Every server a test starts; the autouse fixture below stops those a test left running.
STARTED: list[Server] = []


class Server:
    """A running ``pictrs-trio run`` process with its own data folder."""

    def __init__(
        self,
        root: Path,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        global_args: list[str] | None = None,  # before ``run``: ``-c FILE``, ``--log-format``
        store: str | None = None,  # "filesystem" or "object"; default: the test's
        moto: MotoServer | None = None,
    ) -> None:
        self.root = root
        self.store_kind = store or CURRENT.kind
        self.moto = moto or CURRENT.moto
        self.bucket = ""
        self.store_endpoint: str | None = None  # object storage: another way to moto
        if self.store_kind == "object":
            assert self.moto is not None, "object storage needs the moto fixture"
            # One bucket per data folder, as one files/ folder: servers started on the same
            # root share their media.
            self.bucket = "pictrs-" + hashlib.sha256(str(root).encode()).hexdigest()[:20]
            self.moto.ensure_bucket(self.bucket)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.files = root / "files"
        self.db = root / "sqlite"
        self.args = args or []
        self.global_args = global_args or []
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "server.log"
        self.errors = root / "server.err"

    def start(self, timeout: float = 30.0) -> Server:
        """Start and wait until /healthz answers 200."""
        return self._start(timeout, healthy=True)

    def start_no_wait(self, timeout: float = 30.0) -> Server:
        """Start and wait until /healthz answers at all (a part may be down)."""
        return self._start(timeout, healthy=False)

    def _start(self, timeout: float, *, healthy: bool) -> Server:
        cmd = [
            sys.executable,
            "-m",
            "pictrs_trio",
            *self.global_args,
            "run",
            "-a",
            f"127.0.0.1:{self.port}",
            *self.args,
            *self.store_args(),
            "sqlite",
            "-p",
            str(self.db),
        ]
        env = {**os.environ, **self.env}
        env["PICTRS__SERVER__TEMPORARY_DIRECTORY"] = str(self.root / "tmp")
        # Log lines go to stdout; stderr gets only what Python itself prints (a traceback).
        with self.log.open("ab") as log, self.errors.open("ab") as errors:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=errors)
        STARTED.append(self)
        deadline = time.monotonic() + timeout
        # One client for the whole wait: ``httpx.get`` builds a TLS context per call (~45 ms
        # of CPU), which every 50 ms took half a core from the server starting beside it.
        with httpx.Client(timeout=1) as probe:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.output()}")
                try:
                    status = probe.get(self.url + "/healthz").status_code
                    if status == 200 or not healthy:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise RuntimeError(f"server did not become healthy:\n{self.output()}")

    def store_args(self) -> list[str]:
        """The store subcommand of ``run`` (``migrate-store`` and ``jobs`` take it too)."""
        if self.store_kind == "object":
            assert self.moto is not None
            return self.moto.run_args(self.bucket, self.store_endpoint)
        return ["filesystem", "-p", str(self.files)]

    def output(self) -> str:
        """What the server wrote: its log (stdout), then anything on stderr."""
        return self.log.read_text() + self.errors.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def stored_files(
        self, expect: int | None = None, timeout: float = 10.0
    ) -> list[Path] | list[StoredObject]:
        """Files in the store. With ``expect``, wait (bounded) until that many remain:
        deleting files is a background job that runs just after the rows go."""
        deadline = time.monotonic() + timeout
        while True:
            found = self._walk()
            if expect is None or len(found) == expect or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def stored_identifiers(self) -> set[str]:
        """The store's identifiers: paths under files/, or the bucket's keys."""
        return {
            p.key if isinstance(p, StoredObject) else str(p.relative_to(self.files))
            for p in self.stored_files()
        }

    def _walk(self) -> list[Path] | list[StoredObject]:
        if self.store_kind == "object":
            assert self.moto is not None
            keys = self.moto.keys(self.bucket)
            return [StoredObject(self.moto, self.bucket, key) for key in keys]
        found = []
        for dirpath, _dirs, names in os.walk(self.files):  # tolerates concurrent removal
            found.extend(Path(dirpath) / n for n in names)
        return sorted(found)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run a module's tests on each store its ``STORES`` names, or its ``stores`` mark."""
    stores = getattr(metafunc.module, "STORES", None)
    marked = metafunc.definition.get_closest_marker("stores")
    if marked is not None:
        stores = marked.args
    if stores and "store_kind" in metafunc.fixturenames:
        metafunc.parametrize("store_kind", stores, indirect=True, scope="session")


@pytest.fixture(scope="session")
def store_kind(request: pytest.FixtureRequest) -> str:
    """The store this test's servers use: "filesystem" unless the module asks for more."""
    return str(getattr(request, "param", "filesystem"))


@pytest.fixture(autouse=True)
def _store_for_test(request: pytest.FixtureRequest) -> Iterator[None]:
    kind = request.getfixturevalue("store_kind") if "store_kind" in request.fixturenames else None
    CURRENT.kind = kind or "filesystem"
    CURRENT.moto = request.getfixturevalue("moto") if CURRENT.kind == "object" else None
    yield
    CURRENT.kind, CURRENT.moto = "filesystem", None


@pytest.fixture(scope="session")
def server(
    tmp_path_factory: pytest.TempPathFactory, store_kind: str, request: pytest.FixtureRequest
) -> Iterator[Server]:
    """One server for the read-mostly tests (max_file_count 10 so one request can carry all)."""
    moto = request.getfixturevalue("moto") if store_kind == "object" else None
    root = tmp_path_factory.mktemp("server")
    srv = Server(root, ["--max-file-count", "10"], store=store_kind, moto=moto).start()
    yield srv
    srv.stop()


@pytest.fixture
def fresh_server(tmp_path: Path, _store_for_test: None) -> Iterator[Server]:
    """A private server for tests that count stored files."""
    srv = Server(tmp_path, ["--max-file-count", "3"]).start()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _stop_servers_left_running() -> Iterator[None]:
    """A test that fails before stopping its server must not leave the process (and its
    engine workers) running: stop whatever it started. Servers of wider-scoped fixtures,
    started before this snapshot, are left to their fixtures."""
    before = len(STARTED)
    yield
    for srv in STARTED[before:]:
        srv.stop()
    del STARTED[before:]
