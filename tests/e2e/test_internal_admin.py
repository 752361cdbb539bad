"""Issue 9 end to end, as an operator following pict-rs's README would use them: import
with chosen aliases, paging over every file, the not-found image, prune_missing, blurhash,
the export and a restore from it, and JSON for routes that do not exist."""

from __future__ import annotations

import hashlib
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import apsw
import httpx
import pytest

from tests.e2e.conftest import Server
from tests.e2e.test_upload_serve_delete import upload

API_KEY = "issue-9-key"
KEY = {"X-Api-Token": API_KEY}
UNKNOWN = "00000000-0000-0000-0000-000000000000.png"


def admin_server(root: Path, *args: str) -> Server:
    root.mkdir(parents=True, exist_ok=True)
    env = {"PICTRS__REPO__EXPORT_PATH": str(root / "exports")}
    return Server(root, ["--api-key", API_KEY, "--max-file-count", "5", *args], env=env)


@pytest.fixture
def srv(tmp_path: Path) -> Server:
    """A server of the test's own, for tests that count what the whole repo or store holds."""
    return admin_server(tmp_path).start()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, samples: dict[str, Path]) -> Iterator[Server]:
    """One server for the tests that change nothing another one looks at: the refused
    imports (the alias "taken.png" is imported here, once) and routes that do not exist."""
    srv = admin_server(tmp_path_factory.mktemp("admin")).start()
    with srv.client() as c:
        assert import_files(c, {"taken.png": samples["test.png"]}).status_code == 201
    yield srv
    srv.stop()


def files_of(c: httpx.Client, *paths: Path) -> list[str]:
    r = upload(c, *paths)
    assert r.status_code == 201, r.text
    return [f["file"] for f in r.json()["files"]]


def import_files(c: httpx.Client, named: dict[str, Path], headers: dict[str, str] = KEY):
    files = [
        ("images[]", (name, p.read_bytes(), "application/octet-stream"))
        for name, p in named.items()
    ]
    return c.post("/internal/import", files=files, headers=headers)


# --- import ----------------------------------------------------------------------------------


def test_import_keeps_the_file_name_as_alias(srv: Server, samples: dict[str, Path]) -> None:
    with srv.client() as c:
        (uploaded,) = files_of(c, samples["cat.jpg"])
        r = import_files(
            c,
            {
                "lkWZDRvugm.jpg": samples["cat.jpg"],  # a legacy name, as pict-rs 0.2 made
                "3F0C9A571D2E4B8A9C610E5F4B2A7D10.webp": samples["scene.webp"],
            },
        )
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["msg"] == "ok"
        names = [f["file"] for f in body["files"]]
        # A UUID name is kept in canonical form, as pict-rs parses an alias.
        assert names == ["lkWZDRvugm.jpg", "3f0c9a57-1d2e-4b8a-9c61-0e5f4b2a7d10.webp"]
        d = body["files"][0]["details"]
        assert (d["width"], d["height"], d["content_type"]) == (1200, 1387, "image/jpeg")
        assert len(body["files"][0]["delete_token"]) == 36

        # The same bytes as a plain upload of the file: one stored file, two aliases.
        imported = c.get("/image/original/lkWZDRvugm.jpg")
        assert imported.status_code == 200
        assert imported.content == c.get(f"/image/original/{uploaded}").content
        aliases = c.get("/internal/aliases?alias=lkWZDRvugm.jpg", headers=KEY).json()["aliases"]
        assert sorted(aliases) == sorted(["lkWZDRvugm.jpg", uploaded])
        webp = c.get("/image/original/3f0c9a57-1d2e-4b8a-9c61-0e5f4b2a7d10.webp")
        assert webp.status_code == 200 and webp.content[8:12] == b"WEBP"

        # The delete token works like an upload's.
        token = body["files"][1]["delete_token"]
        assert c.delete(f"/image/delete/{token}/{names[1]}").status_code == 204
        assert c.get(f"/image/original/{names[1]}").status_code == 404


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("no-extension", "file-upload-error"),
        ("dir\\name.png", "file-upload-error"),
        (".png", "file-upload-error"),
        ("taken.png", "duplicate-alias"),
    ],
)
def test_import_refuses_bad_or_taken_aliases(
    shared: Server, samples: dict[str, Path], name: str, code: str
) -> None:
    with shared.client() as c:
        before = shared.stored_files()
        r = import_files(c, {name: samples["earth.gif"]})
        assert r.status_code == 400, r.text
        assert r.json()["code"] == code
        assert shared.stored_files(expect=len(before)) == before  # nothing left behind
        no_key = import_files(c, {"other.png": samples["test.png"]}, headers={})
        assert no_key.status_code == 401
        assert no_key.json()["code"] == "invalid-api-token"


