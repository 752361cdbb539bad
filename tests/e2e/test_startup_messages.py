"""Start-up messages that name the cause and what to change: a key that cannot work is
refused before anything is opened (exit status 2), a file or folder problem names the path
and why (exit status 1). Each runs the real program."""

from __future__ import annotations

import ctypes
import fcntl
import os
import select
import shutil
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, free_port
from tests.e2e.test_startup_health import data_args, start


def on_a_terminal(argv: list[str], timeout: float = 30) -> tuple[int | None, str]:
    """Run ``argv`` with a terminal of its own (a pty as stdin, stdout, stderr and controlling
    terminal, where OpenSSL would ask for a passphrase): (exit status, None if it was still
    running after ``timeout`` s and was killed; everything it wrote)."""
    primary, secondary = os.openpty()

    def take_terminal() -> None:  # runs in the child, after setsid
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    child = subprocess.Popen(
        argv, cwd=REPO, stdin=secondary, stdout=secondary, stderr=secondary,
        start_new_session=True, preexec_fn=take_terminal,  # one ioctl: safe after fork
    )  # fmt: skip
    os.close(secondary)
    output, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(primary, 4096)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                if not chunk:
                    break
                output += chunk
            elif child.poll() is not None:
                break
        status = child.wait(timeout=max(0.0, deadline - time.monotonic()) + 1)
    except subprocess.TimeoutExpired:
        status = None
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(primary)
    return status, output.decode(errors="replace").replace("\r\n", "\n")


