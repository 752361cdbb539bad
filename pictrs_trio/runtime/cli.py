"""The command line: pict-rs's command tree and flag spellings, parsed with cyclopts.

    pictrs-trio [GLOBAL FLAGS] run [RUN FLAGS] [filesystem ... | object-storage ...]
                                               [sqlite ... | sled ... | postgres ...]
    pictrs-trio [GLOBAL FLAGS] migrate-store [FLAGS] FROM-STORE TO-STORE [REPO]
    pictrs-trio [GLOBAL FLAGS] migrate-repo FROM-REPO TO-REPO
    pictrs-trio [GLOBAL FLAGS] check-config [RUN FLAGS] [STORE ...] [REPO ...]
    pictrs-trio [GLOBAL FLAGS] jobs [watch [--url URL] [--since ID]] [REPO ...]

pict-rs chains its store and repo subcommands after ``run`` (``run -a X filesystem -p Y
sqlite -p Z``); cyclopts resolves commands only at the front of argv and the segments reuse
short flags (``-a`` is ``--address`` for ``run`` but ``--access-key`` for
``object-storage``), so ``split_chain`` cuts argv at those words first and each segment is
parsed by its own cyclopts command. Every flag is one row of a table naming the config key
it sets; the rows build the cyclopts signatures, the overrides and the splitter's idea of
which flags take a value.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated

import msgspec
from cyclopts import App, Parameter
from cyclopts.exceptions import CycloptsError

import pictrs_trio
from pictrs_trio import config as cfg
from pictrs_trio.config import Config, ConfigError
from pictrs_trio.runtime.startup import VALUE_CHECKS, StartupError

Runner = Callable[[Config], None]


class MigrateStoreArgs(msgspec.Struct, frozen=True, kw_only=True):
    """What ``migrate-store`` was asked: its FROM and TO stores come only from the command
    line (as in pict-rs), everything else from the configuration."""

    source: cfg.FilesystemStore | cfg.ObjectStorageStore
    destination: cfg.FilesystemStore | cfg.ObjectStorageStore
    skip_missing_files: bool = False
    concurrency: int = 32  # pict-rs's default
    abandon: bool = False
    command: str = ""  # the command line, to be run again as it is (``command_line``)


MigrateRunner = Callable[[Config, MigrateStoreArgs], int]


class UsageError(Exception):
    """The command line asks for something that cannot be done."""


class Flag(msgspec.Struct, frozen=True):
    names: tuple[str, ...]  # long name first; it also names the Python parameter
    key: str | None  # config key it sets; None: the command uses the value itself
    help: str
    switch: bool | None = None  # a switch: takes no value, writes this to ``key``
    hint: object = None  # the value's type; default: the type of ``key``
    required: bool = False

    @property
    def param(self) -> str:
        return self.names[0].removeprefix("--").replace("-", "_")


def _flags(prefix: str, key: str, names: Sequence[str], what: str) -> list[Flag]:
    return [
        Flag((f"--{prefix}-{n}",), f"{key}.{n.replace('-', '_')}", f"{what} {n}") for n in names
    ]


GLOBAL_FLAGS = (
    Flag(("--config-file", "-c"), None, "Configuration file (TOML, or JSON by extension).",
         hint=Path),
    Flag(("--old-repo-path",), "old_repo.path", "Location of a pict-rs 0.4 sled repo."),
    Flag(("--old-repo-cache-capacity",), None, "Accepted for pict-rs compatibility; unused.",
         hint=int),
    Flag(("--log-format",), "tracing.logging.format", "Log line format."),
    Flag(("--log-targets",), "tracing.logging.targets", "Log filter, e.g. warn,pictrs_trio=info."),
    Flag(("--log-spans",), "tracing.logging.log_spans", "Log span open/close.", switch=True),
    Flag(("--log-requests",), "tracing.logging.log_requests", "Log every request.", switch=True),
    Flag(("--no-log-ansi",), "tracing.logging.no_ansi", "No colours in logs.", switch=True),
    Flag(("--console-address",), "tracing.console.address", "Debug console IP:PORT."),
    Flag(("--console-buffer-capacity",), "tracing.console.buffer_capacity",
         "Debug console event buffer."),
    Flag(("--opentelemetry-url",), "tracing.opentelemetry.url", "OTLP collector URL."),
    Flag(("--opentelemetry-service-name",), "tracing.opentelemetry.service_name",
         "OpenTelemetry service.name."),
    Flag(("--opentelemetry-targets",), "tracing.opentelemetry.targets",
         "Filter for exported spans."),
    Flag(("--save-to",), None, "Write the effective configuration as TOML to this file.",
         hint=Path),
)  # fmt: skip

RUN_FLAGS = (
    Flag(("--address", "-a"), "server.address", "Bind address, IP:PORT or [IPv6]:PORT."),
    Flag(("--api-key",), "server.api_key", "Key for the /internal endpoints (X-Api-Token)."),
    Flag(("--temporary-directory",), "server.temporary_directory", "Scratch directory."),
    Flag(("--no-cleanup-temporary-directory",), "server.cleanup_temporary_directory",
         "Keep the scratch directory's old contents at startup.", switch=False),
    Flag(("--certificate",), "server.certificate", "PEM certificate chain (HTTPS)."),
    Flag(("--private-key",), "server.private_key", "PEM private key (HTTPS)."),
    Flag(("--client-timeout",), "client.timeout", "Outbound HTTP timeout, seconds."),
    Flag(("--client-allowed-networks",), "client.allowed_networks",
         "Network (CIDR) downloads and proxies may reach though not public (repeat the flag)."),
    Flag(("--upgrade-concurrency",), "upgrade.concurrency", "Parallelism of upgrades."),
    Flag(("--metrics-prometheus-address",), "metrics.prometheus_address",
         "Prometheus scrape listener IP:PORT."),
    Flag(("--max-file-count",), "server.max_file_count", "Files per upload request."),
    Flag(("--media-preprocess-steps",), "media.preprocess_steps",
         "Process steps applied to every upload, e.g. resize=1200."),
    Flag(("--media-external-validation",), "media.external_validation",
         "URL that must accept each upload."),
    Flag(("--media-external-validation-timeout",), "media.external_validation_timeout",
         "Its timeout, seconds."),
    Flag(("--media-filters",), "media.filters", "Allowed process operation (repeat the flag)."),
    Flag(("--media-max-file-size",), "media.max_file_size", "Upload size cap, MB."),
    Flag(("--media-process-timeout",), "media.process_timeout", "Per-tool timeout, seconds."),
    Flag(("--media-retention-variants",), "media.retention.variants",
         "Drop variants unused this long (7d, 12h, ...)."),
    Flag(("--media-retention-proxy",), "media.retention.proxy",
         "Drop proxied media unused this long."),
    *_flags("media-magick", "media.magick",
            ("max-width", "max-height", "max-area", "memory", "map", "disk"), "Engine limit:"),
    *_flags("media-image", "media.image",
            ("max-width", "max-height", "max-area", "max-file-size", "format"), "Still images:"),
    *_flags("media-image-quality", "media.image.quality",
            ("avif", "png", "jpeg", "jxl", "webp"), "Still image quality (0-100):"),
    *_flags("media-animation", "media.animation",
            ("max-width", "max-height", "max-area", "max-frame-count", "max-file-size", "format"),
            "Animations:"),
    *_flags("media-animation-quality", "media.animation.quality", ("apng", "avif", "webp"),
            "Animation quality (0-100):"),
    Flag(("--media-video-disable",), "media.video.enable", "Refuse video uploads.",
         switch=False),
    Flag(("--media-video-allow-audio",), "media.video.allow_audio", "Keep audio tracks.",
         switch=True),
    *_flags("media-video", "media.video",
            ("max-width", "max-height", "max-area", "max-frame-count", "max-file-size"),
            "Videos:"),
    Flag(("--media-video-codec",), "media.video.video_codec", "Transcode videos to this codec."),
    Flag(("--media-video-audio-codec",), "media.video.audio_codec", "Audio codec."),
    Flag(("--media-video-quality-max",), "media.video.quality.crf_max", "Fallback CRF."),
    *[Flag((f"--media-video-quality-{n}",), f"media.video.quality.crf_{n}",
           f"CRF for videos whose smaller side is up to {n}px.")
      for n in (240, 360, 480, 720, 1080, 1440, 2160)],
    Flag(("--read-only",), "server.read_only", "Refuse every write.", switch=True),
    Flag(("--danger-dummy-mode",), "server.danger_dummy_mode",
         "Store uploads without processing (testing only).", switch=True),
)  # fmt: skip

OBJECT_STORAGE_FLAGS = (
    Flag(("--endpoint", "-e"), "store.endpoint", "S3 endpoint URL.", required=True),
    Flag(("--use-path-style", "-u"), "store.use_path_style", "Path-style URLs.", switch=True),
    Flag(("--bucket-name", "-b"), "store.bucket_name", "Bucket (must exist)."),
    Flag(("--region", "-r"), "store.region", "Region."),
    Flag(("--access-key", "-a"), "store.access_key", "Access key."),
    Flag(("--secret-key", "-s"), "store.secret_key", "Secret key."),
    Flag(("--session-token",), "store.session_token", "Session token."),
    Flag(("--client-timeout",), "store.client_timeout", "Per-request timeout, seconds."),
    Flag(("--public-endpoint",), "store.public_endpoint", "Redirect reads to this URL."),
)  # fmt: skip

# Subcommand word -> (value of the tagged section's `type`, its flags, help)
SUBCOMMANDS: dict[str, tuple[str, str, tuple[Flag, ...], str]] = {
    "filesystem": ("store", "filesystem",
                   (Flag(("--path", "-p"), "store.path", "Directory for media files."),),
                   "Store media files in a directory."),
    "object-storage": ("store", "object_storage", OBJECT_STORAGE_FLAGS,
                       "Store media files in an S3-compatible bucket."),
    "sqlite": ("repo", "sqlite",
               (Flag(("--path", "-p"), "repo.path", "Directory of the SQLite database."),
                Flag(("--export-path", "-e"), "repo.export_path",
                     "Folder for POST /internal/export.")),
               "Keep metadata in an embedded SQLite database (the only repo)."),
    "sled": ("repo", "sled",
             (Flag(("--path", "-p"), "repo.path", "Path.", hint=str),
              Flag(("--cache-capacity", "-c"), "repo.cache_capacity", "Bytes.", hint=int),
              Flag(("--export-path", "-e"), "repo.export_path", "Path.", hint=str)),
             "pict-rs's sled repo: not supported, explains how to migrate."),
    "postgres": ("repo", "postgres",
                 (Flag(("--url", "-u"), "repo.url", "URL.", hint=str, required=True),
                  Flag(("--use-tls", "-t"), "repo.use_tls", "TLS.", switch=True),
                  Flag(("--certificate-file", "-c"), "repo.certificate_file", "CA file.",
                       hint=str)),
                 "pict-rs's postgres repo: not supported yet."),
    # Not a store or repo: `jobs watch` (no config section; its flags are its own).
    "watch": ("", "", (Flag(("--url",), None, "The event feed: ws://HOST:PORT/internal/events "
                                               "(default: the configured server.address).",
                            hint=str),
                       Flag(("--since",), None, "Begin after this event id.", hint=int)),
              "Follow the journal's events live (GET /internal/events)."),
}  # fmt: skip
STORES = frozenset({"filesystem", "object-storage"})
REPOS = frozenset({"sqlite", "sled", "postgres"})

MIGRATE_STORE_FLAGS = (
    Flag(("--skip-missing-files",), None, "Skip files missing in the source.", switch=True),
    Flag(("--concurrency",), None, "Files in flight.", hint=int),
    Flag(
        ("--abandon",),
        None,
        "End the unfinished migration FROM -> TO instead of finishing it: the files it "
        "moved are moved back (their rows name FROM's copies again).",
        switch=True,
    ),
)
# How a recorded command line (``command_line``) shows the values of some flags, by the
# segment's word ("": the global flags): secrets left out, paths absolute, URLs for logs.
SECRET_FLAGS = {
    "object-storage": {
        "--secret-key": "<secret-key>",
        "-s": "<secret-key>",
        "--session-token": "<session-token>",
    }
}
PATH_FLAGS = {
    "": {"--config-file", "-c", "--save-to"},
    "filesystem": {"--path", "-p"},
    "sqlite": {"--path", "-p", "--export-path", "-e"},
}
URL_FLAGS = {"object-storage": {"--endpoint", "-e", "--public-endpoint"}}
# The chain after each command: slots filled left to right, each optional.
CHAINS = {
    "run": (STORES, REPOS),
    "check-config": (STORES, REPOS),
    "migrate-store": (STORES, STORES, REPOS),
    "migrate-repo": (REPOS, REPOS),
    "jobs": (frozenset({"watch"}), REPOS),
}
HELP_FLAGS = ("--help", "-h", "--version", "-V")

Parsed = list[tuple[Flag, object]]


def main(
    argv: Sequence[str] | None = None,
    *,
    runner: Runner | None = None,
    env: Mapping[str, str] | None = None,
    migrate_runner: MigrateRunner | None = None,
) -> int:
    """Parse ``argv``, build the Config, then hand it to ``runner`` (``service.run``), or,
    for ``migrate-store``, to ``migrate_runner`` with its arguments (its status is ours).

    Returns the exit status: 0, 2 after printing ``error: ...`` for a usage or
    configuration error, 1 after printing it for anything else that stops start-up (a port
    in use, a folder that cannot be written, a missing tool or TLS file).
    """
    try:
        return _main(list(sys.argv[1:] if argv is None else argv), runner, env, migrate_runner)
    except (ConfigError, CycloptsError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the server took over the signals
        print("interrupted", file=sys.stderr)
        return 130
    except BaseExceptionGroup as group:
        if group.split(KeyboardInterrupt)[1] is not None:
            raise
        print("interrupted", file=sys.stderr)
        return 130


def _main(
    argv: list[str],
    runner: Runner | None,
    env: Mapping[str, str] | None,
    migrate_runner: MigrateRunner | None = None,
) -> int:
    app = build_app()
    head, command, rest = _split_command(argv)
    if command == "help":  # `pictrs-trio help run` is `pictrs-trio run --help`
        command, rest = (rest[0], [*rest[1:], "--help"]) if rest else (None, ["--help"])
        if command is None:
            head.append("--help")
    parsed_globals = _parse(app, head)
    if parsed_globals is None:
        return 0  # help or version was printed
    if command not in CHAINS:
        wanted = "a command is required" if command is None else f"unknown command {command!r}"
        raise UsageError(
            f"{wanted}: run, check-config, jobs, migrate-store or migrate-repo (see --help)"
        )
    segments = split_chain(command, rest)
    parsed = []
    for index, segment in enumerate(segments):
        result = _parse(app, segment if index == 0 else [command, *segment])
        if result is None:
            return 0
        parsed.append((segment[0], result))
    migrate_args = None
    if command == "migrate-store":
        if len(segments) < 3 or segments[2][0] not in STORES:
            raise UsageError("migrate-store needs a FROM and a TO store: filesystem|object-storage")
        migrate_args = _migrate_store_args(parsed)
        parsed = [parsed[0], *parsed[3:]]  # the stores are not the configured `store`
        has_repo = len(segments) > 3
    if command == "migrate-repo":
        raise UsageError(
            "migrate-repo is not available: pictrs-trio has one embedded SQLite repo and reads "
            "neither sled nor postgres. To bring over a pict-rs repo, convert it with pict-rs "
            "itself (`pict-rs migrate-repo sled -p /mnt/sled-repo postgres -u URL`), then import "
            "that database into pictrs-trio (the import command is not available yet)"
        )

    flat: dict[str, object] = {}
    special: dict[str, object] = {}
    for word, result in [("", parsed_globals), *parsed]:
        if word in SUBCOMMANDS and SUBCOMMANDS[word][0]:
            section, kind, _, _ = SUBCOMMANDS[word]
            flat[f"{section}.type"] = kind
        for flag, value in result:
            if flag.key is None:
                special[flag.param] = value
            else:
                flat[flag.key] = flag.switch if flag.switch is not None else value
    if migrate_args is not None:  # pict-rs: the migrate commands never clean it
        flat["server.cleanup_temporary_directory"] = False
    config_file = special.get("config_file")
    loaded = cfg.load_all(
        file=config_file if isinstance(config_file, Path) else None,
        env=os.environ if env is None else env,
        overrides=cfg.nest(flat),
        checks=VALUE_CHECKS,
    )
    config = loaded.config
    save_path = special.get("save_to")
    if isinstance(save_path, Path):
        try:
            cfg.save_to(save_path, config)
        except OSError as exc:
            raise StartupError(f"--save-to {save_path}: {exc.strerror or exc}") from None
    if migrate_args is not None:
        line = command_line(head, segments, "" if has_repo else config.repo.path)
        migrate_args = msgspec.structs.replace(migrate_args, command=line)
        if migrate_runner is None:
            from pictrs_trio.runtime import migrate_command

            migrate_runner = functools.partial(migrate_command.run, warnings=loaded.warnings)
        return migrate_runner(config, migrate_args)
    if command == "check-config":
        from pictrs_trio.runtime import startup  # settings that parse but cannot work, as run

        startup.check_config(config)
        return _check_config(loaded)
    if runner is None and command == "jobs" and any(w == "watch" for w, _ in parsed):
        from pictrs_trio.runtime import watch_command

        url, since = special.get("url"), special.get("since")
        runner = functools.partial(
            watch_command.watch,
            url=url if isinstance(url, str) else None,
            since=since if isinstance(since, int) else None,
        )
    if runner is None and command == "jobs":
        from pictrs_trio.runtime import jobs_command

        runner = jobs_command.print_jobs
    if runner is None:
        from pictrs_trio.runtime import launch  # imported late: the CLI must not pull in the server

        runner = functools.partial(launch.run, warnings=loaded.warnings)
    runner(config)
    return 0


def _migrate_store_args(parsed: list[tuple[str, Parsed]]) -> MigrateStoreArgs:
    """FROM and TO (the second and third segments) and the command's own flags."""
    stores = [_store_from(word, result) for word, result in parsed[1:3]]
    given = {flag.param: value for flag, value in parsed[0][1]}
    concurrency = given.get("concurrency", 32)
    if not isinstance(concurrency, int) or concurrency < 1:
        raise UsageError(f"--concurrency must be at least 1, not {concurrency}")
    return MigrateStoreArgs(
        source=stores[0],
        destination=stores[1],
        skip_missing_files=bool(given.get("skip_missing_files", False)),
        concurrency=concurrency,
        abandon=bool(given.get("abandon", False)),
    )


