"""Drop-in as a pict-rs operator tries it: Lemmy's stock pict-rs environment, and a
configuration with every section and key of pict-rs 0.5's sample configuration (its repo
section switched to sqlite). Both start, serve, and warn once about each key they ignore."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pyvips

from tests.e2e.conftest import Server, free_port
from tests.origin import Origin
from tests.otlp import Collector

API_KEY = "API_KEY"


def _warnings(srv: Server) -> list[str]:
    return [line for line in srv.log.read_text().splitlines() if "WARN" in line]


def _serves(srv: Server, image: bytes) -> tuple[str, pyvips.Image]:
    """Upload, then a thumbnail: the alias and the decoded original."""
    with srv.client() as c:
        up = c.post("/image", files={"images[]": ("cat.jpg", image)})
        assert up.status_code == 201, up.text
        alias = up.json()["files"][0]["file"]
        thumb = c.get(f"/image/process.webp?src={alias}&thumbnail=64")
        assert thumb.status_code == 200
        small = pyvips.Image.new_from_buffer(thumb.content, "")
        assert max(small.width, small.height) == 64
        original = c.get(f"/image/original/{alias}")
        assert original.status_code == 200
        aliases = c.get(f"/internal/aliases?alias={alias}", headers={"X-Api-Token": API_KEY})
        assert aliases.json()["aliases"] == [alias]
    return alias, pyvips.Image.new_from_buffer(original.content, "")


def test_lemmys_stock_pict_rs_environment(tmp_path: Path, samples: dict[str, Path]) -> None:
    # lemmy-ansible's and Lemmy's docker-compose.yml, pict-rs service, as shipped
    env = {
        "PICTRS_OPENTELEMETRY_URL": "http://otel:4137",
        "PICTRS__SERVER__API_KEY": API_KEY,
        "RUST_BACKTRACE": "full",
        "PICTRS__MEDIA__VIDEO_CODEC": "vp9",
        "PICTRS__MEDIA__GIF__MAX_WIDTH": "256",
        "PICTRS__MEDIA__GIF__MAX_HEIGHT": "256",
        "PICTRS__MEDIA__GIF__MAX_AREA": "65536",
        "PICTRS__MEDIA__GIF__MAX_FRAME_COUNT": "400",
        "PICTRS__MEDIA__VIDEO__VIDEO_CODEC": "vp9",
        "PICTRS__MEDIA__ANIMATION__MAX_WIDTH": "256",
        "PICTRS__MEDIA__ANIMATION__MAX_HEIGHT": "256",
        "PICTRS__MEDIA__ANIMATION__MAX_FRAME_COUNT": "400",
    }
    srv = Server(tmp_path, env=env).start()
    try:
        _, original = _serves(srv, samples["cat.jpg"].read_bytes())
        assert (original.width, original.height) == (1200, 1387)
        with srv.client() as c:  # the 0.5 animation limit acts: earth.gif is 400x400
            gif = c.post("/image", files={"images[]": ("e.gif", samples["earth.gif"].read_bytes())})
            assert gif.status_code == 400
            assert gif.json()["code"] == "validate-width"
    finally:
        assert srv.stop() == 0
    warned = _warnings(srv)
    for old, new in [
        ("media.video_codec", "PICTRS__MEDIA__VIDEO__VIDEO_CODEC"),
        ("media.gif.max_width", "PICTRS__MEDIA__ANIMATION__MAX_WIDTH"),
        ("media.gif.max_height", "PICTRS__MEDIA__ANIMATION__MAX_HEIGHT"),
        ("media.gif.max_area", "PICTRS__MEDIA__ANIMATION__MAX_AREA"),
        ("media.gif.max_frame_count", "PICTRS__MEDIA__ANIMATION__MAX_FRAME_COUNT"),
    ]:
        assert len([w for w in warned if f"{old} (" in w and new in w]) == 1, (old, warned)
    assert len(warned) == 5, warned


# Every section and key of pict-rs 0.5's sample pict-rs.toml with the values it shows (our
# own writing of them), except: repo is sqlite, the paths, the address, the validator and
# the OpenTelemetry collector are this test's, and the TLS pair is left out (it names files
# that do not exist).
SAMPLE = """
[server]
address = '127.0.0.1:{port}'
read_only = false
danger_dummy_mode = false
api_key = 'API_KEY'
max_file_count = 1
temporary_directory = "{root}/tmp"
cleanup_temporary_directory = true

