"""config.load(): layers, environment parsing, strictness and its messages, --save-to."""

from __future__ import annotations

import datetime
import re
import stat
from pathlib import Path

import msgspec
import pytest

from pictrs_trio import config
from pictrs_trio.config import (
    Config,
    ConfigError,
    ObjectStorageStore,
    SqliteRepo,
    layered,
    load,
    load_all,
    parse_address,
    parse_retention,
    save_to,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "pictrs.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error(**kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load(**kwargs)  # type: ignore[arg-type]
    return str(info.value)


def test_defaults_are_pict_rs_defaults() -> None:
    c = load()
    assert c == Config()
    assert c.server.address == "0.0.0.0:8080"
    assert c.media.image.max_area == 40_000_000
    assert c.media.filters == ["blur", "crop", "identity", "resize", "thumbnail"]
    assert c.repo == SqliteRepo()
    assert c.store.path == "/mnt/files"  # type: ignore[union-attr]


# (key, toml literal in the file, env value, flag value, expected file/env/flag as Python)
PRECEDENCE = [
    ("server.address", '"[::1]:1"', "[::1]:2", "[::1]:3", ("[::1]:1", "[::1]:2", "[::1]:3")),
    ("media.image.max_width", "100", "200", 300, (100, 200, 300)),
    ("media.video.enable", "false", "true", False, (False, True, False)),
    ("client.timeout", "1.5", "2.5", 3.5, (1.5, 2.5, 3.5)),
    ("tracing.logging.targets", '"warn"', "debug", "error", ("warn", "debug", "error")),
]  # fmt: skip


def get(c: Config, key: str) -> object:
    value: object = c
    for part in key.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize(("key", "in_file", "in_env", "in_flag", "expected"), PRECEDENCE)
def test_precedence_default_file_env_flag(
    tmp_path: Path,
    key: str,
    in_file: str,
    in_env: str,
    in_flag: object,
    expected: tuple[object, ...],
) -> None:
    section, leaf = key.rsplit(".", 1)
    file = write(tmp_path, f"[{section}]\n{leaf} = {in_file}\n")
    env = {layered.env_name("PICTRS__", tuple(key.split("."))): in_env}
    flags = config.nest({key: in_flag})
    default = get(Config(), key)

    assert get(load(), key) == default
    assert get(load(file=file), key) == expected[0]
    assert get(load(file=file, env=env), key) == expected[1]
    assert get(load(file=file, env=env, overrides=flags), key) == expected[2]
    # a higher layer that does not mention the key leaves the lower one alone
    assert get(load(file=file, env={"PICTRS__SERVER__API_KEY": "k"}), key) == expected[0]
    assert get(load(env=env, overrides={"server": {"read_only": True}}), key) == expected[1]


def test_env_values_are_parsed_by_the_key_type() -> None:
    c = load(
        env={
            "PICTRS__SERVER__READ_ONLY": "TRUE",
            "PICTRS__SERVER__DANGER_DUMMY_MODE": "false",
            "PICTRS__SERVER__MAX_FILE_COUNT": "4",
            "PICTRS__SERVER__API_KEY": "12345",  # a string key stays a string
            "PICTRS__MEDIA__PROCESS_TIMEOUT": "2.5",
            "PICTRS__MEDIA__VIDEO__QUALITY__CRF_720": "24",
            "PICTRS__MEDIA__IMAGE__FORMAT": "webp",
            "UNRELATED": "x",
            "PICTRS_SINGLE_UNDERSCORE": "ignored",
        }
    )
    assert c.server.read_only is True
    assert c.server.danger_dummy_mode is False
    assert c.server.max_file_count == 4
    assert c.server.api_key == "12345"
    assert c.media.process_timeout == 2.5
    assert c.media.video.quality.crf_720 == 24
    assert c.media.image.format == "webp"


def test_env_names_are_case_insensitive_after_the_prefix() -> None:
    c = load(env={"pictrs__Media__Image__Max_Width": "123", "PICTRS__server__ADDRESS": "[::1]:9"})
    assert c.media.image.max_width == 123
    assert c.server.address == "[::1]:9"


def test_env_filters_is_a_comma_separated_list() -> None:
    c = load(env={"PICTRS__MEDIA__FILTERS": "thumbnail, resize,,identity"})
    assert c.media.filters == ["thumbnail", "resize", "identity"]


def test_env_store_type_selects_object_storage(tmp_path: Path) -> None:
    # the file's filesystem path must not leak into the object-storage section
    file = write(tmp_path, '[store]\ntype = "filesystem"\npath = "/srv/files"\n')
    env = {
        "PICTRS__STORE__TYPE": "object_storage",
        "PICTRS__STORE__ENDPOINT": "http://127.0.0.1:9000",
        "PICTRS__STORE__BUCKET_NAME": "pict-rs",
        "PICTRS__STORE__REGION": "garage",
        "PICTRS__STORE__ACCESS_KEY": "ak",
        "PICTRS__STORE__SECRET_KEY": "sk",
        "PICTRS__STORE__USE_PATH_STYLE": "true",
    }
    store = load(file=file, env=env).store
    assert isinstance(store, ObjectStorageStore)
    assert (store.endpoint, store.bucket_name, store.use_path_style) == (
        "http://127.0.0.1:9000",
        "pict-rs",
        True,
    )
    # same type in both layers: merged key by key
    c = load(file=file, env={"PICTRS__STORE__TYPE": "filesystem"})
    assert c.store.path == "/srv/files"  # type: ignore[union-attr]


def test_rust_log_sets_targets_below_pictrs_env() -> None:
    assert load(env={"RUST_LOG": "debug"}).tracing.logging.targets == "debug"
    env = {"RUST_LOG": "debug", "PICTRS__TRACING__LOGGING__TARGETS": "warn"}
    assert load(env=env).tracing.logging.targets == "warn"


def ignored(**kwargs: object) -> tuple[str, ...]:
    """What ``load_all`` ignored; the config itself must be the defaults plus the rest."""
    return load_all(**kwargs).ignored  # type: ignore[arg-type]


def test_unknown_keys_are_ignored_and_named_with_their_source(tmp_path: Path) -> None:
    """pict-rs ignores unknown keys; so do we, with one message each (a start-up warning)."""
    file = write(tmp_path, "[media.image]\nmax_widht = 5\nmax_height = 7\n")
    loaded = load_all(file=file)
    assert loaded.config.media.image.max_height == 7  # the rest of the file applies
    (message,) = loaded.ignored
    assert message == (
        f"media.image.max_widht (file {file}): unknown key, ignored; "
        "did you mean media.image.max_width?"
    )
    (message,) = ignored(env={"PICTRS__SERVER__ADDRES": "0.0.0.0:1"})
    assert message.startswith("server.addres (environment variable PICTRS__SERVER__ADDRES)")
    assert ignored(overrides={"nosuchsection": {"a": 1, "b": {"c": 2}}}) == (
        "nosuchsection.a (command line): unknown key, ignored",
        "nosuchsection.b.c (command line): unknown key, ignored",
    )
    assert ignored() == ()


def test_unknown_key_for_the_store_type_says_which_type() -> None:
    (message,) = ignored(env={"PICTRS__STORE__ENDPOINT": "http://x"})
    assert message == (
        "store.endpoint (environment variable PICTRS__STORE__ENDPOINT): unknown key, ignored "
        'for a store of type "filesystem"'
    )


def test_lemmys_stock_pict_rs_environment_loads() -> None:
    """Lemmy's docker-compose for pict-rs, 0.4-era names and 0.5 ones: it starts, the 0.4
    names are ignored (as pict-rs 0.5 ignores them) and each named with its 0.5 name."""
    env = {
        "PICTRS_OPENTELEMETRY_URL": "http://otel:4137",  # not our prefix: not ours to read
        "PICTRS__SERVER__API_KEY": "API_KEY",
        "RUST_BACKTRACE": "full",
        "PICTRS__MEDIA__VIDEO_CODEC": "vp9",
        "PICTRS__MEDIA__GIF__MAX_WIDTH": "256",
        "PICTRS__MEDIA__GIF__MAX_HEIGHT": "256",
        "PICTRS__MEDIA__GIF__MAX_AREA": "65536",
        "PICTRS__MEDIA__GIF__MAX_FRAME_COUNT": "400",
        "PICTRS__MEDIA__ANIMATION__MAX_WIDTH": "256",
        "PICTRS__MEDIA__VIDEO__VIDEO_CODEC": "vp9",
    }
    loaded = load_all(env=env)
    assert loaded.config.server.api_key == "API_KEY"
    assert loaded.config.media.animation.max_width == 256
    assert loaded.config.media.animation.max_height == Config().media.animation.max_height
    assert loaded.config.media.video.video_codec == "vp9"
    assert len(loaded.ignored) == 5
    assert (
        "media.gif.max_width (environment variable PICTRS__MEDIA__GIF__MAX_WIDTH): a pict-rs "
        "0.4 name, ignored as pict-rs 0.5 ignores it; its 0.5 name is "
        "PICTRS__MEDIA__ANIMATION__MAX_WIDTH"
    ) in loaded.ignored


def test_bad_value_is_named(tmp_path: Path) -> None:
    file = write(tmp_path, '[media.image]\nmax_width = "abc"\n')
    message = error(file=file)
    assert message.startswith("media.image.max_width = 'abc'")
    assert "expected int" in message

    message = error(overrides={"media": {"image": {"format": "bmp"}}})
    assert "media.image.format" in message
    assert "'webp'" in message  # the allowed values are listed

    assert "media.image.max_width" in error(env={"PICTRS__MEDIA__IMAGE__MAX_WIDTH": "70000"})
    assert "media.filters[1]" in error(overrides={"media": {"filters": ["blur", 3]}})


def test_missing_required_object_storage_key(tmp_path: Path) -> None:
    file = write(tmp_path, '[store]\ntype = "object_storage"\nendpoint = "http://x"\n')
    message = error(file=file)
    assert "store.bucket_name" in message
    assert "required" in message
    assert "PICTRS__STORE__BUCKET_NAME" in message


@pytest.mark.parametrize(
    "layer",
    [
        {"file": '[repo]\ntype = "sled"\npath = "/mnt/sled-repo"\ncache_capacity = 1\n'},
        {"env": {"PICTRS__REPO__TYPE": "sled"}},
        {"overrides": {"repo": {"type": "sled", "path": "/x"}}},
    ],
)
def test_sled_repo_explains_sqlite_and_migration(tmp_path: Path, layer: dict[str, object]) -> None:
    if isinstance(text := layer.get("file"), str):
        layer = {"file": write(tmp_path, text)}
    message = error(**layer)
    assert message.startswith('repo.type = "sled"')
    assert 'type = "sqlite"' in message
    assert "migrate-repo sled" in message
    assert "import" in message


def test_postgres_repo_is_not_supported_yet() -> None:
    message = error(env={"PICTRS__REPO__TYPE": "postgres", "PICTRS__REPO__URL": "postgres://"})
    assert "postgres" in message
    assert "not supported yet" in message


def test_unknown_store_type() -> None:
    message = error(env={"PICTRS__STORE__TYPE": "object-storage"})
    assert "store.type" in message
    assert '"object_storage"' in message


@pytest.mark.parametrize(
    ("toml", "old", "new"),
    [
        ('[media]\nformat = "webp"\n', "media.format", "media.image.format"),
        ("[media]\nmax_width = 5\n", "media.max_width", "media.image.max_width"),
        ("[media.gif]\nmax_width = 5\n", "media.gif.max_width", "media.animation.max_width"),
        ("[media]\nenable_full_video = 1\n", "media.enable_full_video", "media.video.allow_audio"),
        ('[media]\nvideo_codec = "vp9"\n', "media.video_codec", "media.video.video_codec"),
    ],
)  # fmt: skip
def test_moved_keys_are_ignored_naming_their_new_name(
    tmp_path: Path, toml: str, old: str, new: str
) -> None:
    loaded = load_all(file=write(tmp_path, toml))
    assert loaded.config == Config()  # not applied: pict-rs 0.5 does not read them either
    (message,) = loaded.ignored
    assert message.startswith(old)
    assert message.endswith(f"its 0.5 name is {new}")


def test_moved_key_in_env_names_the_new_variable() -> None:
    (message,) = ignored(env={"PICTRS__MEDIA__FORMAT": "webp"})
    assert message.startswith("media.format (environment variable PICTRS__MEDIA__FORMAT)")
    assert message.endswith("its 0.5 name is PICTRS__MEDIA__IMAGE__FORMAT")


def test_removed_key_is_ignored() -> None:
    assert ignored(overrides={"server": {"worker_id": "x"}}) == (
        "server.worker_id (command line): removed in pict-rs 0.5; ignored",
    )


def test_quality_above_the_cap_is_clamped_negative_is_an_error() -> None:
    c = load(
        env={
            "PICTRS__MEDIA__IMAGE__QUALITY__JPEG": "150",
            "PICTRS__MEDIA__IMAGE__QUALITY__WEBP": "80",
            "PICTRS__MEDIA__ANIMATION__QUALITY__AVIF": "101",
            "PICTRS__MEDIA__VIDEO__QUALITY__CRF_MAX": "99",
            "PICTRS__MEDIA__VIDEO__QUALITY__CRF_1080": "63",
        }
    )
    assert c.media.image.quality.jpeg == 100
    assert c.media.image.quality.webp == 80
    assert c.media.animation.quality.avif == 100
    assert c.media.video.quality.crf_max == 63
    assert c.media.video.quality.crf_1080 == 63
    message = error(overrides={"media": {"image": {"quality": {"png": -1}}}})
    assert "media.image.quality.png" in message
    assert ">= 0" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", datetime.timedelta(days=7)),
        ("1h", datetime.timedelta(hours=1)),
        ("30m", datetime.timedelta(minutes=30)),
        ("2y", datetime.timedelta(days=730)),
        ("12hour", datetime.timedelta(hours=12)),
        ("3day", datetime.timedelta(days=3)),
        ("5minute", datetime.timedelta(minutes=5)),
        ("1year", datetime.timedelta(days=365)),
        ("0d", datetime.timedelta(0)),
    ],
)
def test_parse_retention(text: str, expected: datetime.timedelta) -> None:
    assert parse_retention(text) == expected