def command_line(head: Sequence[str], segments: Sequence[Sequence[str]], repo_path: str) -> str:
    """``pictrs-trio`` with the global flags ``head`` and the command's ``segments``
    (``split_chain``) as the operator typed them, to be run again from anywhere: folders
    and files made absolute, secrets (``SECRET_FLAGS``) and an endpoint's user info left
    out, ``--abandon`` dropped; ``repo_path``, when given, as a ``sqlite -p`` segment (the
    repo came from the configuration or the environment)."""
    words = ["pictrs-trio", *_rewrite("", head, GLOBAL_FLAGS)]
    for segment in segments:
        word, rest = segment[0], segment[1:]
        flags = SUBCOMMANDS[word][2] if word in SUBCOMMANDS else MIGRATE_STORE_FLAGS
        words += [word, *(t for t in _rewrite(word, rest, flags) if t != "--abandon")]
    if repo_path:
        words += ["sqlite", "-p", os.path.abspath(repo_path)]
    return shlex.join(words)


def _rewrite(word: str, tokens: Sequence[str], flags: Sequence[Flag]) -> list[str]:
    switches = _switches(flags)
    out: list[str] = []
    flag: str | None = None
    for token in tokens:
        if flag is not None:
            out.append(_value(word, flag, token))
            flag = None
        elif token.startswith("-") and token != "-" and "=" in token:
            name, value = token.split("=", 1)
            out.append(f"{name}={_value(word, name, value)}")
        elif token.startswith("-") and token != "-":
            out.append(token)
            flag = None if token in switches else token
        else:
            out.append(token)
    return out


