"""The command line: pict-rs's tree and flags mapped onto config keys, errors, --save-to."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pictrs_trio import config
from pictrs_trio.config import Config, FilesystemStore, ObjectStorageStore, SqliteRepo
from pictrs_trio.runtime import cli

REPO_ROOT = Path(__file__).resolve().parents[2]


def run(argv: list[str], env: dict[str, str] | None = None) -> Config:
    """main() with a runner that records the Config it is handed."""
    seen: list[Config] = []
    status = cli.main(argv, runner=seen.append, env=env or {})
    assert status == 0
    assert len(seen) == 1
    return seen[0]


def fails(
    argv: list[str], capsys: pytest.CaptureFixture[str], env: dict[str, str] | None = None
) -> str:
    seen: list[Config] = []
    assert cli.main(argv, runner=seen.append, env=env or {}) == 2
    assert seen == []  # nothing started
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    return err


def test_run_alone_uses_defaults() -> None:
    assert run(["run"]) == Config()


def test_readme_example_with_store_and_repo_subcommands() -> None:
    c = run(
        ["--log-format", "json", "--log-spans", "run", "-a", "127.0.0.1:9000",
         "--media-image-format", "webp", "--media-filters", "thumbnail",
         "--media-filters", "identity", "filesystem", "-p", "data/files", "sqlite", "-p",
         "data/sqlite"]
    )  # fmt: skip
    assert c.server.address == "127.0.0.1:9000"
    assert c.media.image.format == "webp"
    assert c.media.filters == ["thumbnail", "identity"]
    assert c.tracing.logging.format == "json"
    assert c.tracing.logging.log_spans is True
    assert c.store == FilesystemStore(path="data/files")
    assert c.repo == SqliteRepo(path="data/sqlite")


FLAGS = [
    (["--api-key", "k"], "server.api_key", "k"),
    (["--temporary-directory", "/t"], "server.temporary_directory", "/t"),
    (["--no-cleanup-temporary-directory"], "server.cleanup_temporary_directory", False),
    (["--client-timeout", "5"], "client.timeout", 5.0),
    (["--upgrade-concurrency", "3"], "upgrade.concurrency", 3),
    (["--metrics-prometheus-address", "127.0.0.1:9"], "metrics.prometheus_address", "127.0.0.1:9"),
    (["--max-file-count", "10"], "server.max_file_count", 10),
    (["--media-preprocess-steps", "resize=10"], "media.preprocess_steps", "resize=10"),
    (["--media-external-validation-timeout", "1.5"], "media.external_validation_timeout", 1.5),
    (["--media-max-file-size", "7"], "media.max_file_size", 7),
    (["--media-process-timeout", "9"], "media.process_timeout", 9.0),
    (["--media-retention-variants", "12h"], "media.retention.variants", "12h"),
    (["--media-retention-proxy", "1y"], "media.retention.proxy", "1y"),
    (["--media-magick-max-area", "5"], "media.magick.max_area", 5),
    (["--media-image-max-width", "640"], "media.image.max_width", 640),
    (["--media-image-quality-jpeg", "150"], "media.image.quality.jpeg", 100),
    (["--media-animation-max-frame-count", "12"], "media.animation.max_frame_count", 12),
    (["--media-animation-format", "gif"], "media.animation.format", "gif"),
    (["--media-animation-quality-webp", "50"], "media.animation.quality.webp", 50),
    (["--media-video-disable"], "media.video.enable", False),
    (["--media-video-allow-audio"], "media.video.allow_audio", True),
    (["--media-video-max-file-size", "2"], "media.video.max_file_size", 2),
    (["--media-video-codec", "vp9"], "media.video.video_codec", "vp9"),
    (["--media-video-audio-codec", "opus"], "media.video.audio_codec", "opus"),
    (["--media-video-quality-max", "40"], "media.video.quality.crf_max", 40),
    (["--media-video-quality-1080", "28"], "media.video.quality.crf_1080", 28),
    (["--read-only"], "server.read_only", True),
    (["--danger-dummy-mode"], "server.danger_dummy_mode", True),
    (["--media-image-max-width=33"], "media.image.max_width", 33),
]  # fmt: skip


def get(c: Config, key: str) -> object:
    value: object = c
    for part in key.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize(("flags", "key", "expected"), FLAGS)
def test_run_flag_sets_its_key(flags: list[str], key: str, expected: object) -> None:
    assert get(Config(), key) != expected
    assert get(run(["run", *flags]), key) == expected


def test_global_flags() -> None:
    c = run(
        ["--old-repo-path", "/old", "--log-targets", "warn", "--log-requests", "--no-log-ansi",
         "--console-address", "127.0.0.1:6669", "--console-buffer-capacity", "5",
         "--opentelemetry-url", "http://otel:4317", "--opentelemetry-service-name", "svc",
         "--opentelemetry-targets", "debug", "--old-repo-cache-capacity", "1", "run"]
    )  # fmt: skip
    assert c.old_repo.path == "/old"
    assert c.tracing.logging.targets == "warn"
    assert c.tracing.logging.log_requests is True
    assert c.tracing.logging.no_ansi is True
    assert c.tracing.console.address == "127.0.0.1:6669"
    assert c.tracing.console.buffer_capacity == 5
    assert c.tracing.opentelemetry.url == "http://otel:4317"
    assert c.tracing.opentelemetry.service_name == "svc"
    assert c.tracing.opentelemetry.targets == "debug"


def test_object_storage_short_flags_do_not_clash_with_run_flags() -> None:
    # -a is --address before the store word and --access-key after it; a bucket named like
    # a repo subcommand is a value, not a subcommand
    c = run(
        ["run", "-a", "127.0.0.1:1", "object-storage", "-e", "http://127.0.0.1:9000", "-u",
         "-b", "postgres", "-r", "garage", "-a", "AK", "-s", "SK", "--session-token", "T",
         "--client-timeout", "4", "sqlite", "-p", "/db"]
    )  # fmt: skip
    assert c.server.address == "127.0.0.1:1"
    assert c.store == ObjectStorageStore(
        endpoint="http://127.0.0.1:9000", bucket_name="postgres", region="garage",
        access_key="AK", secret_key="SK", use_path_style=True, session_token="T",
        client_timeout=4.0,
    )  # fmt: skip
    assert c.repo == SqliteRepo(path="/db")


def test_split_chain_skips_flag_values() -> None:
    assert cli.split_chain("run", ["--api-key", "sqlite", "filesystem", "-p", "sqlite"]) == [
        ["run", "--api-key", "sqlite"],
        ["filesystem", "-p", "sqlite"],
    ]
    assert cli.split_chain("run", ["--read-only", "sqlite"]) == [["run", "--read-only"], ["sqlite"]]
    assert cli.split_chain(
        "migrate-store", ["filesystem", "-p", "a", "filesystem", "-p", "b", "sqlite"]
    ) == [["migrate-store"], ["filesystem", "-p", "a"], ["filesystem", "-p", "b"], ["sqlite"]]


def test_cli_layer_wins_over_env_and_file_and_absent_flags_leave_them(tmp_path: Path) -> None:
    file = tmp_path / "pictrs.toml"
    file.write_text(
        '[server]\nread_only = true\ncleanup_temporary_directory = false\naddress = "127.0.0.1:1"\n'
        '[store]\npath = "/from-file"\n'
    )
    env = {"PICTRS__SERVER__ADDRESS": "127.0.0.1:2", "PICTRS__MEDIA__IMAGE__MAX_WIDTH": "50"}
    c = run(["-c", str(file), "run", "--media-image-max-width", "60"], env=env)
    assert c.server.read_only is True  # no --read-only flag: the file's value stands
    # deliberate deviation from pict-rs, which always rewrites this key under `run`
    assert c.server.cleanup_temporary_directory is False
    assert c.server.address == "127.0.0.1:2"
    assert c.media.image.max_width == 60
    assert c.store == FilesystemStore(path="/from-file")
    # `filesystem` without -p keeps the file's path (same type); switching type drops it
    assert run(["-c", str(file), "run", "filesystem"], env=env).store.path == "/from-file"  # type: ignore[union-attr]


def test_save_to_writes_the_effective_config(tmp_path: Path) -> None:
    saved = tmp_path / "frozen.toml"
    c = run(
        ["--save-to", str(saved), "run", "--api-key", "s", "--media-filters", "resize",
         "filesystem", "-p", "/f", "sqlite", "-p", "/r"],
        env={"PICTRS__MEDIA__IMAGE__MAX_HEIGHT": "77"},
    )  # fmt: skip
    assert config.load(file=saved) == c
    assert c.media.image.max_height == 77
    assert c.media.filters == ["resize"]


def test_bad_flag_value_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    err = fails(["run", "--media-image-max-width", "abc"], capsys)
    assert "--media-image-max-width" in err
    assert "abc" in err
    assert "--log-format" in fails(["--log-format", "fancy", "run"], capsys)


def test_config_errors_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert "server.address = 'nowhere:1'" in fails(["run", "-a", "nowhere:1"], capsys)
    err = fails(["run", "--media-retention-variants", "7w"], capsys)
    assert "media.retention.variants" in err
    file = tmp_path / "bad.toml"
    file.write_text("[media.image]\nmax_width = -1\n")
    assert "media.image.max_width" in fails(["-c", str(file), "run"], capsys)


def test_unknown_flags_and_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert "--frobnicate" in fails(["run", "--frobnicate"], capsys)
    assert "frob" in fails(["frob"], capsys)
    assert "command is required" in fails([], capsys)
    assert "bogus" in fails(["run", "filesystem", "bogus"], capsys)
    # a store after the repo is out of order
    assert "filesystem" in fails(["run", "sqlite", "filesystem"], capsys)


def test_sled_subcommand_explains(capsys: pytest.CaptureFixture[str]) -> None:
    err = fails(["run", "filesystem", "sled", "-p", "/mnt/sled-repo"], capsys)
    assert "sled" in err
    assert 'type = "sqlite"' in err
    assert "migrate-repo" in err
    assert "not supported yet" in fails(["run", "postgres", "-u", "postgres://x"], capsys)


def migrates(
    argv: list[str], env: dict[str, str] | None = None
) -> tuple[Config, cli.MigrateStoreArgs]:
    """main() with a migrate runner that records what it is handed."""
    seen: list[tuple[Config, cli.MigrateStoreArgs]] = []

    def record(config: Config, args: cli.MigrateStoreArgs) -> int:
        seen.append((config, args))
        return 0

    assert cli.main(argv, runner=lambda c: None, env=env or {}, migrate_runner=record) == 0
    assert len(seen) == 1
    return seen[0]


def test_migrate_store_takes_its_stores_from_the_command_line(tmp_path: Path) -> None:
    argv = ["migrate-store", "--skip-missing-files", "--concurrency", "8", "filesystem", "-p",
            "/a", "object-storage", "-e", "http://x", "-u", "-b", "b", "-r", "r", "-a", "k", "-s",
            "s", "sqlite", "-p", "/db"]  # fmt: skip
    env = {"PICTRS__STORE__PATH": "/configured", "PICTRS__SERVER__TEMPORARY_DIRECTORY": "/t"}
    config, args = migrates(argv, env)
    assert args.source == FilesystemStore(path="/a")
    assert args.destination == ObjectStorageStore(
        endpoint="http://x", use_path_style=True, bucket_name="b", region="r", access_key="k",
        secret_key="s",
    )  # fmt: skip
    assert (args.skip_missing_files, args.concurrency, args.abandon) == (True, 8, False)
    # Recorded with the run, to be named when it is unfinished: as typed, but the secret.
    assert args.command == (
        "pictrs-trio migrate-store --skip-missing-files --concurrency 8 filesystem -p /a "
        "object-storage -e http://x -u -b b -r r -a k -s '<secret-key>' sqlite -p /db"
    )
    # The rest comes from the configuration; the configured store is not FROM or TO.
    assert config.repo == SqliteRepo(path="/db")
    assert config.store == FilesystemStore(path="/configured")
    assert config.server.temporary_directory == "/t"
    assert config.server.cleanup_temporary_directory is False  # pict-rs: never for migrations
    # Defaults: pict-rs's /mnt/files, 32 in flight, missing files fail the run.
    config, args = migrates(["migrate-store", "filesystem", "filesystem", "-p", "/b"])
    assert args == cli.MigrateStoreArgs(
        source=FilesystemStore(),
        destination=FilesystemStore(path="/b"),
        command="pictrs-trio migrate-store filesystem filesystem -p /b sqlite -p "
        + os.path.abspath(config.repo.path),  # the repo as the configuration had it
    )
    assert (args.concurrency, args.skip_missing_files) == (32, False)


def test_the_recorded_migrate_store_command_runs_again_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Global flags kept, relative paths made absolute, secrets and an endpoint's user info
    left out, ``--abandon`` dropped; quoted for a shell."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.toml").write_text("")
    argv = ["-c", "p.toml", "--log-format", "json", "migrate-store", "--abandon",
            "--concurrency=4", "filesystem", "--path=media dir", "object-storage",
            "--endpoint", "https://user:pw@s3.example.com/?x=1", "-b", "m", "-r", "r", "-a",
            "key", "--secret-key=sec", "--session-token", "tok", "sqlite", "-p", "db"]  # fmt: skip
    _, args = migrates(argv)
    assert args.abandon
    assert args.command == (
        f"pictrs-trio -c {tmp_path}/p.toml --log-format json migrate-store --concurrency=4 "
        f"filesystem '--path={tmp_path}/media dir' object-storage --endpoint "
        "https://s3.example.com/ -b m -r r -a key '--secret-key=<secret-key>' --session-token "
        f"'<session-token>' sqlite -p {tmp_path}/db"
    )
    assert "=sec'" not in args.command and " tok " not in args.command
    assert "pw@" not in args.command


def test_migrate_store_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert "--concurrency" in fails(["migrate-store", "--concurrency", "x"], capsys)
    assert "at least 1" in fails(
        ["migrate-store", "--concurrency", "0", "filesystem", "filesystem", "-p", "/b"], capsys
    )
    assert "FROM and a TO" in fails(["migrate-store", "filesystem"], capsys)
    assert "--secret-key is required" in fails(
        ["migrate-store", "filesystem", "object-storage", "-e", "http://x", "-b", "b", "-r", "r",
         "-a", "k"], capsys)  # fmt: skip
    assert "SQLite" in fails(["migrate-repo", "sled", "-p", "x", "postgres", "-u", "u"], capsys)


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["--help"], ["run", "migrate-store", "--config-file", "--save-to"]),
        (["run", "--help"], ["--media-image-max-width", "media.image.max_width", "filesystem"]),
        (["help", "run"], ["--media-video-quality-1080"]),
        (["run", "filesystem", "--help"], ["--path", "store.path"]),
        (["run", "object-storage", "-h"], ["--endpoint", "--use-path-style"]),
        (["-V"], ["0."]),
    ],
)
def test_help_and_version(
    argv: list[str], shown: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[Config] = []
    assert cli.main(argv, runner=seen.append, env={}) == 0
    assert seen == []
    out = capsys.readouterr().out
    for text in shown:
        assert text in out


SPEC_RUN_FLAGS = """--address -a --api-key --temporary-directory --no-cleanup-temporary-directory
--certificate --private-key --client-timeout --upgrade-concurrency --metrics-prometheus-address
--max-file-count --media-preprocess-steps --media-external-validation
--media-external-validation-timeout --media-filters --media-max-file-size
--media-process-timeout --media-retention-variants --media-retention-proxy
--media-magick-max-width --media-magick-max-height --media-magick-max-area --media-magick-memory
--media-magick-map --media-magick-disk --media-image-max-width --media-image-max-height
--media-image-max-area --media-image-max-file-size --media-image-format
--media-image-quality-avif --media-image-quality-png --media-image-quality-jpeg
--media-image-quality-jxl --media-image-quality-webp --media-animation-max-width
--media-animation-max-height --media-animation-max-area --media-animation-max-frame-count
--media-animation-max-file-size --media-animation-format --media-animation-quality-apng
--media-animation-quality-avif --media-animation-quality-webp --media-video-disable
--media-video-allow-audio --media-video-max-width --media-video-max-height
--media-video-max-area --media-video-max-frame-count --media-video-max-file-size
--media-video-codec --media-video-audio-codec --media-video-quality-max
--media-video-quality-240 --media-video-quality-360 --media-video-quality-480
--media-video-quality-720 --media-video-quality-1080 --media-video-quality-1440
--media-video-quality-2160 --read-only --danger-dummy-mode""".split()  # noqa: SIM905 (pict-rs's help text)


def test_every_pict_rs_run_flag_exists_and_maps_to_a_real_key() -> None:
    names = {name for flag in cli.RUN_FLAGS for name in flag.names}
    assert set(SPEC_RUN_FLAGS) <= names
    keys = set(config.leaf_keys())
    for flag in (*cli.GLOBAL_FLAGS, *cli.RUN_FLAGS):
        assert flag.key is None or flag.key in keys, flag
    for word, (section, _, flags, _) in cli.SUBCOMMANDS.items():
        if not section:  # `jobs watch`: its flags are its own, not configuration
            assert all(f.key is None for f in flags), word
        elif word not in {"sled", "postgres"}:  # refused before their keys matter
            assert all(f.key in keys and f.key.startswith(section) for f in flags), word


def test_every_flag_is_in_the_cli_docs() -> None:
    docs = (REPO_ROOT / "docs" / "cli.md").read_text()
    flags = (
        *cli.GLOBAL_FLAGS,
        *cli.RUN_FLAGS,
        *(f for s in cli.SUBCOMMANDS.values() for f in s[2]),
    )
    for flag in flags:
        assert f"`{flag.names[0]}`" in docs, flag.names[0]


def subprocess_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("PICTRS__")}


def test_python_m_exits_2_naming_the_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pictrs_trio", "run", "--media-image-max-width", "abc"],
        capture_output=True, text=True, env=subprocess_env(), cwd=REPO_ROOT, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert "--media-image-max-width" in result.stderr


def test_python_m_exits_2_naming_the_config_key(tmp_path: Path) -> None:
    file = tmp_path / "pictrs.toml"
    file.write_text('[media.image]\nmax_width = "wide"\n')
    result = subprocess.run(
        [sys.executable, "-m", "pictrs_trio", "-c", str(file), "run"],
        capture_output=True, text=True, env=subprocess_env(), cwd=REPO_ROOT, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("error: media.image.max_width = 'wide'")


def test_check_config_prints_the_effective_config_and_fails_on_ignored_keys(
    tmp_path: Path,
) -> None:
    file = tmp_path / "pictrs.toml"
    file.write_text("[media.image]\nmax_widht = 4000\nmax_height = 300\n")
    env = {**subprocess_env(), "PICTRS__MEDIA__VIDEO_CODEC": "vp9"}
    result = subprocess.run(
        [sys.executable, "-m", "pictrs_trio", "-c", str(file), "check-config", "--api-key", "k"],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    effective = config.load(file=_written(tmp_path, result.stdout))
    # the API key is redacted: the output goes to deployment logs
    assert (effective.media.image.max_height, effective.server.api_key) == (300, "<redacted>")
    assert result.stderr.splitlines() == [
        "warning: media.video_codec (environment variable PICTRS__MEDIA__VIDEO_CODEC): a "
        "pict-rs 0.4 name, ignored as pict-rs 0.5 ignores it; its 0.5 name is "
        "PICTRS__MEDIA__VIDEO__VIDEO_CODEC",
        f"warning: media.image.max_widht (file {file}): unknown key, ignored; did you mean "
        "media.image.max_width?",
    ]
    file.write_text("[media.image]\nmax_height = 300\n")
    clean = subprocess.run(
        [sys.executable, "-m", "pictrs_trio", "-c", str(file), "check-config"],
        capture_output=True, text=True, env=subprocess_env(), cwd=REPO_ROOT, timeout=60,
    )  # fmt: skip
    assert (clean.returncode, clean.stderr) == (0, "")
    # what run refuses, check-config refuses the same way
    file.write_text('[media]\npreprocess_steps = "resize=abc"\n')
    bad = subprocess.run(
        [sys.executable, "-m", "pictrs_trio", "-c", str(file), "check-config"],
        capture_output=True, text=True, env=subprocess_env(), cwd=REPO_ROOT, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: media.preprocess_steps")


def test_check_config_redacts_secrets() -> None:
    cfg = config.load(
        env={
            "PICTRS__SERVER__API_KEY": "key-secret",
            "PICTRS__MEDIA__EXTERNAL_VALIDATION": "https://u:pw-secret@scan.example/v?t=q-secret",
            "PICTRS__STORE__TYPE": "object_storage",
            "PICTRS__STORE__ENDPOINT": "https://s3.example",
            "PICTRS__STORE__BUCKET_NAME": "b",
            "PICTRS__STORE__REGION": "r",
            "PICTRS__STORE__ACCESS_KEY": "access-secret",
            "PICTRS__STORE__SECRET_KEY": "secret-secret",
            "PICTRS__STORE__SESSION_TOKEN": "token-secret",
            "PICTRS__STORE__PUBLIC_ENDPOINT": "https://cdn.example/m?sig=sig-secret",
        }
    )
    shown = config.dump(cfg, redact=True)
    for value in ("key", "pw", "q", "access", "secret", "token", "sig"):
        assert f"{value}-secret" not in shown
    assert 'secret_key = "<redacted>"' in shown
    assert 'public_endpoint = "https://cdn.example/m?<redacted>"' in shown
    assert 'external_validation = "https://<redacted>@scan.example/v?<redacted>"' in shown
    assert "key-secret" in config.dump(cfg)  # --save-to keeps them


def _written(folder: Path, text: str) -> Path:
    path = folder / "effective.toml"
    path.write_text(text)
    return path


def test_client_allowed_networks_flag(capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[Config] = []
    argv = ["run", "--client-allowed-networks", "127.0.0.0/8", "--client-allowed-networks", "::1"]
    assert cli.main(argv, runner=seen.append, env={}) == 0
    assert seen[0].client.allowed_networks == ["127.0.0.0/8", "::1"]
    assert cli.main(["run", "--client-allowed-networks", "10/33"], runner=seen.append, env={}) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: client.allowed_networks[0] = '10/33' (command line)")


def test_save_to_a_folder_that_does_not_exist_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "missing" / "x.toml"
    assert cli.main(["--save-to", str(target), "run"], runner=lambda _: None, env={}) == 1
    err = capsys.readouterr().err
    assert err == f"error: --save-to {target}: No such file or directory\n"


def test_ctrl_c_while_starting_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(_: Config) -> None:
        raise KeyboardInterrupt

    def interrupted_in_a_nursery(_: Config) -> None:
        raise BaseExceptionGroup("start-up", [KeyboardInterrupt()])

    for runner in (interrupted, interrupted_in_a_nursery):
        assert cli.main(["run"], runner=runner, env={}) == 130
        assert capsys.readouterr().err == "interrupted\n"


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        ("[server]\napi_key = 98765432123\n", "server.api_key = <redacted> (file "),
        (
            '[store]\ntype = "object_storage"\nsecret_key = ["topsecretvalue"]\n',
            "store.secret_key = <redacted> (file ",
        ),
        (
            '[media]\nexternal_validation = "ftp://user:hunter2@val.example/x?token=zzz"\n',
            "media.external_validation = 'ftp://<redacted>@val.example/x?<redacted>' (file ",
        ),
        (
            '[media]\nexternal_validation = "https://k:hunter2@[::1/x?zzz=1"\n',
            "media.external_validation = 'https://<redacted>@[::1/x?<redacted>' (file ",
        ),
    ],
)
def test_config_errors_never_show_a_secret(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, toml: str, says: str
) -> None:
    """A bad value of a secret key is named, never shown; a URL loses its user, password and
    query (the keys check-config redacts, config.SECRET_KEYS and URL_KEYS)."""
    file = _written(tmp_path, toml)
    err = fails(["-c", str(file), "run"], capsys)
    assert says in err, err
    for secret in ("98765432123", "topsecretvalue", "hunter2", "zzz"):
        assert secret not in err


def test_a_secret_from_the_environment_is_not_shown(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"PICTRS__MEDIA__EXTERNAL_VALIDATION": "ftp://u:hunter2@v.example/?sig=zzz"}
    err = fails(["run"], capsys, env=env)
    assert err == (
        "error: media.external_validation = 'ftp://<redacted>@v.example/?<redacted>' "
        "(environment variable PICTRS__MEDIA__EXTERNAL_VALIDATION): expected an absolute "
        "http:// or https:// URL with a host\n"
    )


def test_object_storage_alone_warns_of_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    """store.signature_duration is on NOT_ACTING, and it is unset: no warning (it was
    compared with the default filesystem store, which has no such key)."""
    argv = ["check-config", "object-storage", "-e", "http://127.0.0.1:9000", "-u", "-b", "b",
            "-r", "us-east-1", "-a", "a", "-s", "s"]  # fmt: skip
    assert cli.main(argv, env={}) == 0
    assert capsys.readouterr().err == ""
    env = {"PICTRS__STORE__SIGNATURE_DURATION": "15"}
    assert cli.main(argv, env=env) == 0
    assert capsys.readouterr().err == (
        "warning: store.signature_duration is set but not acting: requests are signed one by "
        "one, never presigned (pict-rs 0.5.17 dropped it too)\n"
    )


BUCKET_FLAGS = ["-b", "pictrs", "-r", "us-east-1", "-a", "a", "-s", "s"]


@pytest.mark.parametrize(
    ("endpoint", "says"),
    [
        ("minio:9000", "error: store.endpoint 'minio:9000' is not an http(s) URL: it needs "
                       "http:// or https:// in front, like 'http://minio:9000'\n"),
        ("127.0.0.1:18500", "error: store.endpoint '127.0.0.1:18500' is not an http(s) URL: it "
                            "needs http:// or https:// in front, like 'http://127.0.0.1:18500'\n"),
        ("ftp://u:hunter2@minio:9000", "error: store.endpoint 'ftp://<redacted>@minio:9000' is "
                                       "not an http(s) URL: it needs http:// or https://\n"),
        ("u:hunter2@minio:9000", "error: store.endpoint '<redacted>@minio:9000' is not an "
                                 "http(s) URL: it needs http:// or https:// in front\n"),
        ("http://[::1:9000", "error: store.endpoint 'http://[::1:9000' is not a URL: Invalid "
                             "IPv6 URL\n"),
    ],
)  # fmt: skip
def test_an_endpoint_is_shown_as_typed(
    capsys: pytest.CaptureFixture[str], endpoint: str, says: str
) -> None:
    argv = ["check-config", "object-storage", "-e", endpoint, "-u", *BUCKET_FLAGS]
    assert cli.main(argv, env={}) == 2
    assert capsys.readouterr().err == says


@pytest.mark.parametrize(
    ("endpoint", "host"),
    [("http://127.0.0.1:18500", "an IP address"), ("http://[::1]:9000", "an IP address"),
     ("http://localhost:9000", "localhost")],
)  # fmt: skip
def test_virtual_host_style_needs_a_host_name(
    capsys: pytest.CaptureFixture[str], endpoint: str, host: str
) -> None:
    argv = ["check-config", "object-storage", "-e", endpoint, *BUCKET_FLAGS]
    assert cli.main(argv, env={}) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: store.endpoint '{endpoint}' is {host}: ")
    assert "set store.use_path_style = true (-u, PICTRS__STORE__USE_PATH_STYLE=true)" in err
    assert cli.main([*argv, "-u"], env={}) == 0  # path style: fine
    capsys.readouterr()


def test_preprocess_steps_errors_name_their_source(capsys: pytest.CaptureFixture[str]) -> None:
    err = fails(["run", "--media-preprocess-steps", "thumbnail=abc"], capsys)
    assert err == (
        "error: media.preprocess_steps = 'thumbnail=abc' (command line): thumbnail: 'abc' is "
        "not an unsigned integer\n"
    )
    env = {"PICTRS__MEDIA__PREPROCESS_STEPS": "resize=10&bogus=1"}
    assert fails(["run"], capsys, env=env).startswith(
        "error: media.preprocess_steps = 'resize=10&bogus=1' (environment variable "
        "PICTRS__MEDIA__PREPROCESS_STEPS): "
    )


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("7weeks", "'weeks' is not a unit"),
        ("7", "no unit after 7"),
        ("d", "no number in front"),
        ("1.5d", "'.5d' is not a unit"),
    ],
)
def test_a_retention_error_lists_the_units(
    capsys: pytest.CaptureFixture[str], value: str, says: str
) -> None:
    err = fails(["run", "--media-retention-proxy", value], capsys)
    assert err == (
        f"error: media.retention.proxy = {value!r} (command line): {says}: a retention is a "
        "whole number and a unit, m, h, d or y (or minute, hour, day, year, also plural; s "
        "or second for seconds), like 30m, 12h, 7d or 1y\n"
    )


def test_retention_units_in_capitals_as_pict_rs() -> None:
    assert run(["run", "--media-retention-proxy", "7D"]).media.retention.proxy == "7D"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://u:hunter2@val example/x", "'http://<redacted>@val example/x' (command line): "
                                           "the host 'val example' cannot have ' ' in it"),
        ("http://val|example/x", "'http://val|example/x' (command line): the host "
                                 "'val|example' cannot have '|' in it"),
        ("http://[::1/x", "'http://[::1/x' (command line): not a URL: Invalid IPv6 URL"),
    ],
)  # fmt: skip
def test_a_validator_url_with_a_bad_host_is_refused(
    capsys: pytest.CaptureFixture[str], url: str, says: str
) -> None:
    err = fails(["run", "--media-external-validation", url], capsys)
    assert err == f"error: media.external_validation = {says}\n"