@pytest.fixture
def encrypted_key(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate and its private key encrypted with a passphrase (as the brief's
    ``openssl rsa -aes256``)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, plain, key = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "enc.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=localhost", "-keyout", str(plain), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        ["openssl", "rsa", "-in", str(plain), "-aes256", "-passout", "pass:x", "-out", str(key)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def encrypted_says(key: Path) -> str:
    return (
        f"error: server.private_key {key} is encrypted with a passphrase, which pictrs-trio "
        f"cannot be given: decrypt it (openssl pkey -in {key} -out {key}.plain), make the "
        "plain copy readable by the service user only, and point server.private_key at it\n"
    )


def test_an_encrypted_private_key_is_refused_without_a_prompt(
    tmp_path: Path, encrypted_key: tuple[Path, Path]
) -> None:
    """OpenSSL asked for the passphrase: on a terminal start-up waited there forever;
    without one it printed the prompt twice, then ``[Errno 22] Invalid argument``."""
    cert, key = encrypted_key
    args = ["-a", f"127.0.0.1:{free_port()}", "--certificate", str(cert), "--private-key",
            str(key), *data_args(tmp_path)]  # fmt: skip
    assert start(tmp_path, *args) == (1, encrypted_says(key))
    status, output = on_a_terminal([sys.executable, "-m", "pictrs_trio", "run", *args])
    assert (status, output) == (1, encrypted_says(key))
    assert not (tmp_path / "sqlite").exists()  # refused before anything was opened


def test_hypercorn_never_asks_for_a_passphrase(encrypted_key: tuple[Path, Path]) -> None:
    """hypercorn loads the certificate and key itself, after the start-up check: a key
    encrypted in between fails to load there, and is never prompted for."""
    cert, key = encrypted_key
    code = (
        "import sys\n"
        "from pictrs_trio.config import load\n"
        "from pictrs_trio.runtime.service import hypercorn_config\n"
        f"config = load(overrides={{'server': {{'certificate': {str(cert)!r}, "
        f"'private_key': {str(key)!r}}}}})\n"
        "try:\n"
        "    hypercorn_config(config, 0).create_ssl_context()\n"
        "except Exception as exc:\n"
        "    sys.exit(f'refused: {type(exc).__name__}')\n"
    )
    status, output = on_a_terminal([sys.executable, "-c", code])
    assert (status, output) == (1, "refused: SSLError\n")


def test_virtual_host_style_against_an_ip_endpoint_is_refused(tmp_path: Path) -> None:
    """Virtual-host style asks for <bucket>.<host>: against an IP address that is a name no
    resolver knows (it failed later with "Name or service not known" for a host that
    resolves). Refused at once, with the flag that fixes it."""
    port = free_port()
    code, stderr = start(
        tmp_path, "-a", f"127.0.0.1:{free_port()}", "object-storage", "-e",
        f"http://127.0.0.1:{port}", "-b", "pictrs", "-r", "us-east-1", "-a", "t", "-s", "t",
        "sqlite", "-p", str(tmp_path / "sqlite"),
    )  # fmt: skip
    assert (code, stderr) == (
        2,
        f"error: store.endpoint 'http://127.0.0.1:{port}' is an IP address: virtual-host "
        "style (store.use_path_style = false, the default) puts the bucket in front of the "
        f"host name (pictrs.127.0.0.1), which needs a host name; for this endpoint set "
        "store.use_path_style = true (-u, PICTRS__STORE__USE_PATH_STYLE=true)\n",
    )
    assert not (tmp_path / "sqlite").exists()  # refused before anything was opened


PR_CAPBSET_DROP = 24
# CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER: what lets root write in any folder
ROOT_OVERRIDES = (1, 2, 3)


def _drop_root_overrides() -> None:  # runs in the child, before exec
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in ROOT_OVERRIDES:
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def start_unprivileged(tmp_path: Path, *args: str) -> tuple[int, str]:
    """``pictrs-trio run`` for which a folder's permissions count: as root (tests run as
    root here and in CI), without the capabilities that override them; otherwise as is."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pictrs_trio", "run", *args], cwd=REPO, env={**os.environ},
            capture_output=True, text=True, timeout=60,
            preexec_fn=_drop_root_overrides if os.geteuid() == 0 else None,
        )  # fmt: skip
    except subprocess.SubprocessError as exc:
        pytest.skip(f"cannot drop root's capabilities here: {exc}")
    return done.returncode, done.stderr


def test_a_repo_folder_that_cannot_be_written_names_the_user(tmp_path: Path) -> None:
    """SQLite said only "unable to open database file"."""
    repo = tmp_path / "sqlite"
    repo.mkdir(mode=0o555)
    repo.chmod(0o555)  # whatever the umask
    uid, gid = os.geteuid(), os.getegid()
    code, stderr = start_unprivileged(
        tmp_path, "-a", f"127.0.0.1:{free_port()}", "--danger-dummy-mode", "filesystem", "-p",
        str(tmp_path / "files"), "sqlite", "-p", str(repo),
    )  # fmt: skip
    assert (code, stderr.splitlines()[-1]) == (
        1,
        f"error: repo.path {repo}: the folder {repo} is not writable for uid {uid} (gid "
        f"{gid}), which pictrs-trio runs as; it belongs to uid {uid} (gid {gid}), mode 0555: "
        f"give that user write access (chmod u+rwx {repo})",
    )


def test_a_file_where_a_folder_should_be(tmp_path: Path) -> None:
    """Python said ``[Errno 17] File exists``."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    port = free_port()
    cases = [
        (["filesystem", "-p", str(tmp_path / "files"), "sqlite", "-p", str(blocker)],
         f"error: repo.path {blocker}: {blocker} is a file, not a folder\n"),
        (["filesystem", "-p", str(blocker), "sqlite", "-p", str(tmp_path / "sqlite")],
         f"error: store.path {blocker}: {blocker} is a file, not a folder\n"),
        (["filesystem", "-p", str(blocker / "files"), "sqlite", "-p", str(tmp_path / "sqlite")],
         f"error: store.path {blocker / 'files'}: {blocker} is a file, not a folder\n"),
        (["--temporary-directory", str(blocker), *data_args(tmp_path)],
         f"error: server.temporary_directory {blocker}: {blocker} is a file, not a folder\n"),
    ]  # fmt: skip
    for args, says in cases:
        code, stderr = start(tmp_path, "-a", f"127.0.0.1:{port}", "--danger-dummy-mode", *args)
        assert (code, stderr.splitlines()[-1] + "\n") == (1, says)