def _value(word: str, flag: str, value: str) -> str:
    if flag in SECRET_FLAGS.get(word, {}):
        return SECRET_FLAGS[word][flag]
    if flag in PATH_FLAGS.get(word, set()):
        return os.path.abspath(value)
    if flag in URL_FLAGS.get(word, set()) and ("@" in value or "?" in value):
        from pictrs_trio.rules.egress import url_for_log

        return url_for_log(value)
    return value


def _store_from(word: str, result: Parsed) -> cfg.FilesystemStore | cfg.ObjectStorageStore:
    """A store given entirely by its subcommand and flags (pict-rs: the defaults, not the
    configured store, fill in the rest; object storage needs its bucket, region and keys)."""
    values: dict[str, object] = {"type": SUBCOMMANDS[word][1]}
    for flag, value in result:
        assert flag.key is not None
        values[flag.key.split(".", 1)[1]] = flag.switch if flag.switch is not None else value
    try:
        return msgspec.convert(values, cfg.FilesystemStore | cfg.ObjectStorageStore)
    except msgspec.ValidationError as exc:
        missing = re.search(r"missing required field `(\w+)`", str(exc))
        if missing:
            name = "--" + missing.group(1).replace("_", "-")
            raise UsageError(f"migrate-store {word}: {name} is required") from None
        raise UsageError(f"migrate-store {word}: {exc}") from None


