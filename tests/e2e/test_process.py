"""Issue 3 end to end: variants through the real server, decoded and measured."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest

from tests.e2e.conftest import Server
from tests.e2e.test_upload_serve_delete import upload

# Variants saved, served, lost, raced for and cancelled run on the filesystem store and on
# object storage (tests/e2e/conftest.py); sizes and query parsing, the same whatever stores
# the bytes, run on the filesystem store only.
STORES = ("filesystem", "object")
pytestmark = pytest.mark.usefixtures("store_kind")


def wait_for(request, status: int, timeout: float = 15.0):
    """Repeat ``request`` until it answers ``status`` (work done by a background job)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        r = request()
        if r.status_code == status or time.monotonic() > deadline:
            return r
        time.sleep(0.05)


def decode(data: bytes):
    import pyvips

    try:
        return pyvips.Image.new_from_buffer(data, "", n=-1)  # every frame, where it has frames
    except pyvips.Error:
        return pyvips.Image.new_from_buffer(data, "")


def pages(img) -> int:
    return img.get("n-pages") if "n-pages" in img.get_fields() else 1


def frame_size(img) -> tuple[int, int]:
    height = img.get("page-height") if "page-height" in img.get_fields() else img.height
    return img.width, height


@pytest.fixture(scope="module")
def aliases(server: Server, samples: dict[str, Path]) -> dict[str, str]:
    names = ["cat.jpg", "test.png", "earth.gif", "scene.webp", "video.mp4", "anim.apng"]
    with server.client() as c:
        r = upload(c, *(samples[n] for n in names))
        assert r.status_code == 201, r.text
        return {n: f["file"] for n, f in zip(names, r.json()["files"], strict=True)}


@pytest.mark.stores("filesystem")
@pytest.mark.parametrize(
    ("name", "query", "ext", "size", "n_pages"),
    [
        ("cat.jpg", "thumbnail=256", "webp", (221, 256), 1),
        ("cat.jpg", "resize=200", "jpg", (173, 200), 1),
        ("cat.jpg", "resize=Mitchell.200", "png", (173, 200), 1),
        ("cat.jpg", "crop=1x1&thumbnail=100", "webp", (100, 100), 1),
        ("cat.jpg", "thumbnail=5000", "jpeg", (1200, 1387), 1),
        ("test.png", "crop=16x9&resize=320", "avif", (320, 180), 1),
        ("test.png", "resize=.a10000", "png", (133, 75), 1),
        ("test.png", "blur=2.5", "webp", (640, 360), 1),
        ("scene.webp", "thumbnail=100", "gif", (100, 67), 1),
        ("earth.gif", "thumbnail=100", "gif", (100, 100), 44),
        ("earth.gif", "thumbnail=100", "webp", (100, 100), 44),
        ("earth.gif", "thumbnail=100", "png", (100, 100), 1),
        ("video.mp4", "thumbnail=100", "jpg", (100, 75), 1),
        ("video.mp4", "identity", "webp", (320, 240), 1),
        ("anim.apng", "thumbnail=80", "gif", (80, 60), 10),
    ],
)
def test_variant_dimensions(
    server: Server,
    aliases: dict[str, str],
    name: str,
    query: str,
    ext: str,
    size: tuple[int, int],
    n_pages: int,
) -> None:
    url = f"/image/process.{ext}?src={aliases[name]}&{query}"
    with server.client() as c:
        r = c.get(url)
        assert r.status_code == 200, r.text
        expected_type = {"jpg": "image/jpeg"}.get(ext, f"image/{ext}")
        assert r.headers["content-type"] == expected_type
        assert r.headers["cache-control"] == "public, max-age=604800, immutable"
        img = decode(r.content)
        assert frame_size(img) == size
        assert pages(img) == n_pages
        again = c.get(url)
        assert again.content == r.content
        details = c.get(f"/image/details/process.{ext}?src={aliases[name]}&{query}")
        assert details.status_code == 200
        assert (details.json()["width"], details.json()["height"]) == size


def test_variant_lifecycle(fresh_server: Server, samples: dict[str, Path]) -> None:
    with fresh_server.client() as c:
        entry = upload(c, samples["test.png"]).json()["files"][0]
        alias = entry["file"]
        url = f"/image/process.webp?src={alias}&thumbnail=64"
        assert c.head(url).status_code == 404
        missing = c.get(f"/image/details/process.webp?src={alias}&thumbnail=64")
        assert missing.status_code == 404
        assert missing.json()["code"] == "alias-not-found"
        assert (
            c.get(f"/image/process_backgrounded.webp?src={alias}&thumbnail=64").status_code == 202
        )
        head = wait_for(lambda: c.head(url), 200)
        assert head.headers["content-type"] == "image/webp"
        body = c.get(url).content
        assert int(head.headers["content-length"]) == len(body)
        # the same operations written differently share one variant
        assert c.get(f"/image/process.webp?alias={alias}&thumbnail=%2B64").content == body
        assert len(fresh_server.stored_files(expect=2)) == 2
        ranged = c.get(url, headers={"Range": "bytes=0-9"})
        assert ranged.status_code == 206
        assert ranged.content == body[:10]
        assert c.delete(f"/image/delete/{entry['delete_token']}/{alias}").status_code == 204
        assert c.get(url).status_code == 404
    assert fresh_server.stored_files(expect=0) == []