@pytest.mark.parametrize("text", ["", "7", "d", "7w", "-1d", "1.5h", "7 d", "seven days"])
def test_parse_retention_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="retention"):
        parse_retention(text)


def test_retention_is_checked_at_load() -> None:
    message = error(env={"PICTRS__MEDIA__RETENTION__PROXY": "7w"})
    assert message.startswith("media.retention.proxy = '7w'")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::]:8080", ("::", 8080)),
        ("[::1]:65535", ("::1", 65535)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    "text", ["", "8080", "0.0.0.0", "localhost:8080", "::1:8080", "1.2.3.4:70000", "[1.2.3.4]:1",
             "1.2.3.4:", "[::1]", "300.1.1.1:80"],
)  # fmt: skip
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (any message; the load test checks one)
        parse_address(text)


def test_addresses_are_checked_at_load() -> None:
    message = error(overrides={"metrics": {"prometheus_address": "localhost:9000"}})
    assert message.startswith("metrics.prometheus_address = 'localhost:9000' (command line)")


@pytest.mark.parametrize(
    "url", ["http://scanner:abc/", "scanner:8076", "ftp://scanner/", "http:///check", "/check"]
)
def test_external_validation_must_be_an_http_url(url: str) -> None:
    message = error(env={"PICTRS__MEDIA__EXTERNAL_VALIDATION": url})
    assert message.startswith(
        f"media.external_validation = {url!r} (environment variable "
        "PICTRS__MEDIA__EXTERNAL_VALIDATION)"
    )
    ok = "http://127.0.0.1:8076/check?token=t"
    assert load(env={"PICTRS__MEDIA__EXTERNAL_VALIDATION": ok}).media.external_validation == ok


