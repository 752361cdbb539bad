"""Start-up messages that name the cause and what to change: a key that cannot work is
refused before anything is opened (exit status 2), a file or folder problem names the path
and why (exit status 1). Each runs the real program."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import free_port
from tests.e2e.test_startup_health import start


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