def test_concurrent_requests_render_once(fresh_server: Server, samples: dict[str, Path]) -> None:
    with fresh_server.client() as c:
        alias = upload(c, samples["cat.jpg"]).json()["files"][0]["file"]
    url = f"{fresh_server.url}/image/process.webp?src={alias}&resize=300&blur=1"

    def fetch(_: int) -> bytes:
        import httpx

        r = httpx.get(url, timeout=60)
        assert r.status_code == 200
        return r.content

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(fetch, range(8)))
    assert len(set(bodies)) == 1
    assert len(fresh_server.stored_files(expect=2)) == 2  # the original and one variant


@pytest.mark.stores("filesystem")
@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("/image/process.bmp?src={a}&thumbnail=10", 400, "invalid-file-extension"),
        ("/image/process.webp?src={a}&thumbnail=abc", 400, "invalid-process-path"),
        ("/image/process.webp?src={a}&thumbnail=0", 400, "invalid-process-path"),
        ("/image/process.webp?src={a}&blur=NaN", 400, "invalid-process-path"),
        ("/image/process.webp?src={a}&blur=-1", 400, "invalid-process-path"),
        ("/image/process.webp?src={a}&crop=0x5", 400, "invalid-process-path"),
        ("/image/process.webp?src={a}&resize=99999999999", 400, "invalid-process-path"),
        ("/image/process.webp?thumbnail=10", 400, "invalid-query"),
    ],
)
def test_bad_process_queries(
    server: Server, aliases: dict[str, str], query: str, status: int, code: str
) -> None:
    with server.client() as c:
        r = c.get(query.format(a=aliases["test.png"]))
        assert r.status_code == status, r.text
        assert r.json()["code"] == code
        assert c.get("/healthz").status_code == 200


@pytest.mark.stores("filesystem")
def test_unknown_alias_is_empty_404(server: Server) -> None:
    with server.client() as c:
        r = c.get("/image/process.webp?src=00000000-0000-4000-8000-000000000000.png&thumbnail=9")
        assert r.status_code == 404
        assert r.content == b""


@pytest.mark.stores("filesystem")
def test_upload_preprocess_operations(server: Server, samples: dict[str, Path]) -> None:
    with server.client() as c:
        r = upload(c, samples["cat.jpg"], query="?resize=100")
        assert r.status_code == 201, r.text
        d = r.json()["files"][0]["details"]
        assert (d["width"], d["height"]) == (87, 100)
        stored = c.get(f"/image/original/{r.json()['files'][0]['file']}").content
        assert frame_size(decode(stored)) == (87, 100)


def test_two_processes_render_once(tmp_path: Path, samples: dict[str, Path]) -> None:
    """Two servers sharing one repo and store: the claim row makes rendering single-flight
    across processes, not only within one."""
    debug = {"PICTRS__TRACING__LOGGING__TARGETS": "debug"}  # renders are logged at debug
    a = Server(tmp_path, env=debug).start()
    b = Server(tmp_path, env=debug).start()  # same files/ and sqlite/ folders, another port
    try:
        with a.client() as c:
            alias = upload(c, samples["cat.jpg"]).json()["files"][0]["file"]
        query = f"/image/process.png?src={alias}&resize=400&blur=2"

        def fetch(i: int) -> bytes:
            import httpx

            r = httpx.get((a if i % 2 else b).url + query, timeout=60)
            assert r.status_code == 200
            return r.content

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            bodies = list(pool.map(fetch, range(8)))
        assert len(set(bodies)) == 1
        assert len(a.stored_files(expect=2)) == 2
    finally:
        a.stop()
        b.stop()
    # rendered once in all: the other process waited for the claim instead of rendering too
    assert a.log == b.log  # both servers append to the one log of their shared folder
    renders = a.log.read_text().count("generated resize/400/blur/2/png")
    assert renders == 1


def test_variant_file_lost_is_rendered_again(
    fresh_server: Server, samples: dict[str, Path]
) -> None:
    """Variants are not fsynced; if a power cut loses one, the next request renders it."""
    with fresh_server.client() as c:
        alias = upload(c, samples["test.png"]).json()["files"][0]["file"]
        url = f"/image/process.png?src={alias}&thumbnail=40"
        first = c.get(url)
        assert first.status_code == 200
        original = c.get(f"/image/original/{alias}").content
        (variant,) = [p for p in fresh_server.stored_files(expect=2) if p.read_bytes() != original]
        variant.unlink()
        again = c.get(url)
        assert again.status_code == 200
        assert again.content == first.content
        assert len(fresh_server.stored_files(expect=2)) == 2


def test_render_within_the_request_deadline(
    server: Server, samples: dict[str, Path], tmp_path: Path
) -> None:
    """A first-time render runs under the request's X-Request-Deadline: past it the client
    gets 408 at once, the render is cancelled (nothing recorded), and the engine serves the
    next request."""
    import time

    import pyvips

    big = tmp_path / "big.jpg"  # 3600x4161: a strong blur of it takes seconds
    pyvips.Image.jpegload(str(samples["cat.jpg"])).resize(3).jpegsave(str(big), Q=85)
    with server.client() as c:
        alias = upload(c, big).json()["files"][0]["file"]
        url = f"/image/process.png?src={alias}&blur=60"
        began = time.monotonic()
        soon = str(time.time_ns() + 150_000_000)
        r = c.get(url, headers={"X-Request-Deadline": soon})
        assert (r.status_code, r.json()["code"]) == (408, "request-timeout")
        assert time.monotonic() - began < 1.5  # answered at the deadline, not after the work
        assert c.head(url).status_code == 404  # cancelled: not generated
        r = c.get(f"/image/process.webp?src={alias}&thumbnail=50")
        assert r.status_code == 200 and decode(r.content).height == 50
        assert c.get("/healthz").status_code == 200