@pytest.mark.parametrize("url", ["localhost:4317", "grpc://collector:4317", "http://:4317"])
def test_opentelemetry_url_must_be_an_http_url(url: str) -> None:
    """The exporter speaks gRPC over http:// (plain) or https:// (TLS), as pict-rs's tonic."""
    message = error(env={"PICTRS__TRACING__OPENTELEMETRY__URL": url})
    assert message.startswith(f"tracing.opentelemetry.url = {url!r} (environment variable")
    ok = "https://tempo.internal:4317"
    assert load(env={"PICTRS__TRACING__OPENTELEMETRY__URL": ok}).tracing.opentelemetry.url == ok


def test_allowed_networks_from_each_layer(tmp_path: Path) -> None:
    assert load().client.allowed_networks == []
    file = write(tmp_path, '[client]\nallowed_networks = ["10.0.0.0/8", "fd00::/8"]\n')
    assert load(file=file).client.allowed_networks == ["10.0.0.0/8", "fd00::/8"]
    env = {"PICTRS__CLIENT__ALLOWED_NETWORKS": "127.0.0.0/8, ::1/128,,192.168.1.5"}
    assert load(env=env).client.allowed_networks == ["127.0.0.0/8", "::1/128", "192.168.1.5"]


@pytest.mark.parametrize(
    ("text", "network"),
    [("10.0.0.0/8", "10.0.0.0/8"), ("10.1.2.3/8", "10.0.0.0/8"), ("192.168.1.5", "192.168.1.5/32"),
     (" fd00::/8 ", "fd00::/8"), ("::1", "::1/128")],
)  # fmt: skip
def test_parse_network(text: str, network: str) -> None:
    assert str(config.parse_network(text)) == network