# --- hashes ----------------------------------------------------------------------------------


def test_hashes_pages_every_file_newest_first(srv: Server, samples: dict[str, Path]) -> None:
    names = ["cat.jpg", "earth.gif", "scene.webp", "test.png"]
    with srv.client() as c:
        aliases = []
        for name in names:  # one at a time: distinct creation times, known order
            aliases += files_of(c, samples[name])
        first = c.get("/internal/hashes?limit=3", headers=KEY)
        assert first.status_code == 200
        body = first.json()
        assert list(body) == ["msg", "page"] and body["msg"] == "ok"
        page = body["page"]
        assert list(page) == ["limit", "current", "next", "hashes"]  # no prev on page one
        assert page["limit"] == 3
        entries = page["hashes"]
        assert [e["aliases"] for e in entries] == [[a] for a in reversed(aliases[1:])]
        for entry in entries:
            assert list(entry) == ["hex", "aliases", "details"]
            assert len(entry["hex"]) == 78
            served = c.get(f"/image/original/{entry['aliases'][0]}").content
            # The hex is pict-rs's hash key: sha256, 6-byte size, format byte.
            assert entry["hex"][:64] == hashlib.sha256(served).hexdigest()
            assert int(entry["hex"][64:76], 16) == len(served)
        assert entries[0]["details"]["content_type"] == "image/png"
        assert page["current"] == hash_slug(entries[0]["hex"])

        second = c.get(f"/internal/hashes?limit=3&slug={page['next']}", headers=KEY).json()
        page2 = second["page"]
        assert list(page2) == ["limit", "current", "prev", "hashes"]  # the last page
        assert [e["aliases"] for e in page2["hashes"]] == [[aliases[0]]]
        assert page2["prev"] == page["current"]

        default = c.get("/internal/hashes?slug=not-a-slug", headers=KEY).json()["page"]
        assert default["limit"] == 20 and len(default["hashes"]) == 4

        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 5))
        by_time = c.get(f"/internal/hashes?timestamp={now}", headers=KEY).json()["page"]
        assert [e["hex"] for e in by_time["hashes"]] == [e["hex"] for e in default["hashes"]]
        old = c.get("/internal/hashes?timestamp=2000-01-01T00:00:00Z", headers=KEY)
        # Older than every file: an empty page (see docs/api.md), whose prev goes back.
        empty = old.json()["page"]
        assert empty["hashes"] == [] and "current" not in empty and "next" not in empty
        newest_last = c.get(f"/internal/hashes?slug={empty['prev']}", headers=KEY).json()
        assert len(newest_last["page"]["hashes"]) == 4


def hash_slug(hex_key: str) -> str:
    import base64

    return base64.urlsafe_b64encode(bytes.fromhex(hex_key)).decode()


# --- the not-found image ---------------------------------------------------------------------


