"""pictrs-trio behind nginx with upstream keepalive, the usual deployment: nginx reuses its
connections to us for every client, so one early answer that left a connection unusable
would fail some other client's request with 502 or 504."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Server, free_port

KEY = "nginx-test-key"


def nginx_binary() -> str:
    for candidate in ("/usr/sbin/nginx", shutil.which("nginx")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("nginx is not installed (scripts/bootstrap installs nginx-light)")


NGINX_CONF = """
{user}
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    client_max_body_size 100m;
    upstream pictrs {{
        server 127.0.0.1:{upstream};
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://pictrs;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering {buffering};
            proxy_read_timeout 30s;
        }}
    }}
}}
"""


class Nginx:
    def __init__(self, root: Path, upstream: int, *, buffering: bool) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        conf = root / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                # As root, nginx's worker would switch to nobody, who cannot write here.
                user="user root;" if os.geteuid() == 0 else "",
                root=root,
                upstream=upstream,
                port=self.port,
                buffering="on" if buffering else "off",
            )
        )
        self.proc = subprocess.Popen(
            [nginx_binary(), "-c", str(conf), "-p", str(root), "-e", str(root / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        with httpx.Client(timeout=1) as probe:  # one client: httpx.get builds a TLS context each
            while time.monotonic() < deadline:
                try:
                    probe.get(self.url + "/healthz")
                    return
                except httpx.TransportError:
                    time.sleep(0.05)
        self.stop()
        raise RuntimeError((root / "error.log").read_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def errors(self) -> str:
        log = self.root / "error.log"
        return log.read_text() if log.exists() else ""


@pytest.fixture(scope="module")
def pictrs(tmp_path_factory: pytest.TempPathFactory) -> Server:
    srv = Server(tmp_path_factory.mktemp("behind-nginx"), env={"PICTRS__SERVER__API_KEY": KEY})
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("buffering", [True, False], ids=["buffered", "streamed"])
def test_mixed_load_with_early_answers_through_nginx(
    pictrs: Server, samples: dict[str, Path], tmp_path: Path, buffering: bool
) -> None:
    nginx = Nginx(tmp_path / "nginx", pictrs.port, buffering=buffering)
    try:
        png = samples["test.png"].read_bytes()
        with httpx.Client(base_url=nginx.url, timeout=30) as c:
            r = c.post("/image", files={"images[]": ("a.png", png)})
            assert r.status_code == 201, r.text
            alias = r.json()["files"][0]["file"]
        noise = os.urandom(1_500_000)
        results: Counter[tuple[str, int | str, int | str]] = Counter()
        lock = threading.Lock()

        def record(kind: str, expected: int, got: int | str) -> None:
            with lock:
                results[(kind, expected, got)] += 1

        def run(kind: str, n: int) -> None:
            with httpx.Client(base_url=nginx.url, timeout=30) as client:
                for i in range(n):
                    expected: int
                    try:
                        if kind == "unknown route":
                            expected = 404
                            r = client.post(
                                "/internal/nope", headers={"X-Api-Token": KEY}, content=noise
                            )
                        elif kind == "past deadline":
                            expected = 408
                            r = client.post(
                                "/image",
                                files={"images[]": ("big.bin", noise)},
                                headers={"X-Request-Deadline": "1"},
                            )
                        elif kind == "upload":
                            expected = 201
                            r = client.post("/image", files={"images[]": ("a.png", png)})
                        else:
                            expected = 200
                            r = client.get(
                                f"/image/process.webp?src={alias}&thumbnail={20 + (i % 40)}"
                            )
                        record(kind, expected, r.status_code)
                    except httpx.TransportError as exc:
                        record(kind, expected, type(exc).__name__)

        plan = [("unknown route", 50), ("past deadline", 50), ("upload", 60), ("upload", 60),
                ("thumbnail", 65), ("thumbnail", 65)]  # fmt: skip
        threads = [threading.Thread(target=run, args=item) for item in plan]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        total = sum(results.values())
        wrong = {key: n for key, n in results.items() if key[1] != key[2]}
        print(f"{total} requests through nginx ({'buffered' if buffering else 'streamed'}): "
              f"{dict(results)}")  # fmt: skip
        assert total == 350
        assert wrong == {}, wrong
        assert "upstream prematurely closed" not in nginx.errors()
    finally:
        nginx.stop()