@pytest.mark.parametrize(
    "text", ["", "bogus", "10.0.0.0/33", "10.0.0.0/8/8", "localhost", "::1/129"]
)
def test_parse_network_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="CIDR"):
        config.parse_network(text)


def test_allowed_networks_are_checked_at_load(tmp_path: Path) -> None:
    message = error(env={"PICTRS__CLIENT__ALLOWED_NETWORKS": "10.0.0.0/8,bogus"})
    assert message.startswith("client.allowed_networks[1] = 'bogus'")
    assert "PICTRS__CLIENT__ALLOWED_NETWORKS" in message
    file = write(tmp_path, '[client]\nallowed_networks = ["300.0.0.0/8"]\n')
    message = error(file=file)
    assert message.startswith("client.allowed_networks[0] = '300.0.0.0/8'")
    assert str(file) in message
    assert "client.allowed_networks" in error(overrides={"client": {"allowed_networks": "10/8"}})


def test_certificate_without_key_is_refused() -> None:
    assert "private_key" in error(env={"PICTRS__SERVER__CERTIFICATE": "/c.pem"})


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    file = write(tmp_path, '[server]\naddress = "0.0.0.0:1"\n[media.image\n')
    message = error(file=file)
    assert str(file) in message
    assert "line 3" in message


def test_json_file_and_missing_file(tmp_path: Path) -> None:
    file = write(tmp_path, '{"media": {"image": {"max_width": 64}}}', name="pictrs.json")
    assert load(file=file).media.image.max_width == 64
    message = error(file=write(tmp_path, '{"media": \n{', name="bad.json"))
    assert "line 2" in message
    assert "cannot read" in error(file=tmp_path / "absent.toml")