[client]
timeout = 30

[upgrade]
concurrency = 32

[tracing.logging]
format = 'normal'
targets = 'info'
log_spans = false
no_ansi = false
log_requests = false

[tracing.console]
address = '0.0.0.0:6669'
buffer_capacity = 102400

[tracing.opentelemetry]
url = 'http://127.0.0.1:{collector_port}/'
service_name = 'pict-rs'
targets = 'info'

[metrics]
prometheus_address = "127.0.0.1:{metrics_port}"

[old_repo]
path = '/mnt/sled-repo'

[media]
external_validation = 'http://user:validator-secret@127.0.0.1:{validator_port}/check?token=validator-secret'
max_file_size = 40
process_timeout = 30
preprocess_steps = 'crop=16x9&resize=1200&blur=0.2'
filters = ['blur', 'crop', 'identity', 'resize', 'thumbnail']

[media.retention]
variants = "7d"
proxy = "7d"

[media.magick]
max_width = 10000
max_height = 10000
max_area = 20000
memory = 256
map = 512
disk = 1024

[media.image]
max_width = 10000
max_height = 10000
max_area = 40000000
max_file_size = 40
format = "webp"

[media.image.quality]
avif = 100
png = 100
jpeg = 100
jxl = 100
webp = 100

[media.animation]
max_width = 1920
max_height = 1920
max_area = 2073600
max_file_size = 40
max_frame_count = 900
format = "webp"

[media.animation.quality]
apng = 100
avif = 100
webp = 100

[media.video]
enable = true
allow_audio = false
max_width = 3840
max_height = 3840
max_area = 8294400
max_file_size = 40
max_frame_count = 900
video_codec = "vp9"
audio_codec = "opus"

[media.video.quality]
crf_max = 12
crf_240 = 37
crf_360 = 36
crf_480 = 33
crf_720 = 32
crf_1080 = 31
crf_1440 = 24
crf_2160 = 15

[repo]
type = 'sqlite'
path = '{root}/sqlite'
cache_capacity = 67108864

[store]
type = 'filesystem'
path = '{root}/files'
"""


def test_pict_rs_sample_configuration_with_a_sqlite_repo(
    tmp_path: Path, samples: dict[str, Path]
) -> None:
    validator, collector = Origin(), Collector()
    srv = Server(tmp_path)
    config = tmp_path / "pict-rs.toml"
    metrics_port = free_port()  # pict-rs's sample says 0.0.0.0:9000; any free port here
    config.write_text(
        SAMPLE.format(
            port=srv.port,
            root=tmp_path,
            validator_port=validator.port,
            collector_port=collector.port,
            metrics_port=metrics_port,
        )
    )
    srv.global_args = ["-c", str(config)]
    srv.start()
    try:
        alias, original = _serves(srv, samples["cat.jpg"].read_bytes())
        # preprocess_steps and the webp format act: 16:9 crop, at most 1200 wide
        assert alias.endswith(".webp")
        assert (original.width, original.height) == (1200, 675)
        assert original.get("vips-loader") == "webpload_buffer"
        # the operator's validator on loopback saw exactly that file (no SSRF guard on it)
        with srv.client() as c:
            kept = c.get(f"/image/original/{alias}").content
        assert validator.take() == [("image/webp", kept)]
        # the scrape listener acts, and counted the validator's answer
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        assert 'pict_rs_ingest_external_validation_count{complete="true"} 1.0' in scraped
    finally:
        assert srv.stop() == 0
        validator.close()
        collector.stop()
    # the spans went to the collector, as pict-rs's would
    spans = collector.spans()
    assert {span.resource["service.name"] for span in spans} == {"pict-rs"}
    assert {"POST /image", "ingest", "ingest.external_validation"} <= {s.name for s in spans}
    warned = _warnings(srv)
    keys = {m[1] for w in warned if (m := re.search(r"configuration: ([\w.]+)", w))}
    assert keys == {
        "repo.cache_capacity",  # a sled setting: no sqlite key reads it
        "tracing.console.address",
        "old_repo.path",
    }, warned
    assert len(warned) == len(keys)
    assert srv.errors.read_text() == ""
    assert "validator-secret" not in srv.log.read_text()
