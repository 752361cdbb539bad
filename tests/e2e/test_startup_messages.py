"""Start-up messages that name the cause and what to change: a key that cannot work is
refused before anything is opened (exit status 2), a file or folder problem names the path
and why (exit status 1). Each runs the real program."""

from __future__ import annotations

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
