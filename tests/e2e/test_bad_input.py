"""Bad input, tried as a new user would: a 4xx with pict-rs's error JSON, nothing stored,
and the server stays healthy."""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Server
from tests.e2e.test_upload_serve_delete import upload


def png_bomb(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height; the pixel data is a few bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def assert_error(r, status: int, code: str | None = None) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"msg", "code"}
    assert body["msg"]
    if code is not None:
        assert body["code"] == code


@pytest.fixture(scope="module")
def refusing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the refusals that must leave its store empty: each finds it as empty
    as the last one left it (max_file_count 3, as ``fresh_server``)."""
    root = tmp_path_factory.mktemp("refusals")
    srv = Server(root, ["--max-file-count", "3"], store="filesystem").start()
    yield srv
    srv.stop()


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("empty.bin", "validate-file-empty"),
        ("random.bin", None),
        ("truncated.png", None),
        ("truncated.jpg", None),
        ("image.svg", None),
        ("image.tiff", None),
        ("image.bmp", None),
    ],
)
def test_rejected_files_leave_nothing(
    refusing: Server, samples: dict[str, Path], name: str, code: str | None
) -> None:
    with refusing.client() as c:
        # a misleading file name and Content-Type must not matter
        files = [("images[]", ("photo.png", samples[name].read_bytes(), "image/png"))]
        r = c.post("/image", files=files)
        assert 400 <= r.status_code < 500
        assert_error(r, r.status_code, code)
        assert c.get("/healthz").status_code == 200
    assert refusing.stored_files(expect=0) == []


def test_png_bomb_refused_fast(refusing: Server) -> None:
    bomb = png_bomb(60000, 60000)
    with refusing.client() as c:
        started = time.monotonic()
        r = c.post("/image", files=[("images[]", ("bomb.png", bomb, "image/png"))])
        elapsed = time.monotonic() - started
        assert_error(r, 400, "validate-width")
        assert c.get("/healthz").status_code == 200
    print(f"60000x60000 PNG refused in {elapsed * 1000:.1f} ms")
    assert refusing.stored_files(expect=0) == []


def test_limits(fresh_server: Server, samples: dict[str, Path]) -> None:
    with fresh_server.client() as c:
        assert_error(upload(c, samples["test.png"], query="?max_width=100"), 400, "validate-width")
        assert_error(
            upload(c, samples["test.png"], query="?max_height=100"), 400, "validate-height"
        )
        assert_error(upload(c, samples["test.png"], query="?max_area=1000"), 400, "validate-area")
        assert_error(
            upload(c, samples["earth.gif"], query="?max_frame_count=10"), 400, "validate-frames"
        )
        assert_error(
            upload(c, samples["earth.gif"], query="?allow_animation=false"), 400, "media-disallowed"
        )
        assert_error(
            upload(c, samples["video.mp4"], query="?allow_video=false"), 400, "media-disallowed"
        )
        assert_error(
            upload(c, samples["test.png"], query="?allow_image=maybe"), 400, "invalid-query"
        )
        assert_error(upload(c, samples["test.png"], query="?max_width=-1"), 400, "invalid-query")
        # the limits that pass still let the upload through
        ok = upload(c, samples["test.png"], query="?max_width=640&allow_animation=false")
        assert ok.status_code == 201
        assert len(fresh_server.stored_files(expect=1)) == 1


def test_multipart_problems(refusing: Server, samples: dict[str, Path]) -> None:
    with refusing.client() as c:
        r = upload(c, *[samples["test.png"]] * 4)  # max_file_count is 3
        assert_error(r, 400, "file-upload-error")
        r = c.post("/image", data={"text": "hello"}, files={"other": ("x.txt", b"x")})
        assert_error(r, 400, "validate-no-files")
        r = c.post("/image", content=b"not multipart", headers={"content-type": "text/plain"})
        assert_error(r, 400, "file-upload-error")
        r = c.post(
            "/image",
            content=b"--xyz\r\nbroken",
            headers={"content-type": "multipart/form-data; boundary=xyz"},
        )
        assert 400 <= r.status_code < 500
        # a bad file after a good one: all or nothing
        r = upload(c, samples["test.png"], samples["random.bin"])
        assert 400 <= r.status_code < 500
        assert c.get("/healthz").status_code == 200
    assert refusing.stored_files(expect=0) == []


def test_file_too_large(tmp_path: Path, samples: dict[str, Path]) -> None:
    srv = Server(tmp_path, ["--media-max-file-size", "1"]).start()
    try:
        big = tmp_path / "big.png"
        big.write_bytes(samples["test.png"].read_bytes() + bytes(2 * 1024 * 1024))
        with srv.client() as c:
            assert_error(upload(c, big), 413, "validate-file-size")
            assert c.get("/healthz").status_code == 200
        assert srv.stored_files(expect=0) == []
    finally:
        srv.stop()


def test_sigterm_lets_in_flight_upload_finish(tmp_path: Path, samples: dict[str, Path]) -> None:
    import signal
    import threading

    srv = Server(tmp_path).start()
    data = samples["test.png"].read_bytes()
    head = (
        b'--b0undary\r\nContent-Disposition: form-data; name="images[]"; filename="t.png"\r\n\r\n'
    )
    tail = b"\r\n--b0undary--\r\n"
    sent_half = threading.Event()

    def body():
        yield head + data[: len(data) // 2]
        sent_half.set()
        time.sleep(1.0)  # SIGTERM arrives while the rest is still on its way
        yield data[len(data) // 2 :] + tail

    def terminate() -> None:
        sent_half.wait(10)
        time.sleep(0.3)
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)

    killer = threading.Thread(target=terminate)
    killer.start()
    with srv.client() as c:
        r = c.post(
            "/image",
            content=body(),
            headers={"content-type": "multipart/form-data; boundary=b0undary"},
        )
    killer.join()
    assert r.status_code == 201, r.text
    assert srv.stop() == 0
    assert len(srv.stored_files(expect=1)) == 1


def test_bad_preprocess_steps_stop_start_up(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.e2e.conftest import REPO

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pictrs_trio",
            "run",
            "--media-preprocess-steps",
            "resize=abc",
            "filesystem",
            "-p",
            str(tmp_path / "f"),
            "sqlite",
            "-p",
            str(tmp_path / "s"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0
    assert "media.preprocess_steps" in r.stderr


def gif_screen_bomb(screen: tuple[int, int], frames: int) -> bytes:
    """A GIF drawing ``frames`` one-pixel frames on a ``screen``-sized logical screen."""
    out = b"GIF89a" + struct.pack("<HH", *screen) + bytes([0x80, 0, 0]) + b"\0\0\0\xff\xff\xff"
    out += b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"  # loop forever
    for _ in range(frames):
        out += b"\x21\xf9\x04\x00\x0a\x00\x00\x00"  # 0.1 s per frame
        out += b"\x2c" + struct.pack("<HHHH", 0, 0, 1, 1) + b"\x00"  # a 1x1 frame at 0,0
        out += b"\x02\x02\x44\x01\x00"  # LZW: clear, pixel 0, end
    return out + b"\x3b"


def test_hostile_media_and_queries_are_refused_at_once(
    fresh_server: Server, samples: dict[str, Path]
) -> None:
    """Each is a 4xx JSON before any real work: a GIF whose logical screen is 9000x9000
    (libvips alone would call it 1x1), a thousand chained operations, thousands of fields."""
    with fresh_server.client() as c:
        alias = upload(c, samples["test.png"]).json()["files"][0]["file"]
        ops = "&".join(["blur=1"] * 1000)
        fields = [(f"field{n}", "x") for n in range(5000)]
        bomb = {"images[]": ("a.gif", gif_screen_bomb((9000, 9000), 300))}
        cases = [
            (lambda: c.post("/image", files=bomb), 400, "validate-width"),
            (lambda: c.get(f"/image/process.webp?src={alias}&{ops}"), 400, "invalid-process-path"),
            (lambda: c.post("/image", data=dict(fields), files={"images[]": ("a.png", b"x")}),
             400, "file-upload-error"),
        ]  # fmt: skip
        for request, status, code in cases:
            started = time.monotonic()
            r = request()
            took = time.monotonic() - started
            print(f"{code}: {took * 1000:.0f} ms")
            assert_error(r, status, code)
            assert took < 5  # a bound on hanging, not a speed measurement
        assert c.get("/healthz").status_code == 200
        small = c.post("/image", files={"images[]": ("s.gif", gif_screen_bomb((2, 2), 3))})
        assert small.status_code == 201, small.text  # an ordinary small animation still goes
        details = small.json()["files"][0]["details"]
        assert (details["width"], details["height"], details["frames"]) == (2, 2, 3)
    assert len(fresh_server.stored_files()) == 2  # test.png and the small GIF, nothing else
