"""The SSRF guard end to end: the real server refusing client-supplied URLs that lead to
loopback (in many spellings), to other schemes, or there through a redirect, before any
connection, and fetching what ``client.allowed_networks`` lets through.

Every URL here points at loopback, where a listener of the test's own counts each connection
it accepts, so a guard that failed would be seen and could not send traffic anywhere else;
names other than ``localhost`` (refused without a look-up) are never used.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Server
from tests.origin import Origin


@pytest.fixture(scope="module")
def files(samples: dict[str, Path]) -> dict[str, bytes]:
    return {name: path.read_bytes() for name, path in samples.items()}


@pytest.fixture
def origin(files: dict[str, bytes]) -> Iterator[Origin]:
    o = Origin(files)
    yield o
    o.close()


@pytest.fixture
def origin6(origin: Origin, files: dict[str, bytes]) -> Iterator[Origin | None]:
    """The same port on ::1, where ``[::1]`` and ``localhost`` may lead; None without IPv6."""
    try:
        o = Origin(files, host="::1", port=origin.port)
    except OSError:
        yield None
        return
    yield o
    o.close()


@pytest.fixture
def inner(origin: Origin, files: dict[str, bytes]) -> Iterator[Origin]:
    """A second origin on 127.0.0.2: where a redirect must not lead."""
    try:
        o = Origin(files, host="127.0.0.2", port=origin.port)
    except OSError:
        pytest.skip("127.0.0.2 cannot be bound here")
    yield o
    o.close()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with the default configuration: nothing but public addresses."""
    s = Server(tmp_path_factory.mktemp("guarded")).start()
    yield s
    s.stop()


def assert_refused(r: httpx.Response, code: str = "url-not-allowed") -> None:
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/json"
    assert set(r.json()) == {"msg", "code"}
    assert r.json()["code"] == code, r.text


LOOPBACK_HOSTS = [
    "127.0.0.1", "127.1", "127.0.1", "2130706433", "0x7f000001", "0X7F.1", "0177.1",
    "017700000001", "127.0.0.1.", "0.0.0.0", "0", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]",
    "[::1]", "[::]", "[0:0:0:0:0:0:0:1]", "localhost", "LOCALHOST", "localhost.", "LocalHost",
    "x.localhost",
]  # fmt: skip


def test_loopback_in_every_spelling_is_refused_without_a_connection(
    guarded: Server, origin: Origin, origin6: Origin | None
) -> None:
    before = len(guarded.stored_files())
    with guarded.client() as c:
        for host in LOOPBACK_HOSTS:
            url = f"http://{host}:{origin.port}/img/test.png"
            assert_refused(c.get("/image/download", params={"url": url}))
            assert_refused(c.get("/image/download", params={"url": url, "backgrounded": "true"}))
            assert_refused(c.get("/image/original", params={"proxy": url}))
            assert_refused(c.get("/image/process.png", params={"proxy": url, "thumbnail": "9"}))
            https = f"https://{host}:{origin.port}/img/test.png"
            assert_refused(c.get("/image/download", params={"url": https}))
        # A dotted quad with a leading zero is no URL to httpx's parser: refused all the same.
        url = f"http://0177.0.0.1:{origin.port}/img/test.png"
        assert_refused(c.get("/image/download", params={"url": url}), "invalid-query")
        msg = c.get("/image/download", params={"url": f"http://127.1:{origin.port}/x"}).json()
        assert "127.0.0.1 is a loopback address" in msg["msg"]
        assert "client.allowed_networks" in msg["msg"]
        assert c.get("/healthz").status_code == 200
    assert origin.connections == 0
    assert origin6 is None or origin6.connections == 0
    assert len(guarded.stored_files()) == before