def test_not_found_image_is_served_with_404(srv: Server, samples: dict[str, Path]) -> None:
    import pyvips

    with srv.client() as c:
        (nf,) = files_of(c, samples["test.png"])
        unknown = f"/image/original/{UNKNOWN}"
        before = c.get(unknown)
        assert before.status_code == 404 and before.content == b""

        proxy = c.post("/internal/set_not_found", json={"proxy": "http://x/y.png"}, headers=KEY)
        assert proxy.status_code == 400 and proxy.json()["code"] == "proxy-not-allowed"
        missing = c.post("/internal/set_not_found", json={"alias": UNKNOWN}, headers=KEY)
        assert missing.status_code == 404 and missing.json()["code"] == "alias-not-found"
        bad = c.post("/internal/set_not_found", content=b"{nope", headers=KEY)
        assert bad.status_code == 400 and bad.json()["code"] == "invalid-json"

        r = c.post("/internal/set_not_found", json={"alias": nf}, headers=KEY)
        assert r.status_code == 201 and r.json() == {"msg": "ok"}

        original = c.get(f"/image/original/{nf}").content
        for path in (unknown, f"/image/original?alias={UNKNOWN}", "/image/original/a%5Cb"):
            got = c.get(path)
            assert got.status_code == 404, path
            assert got.headers["content-type"] == "image/png"
            assert got.content == original
        ranged = c.get(unknown, headers={"Range": "bytes=0-9"})
        assert ranged.status_code == 206 and ranged.content == original[:10]
        head = c.head(unknown)
        assert head.status_code == 404 and head.content == b""  # HEAD never falls back

        variant = c.get(f"/image/process.webp?src={UNKNOWN}&thumbnail=40")
        assert variant.status_code == 404
        assert variant.headers["content-type"] == "image/webp"
        thumb = pyvips.Image.new_from_buffer(variant.content, "")
        assert max(thumb.width, thumb.height) == 40
        same = c.get(f"/image/process.webp?src={nf}&thumbnail=40")
        assert same.status_code == 200 and same.content == variant.content

        # Setting it by query works too; deleting its alias turns the fallback off.
        (other,) = files_of(c, samples["earth.gif"])
        assert c.post(f"/internal/set_not_found?alias={other}", headers=KEY).status_code == 201
        assert c.get(unknown).headers["content-type"] == "image/gif"
        assert c.post(f"/internal/delete?alias={other}", headers=KEY).status_code == 200
        deadline = time.monotonic() + 10
        while c.get(unknown).content and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.get(unknown).content == b""


# --- prune_missing ---------------------------------------------------------------------------


def test_prune_missing_forgets_files_gone_from_the_store(
    srv: Server, samples: dict[str, Path]
) -> None:
    with srv.client() as c:
        aliases = files_of(c, samples["cat.jpg"], samples["test.png"], samples["earth.gif"])
        gone = aliases[1]
        thumb = c.get(f"/image/process.webp?src={gone}&thumbnail=30")
        assert thumb.status_code == 200
        identifier = c.get(f"/internal/identifier?alias={gone}", headers=KEY).json()
        (srv.files / identifier["identifier"]).unlink()
        stored = len(srv.stored_files())

        r = c.post("/internal/prune_missing", headers=KEY)
        assert r.status_code == 200
        assert r.json() == {"complete": False, "progress": 0, "total": 3}
        progress = wait_prune_complete(c)
        assert progress == {"complete": True, "progress": 1, "total": 2}

        assert c.get(f"/image/original/{gone}").status_code == 404
        assert c.get(f"/internal/aliases?alias={gone}", headers=KEY).json()["aliases"] == []
        for alias in (aliases[0], aliases[2]):
            assert c.get(f"/image/original/{alias}").status_code == 200
        # The variant's file went with the records that named it.
        srv.stored_files(expect=stored - 1)
        assert len(srv.stored_files()) == stored - 1

        # Started once: a second POST only reports; force=true walks again.
        again = c.post("/internal/prune_missing", headers=KEY).json()
        assert again == {"complete": True, "progress": 1, "total": 2}
        forced = c.post("/internal/prune_missing?force=true", headers=KEY)
        assert forced.status_code == 200
        assert wait_prune_complete(c, progress=0) == {
            "complete": True,
            "progress": 0,
            "total": 2,
        }


def wait_prune_complete(c: httpx.Client, progress: int | None = None) -> dict[str, object]:
    deadline = time.monotonic() + 20
    while True:
        now = c.get("/internal/prune_missing", headers=KEY).json()
        done = now["complete"] and (progress is None or now["progress"] == progress)
        if done or time.monotonic() > deadline:
            return dict(now)
        time.sleep(0.05)


def test_prune_missing_refused_when_read_only(tmp_path: Path) -> None:
    srv = admin_server(tmp_path, "--read-only").start()
    with srv.client() as c:
        r = c.post("/internal/prune_missing", headers=KEY)
        assert r.status_code == 400 and r.json()["code"] == "read-only"


# --- blurhash --------------------------------------------------------------------------------