def test_save_to_round_trips(tmp_path: Path) -> None:
    env = {
        "PICTRS__SERVER__API_KEY": "secret",
        "PICTRS__MEDIA__FILTERS": "thumbnail,identity",
        "PICTRS__MEDIA__IMAGE__QUALITY__JPEG": "250",
        "PICTRS__MEDIA__RETENTION__VARIANTS": "12h",
        "PICTRS__STORE__TYPE": "object_storage",
        "PICTRS__STORE__ENDPOINT": "http://127.0.0.1:9000",
        "PICTRS__STORE__BUCKET_NAME": "b",
        "PICTRS__STORE__REGION": "r",
        "PICTRS__STORE__ACCESS_KEY": "a",
        "PICTRS__STORE__SECRET_KEY": "s",
    }
    overrides = config.nest({"server.address": "[::1]:8081", "media.video.enable": False})
    original = load(env=env, overrides=overrides)
    saved = tmp_path / "frozen.toml"
    save_to(saved, original)
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert load(file=saved) == original
    text = saved.read_text()
    assert 'api_key = "secret"' in text
    assert "jpeg = 100" in text
    # a default config round-trips too, and every key with a value is written
    save_to(saved, Config())
    assert load(file=saved) == Config()
    written = set(re.findall(r"^(\w+) =", saved.read_text(), re.MULTILINE))
    assert {"address", "crf_max", "filters", "variants", "buffer_capacity"} <= written