def test_other_schemes_are_refused(guarded: Server, origin: Origin) -> None:
    with guarded.client() as c:
        port = origin.port
        for url in ("file:///etc/passwd", f"ftp://127.0.0.1:{port}/img/test.png",
                    f"gopher://127.0.0.1:{port}/_GET%20/", "FILE:///etc/hostname",
                    "data:image/png;base64,iVBORw0KGgo=", f"ws://127.0.0.1:{port}/"):  # fmt: skip
            assert_refused(c.get("/image/download", params={"url": url}))
            assert_refused(c.get("/image/original", params={"proxy": url}))
    assert origin.connections == 0


def test_allowed_networks_let_loopback_through_and_redirects_are_checked(
    tmp_path: Path, origin: Origin, inner: Origin, files: dict[str, bytes]
) -> None:
    """127.0.0.1/32 allowed (by the flag): fetched from there, also through a redirect
    there; a redirect from there to 127.0.0.2, in any spelling, or to another scheme is
    refused before connecting."""
    srv = Server(tmp_path, ["--client-allowed-networks", "127.0.0.1/32"]).start()
    port = origin.port
    with srv.client() as c:
        r = c.get("/image/download", params={"url": f"http://127.0.0.1:{port}/img/test.png"})
        assert r.status_code == 201, r.text
        alias = r.json()["files"][0]["file"]
        assert c.get(f"/image/original/{alias}").status_code == 200
        hop = f"http://127.0.0.1:{port}/to"
        r = c.get("/image/original", params={"proxy": f"{hop}?url=/img/cat.jpg"})
        assert r.status_code == 200
        assert origin.paths == ["/img/test.png", "/to?url=/img/cat.jpg", "/img/cat.jpg"]
        for target in (f"http://127.0.0.2:{port}/img/test.png",
                       f"http://2130706434:{port}/img/test.png",
                       f"http://[::ffff:127.0.0.2]:{port}/img/test.png",
                       f"http://127.0.0.2.:{port}/img/test.png",
                       f"ftp://127.0.0.1:{port}/img/test.png", "file:///etc/passwd"):  # fmt: skip
            redirect = httpx.URL(hop, params={"url": target})
            assert_refused(c.get("/image/download", params={"url": str(redirect)}))
            assert_refused(c.get("/image/original", params={"proxy": str(redirect)}))
        # still refused: 127.0.0.2 directly, and the rest of loopback
        assert_refused(c.get("/image/download", params={"url": f"http://127.0.0.2:{port}/x"}))
        assert_refused(c.get("/image/download", params={"url": f"http://[::1]:{port}/x"}))
        assert c.get("/healthz").status_code == 200
    assert inner.connections == 0
    srv.stop()


def test_ten_redirects_are_followed_not_more(
    tmp_path: Path, origin: Origin, files: dict[str, bytes]
) -> None:
    env = {"PICTRS__CLIENT__ALLOWED_NETWORKS": "127.0.0.0/8"}
    srv = Server(tmp_path, env=env).start()
    base = f"http://127.0.0.1:{origin.port}"

    def chain(hops: int) -> str:
        url = f"{base}/img/test.png"
        for _ in range(hops):
            url = str(httpx.URL(f"{base}/to", params={"url": url}))
        return url

    with srv.client() as c:
        assert c.get("/image/download", params={"url": chain(10)}).status_code == 201
        r = c.get("/image/download", params={"url": chain(11)})
        assert r.status_code == 500, r.text
        assert r.json()["code"] == "http-client-error"
    srv.stop()


def test_a_bad_network_stops_start_up(tmp_path: Path) -> None:
    env = {"PICTRS__CLIENT__ALLOWED_NETWORKS": "127.0.0.0/8,127.0.0.300/32"}
    with pytest.raises(RuntimeError, match=r"exited 2") as failed:
        Server(tmp_path, env=env).start()
    assert "client.allowed_networks[1] = '127.0.0.300/32'" in str(failed.value)
    assert "PICTRS__CLIENT__ALLOWED_NETWORKS" in str(failed.value)