def test_blurhash_of_every_kind_computed_once(srv: Server, samples: dict[str, Path]) -> None:
    import pyvips

    from pictrs_trio.rules import blurhash as bh

    names = ["cat.jpg", "earth.gif", "scene.webp", "test.png", "video.mp4"]
    with srv.client() as c:
        aliases = files_of(c, *(samples[n] for n in names))
        values = {}
        for name, alias in zip(names, aliases, strict=True):
            r = c.get(f"/image/blurhash?alias={alias}")
            assert r.status_code == 200, (name, r.text)
            body = r.json()
            assert list(body) == ["blurhash", "msg"] and body["msg"] == "ok"
            value = body["blurhash"]
            x, y = (3, 4) if name == "cat.jpg" else (4, 3)  # portrait: more rows
            assert len(value) == 4 + 2 * x * y
            assert value[0] == bh.BASE83[(x - 1) + (y - 1) * 9]
            values[name] = value
        # Stored with the file, and the same answer again.
        conn = apsw.Connection(str(srv.db / "pictrs.sqlite3"), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            kept = {str(v) for (v,) in conn.execute("SELECT blurhash FROM hashes")}
        finally:
            conn.close()
        assert kept == set(values.values())
        assert c.get(f"/image/blurhash?alias={aliases[3]}").json()["blurhash"] == values["test.png"]
        assert c.get(f"/image/blurhash?alias={UNKNOWN}").json()["code"] == "alias-not-found"

    # The DC term is the image's average colour: compare with libvips's own average.
    image = pyvips.Image.new_from_file(str(samples["test.png"]))
    average = [round(image.extract_band(b).avg()) for b in range(3)]
    dc = decode83(values["test.png"][2:6])
    got = [(dc >> 16) & 255, (dc >> 8) & 255, dc & 255]
    # Averaged in linear light it is a little brighter than the sRGB average; close anyway.
    assert all(abs(g - a) <= 25 for g, a in zip(got, average, strict=True)), (got, average)


def decode83(text: str) -> int:
    from pictrs_trio.rules import blurhash as bh

    value = 0
    for ch in text:
        value = value * 83 + bh.BASE83.index(ch)
    return value


# --- export and restore ----------------------------------------------------------------------


def test_export_restores_to_a_fresh_server(tmp_path: Path, samples: dict[str, Path]) -> None:
    first = admin_server(tmp_path / "first").start()
    paths = ["/image/original/{}", "/image/process.webp?src={}&thumbnail=64"]
    with first.client() as c:
        aliases = files_of(c, samples["cat.jpg"], samples["earth.gif"], samples["test.png"])
        before = {p.format(a): c.get(p.format(a)).content for a in aliases for p in paths}
        r = c.post("/internal/export", headers=KEY)
        assert r.status_code == 201, r.text
        assert r.json()["msg"] == "ok"
        folder = tmp_path / "first" / "exports" / r.json()["export"]
        assert sorted(p.name for p in folder.iterdir()) == ["pictrs.sqlite3"]
        (late,) = files_of(c, samples["scene.webp"])  # after the export: not in it
    first.stop()

    # Restore as docs/operations.md says: the export's database as the repo's, and the
    # same files.
    second = admin_server(tmp_path / "second")
    second.db.mkdir(parents=True)
    shutil.copy(folder / "pictrs.sqlite3", second.db / "pictrs.sqlite3")
    shutil.copytree(first.files, second.files)
    second.start()
    with second.client() as c:
        for path, content in before.items():
            r = c.get(path)
            assert r.status_code == 200, path
            assert r.content == content, path
        assert c.get(f"/image/original/{late}").status_code == 404
        page = c.get("/internal/hashes", headers=KEY).json()["page"]
        assert sorted(a for e in page["hashes"] for a in e["aliases"]) == sorted(aliases)
    assert second.stop(signal.SIGTERM) == 0


# --- routes that do not exist ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "code"),
    [
        ("GET", "/nope", {}, 404, "not-found"),
        ("POST", "/image/nope", {}, 404, "not-found"),
        ("GET", "/image/details", {}, 404, "not-found"),
        ("GET", "/internal/nope", KEY, 404, "not-found"),
        ("GET", "/internal/nope", {}, 401, "invalid-api-token"),
    ],
)
def test_unknown_routes_answer_json(
    shared: Server, method: str, path: str, headers: dict[str, str], status: int, code: str
) -> None:
    with shared.client() as c:
        r = c.request(method, path, headers=headers)
        assert r.status_code == status
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        assert body["code"] == code and isinstance(body["msg"], str)
        # The connection stays usable after it.
        assert c.get("/healthz").status_code == 200