def test_leaf_keys_cover_every_struct_field() -> None:
    keys = config.leaf_keys()
    assert len(keys) == len(set(keys))
    builtins = msgspec.to_builtins(Config())
    flat = {
        f"{a}.{b}" if not isinstance(v, dict) else None
        for a, section in builtins.items()
        for b, v in section.items()
    } - {None}
    assert flat <= set(keys)
    assert {"store.endpoint", "store.type", "repo.type", "media.video.quality.crf_2160"} <= set(
        keys
    )


# --- guard tests: every key is documented (datasette's test_docs idea) ---


def sample_sections() -> dict[str, set[str]]:
    """pictrs.toml: keys per section, active or commented out (`#key = ...`)."""
    sections: dict[str, set[str]] = {}
    current = ""
    for line in (REPO_ROOT / "pictrs.toml").read_text().splitlines():
        if header := re.fullmatch(r"#?\[([\w.]+)\]", line.strip()):
            current = header[1]
        elif key := re.match(r"#?(\w+) = ", line):
            sections.setdefault(current, set()).add(key[1])
    return sections


@pytest.mark.parametrize("key", config.leaf_keys())
def test_every_key_is_in_the_sample_config(key: str) -> None:
    section, leaf = key.rsplit(".", 1)
    assert leaf in sample_sections().get(section, set()), f"{key} missing from pictrs.toml"
    env = layered.env_name("PICTRS__", tuple(key.split(".")))
    assert env in (REPO_ROOT / "pictrs.toml").read_text()


@pytest.mark.parametrize("key", config.leaf_keys())
def test_every_key_is_in_the_configuration_docs(key: str) -> None:
    docs = (REPO_ROOT / "docs" / "configuration.md").read_text()
    section, leaf = key.rsplit(".", 1)
    table = docs.split(f"### `[{section}]`", 1)
    assert len(table) == 2, f"no table for [{section}] in docs/configuration.md"
    body = table[1].split("\n### ", 1)[0]
    env = layered.env_name("PICTRS__", tuple(key.split(".")))
    assert f"| `{leaf}` |" in body
    assert env in body


# --- guard test: every key acts, or is on the list that warns it does not ---

PACKAGE = REPO_ROOT / "pictrs_trio"
# Read by name through getattr (rules/policy.py: the quality of the output format).
READ_BY_FORMAT = ("media.image.quality.", "media.animation.quality.")
# A tagged section's ``type`` picks its Struct (config.TAGGED); the code reads it by
# isinstance on that Struct, not by name.
TAG_KEYS = {f"{section}.type" for section in config.TAGGED}


def _code_outside_config() -> dict[Path, str]:
    """The package's code that uses settings: not config/ itself, not the CLI flag table."""
    files = [p for p in PACKAGE.rglob("*.py") if "config" not in p.relative_to(PACKAGE).parts]
    return {p: p.read_text() for p in files if p != PACKAGE / "runtime" / "cli.py"}


@pytest.mark.parametrize("key", config.leaf_keys())
def test_every_key_is_read_by_the_code_or_warns_that_it_is_not(key: str) -> None:
    """A key passes when some module outside config/ reads ``.<leaf>`` and names its section,
    or it is on config.NOT_ACTING (one start-up warning when set), or it is read by name."""
    if key in config.NOT_ACTING or key in TAG_KEYS:
        return
    *sections, leaf = key.split(".")
    code = _code_outside_config().values()
    if key.startswith(READ_BY_FORMAT):
        section = key.rsplit(".", 1)[0]
        assert any(f"getattr({section}, " in text for text in code), key
        return
    readers = [
        text for text in code
        if re.search(rf"\.{leaf}\b", text) and re.search(rf"\b{sections[-1]}\b", text)
    ]  # fmt: skip
    assert readers, f"{key} is read by nothing outside config/ and is not on NOT_ACTING"


