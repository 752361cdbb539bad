"""The guarded outbound client (services/egress.py) against HTTP servers on loopback, with
trio's custom hostname resolver standing in for DNS: refusals happen before any connection,
every redirect hop is checked, and the socket goes to the address that was checked while the
Host header and TLS keep the name. No traffic leaves loopback: every address a test could
wrongly connect to is a loopback one, watched by a server that counts connections."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from ipaddress import ip_network
from pathlib import Path

import httpx
import pytest
import trio

from pictrs_trio.rules.egress import Network
from pictrs_trio.rules.errors import UrlNotAllowed
from pictrs_trio.services.egress import guarded_client
from tests.origin import Origin

LOOPBACK_ONLY_1 = [ip_network("127.0.0.1/32")]


@pytest.fixture
def server() -> Iterator[Origin]:
    s = Origin()
    yield s
    s.close()


@pytest.fixture
def second(server: Origin) -> Iterator[Origin]:
    """A server on 127.0.0.2 with the first one's port: where a wrong connection would go."""
    s = Origin(host="127.0.0.2", port=server.port)
    yield s
    s.close()


class Resolver(trio.abc.HostnameResolver):
    """Answers names from a table, each name with a list of answers used in turn (the last
    repeats): a DNS that rebinds."""

    def __init__(self, table: dict[str, list[list[str]]]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def getaddrinfo(  # type: ignore[override]
        self,
        host: bytes | None,
        port: bytes | str | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[tuple[int, int, int, str, tuple[str, int]]]:
        name = (host or b"").decode()
        self.asked.append(name)
        answers = self.table.get(name)
        if answers is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        addresses = answers.pop(0) if len(answers) > 1 else answers[0]
        assert isinstance(port, int)
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in addresses
        ]

    async def getnameinfo(self, sockaddr: object, flags: int) -> tuple[str, str]:
        raise NotImplementedError


def client(allowed: list[Network] | None = None) -> httpx.AsyncClient:
    return guarded_client(allowed=allowed or [], timeout=5, user_agent="test")


async def test_loopback_refused_by_default_without_connecting(server: Origin) -> None:
    async with client() as c:
        for host in ("127.0.0.1", "127.1", "2130706433", "0x7f000001", "0x7f.1", "0",
                     "[::ffff:127.0.0.1]", "[::1]", "[::]"):  # fmt: skip
            with pytest.raises(UrlNotAllowed):
                await c.get(f"http://{host}:{server.port}/ok")
    assert server.connections == 0


async def test_localhost_names_are_refused_without_a_lookup(server: Origin) -> None:
    resolver = Resolver({"localhost": [["127.0.0.1"]]})
    trio.socket.set_custom_hostname_resolver(resolver)
    async with client() as c:
        for host in ("localhost", "LOCALHOST", "localhost.", "a.localhost", "127.0.0.1."):
            with pytest.raises(UrlNotAllowed):
                await c.get(f"http://{host}:{server.port}/ok")
    assert resolver.asked == []
    assert server.connections == 0
    async with client(LOOPBACK_ONLY_1) as c:  # allowed: resolved, and its answer judged
        r = await c.get(f"http://LocalHost:{server.port}/ok")
        assert r.status_code == 200
    assert resolver.asked == ["localhost"]
    assert server.requests == [("/ok", f"localhost:{server.port}")]


async def test_a_name_is_judged_by_what_it_resolves_to(server: Origin) -> None:
    resolver = Resolver({"evil.test": [["127.0.0.1"]], "mixed.test": [["127.0.0.1", "10.0.0.1"]]})
    trio.socket.set_custom_hostname_resolver(resolver)
    async with client() as c:
        with pytest.raises(UrlNotAllowed) as refused:
            await c.get(f"http://evil.test:{server.port}/ok")
        assert "127.0.0.1" not in refused.value.msg  # the resolved address is not told
        assert "evil.test" in refused.value.msg
    # every address must be allowed, not just the first
    async with client(LOOPBACK_ONLY_1) as c:
        with pytest.raises(UrlNotAllowed):
            await c.get(f"http://mixed.test:{server.port}/ok")
    assert server.connections == 0
    assert resolver.asked == ["evil.test", "mixed.test"]


async def test_allowed_networks_let_loopback_through(server: Origin) -> None:
    async with client(LOOPBACK_ONLY_1) as c:
        r = await c.get(f"http://127.0.0.1:{server.port}/ok")
        assert (r.status_code, r.content) == (200, b"hello")
        with pytest.raises(UrlNotAllowed):
            await c.get(f"http://127.0.0.2:{server.port}/ok")  # 127.0.0.1/32 only


async def test_the_checked_address_is_the_one_connected_to(server: Origin, second: Origin) -> None:
    """DNS rebinding: the first answer is allowed, every later one is not. The request goes
    to the first answer's server with the name in Host; nothing is resolved again for that
    connection, and a new connection, resolved anew, is refused."""
    resolver = Resolver({"rebind.test": [["127.0.0.1"], ["127.0.0.2"]]})
    trio.socket.set_custom_hostname_resolver(resolver)
    async with client(LOOPBACK_ONLY_1) as c:
        r = await c.get(f"http://rebind.test:{server.port}/ok")
        assert r.status_code == 200
    assert resolver.asked == ["rebind.test"]
    assert server.requests == [("/ok", f"rebind.test:{server.port}")]
    async with client(LOOPBACK_ONLY_1) as c:
        with pytest.raises(UrlNotAllowed):
            await c.get(f"http://rebind.test:{server.port}/ok")
    assert second.connections == 0


async def test_every_redirect_is_checked(server: Origin, second: Origin) -> None:
    port = server.port
    async with client(LOOPBACK_ONLY_1) as c:
        ok = await c.get(f"http://127.0.0.1:{port}/to", params={"url": "/ok"})
        assert ok.status_code == 200
        for target in (f"http://127.0.0.2:{port}/ok", f"http://2130706434:{port}/ok",
                       f"http://[::ffff:127.0.0.2]:{port}/ok", f"ftp://127.0.0.1:{port}/ok",
                       "file:///etc/passwd"):  # fmt: skip
            with pytest.raises(UrlNotAllowed):
                await c.get(f"http://127.0.0.1:{port}/to", params={"url": target})
    assert second.connections == 0


async def test_a_redirect_into_a_name_that_resolves_inward(server: Origin, second: Origin) -> None:
    trio.socket.set_custom_hostname_resolver(Resolver({"inward.test": [["127.0.0.2"]]}))
    async with client(LOOPBACK_ONLY_1) as c:
        with pytest.raises(UrlNotAllowed):
            await c.get(
                f"http://127.0.0.1:{server.port}/to",
                params={"url": f"http://inward.test:{server.port}/ok"},
            )
    assert second.connections == 0


async def test_redirects_are_bounded(server: Origin) -> None:
    async with client(LOOPBACK_ONLY_1) as c:
        with pytest.raises(httpx.TooManyRedirects):
            await c.get(f"http://127.0.0.1:{server.port}/loop")
    assert len(server.requests) == 11  # the request and ten redirects (reqwest's limit)


async def test_an_unknown_name_is_a_connect_error() -> None:
    trio.socket.set_custom_hostname_resolver(Resolver({}))
    async with client() as c:
        with pytest.raises(httpx.ConnectError):
            await c.get("http://nowhere.test/ok")


@contextlib.contextmanager
def blackhole(host: str) -> Iterator[int]:
    """A port on ``host`` whose connects hang: its one-slot accept queue is full, so the
    kernel drops every further SYN and the client keeps retrying."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind((host, 0))
        listener.listen(0)
        filler.connect(listener.getsockname())  # takes the queue's one slot, never accepted
        yield int(listener.getsockname()[1])


async def test_an_address_that_drops_packets_falls_through_to_the_next() -> None:
    """Two checked addresses, the first silent: the second is tried a quarter second later
    and answers, instead of the first eating the whole connect timeout (5 s here)."""
    with blackhole("127.0.0.2") as port:
        origin = Origin(host="127.0.0.1", port=port)
        try:
            resolver = Resolver({"slow.test": [["127.0.0.2", "127.0.0.1"]]})
            trio.socket.set_custom_hostname_resolver(resolver)
            async with client([ip_network("127.0.0.0/8")]) as c:
                r = await c.get(f"http://slow.test:{port}/ok")
            assert (r.status_code, r.content) == (200, b"hello")
            assert origin.requests == [("/ok", f"slow.test:{port}")]
        finally:
            origin.close()


def causes(exc: BaseException | None) -> str:
    """The reprs of an exception and of everything it was raised from."""
    seen = []
    while exc is not None and len(seen) < 10:
        seen.append(repr(exc))
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(seen)


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=tls.test", "-addext", "subjectAltName=DNS:tls.test",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_keeps_the_name(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket goes to the checked address; SNI and the certificate check use the name."""
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    names: list[str | None] = []
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)  # type: ignore[assignment,misc]
    tls_server = Origin(tls=context)
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # read when the client is built
        trio.socket.set_custom_hostname_resolver(Resolver({"tls.test": [["127.0.0.1"]]}))
        async with client(LOOPBACK_ONLY_1) as c:
            r = await c.get(f"https://tls.test:{tls_server.port}/ok")
            assert (r.status_code, r.content) == (200, b"hello")
        assert names == ["tls.test"]
        # the same server by its address: the certificate does not name it
        async with client(LOOPBACK_ONLY_1) as c:
            with pytest.raises(httpx.ConnectError) as failed:
                await c.get(f"https://127.0.0.1:{tls_server.port}/ok")
            assert "CERTIFICATE_VERIFY_FAILED" in causes(failed.value)
    finally:
        with contextlib.suppress(OSError):
            tls_server.close()
