"""``server.danger_dummy_mode`` as pict-rs has it: no media tools needed, any bytes stored as
they came under a .png alias with 0x0 details, and every variant is the original."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import Server


def test_dummy_mode_stores_bytes_unprocessed_without_tools(tmp_path: Path) -> None:
    empty = tmp_path / "no-tools"
    empty.mkdir()  # PATH without ffmpeg, ffprobe, exiftool or the JPEG XL tools
    env = {"PICTRS__SERVER__DANGER_DUMMY_MODE": "true", "PATH": str(empty)}
    srv = Server(tmp_path, env=env).start()
    body = b"not an image at all, and pict-rs would not look\n" * 100
    try:
        with srv.client() as c:
            up = c.post("/image", files={"images[]": ("notes.txt", body)})
            assert up.status_code == 201, up.text
            entry = up.json()["files"][0]
            alias = entry["file"]
            assert alias.endswith(".png")
            assert entry["details"]["width"] == 0
            assert entry["details"]["height"] == 0
            assert entry["details"]["content_type"] == "image/png"
            original = c.get(f"/image/original/{alias}")
            assert original.status_code == 200
            assert original.content == body
            thumb = c.get(f"/image/process.webp?src={alias}&thumbnail=64")
            assert thumb.status_code == 200
            assert thumb.content == body  # the original itself: nothing is rendered
            assert c.get("/healthz").status_code == 200
            assert c.get(f"/image/delete/{entry['delete_token']}/{alias}").status_code == 204
            assert c.get(f"/image/original/{alias}").status_code == 404
    finally:
        assert srv.stop() == 0
    assert "server.danger_dummy_mode is on" in srv.log.read_text()
