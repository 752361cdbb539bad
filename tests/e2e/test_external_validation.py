"""``media.external_validation`` end to end: the real server POSTing each file it is about to
keep to a validator on loopback (the operator's URL, which the SSRF guard does not apply to),
and keeping nothing of what the validator refuses, does not answer in time, or cannot be
reached for."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import apsw
import httpx
import pytest

from tests.e2e.conftest import ALLOW_LOOPBACK, Server, free_port
from tests.e2e.test_jobs import claim, upload_backgrounded
from tests.e2e.test_upload_serve_delete import upload
from tests.origin import Origin

API_KEY = "test-api-key"
KEY = {"X-Api-Token": API_KEY}


def import_file(c: httpx.Client, path: Path, alias: str) -> httpx.Response:
    files = [("images[]", (alias, path.read_bytes(), "application/octet-stream"))]
    return c.post("/internal/import", files=files, headers=KEY)


@pytest.fixture(scope="module")
def validator(samples: dict[str, Path]) -> Iterator[Origin]:
    v = Origin({name: path.read_bytes() for name, path in samples.items()})
    yield v
    v.close()


@pytest.fixture
def checker(validator: Origin) -> Origin:
    """The module's validator, accepting and with nothing received, for one test."""
    validator.answer, validator.refuse_type = 200, None
    validator.take()
    return validator


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, validator: Origin) -> Iterator[Server]:
    env = {
        "PICTRS__MEDIA__EXTERNAL_VALIDATION": f"{validator.url}/validate",
        "PICTRS__MEDIA__EXTERNAL_VALIDATION_TIMEOUT": "1",
        "PICTRS__SERVER__API_KEY": API_KEY,
        "PICTRS__SERVER__MAX_FILE_COUNT": "3",
        **ALLOW_LOOPBACK,  # for downloads from the validator's GET; validation needs none
    }
    s = Server(tmp_path_factory.mktemp("validated"), env=env).start()
    yield s
    s.stop()