def _check_config(loaded: cfg.Loaded) -> int:
    """``check-config``: the effective configuration on stdout (secrets redacted: it ends up
    in deployment logs), each ignored key and each key not acting on stderr; status 1 when
    any key was ignored (a typo pict-rs would silently skip)."""
    header = (
        "# Effective pictrs-trio configuration; secrets read <redacted> (--save-to writes "
        "them).\n\n"
    )
    sys.stdout.write(cfg.dump(loaded.config, header=header, redact=True))
    for message in loaded.warnings:
        print(f"warning: {message}", file=sys.stderr)
    return 1 if loaded.ignored else 0


def _parse(app: App, tokens: list[str]) -> Parsed | None:
    """Parse one segment with its cyclopts command; None when help or version was shown."""
    result = app(tokens, exit_on_error=False, print_error=False, result_action="return_value")
    return None if result is None else list(result)


def _split_command(argv: list[str]) -> tuple[list[str], str | None, list[str]]:
    """Global flags, the command word, and everything after it."""
    switches = _switches(GLOBAL_FLAGS)
    expect_value = False
    for index, token in enumerate(argv):
        if expect_value:
            expect_value = False
        elif token.startswith("-") and token != "-":
            expect_value = "=" not in token and token not in switches
        else:
            return argv[:index], token, argv[index + 1 :]
    return argv, None, []