def test_keys_not_acting_warn_only_when_set() -> None:
    assert load_all().inactive == ()
    env = {
        "PICTRS__METRICS__PROMETHEUS_ADDRESS": "127.0.0.1:9000",
        "PICTRS__TRACING__OPENTELEMETRY__URL": "http://127.0.0.1:4317",  # acting: no warning
        "PICTRS__TRACING__CONSOLE__ADDRESS": "127.0.0.1:6669",
        "PICTRS__MEDIA__MAGICK__MAX_AREA": "20000",  # the default: no warning
    }
    loaded = load_all(env=env)
    assert loaded.ignored == ()
    assert loaded.inactive == (
        "tracing.console.address is set but not acting: tokio-console inspects the tasks of "
        "pict-rs's Rust runtime; trio has no such console, so nothing listens there (spans: "
        "tracing.opentelemetry)",
    )
    assert loaded.warnings == loaded.inactive
    assert set(config.NOT_ACTING) <= set(config.leaf_keys())


def test_sample_config_loads_to_the_quick_start_setup() -> None:
    c = load(file=REPO_ROOT / "pictrs.toml")
    expected = msgspec.structs.replace(
        Config(),
        repo=SqliteRepo(path="./data/sqlite"),
        store=config.FilesystemStore(path="./data/files"),
    )
    assert c == expected  # everything else in the sample is at its default


def test_env_keys_of_object_storage_survive_run_object_storage() -> None:
    """pict-rs has no --public-endpoint under ``run object-storage``: the environment (or
    file) gives it, and the command line's store section must not drop it; keys of the other
    variant (``path``) do not come along."""
    cli = {
        "store": {
            "type": "object_storage", "endpoint": "http://127.0.0.1:9000", "bucket_name": "b",
            "region": "r", "access_key": "a", "secret_key": "s",
        }
    }  # fmt: skip
    env = {"PICTRS__STORE__PUBLIC_ENDPOINT": "https://cdn.example.com", "PICTRS__STORE__PATH": "/x"}
    loaded = config.load_all(env=env, overrides=cli)
    store = loaded.config.store
    assert isinstance(store, ObjectStorageStore)
    assert store.public_endpoint == "https://cdn.example.com"
    assert not any("public_endpoint" in message for message in loaded.ignored)


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"endpoint": "ftp://x"}, "store.endpoint 'ftp://x' is not an http(s) URL"),
        ({"endpoint": "https://key:hunter2@s3.example"}, "store.endpoint must not carry a user"),
        ({"region": ""}, "store.region is empty"),
        ({"bucket_name": "a/b"}, "store.bucket_name 'a/b' is not a bucket name"),
        ({"public_endpoint": "cdn.example.com"}, "store.public_endpoint 'cdn.example.com'"),
        (
            {"public_endpoint": "https://cdn.example.com:99999/m"},
            "store.public_endpoint 'https://cdn.example.com:99999/m': bad port",
        ),
        (
            {"public_endpoint": "https://u:hunter2@cdn.example.com/m?sig=hunter2"},
            "store.public_endpoint 'https://cdn.example.com/m' must not carry a user",
        ),
        ({"client_timeout": 0.0}, "store.client_timeout must be more than 0"),
    ],
)
def test_object_storage_settings_that_cannot_work(changes: dict[str, object], says: str) -> None:
    from pictrs_trio.runtime.startup import check_config

    values: dict[str, object] = {
        "endpoint": "https://s3.example", "bucket_name": "b", "region": "r",
        "access_key": "a", "secret_key": "s", **changes,
    }  # fmt: skip
    store = ObjectStorageStore(**values)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info:
        check_config(Config(store=store))
    assert str(info.value).startswith(says)
    assert "hunter2" not in str(info.value)


def test_object_storage_settings_that_work() -> None:
    from pictrs_trio.runtime.startup import check_config

    store = ObjectStorageStore(
        endpoint="https://s3.example/prefix/", bucket_name="b", region="auto", access_key="a",
        secret_key="s", public_endpoint="https://cdn.example.com/media",
    )  # fmt: skip
    check_config(Config(store=store))