def counts(srv: Server) -> tuple[int, int, int, int]:
    """(files in the store, alias rows, hash rows, open intents)."""
    conn = apsw.Connection(str(srv.db / "pictrs.sqlite3"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        rows = [
            next(iter(conn.execute(f"SELECT count(*) FROM {table}")))[0]
            for table in ("aliases", "hashes", "journal_intents")
        ]
    finally:
        conn.close()
    return (len(srv.stored_files()), *rows)


def settled(srv: Server, expect: tuple[int, int, int, int], timeout: float = 10) -> None:
    """Wait (bounded) for the cleanup jobs, then compare."""
    deadline = time.monotonic() + timeout
    while (now := counts(srv)) != expect and time.monotonic() < deadline:
        time.sleep(0.05)
    assert now == expect


def assert_refused(r: httpx.Response, status: int) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert set(r.json()) == {"msg", "code"}
    assert r.json()["code"] == "failed-external-validation"


def test_accepted_uploads_send_exactly_the_stored_bytes(
    srv: Server, checker: Origin, samples: dict[str, Path]
) -> None:
    """Each way in: the validator gets the bytes that are kept (metadata stripped, steps
    applied) with the stored Content-Type."""
    with srv.client() as c:
        aliases = []
        for path, query in ((samples["test.png"], ""), (samples["exif.jpg"], ""),
                            (samples["cat.jpg"], "?resize=50")):  # fmt: skip
            r = upload(c, path, query=query)
            assert r.status_code == 201, r.text
            aliases.append(r.json()["files"][0]["file"])
        r = upload_backgrounded(c, samples["scene.webp"])
        assert r.status_code == 202, r.text
        done = claim(c, r.json()["uploads"][0]["upload_id"])
        assert done.status_code == 200, done.text
        aliases.append(done.json()["files"][0]["file"])
        r = c.get("/image/download", params={"url": f"{checker.url}/img/earth.gif"})
        assert r.status_code == 201, r.text
        aliases.append(r.json()["files"][0]["file"])
        r = import_file(c, samples["rotated.jpg"], "imported-accepted.jpg")
        assert r.status_code == 201, r.text
        aliases.append(r.json()["files"][0]["file"])

        received = checker.take()
        assert len(received) == len(aliases)
        for alias, (content_type, body) in zip(aliases, received, strict=True):
            original = c.get(f"/image/original/{alias}")
            assert original.status_code == 200
            assert body == original.content, alias
            assert content_type == original.headers["content-type"], alias
        assert received[1][1] != samples["exif.jpg"].read_bytes()  # stripped before asking
        assert c.get("/healthz").status_code == 200


@pytest.mark.parametrize(("answer", "status"), [(403, 400), (500, 400), (302, 400)])
def test_a_refusal_keeps_nothing(
    srv: Server, checker: Origin, samples: dict[str, Path], answer: int, status: int
) -> None:
    before = counts(srv)
    checker.answer = answer
    with srv.client() as c:
        assert_refused(upload(c, samples["test.png"]), status)
        assert len(checker.take()) == 1
        assert c.get("/healthz").status_code == 200
    settled(srv, before)


def test_one_refused_file_undoes_the_request(
    srv: Server, checker: Origin, samples: dict[str, Path]
) -> None:
    """A request's files succeed together or not at all: the PNG, accepted and stored
    first, goes again when the JPEG after it is refused."""
    before = counts(srv)
    checker.refuse_type = "image/jpeg"
    with srv.client() as c:
        assert_refused(upload(c, samples["test.png"], samples["cat.jpg"]), 400)
        assert [t for t, _ in checker.take()] == ["image/png", "image/jpeg"]
    settled(srv, before)


def test_no_answer_in_time_refuses(srv: Server, checker: Origin, samples: dict[str, Path]) -> None:
    before = counts(srv)
    checker.answer = "hang"
    with srv.client() as c:
        started = time.monotonic()
        r = upload(c, samples["test.png"])
        took = time.monotonic() - started
        assert_refused(r, 500)
        assert took < Origin.HANG_SECONDS - 1  # external_validation_timeout is 1 s
        assert "did not answer" in r.json()["msg"]
        assert c.get("/healthz").status_code == 200
    settled(srv, before)


def test_every_way_in_is_validated(srv: Server, checker: Origin, samples: dict[str, Path]) -> None:
    before = counts(srv)
    checker.answer = 403
    with srv.client() as c:
        r = upload_backgrounded(c, samples["test.png"])
        assert r.status_code == 202, r.text
        failed = claim(c, r.json()["uploads"][0]["upload_id"])
        assert failed.status_code == 422, failed.text
        assert failed.json()["code"] == "failed-external-validation"

        url = f"{checker.url}/img/cat.jpg"
        assert_refused(c.get("/image/download", params={"url": url}), 400)
        r = c.get("/image/download", params={"url": url, "backgrounded": "true"})
        assert r.status_code == 202, r.text
        failed = claim(c, r.json()["uploads"][0]["upload_id"])
        assert failed.json()["code"] == "failed-external-validation"

        proxied = f"{checker.url}/img/scene.webp"
        assert_refused(c.get("/image/original", params={"proxy": proxied}), 400)
        gone = c.get("/image/details/original", params={"proxy": proxied})
        assert gone.status_code == 404  # no proxy relation was kept

        assert_refused(import_file(c, samples["test.png"], "imported-refused.png"), 400)
        assert c.get("/image/original/imported-refused.png").status_code == 404
        assert len(checker.take()) == 5
        assert c.get("/healthz").status_code == 200
    settled(srv, before)


def test_a_validator_that_is_down_refuses(tmp_path: Path, samples: dict[str, Path]) -> None:
    env = {"PICTRS__MEDIA__EXTERNAL_VALIDATION": f"http://127.0.0.1:{free_port()}/"}
    srv = Server(tmp_path, env=env).start()
    before = counts(srv)
    with srv.client() as c:
        r = upload(c, samples["test.png"])
        assert_refused(r, 500)
        assert "could not be reached" in r.json()["msg"]
        assert c.get("/healthz").status_code == 200
    settled(srv, before)
    srv.stop()


def test_dummy_mode_is_validated_too(
    tmp_path: Path, checker: Origin, samples: dict[str, Path]
) -> None:
    """pict-rs asks the validator in danger_dummy_mode too: the bytes as they came, as PNG."""
    env = {"PICTRS__MEDIA__EXTERNAL_VALIDATION": f"{checker.url}/validate"}
    srv = Server(tmp_path, ["--danger-dummy-mode"], env=env).start()
    with srv.client() as c:
        jpeg = samples["exif.jpg"].read_bytes()
        r = upload(c, samples["exif.jpg"])
        assert r.status_code == 201, r.text
        assert checker.take() == [("image/png", jpeg)]
        before = counts(srv)
        checker.answer = 403
        assert_refused(upload(c, samples["exif.jpg"]), 400)
    settled(srv, before)
    srv.stop()
