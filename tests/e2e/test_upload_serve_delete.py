"""Issue 2 end to end: a pict-rs client uploads, reads details, fetches and deletes media."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import Server

# Uploads, reads (ranges too) and deletes run on the filesystem store and on object storage
# (tests/e2e/conftest.py); what happens before the store or only in the repo (formats,
# metadata, routes, tokens) runs on the filesystem store only.
STORES = ("filesystem", "object")
pytestmark = pytest.mark.usefixtures("store_kind")


EXPECTED = {
    # name: (width, height, frames, content_type, kind, extension)
    "cat.jpg": (1200, 1387, None, "image/jpeg", "Image", ".jpeg"),
    "test.png": (640, 360, None, "image/png", "Image", ".png"),
    "earth.gif": (400, 400, 44, "image/gif", "Animation", ".gif"),
    "scene.webp": (550, 368, None, "image/webp", "Image", ".webp"),
    "video.mp4": (320, 240, 25, "video/mp4", "Video", ".mp4"),
}


def upload(client, *paths: Path, query: str = "", content_type: str | None = None):
    files = [
        ("images[]", (p.name, p.read_bytes(), content_type or "application/octet-stream"))
        for p in paths
    ]
    return client.post("/image" + query, files=files)


def exif_tags(data: bytes, tmp: Path) -> dict[str, object]:
    f = tmp / "probe.bin"
    f.write_bytes(data)
    out = subprocess.run(["exiftool", "-j", "-G", "-a", str(f)], capture_output=True, check=True)
    return json.loads(out.stdout)[0]


def test_lemmy_style_round_trip(tmp_path: Path, samples: dict[str, Path]) -> None:
    server = Server(tmp_path, ["--max-file-count", "10"]).start()
    try:
        _round_trip(server, samples)
    finally:
        server.stop()


def _round_trip(server: Server, samples: dict[str, Path]) -> None:
    with server.client() as c:
        r = upload(c, *(samples[n] for n in EXPECTED))
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["msg"] == "ok"
        assert len(body["files"]) == len(EXPECTED)
        for name, entry in zip(EXPECTED, body["files"], strict=True):
            w, h, frames, ctype, kind, ext = EXPECTED[name]
            d = entry["details"]
            assert (d["width"], d["height"], d["frames"]) == (w, h, frames), name
            assert (d["content_type"], d["format"]) == (ctype, kind), name
            assert d["created_at"].endswith("Z")
            assert entry["file"].endswith(ext)
            assert len(entry["delete_token"]) == 36

            alias = entry["file"]
            again = c.get(f"/image/details/original/{alias}")
            assert again.status_code == 200
            assert again.json() == d
            assert c.get("/image/details/original", params={"alias": alias}).json() == d

            first = c.get(f"/image/original/{alias}")
            second = c.get("/image/original", params={"alias": alias})
            assert first.status_code == second.status_code == 200
            assert first.content == second.content
            assert len(first.content) > 0
            assert first.headers["content-type"] == ctype
            assert first.headers["cache-control"] == "public, max-age=604800, immutable"
            assert first.headers["accept-ranges"] == "bytes"
            assert "last-modified" in first.headers
            assert int(first.headers["content-length"]) == len(first.content)

        for entry in body["files"]:
            alias, token = entry["file"], entry["delete_token"]
            assert c.delete(f"/image/delete/{token}/{alias}").status_code == 204
            assert c.get(f"/image/original/{alias}").status_code == 404
            gone = c.get(f"/image/details/original/{alias}")
            assert gone.status_code == 404
            assert gone.json()["code"] == "alias-not-found"
            # deleting again: unknown alias counts as already deleted
            assert c.get(f"/image/delete/{token}/{alias}").status_code == 204
    assert server.stored_files(expect=0) == []


@pytest.mark.stores("filesystem")
def test_metadata_stripped_losslessly(
    server: Server, samples: dict[str, Path], tmp_path: Path
) -> None:
    import pyvips

    src = samples["exif.jpg"]
    before = exif_tags(src.read_bytes(), tmp_path)
    assert any(k.startswith("GPS") or ":GPS" in k for k in before)
    with server.client() as c:
        r = upload(c, src)
        assert r.status_code == 201, r.text
        alias = r.json()["files"][0]["file"]
        stored = c.get(f"/image/original/{alias}").content
    tags = exif_tags(stored, tmp_path)
    leaked = [
        k
        for k in tags
        if k.split(":")[0] in ("EXIF", "XMP", "GPS", "IPTC")
        or "GPS" in k
        or k.endswith(":Comment")
        or k.endswith(":Make")
    ]
    assert leaked == []
    # lossless: the decoded pixels are identical
    a = pyvips.Image.new_from_file(str(src))
    b = pyvips.Image.new_from_buffer(stored, "")
    assert (a.width, a.height) == (b.width, b.height)
    assert (a - b).abs().max() == 0


@pytest.mark.stores("filesystem")
def test_orientation_applied(server: Server, samples: dict[str, Path], tmp_path: Path) -> None:
    import pyvips

    with server.client() as c:
        r = upload(c, samples["rotated.jpg"])
        assert r.status_code == 201, r.text
        entry = r.json()["files"][0]
        assert (entry["details"]["width"], entry["details"]["height"]) == (200, 300)
        stored = c.get(f"/image/original/{entry['file']}").content
    img = pyvips.Image.new_from_buffer(stored, "")
    assert (img.width, img.height) == (200, 300)
    tags = exif_tags(stored, tmp_path)
    assert not any("Orientation" in k or "GPS" in k for k in tags)


@pytest.mark.stores("filesystem")
@pytest.mark.parametrize(
    ("name", "expect"),
    [
        ("avif.avif", (640, 360, None, "image/avif", "Image")),
        ("jxl.jxl", (640, 360, None, "image/jxl", "Image")),
        ("anim.webp", (160, 120, 10, "image/webp", "Animation")),
        ("anim.apng", (160, 120, 10, "image/apng", "Animation")),
        ("video.webm", (320, 240, 25, "video/webm", "Video")),
    ],
)
def test_more_formats(
    server: Server, samples: dict[str, Path], name: str, expect: tuple[object, ...]
) -> None:
    with server.client() as c:
        r = upload(c, samples[name])
        assert r.status_code == 201, r.text
        d = r.json()["files"][0]["details"]
        assert (d["width"], d["height"], d["frames"], d["content_type"], d["format"]) == expect
        served = c.get(f"/image/original/{r.json()['files'][0]['file']}")
        assert served.status_code == 200
        assert served.headers["content-type"] == expect[3]


def test_identical_uploads_share_one_file(fresh_server: Server, samples: dict[str, Path]) -> None:
    with fresh_server.client() as c:
        a = upload(c, samples["test.png"]).json()["files"][0]
        b = upload(c, samples["test.png"]).json()["files"][0]
        assert a["file"] != b["file"]
        assert a["delete_token"] != b["delete_token"]
        assert len(fresh_server.stored_files(expect=1)) == 1
        assert c.get(f"/image/delete/{a['delete_token']}/{a['file']}").status_code == 204
        kept = c.get(f"/image/original/{b['file']}")
        assert kept.status_code == 200
        assert kept.content == c.get(f"/image/original/{b['file']}").content
        assert len(fresh_server.stored_files(expect=1)) == 1
        assert c.delete(f"/image/delete/{b['delete_token']}/{b['file']}").status_code == 204
    assert fresh_server.stored_files(expect=0) == []


@pytest.mark.stores("filesystem")
def test_wrong_delete_token(server: Server, samples: dict[str, Path]) -> None:
    with server.client() as c:
        entry = upload(c, samples["scene.webp"]).json()["files"][0]
        r = c.delete(f"/image/delete/00000000-0000-4000-8000-000000000000/{entry['file']}")
        assert r.status_code == 403
        assert r.json()["code"] == "invalid-delete-token"
        assert c.get(f"/image/original/{entry['file']}").status_code == 200


def test_ranges_and_head(server: Server, samples: dict[str, Path]) -> None:
    with server.client() as c:
        alias = upload(c, samples["test.png"]).json()["files"][0]["file"]
        url = f"/image/original/{alias}"
        data = c.get(url).content
        assert len(data) > 1000
        r = c.get(url, headers={"Range": "bytes=10-19"})
        assert r.status_code == 206
        assert r.content == data[10:20]
        assert r.headers["content-range"] == f"bytes 10-19/{len(data)}"
        r = c.get(url, headers={"Range": "bytes=-5"})
        assert (r.status_code, r.content) == (206, data[-5:])
        r = c.get(url, headers={"Range": f"bytes={len(data) - 3}-"})
        assert (r.status_code, r.content) == (206, data[-3:])
        r = c.get(url, headers={"Range": f"bytes={len(data)}-"})
        assert r.status_code == 416
        assert r.content == b""
        assert r.headers["content-range"] == f"bytes */{len(data)}"
        assert "cache-control" not in r.headers
        r = c.get(url, headers={"Range": "bytes=0-1,4-5"})
        assert r.status_code == 416
        assert r.json()["code"] == "range-not-satisfiable"
        r = c.get(url, headers={"Range": "nonsense"})
        assert (r.status_code, r.content) == (200, data)
        h = c.head(url)
        assert h.status_code == 200
        assert h.content == b""
        assert h.headers["content-type"] == "image/png"
        assert int(h.headers["content-length"]) == len(data)
        h = c.head(url, headers={"Range": "bytes=0-9"})
        assert h.status_code == 206
        assert h.headers["content-range"].startswith("bytes 0-9/")
        assert c.head("/image/original/nope.png").status_code == 404


@pytest.mark.stores("filesystem")
def test_unknown_alias_and_routes(server: Server) -> None:
    with server.client() as c:
        r = c.get("/image/original/3f0c9a57-1d2e-4b8a-9c61-0e5f4b2a7d10.png")
        assert r.status_code == 404
        assert r.content == b""
        r = c.get("/image/details/original/3f0c9a57-1d2e-4b8a-9c61-0e5f4b2a7d10.png")
        assert r.status_code == 404
        assert r.json()["code"] == "alias-not-found"
        r = c.get("/image/details/original")
        assert r.status_code == 400
        assert r.json()["code"] == "invalid-query"
        assert c.get("/no/such/route").status_code == 404
        assert c.get("/healthz").status_code == 200


@pytest.mark.stores("filesystem")
def test_request_deadline(server: Server, samples: dict[str, Path]) -> None:
    import time

    with server.client() as c:
        past = str(time.time_ns() - 1_000_000_000)
        r = c.get("/healthz", headers={"X-Request-Deadline": past})
        assert r.status_code == 408
        assert r.json()["code"] == "request-timeout"
        for bad in ("soon", "1.5", "9" * 60):
            r = c.get("/healthz", headers={"X-Request-Deadline": bad})
            assert r.status_code == 400 and r.json()["code"] == "parse-deadline", bad
        future = str(time.time_ns() + 30_000_000_000)
        assert c.get("/healthz", headers={"X-Request-Deadline": future}).status_code == 200
