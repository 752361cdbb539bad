"""A real S3-compatible server for the tests: moto's standalone server (``moto[server]``), run
as a subprocess on a free loopback port, one per test session (``moto`` fixture in
tests/conftest.py). Every test makes its own bucket, so tests never see each other's keys.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from pictrs_trio.config import ObjectStorageStore

REGION = "us-east-1"
# moto without authentication accepts any keys; the auth tests make real ones (IAM).
ACCESS_KEY, SECRET_KEY = "test-access-key", "test-secret-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    """``python -m moto.server`` on 127.0.0.1 only."""

    def __init__(self, log: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._client: Any = None

    def start(self, timeout: float = 30.0) -> MotoServer:
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        env = {**os.environ, **self.env}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1) as probe:  # one client: httpx.get builds a TLS context each
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"moto exited {self.proc.returncode}: {self.log.read_text()}"
                    )
                try:
                    if probe.get(f"{self.endpoint}/moto-api/").status_code < 500:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise RuntimeError(f"moto did not start: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self) -> Any:
        """A boto3 S3 client (test set-up and inspection only; the store never uses boto3)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint,
                region_name=REGION,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
                config=Config(s3={"addressing_style": "path"}),
            )
        return self._client

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"pictrs-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def ensure_bucket(self, name: str) -> None:
        """Make ``name`` unless it exists."""
        client = self.client()
        try:
            client.head_bucket(Bucket=name)
        except client.exceptions.ClientError:
            client.create_bucket(Bucket=name)

    def keys(self, bucket: str) -> list[str]:
        """Every key in ``bucket`` but the health probe."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
        return sorted(k for k in keys if k != "health-check")

    def uploads(self, bucket: str) -> list[str]:
        """Keys of the unfinished multipart uploads in ``bucket``."""
        found = self.client().list_multipart_uploads(Bucket=bucket)
        return [upload["Key"] for upload in found.get("Uploads", [])]

    def get(self, bucket: str, key: str) -> bytes:
        data: bytes = self.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        return data

    def config(self, bucket: str, **changes: object) -> ObjectStorageStore:
        values: dict[str, object] = {
            "endpoint": self.endpoint,
            "bucket_name": bucket,
            "region": REGION,
            "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY,
            "use_path_style": True,
            **changes,
        }
        return ObjectStorageStore(**values)  # type: ignore[arg-type]

    def run_args(self, bucket: str, endpoint: str | None = None) -> list[str]:
        """``run`` arguments selecting this bucket (path style), through ``endpoint`` if
        given (a proxy to this server)."""
        return [
            "object-storage", "-e", endpoint or self.endpoint, "-u", "-b", bucket, "-r", REGION,
            "-a", ACCESS_KEY, "-s", SECRET_KEY,
        ]  # fmt: skip


def moto_server(log_dir: Path) -> Iterator[MotoServer]:
    server = MotoServer(log_dir / "moto.log").start()
    try:
        yield server
    finally:
        server.stop()


class LoopbackTransport(httpx.AsyncBaseTransport):
    """httpx's transport, but every connection goes to 127.0.0.1 whatever the URL's host, and
    the request keeps its own Host header: virtual-host style addressing
    (``bucket.s3.test``) without DNS. Records each request's method and query for tests that
    look at what was sent."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.sent: list[tuple[str, str, str]] = []  # (method, host header, query)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, request.headers["host"], request.url.query.decode()))
        request.url = request.url.copy_with(host="127.0.0.1")
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class ThrottledProxy:
    """A TCP proxy on loopback to ``port`` (moto), run in the test's own trio loop: what a
    client sends goes on at ``rate`` bytes a second (None: at once; 0: never, a server that
    stopped reading), answers come back at once. Its listening socket takes a small
    receive buffer, so a client that also sends with a small one (``small_send_buffer``)
    really waits for each write to go. Counts the connections it accepted."""

    RECEIVE_BUFFER = 16 * 1024

    def __init__(self, port: int, rate: float | None = None) -> None:
        self.port, self.rate = port, rate
        self.connections = 0
        self.endpoint = ""

    async def serve(self, task_status: Any) -> None:
        import trio

        listener = trio.socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.RECEIVE_BUFFER)
        await listener.bind(("127.0.0.1", 0))
        listener.listen()
        self.endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
        listeners = [trio.SocketListener(listener)]
        await trio.serve_listeners(self._handle, listeners, task_status=task_status)

    async def _handle(self, client: Any) -> None:
        import trio

        self.connections += 1
        upstream = await trio.open_tcp_stream("127.0.0.1", self.port)
        async with client, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, upstream, self.rate, nursery.cancel_scope)
            nursery.start_soon(self._pump, upstream, client, None, nursery.cancel_scope)

    @staticmethod
    async def _pump(source: Any, sink: Any, rate: float | None, done: Any) -> None:
        import trio

        if rate == 0:
            await trio.sleep_forever()
        try:
            while data := await source.receive_some(ThrottledProxy.RECEIVE_BUFFER):
                await sink.send_all(data)
                if rate is not None:
                    await trio.sleep(len(data) / rate)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        done.cancel()  # one side closed: so is the other


def small_send_buffer() -> httpx.AsyncHTTPTransport:
    """httpx's own transport (its timeouts apply), sending with a 32 KiB socket buffer."""
    return httpx.AsyncHTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)])