def split_chain(command: str, tokens: Sequence[str]) -> list[list[str]]:
    """Cut ``tokens`` (after ``command``) into ``[[command, ...], [word, ...], ...]`` at the
    store/repo words of the command's chain, skipping over flag values."""
    slots = CHAINS.get(command, ())
    segments = [[command]]
    slot, expect_value = 0, False
    switches = _switches(RUN_FLAGS if command in ("run", "check-config") else MIGRATE_STORE_FLAGS)
    for token in tokens:
        if expect_value:
            segments[-1].append(token)
            expect_value = False
        elif token.startswith("-") and token != "-":
            segments[-1].append(token)
            expect_value = "=" not in token and token not in switches
        elif (
            found := next((i for i in range(slot, len(slots)) if token in slots[i]), None)
        ) is not None:
            segments.append([token])
            slot = found + 1
            switches = _switches(SUBCOMMANDS[token][2])
        else:
            segments[-1].append(token)  # a stray word: cyclopts reports it
    return segments


def _switches(flags: Sequence[Flag]) -> frozenset[str]:
    return frozenset(n for f in flags if f.switch is not None for n in f.names) | set(HELP_FLAGS)


def build_app() -> App:
    """The cyclopts tree; each command returns the ``(Flag, value)`` pairs it was given."""
    app = App(
        name="pictrs-trio",
        help="A pict-rs compatible image hosting service, on trio.",
        version=pictrs_trio.version,  # called for --version only
        version_flags=["--version", "-V"],
        default_parameter=Parameter(negative=()),  # switches only switch on
    )
    app.default(_command("pictrs-trio", "Global flags go before the command.", GLOBAL_FLAGS))
    run = App(
        name="run",
        help="Run the pictrs-trio server. STORE is filesystem or object-storage and REPO is "
        "sqlite, each with its own flags (see `run STORE --help`); without them the store "
        "and repo come from the config file, the environment or the defaults.",
        usage="Usage: pictrs-trio run [FLAGS] [STORE [FLAGS]] [REPO [FLAGS]]",
    )
    run.default(_command("run", "Run the pictrs-trio server.", RUN_FLAGS))
    migrate_store = App(
        name="migrate-store",
        help="Move all media from one store to another and repoint the repo, while the server "
        "is stopped; run it again to finish an interrupted migration. Then point `store` at "
        "TO-STORE.",
        usage="Usage: pictrs-trio migrate-store [FLAGS] FROM-STORE TO-STORE [REPO [FLAGS]]",
    )
    migrate_store.default(_command("migrate-store", "Copy media.", MIGRATE_STORE_FLAGS))
    migrate_repo = App(
        name="migrate-repo", help="pict-rs's repo migration (not available in pictrs-trio)."
    )
    migrate_repo.default(_command("migrate-repo", "Not available.", ()))
    jobs = App(
        name="jobs",
        help="Show the job journal: jobs per queue and status, and dead jobs with their last "
        "error. Safe while the server runs. `jobs watch` follows the server's live event feed "
        "(needs server.api_key).",
        usage="Usage: pictrs-trio jobs [watch [--url URL] [--since ID]] [REPO [FLAGS]]",
    )
    jobs.default(_command("jobs", "Show the job journal.", ()))
    check_config = App(
        name="check-config",
        help="Print the effective configuration (file < environment < flags, as `run` builds "
        "it) and name every key it ignores; exit status 1 if there is one.",
        usage="Usage: pictrs-trio check-config [RUN FLAGS] [STORE [FLAGS]] [REPO [FLAGS]]",
    )
    check_config.default(_command("check-config", "Check the configuration.", RUN_FLAGS))
    for sub, words in (
        (run, STORES | REPOS),
        (check_config, STORES | REPOS),
        (migrate_store, STORES | REPOS),
        (migrate_repo, REPOS),
        (jobs, REPOS | {"watch"}),
    ):
        for word in sorted(words):
            _, _, flags, help_ = SUBCOMMANDS[word]
            sub.command(_command(word, help_, flags), name=word)
        app.command(sub)
    return app


def _command(name: str, doc: str, flags: Sequence[Flag]) -> Callable[..., Parsed]:
    """A function cyclopts can parse: one keyword parameter per flag, typed from the config
    key; it returns the flags actually given with their values."""
    by_param = {flag.param: flag for flag in flags}

    def command(**given: object) -> Parsed:
        return [(by_param[p], v) for p, v in given.items() if v is not None and v is not False]

    parameters, annotations = [], {}
    for flag in flags:
        hint = bool if flag.switch is not None else flag.hint or cfg.leaf_type(flag.key or "")
        key_note = f" [key: {flag.key}]" if flag.key else ""
        if flag.switch is None and not flag.required:
            hint = hint | None  # type: ignore[operator]
        annotation = Annotated[  # built at runtime: the signature comes from the flag table
            hint,  # type: ignore[valid-type]
            Parameter(name=list(flag.names), help=flag.help + key_note, show_default=False),
        ]
        default = (
            inspect.Parameter.empty
            if flag.required
            else (False if flag.switch is not None else None)
        )
        parameters.append(
            inspect.Parameter(
                flag.param, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
            )
        )
        annotations[flag.param] = annotation
    command.__name__ = name.replace("-", "_")
    command.__doc__ = doc
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = annotations
    return command
