"""Configuration: Structs mirroring pict-rs's configuration tree (same section and key names).

``load()`` merges defaults < TOML file < ``PICTRS__SECTION__KEY`` environment < CLI flags and
converts once. Keys no setting reads (unknown ones, pict-rs 0.4 names) are taken out first and
reported (``load_all``), as pict-rs ignores them; bad values of known keys are errors. Pure:
the caller passes the environment in.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import tomli_w

from pictrs_trio.config import layered, logfilter
from pictrs_trio.config.layered import ConfigError as ConfigError  # re-exported: raised by load()
from pictrs_trio.config.layered import Layer, Tree
from pictrs_trio.config.layered import nest as nest  # re-exported for the CLI

Frozen = {"frozen": True, "kw_only": True, "forbid_unknown_fields": True}

# pict-rs's integer widths, so out-of-range values fail at load like they do there.
U16 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF)]
U32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF_FFFF)]
Count = Annotated[int, msgspec.Meta(ge=0)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
Seconds = Annotated[float, msgspec.Meta(ge=0)]
Quality = Annotated[int, msgspec.Meta(ge=0)]  # above the cap is clamped, see _clamp


def _clamp(struct: msgspec.Struct, cap: int) -> None:
    """pict-rs clamps quality settings instead of rejecting them; do the same (frozen Struct,
    so through force_setattr, which is meant for __post_init__)."""
    for name in struct.__struct_fields__:
        value = getattr(struct, name)
        if isinstance(value, int) and value > cap:
            msgspec.structs.force_setattr(struct, name, cap)


class Server(msgspec.Struct, **Frozen):
    address: str = "0.0.0.0:8080"
    api_key: str | None = None
    read_only: bool = False
    danger_dummy_mode: bool = False
    max_file_count: U32 = 1
    temporary_directory: str | None = None  # None: the OS temp dir
    cleanup_temporary_directory: bool = True
    certificate: str | None = None
    private_key: str | None = None
    # pictrs-trio additions
    workers: Positive = 1  # hypercorn worker processes sharing the repo
    shutdown_timeout: Seconds = 30.0  # seconds in-flight requests get after SIGTERM
    # seconds an idle keep-alive connection stays open (actix-web's default, which pict-rs
    # serves with, is 5)
    keep_alive_timeout: Seconds = 5.0
    # a request body must arrive within body_timeout seconds plus one second per
    # body_min_rate bytes received (else 408)
    body_timeout: Annotated[float, msgspec.Meta(gt=0)] = 20.0
    body_min_rate: Positive = 500
    # seconds an answer may sit unsent because the client does not read (or is gone) before
    # the connection is dropped: the kernel's TCP_USER_TIMEOUT on every connection
    send_timeout: Annotated[float, msgspec.Meta(gt=0)] = 60.0


class Client(msgspec.Struct, **Frozen):
    timeout: Seconds = 30.0
    # pictrs-trio addition: networks (CIDRs) that downloads and proxies may reach although
    # they are not public (loopback, private, ...); none by default (rules/egress.py)
    allowed_networks: list[str] = msgspec.field(default_factory=list)


class Upgrade(msgspec.Struct, **Frozen):
    concurrency: Positive = 32


class Logging(msgspec.Struct, **Frozen):
    format: Literal["compact", "json", "normal", "pretty"] = "normal"
    targets: str = "info"
    log_spans: bool = False
    no_ansi: bool = False
    log_requests: bool = False


class Console(msgspec.Struct, **Frozen):
    address: str | None = None
    buffer_capacity: Count = 102400


class OpenTelemetry(msgspec.Struct, **Frozen):
    url: str | None = None
    service_name: str = "pict-rs"
    targets: str = "info"


class Tracing(msgspec.Struct, **Frozen):
    logging: Logging = Logging()
    console: Console = Console()
    opentelemetry: OpenTelemetry = OpenTelemetry()


class Metrics(msgspec.Struct, **Frozen):
    prometheus_address: str | None = None


class OldRepo(msgspec.Struct, **Frozen):
    path: str | None = None


class Retention(msgspec.Struct, **Frozen):
    variants: str = "7d"
    proxy: str = "7d"


class Magick(msgspec.Struct, **Frozen):
    """pict-rs's ImageMagick limits, bounding the libvips engine workers instead
    (``media.tools.engine_limits``); ``max_area`` is on NOT_ACTING."""

    max_width: U16 = 10000
    max_height: U16 = 10000
    max_area: U32 = 20000
    memory: Count = 256
    map: Count = 512
    disk: Count = 1024


class ImageQuality(msgspec.Struct, **Frozen):
    avif: Quality | None = None
    png: Quality | None = None
    jpeg: Quality | None = None
    jxl: Quality | None = None
    webp: Quality | None = None

    def __post_init__(self) -> None:
        _clamp(self, 100)


class Image(msgspec.Struct, **Frozen):
    max_width: U16 = 10000
    max_height: U16 = 10000
    max_area: U32 = 40_000_000
    max_file_size: Count = 40
    format: Literal["avif", "png", "jpeg", "jxl", "webp"] | None = None
    quality: ImageQuality = ImageQuality()


class AnimationQuality(msgspec.Struct, **Frozen):
    apng: Quality | None = None
    avif: Quality | None = None
    webp: Quality | None = None

    def __post_init__(self) -> None:
        _clamp(self, 100)


class Animation(msgspec.Struct, **Frozen):
    max_width: U16 = 1920
    max_height: U16 = 1920
    max_area: U32 = 2_073_600
    max_file_size: Count = 40
    max_frame_count: U32 = 900
    format: Literal["apng", "avif", "gif", "webp"] | None = None
    quality: AnimationQuality = AnimationQuality()


class VideoQuality(msgspec.Struct, **Frozen):
    crf_240: Quality | None = None
    crf_360: Quality | None = None
    crf_480: Quality | None = None
    crf_720: Quality | None = None
    crf_1080: Quality | None = None
    crf_1440: Quality | None = None
    crf_2160: Quality | None = None
    crf_max: Quality = 32

    def __post_init__(self) -> None:
        _clamp(self, 63)


class Video(msgspec.Struct, **Frozen):
    enable: bool = True
    allow_audio: bool = False
    max_width: U16 = 3840
    max_height: U16 = 3840
    max_area: U32 = 8_294_400
    max_file_size: Count = 40
    max_frame_count: U32 = 900
    video_codec: Literal["av1", "h264", "h265", "vp8", "vp9"] | None = None
    audio_codec: Literal["aac", "opus", "vorbis"] | None = None
    quality: VideoQuality = VideoQuality()


DEFAULT_FILTERS = ("blur", "crop", "identity", "resize", "thumbnail")


class Media(msgspec.Struct, **Frozen):
    external_validation: str | None = None
    external_validation_timeout: Seconds = 30.0
    max_file_size: Count = 40
    process_timeout: Seconds = 30.0
    preprocess_steps: str | None = None
    filters: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_FILTERS))
    retention: Retention = Retention()
    magick: Magick = Magick()
    image: Image = Image()
    animation: Animation = Animation()
    video: Video = Video()
    # pictrs-trio additions: engine worker processes (0 = number of cores); seconds without
    # a metadata command before exiftool is stopped (0 = keep it running)
    engine_workers: Count = 0
    exiftool_idle_timeout: Seconds = 10.0


class SqliteRepo(msgspec.Struct, tag="sqlite", tag_field="type", **Frozen):
    path: str = "/mnt/sqlite-repo"  # directory; the database is <path>/pictrs.sqlite3
    # POST /internal/export writes <export_path>/<RFC 3339 time>/pictrs.sqlite3 (pict-rs's
    # sled export_path, same default)
    export_path: str = "/mnt/exports"


class FilesystemStore(msgspec.Struct, tag="filesystem", tag_field="type", **Frozen):
    path: str = "/mnt/files"


class ObjectStorageStore(msgspec.Struct, tag="object_storage", tag_field="type", **Frozen):
    endpoint: str
    bucket_name: str
    region: str
    access_key: str
    secret_key: str
    use_path_style: bool = False
    session_token: str | None = None
    client_timeout: Seconds = 30.0
    public_endpoint: str | None = None
    signature_duration: int | None = None  # accepted from old configs, unused


class Config(msgspec.Struct, **Frozen):
    server: Server = Server()
    client: Client = Client()
    upgrade: Upgrade = Upgrade()
    tracing: Tracing = Tracing()
    metrics: Metrics = Metrics()
    old_repo: OldRepo = OldRepo()
    media: Media = Media()
    repo: SqliteRepo = SqliteRepo()
    store: FilesystemStore | ObjectStorageStore = FilesystemStore()


# --------------------------------------------------------------------------------------------
# Loading: defaults < file < environment < command line, merged as dicts, converted once.

ENV_PREFIX = "PICTRS__"
# The environment has no list syntax (pict-rs ``src/config.rs``), so list keys take a
# comma-separated string.
ENV_LIST_KEYS = frozenset({("media", "filters"), ("client", "allowed_networks")})
# Tagged sections: `type` picks the Struct. section -> (default type, supported types)
TAGGED = {
    "store": ("filesystem", ("filesystem", "object_storage")),
    "repo": ("sqlite", ("sqlite",)),
}
TAG_DEFAULTS = {section: default for section, (default, _) in TAGGED.items()}
# The keys of each variant of the tagged sections (kept when a later layer switches type).
VARIANT_KEYS: dict[tuple[str, object], frozenset[str]] = {
    (section, cls.__struct_config__.tag): frozenset(f.name for f in msgspec.structs.fields(cls))
    for section, classes in (
        ("store", (FilesystemStore, ObjectStorageStore)),
        ("repo", (SqliteRepo,)),
    )
    for cls in classes
}

# Keys pict-rs 0.5 moved; it ignores the old names silently, we ignore them with a warning
# that says where they went.
MOVED = {
    "media.format": "media.image.format",
    "media.max_width": "media.image.max_width",
    "media.max_height": "media.image.max_height",
    "media.max_area": "media.image.max_area",
    "media.gif": "media.animation",
    "media.enable_silent_video": "media.video.enable",
    "media.enable_full_video": "media.video.allow_audio",
    "media.video_codec": "media.video.video_codec",
    "media.audio_codec": "media.video.audio_codec",
    "media.max_frame_count": "media.video.max_frame_count",
    "store.signature_expiration": "store.signature_duration",
}
REMOVED = {
    "server.worker_id": "removed in pict-rs 0.5",
    "media.skip_validate_imports": "removed in pict-rs 0.5",
}

SLED_MESSAGE = (
    "the sled repo is not supported: pictrs-trio keeps its metadata in an embedded SQLite "
    'database. Use `[repo] type = "sqlite"` with `path = "/mnt/sqlite-repo"` (the default) in '
    "the config file, or PICTRS__REPO__TYPE=sqlite and PICTRS__REPO__PATH=..., or `run ... "
    "sqlite -p PATH`. To keep the data of an existing pict-rs sled repo, first convert it "
    "with pict-rs itself while pict-rs is stopped: `pict-rs migrate-repo sled -p "
    "/mnt/sled-repo postgres -u postgres://USER:PASSWORD@HOST/DB`; then import that "
    "database into pictrs-trio (the import command is not available in this version yet)"
)
POSTGRES_MESSAGE = (
    "the postgres repo is not supported yet: pictrs-trio currently has only the embedded "
    'SQLite repo (`[repo] type = "sqlite"`, `path = "..."`)'
)


# Keys accepted because pict-rs has them, that pictrs-trio does not act on (yet): each one
# set to something other than its default gives one start-up warning
# (docs/configuration.md, "Keys that are accepted but not acting").
NOT_ACTING = {
    "tracing.console.address": (
        "tokio-console inspects the tasks of pict-rs's Rust runtime; trio has no such console, "
        "so nothing listens there (spans: tracing.opentelemetry)"
    ),
    "tracing.console.buffer_capacity": "only the tokio-console (tracing.console.address) uses it",
    "old_repo.path": "pict-rs 0.4 sled repos are not read (docs/migration.md)",
    "upgrade.concurrency": "there is no pict-rs 0.4 repo upgrade to run",
    "store.signature_duration": (
        "requests are signed one by one, never presigned (pict-rs 0.5.17 dropped it too)"
    ),
    "media.magick.max_area": (
        "libvips has one threshold for keeping pixels in memory, set from media.magick.memory"
    ),
}


class Loaded(msgspec.Struct, frozen=True, kw_only=True):
    """A loaded configuration and what was ignored on the way: one message per key that no
    setting reads (an unknown key, or a pict-rs 0.4 name that 0.5 ignores), and one per key
    that is set but not acting (NOT_ACTING)."""

    config: Config
    ignored: tuple[str, ...] = ()
    inactive: tuple[str, ...] = ()  # ``not_acting(config)``

    @property
    def warnings(self) -> tuple[str, ...]:
        """Everything to warn about at start-up: ignored keys, then keys not acting."""
        return self.ignored + self.inactive


def load(
    *,
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Tree | None = None,
) -> Config:
    """The Config from built-in defaults < ``file`` < ``env`` < ``overrides`` (``load_all``
    without the list of ignored keys)."""
    return load_all(file=file, env=env, overrides=overrides).config


def load_all(
    *,
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Tree | None = None,
    checks: Mapping[str, Callable[[str], object]] | None = None,
) -> Loaded:
    """The Config from built-in defaults < ``file`` < ``env`` < ``overrides``, and the keys
    it ignored.

    ``overrides`` is a nested dict (``{"server": {"address": ...}}``) of only what was given
    on the command line. As pict-rs, unknown keys and pict-rs 0.4 names are ignored (the
    caller warns about each); a bad value of a known key raises ConfigError naming the key
    path, its source and the problem. ``checks``: parsers of string keys that live above
    this package (``media.preprocess_steps`` is the process routes' syntax), key -> a
    function raising ValueError; their errors read like the built-in ones.
    """
    layers: list[Layer] = []
    if file is not None:
        layers.append(Layer(data=layered.read_file(file), source=f"file {file}"))
    if env and env.get("RUST_LOG"):  # pict-rs: RUST_LOG sets the log filter, below PICTRS__
        rust_log: Tree = {"tracing": {"logging": {"targets": env["RUST_LOG"]}}}
        layers.append(Layer(data=rust_log, source="environment variable RUST_LOG"))
    if env and (env_layer := layered.env_layer(env, ENV_PREFIX, ENV_LIST_KEYS)):
        layers.append(env_layer)
    if overrides:
        layers.append(Layer(data=overrides, source="command line"))
    ignored = [message for layer in layers for message in _old_names(layer)]
    merged: Tree = {}
    for layer in layers:
        layered.merge(merged, layer.data, TAG_DEFAULTS, VARIANT_KEYS)
    _check_tags(merged, layers)
    ignored += layered.strip_unknown(merged, Config, layers)
    try:
        config = msgspec.convert(merged, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise layered.explain(str(exc), Config, merged, layers, ENV_PREFIX, shown) from None
    _validate(config, layers, checks or {})
    return Loaded(config=config, ignored=tuple(ignored), inactive=tuple(not_acting(config)))


def not_acting(config: Config) -> list[str]:
    """One message per NOT_ACTING key that is set to something other than its default: the
    default of the Struct that holds it here (``store.signature_duration`` is an object
    storage key; the default store, a filesystem one, has no such key)."""
    messages = []
    for key, why in NOT_ACTING.items():
        *sections, leaf = key.split(".")
        holder: object = config
        for section in sections:
            holder = getattr(holder, section, None)
        if not isinstance(holder, msgspec.Struct) or leaf not in holder.__struct_fields__:
            continue  # a key of the other variant of a tagged section
        field = next(f for f in msgspec.structs.fields(holder) if f.name == leaf)
        default = field.default
        if default is msgspec.NODEFAULT and field.default_factory is not msgspec.NODEFAULT:
            default = field.default_factory()
        if getattr(holder, leaf) != default:  # a required key (none is listed) is always set
            messages.append(f"{key} is set but not acting: {why}")
    return messages


def _old_names(layer: Layer) -> list[str]:
    """Take the pict-rs 0.4 keys out of a layer (pict-rs 0.5 ignores them), one message
    each naming the 0.5 key."""
    messages = []
    for old, new in MOVED.items():
        old_path = tuple(old.split("."))
        for tail in layered.leaves(layered.get(layer.data, old_path)):
            path, moved = (*old_path, *tail), (*new.split("."), *tail)
            renamed = layered.dotted(moved)
            if layer.env_prefix:
                renamed = layered.env_name(layer.env_prefix, moved)
            messages.append(
                f"{layered.dotted(path)} ({layer.describe(path)}): a pict-rs 0.4 name, ignored "
                f"as pict-rs 0.5 ignores it; its 0.5 name is {renamed}"
            )
        layered.remove(layer.data, old_path)
    for old, why in REMOVED.items():
        path = tuple(old.split("."))
        if layered.get(layer.data, path) is not layered.MISSING:
            messages.append(f"{old} ({layer.describe(path)}): {why}; ignored")
            layered.remove(layer.data, path)
    return messages


def _check_tags(merged: Tree, layers: list[Layer]) -> None:
    """Fill in the default ``type`` of the tagged sections and reject the unsupported ones."""
    for section, (default, supported) in TAGGED.items():
        value = merged.get(section)
        if not isinstance(value, dict):
            continue  # absent (defaults apply) or not a table (conversion says so)
        kind = value.setdefault("type", default)
        if kind in supported:
            continue
        where = f'{section}.type = "{kind}" ({layered.source(layers, (section, "type"))})'
        if section == "repo" and kind == "sled":
            raise ConfigError(f"{where}: {SLED_MESSAGE}")
        if section == "repo" and kind == "postgres":
            raise ConfigError(f"{where}: {POSTGRES_MESSAGE}")
        expected = ", ".join(f'"{t}"' for t in supported)
        raise ConfigError(f"{where}: unknown {section} type; expected {expected}")


def _validate(
    config: Config, layers: list[Layer], extra: Mapping[str, Callable[[str], object]]
) -> None:
    """Checks msgspec cannot express: addresses, retention strings, TLS pairs; and the
    caller's ``extra`` ones."""
    checks: list[tuple[str, str | None, Callable[[str], object]]] = [
        ("server.address", config.server.address, parse_address),
        ("metrics.prometheus_address", config.metrics.prometheus_address, parse_address),
        ("tracing.console.address", config.tracing.console.address, parse_address),
        ("media.external_validation", config.media.external_validation, parse_http_url),
        ("tracing.opentelemetry.url", config.tracing.opentelemetry.url, parse_http_url),
        ("media.retention.variants", config.media.retention.variants, parse_retention),
        ("media.retention.proxy", config.media.retention.proxy, parse_retention),
        ("tracing.logging.targets", config.tracing.logging.targets, logfilter.parse),
        ("tracing.opentelemetry.targets", config.tracing.opentelemetry.targets, logfilter.parse),
    ]
    checks += [
        (f"client.allowed_networks[{index}]", value, parse_network)
        for index, value in enumerate(config.client.allowed_networks)
    ]
    for key, parse in extra.items():
        value = layered.get(msgspec.to_builtins(config), tuple(key.split(".")))
        if isinstance(value, str):
            checks.append((key, value, parse))
    for key, value, parse in checks:
        if value is None:
            continue
        try:
            parse(value)
        except ValueError as exc:
            path = tuple(key.split("[")[0].split("."))
            where = layered.source(layers, path)
            raise ConfigError(f"{key} = {shown(key, value)} ({where}): {exc}") from None
    # pict-rs silently serves plain HTTP when only one of the pair is set; refuse instead.
    if (config.server.certificate is None) != (config.server.private_key is None):
        raise ConfigError(
            "server.certificate and server.private_key enable HTTPS together; set both or neither"
        )


# --------------------------------------------------------------------------------------------
# Pure parsers for values kept as strings (pict-rs's formats).

# pict-rs ``src/config/primitives.rs`` (``RetentionValue``): digits, then m/h/d/y or
# minute/hour/day/year in any case. Plurals and ``s`` (seconds, for tests and short-lived
# caches) are pictrs-trio extensions.
_RETENTION = re.compile(r"(\d*)(.*)", re.DOTALL)
_RETENTION_UNIT = re.compile(r"s|seconds?|m|minutes?|h|hours?|d|days?|y|years?")
_RETENTION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "y": 365 * 86400}
_RETENTION_FORM = (
    "a retention is a whole number and a unit, m, h, d or y (or minute, hour, day, year, also "
    "plural; s or second for seconds), like 30m, 12h, 7d or 1y"
)


@functools.lru_cache(maxsize=16)  # read on hot paths (proxy hits, retention jobs)
def parse_retention(text: str) -> datetime.timedelta:
    """``7d`` / ``1h`` / ``30m`` / ``2y`` (also ``7day``, ``1hours``, ``7D``, ...) as a
    timedelta.

    Raises ValueError saying what is missing or wrong, and the accepted units.
    """
    match = _RETENTION.fullmatch(text.strip())
    assert match is not None  # the pattern matches any string
    number, unit = match[1], match[2].lower()
    if not number:
        raise ValueError(f"no number in front: {_RETENTION_FORM}")
    if not unit:
        raise ValueError(f"no unit after {number}: {_RETENTION_FORM}")
    if not _RETENTION_UNIT.fullmatch(unit):
        raise ValueError(f"{match[2]!r} is not a unit: {_RETENTION_FORM}")
    return datetime.timedelta(seconds=int(number) * _RETENTION_UNITS[unit[0]])


def parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR like ``10.0.0.0/8`` or ``fd00::/8``; a bare address is a network of one.
    Host bits may be set (``10.1.2.3/8`` is ``10.0.0.0/8``). Raises ValueError."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(
            "expected a network in CIDR form, like 10.0.0.0/8, 127.0.0.1/32 or fd00::/8"
        ) from None


# What a host name cannot have: WHATWG URL's forbidden host code points (pict-rs parses these
# keys with the ``url`` crate, which refuses them), spaces and control characters first.
_NOT_IN_HOST = re.compile(r"[\x00-\x20\x7f#%/:<>?@\[\\\]^|]")


def parse_http_url(text: str) -> str:
    """An absolute http(s) URL with a host (pict-rs reads such keys as a ``Url``); returns
    it unchanged. Raises ValueError."""
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError as exc:  # "Invalid IPv6 URL"
        raise ValueError(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an absolute http:// or https:// URL with a host")
    host = parts.hostname
    if ":" in host:  # between brackets: an IPv6 address
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"the host [{host}] is not an IPv6 address") from None
    elif bad := _NOT_IN_HOST.search(host):
        raise ValueError(f"the host {host!r} cannot have {bad[0]!r} in it")
    try:
        parts.port  # noqa: B018 (a property that checks the port)
    except ValueError as exc:
        raise ValueError(f"bad port: {exc}") from None
    return text


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` with an IP literal host (like a Rust SocketAddr).

    Returns ``(host, port)`` with the brackets removed. Raises ValueError.
    """
    if match := re.fullmatch(r"\[([^\]]+)\]:(\d{1,5})", text):
        host, port, family = match[1], match[2], 6
    else:
        host, sep, port = text.rpartition(":")
        family = 4
        if not sep or not port.isdigit() or ":" in host:
            raise ValueError(
                "expected IP:PORT, like 0.0.0.0:8080, 127.0.0.1:8080 or [::]:8080 "
                "(an IPv6 address goes in brackets)"
            )
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address (host names are not accepted)") from None
    if ip.version != family:
        raise ValueError("an IPv6 address goes in brackets, like [::1]:8080")
    if not 0 <= int(port) <= 0xFFFF:
        raise ValueError(f"port {port} is out of range (0-65535)")
    return str(ip), int(port)


# --------------------------------------------------------------------------------------------
# Writing (--save-to) and introspection (CLI flag types, the docs guard test).


# Keys whose values no output shows: check-config (``dump(redact=True)``) and every error
# message (``shown``). A URL key keeps its scheme, host and path; a postgres ``repo.url``
# (refused, but it may be set) carries a password.
SECRET_KEYS = ("server.api_key", "store.access_key", "store.secret_key", "store.session_token")
URL_KEYS = (
    "media.external_validation",
    "tracing.opentelemetry.url",
    "store.endpoint",
    "store.public_endpoint",
    "repo.url",
)
REDACTED = "<redacted>"


def dump(
    config: Config,
    header: str = "# Effective pictrs-trio configuration, written by --save-to.\n\n",
    *,
    redact: bool = False,
) -> str:
    """The whole effective configuration as TOML; loading it alone gives ``config`` back
    (unless ``redact``: then secrets, and the userinfo and query of URLs, read REDACTED).

    Unset optional keys are left out, as TOML has no null.
    """
    tree = _drop_none(msgspec.to_builtins(config))
    assert isinstance(tree, dict)
    if redact:
        for key in SECRET_KEYS:
            _replace(tree, key, lambda _: REDACTED)
        for key in URL_KEYS:
            _replace(tree, key, redact_url)
    return header + tomli_w.dumps(tree)


def shown(key: str, value: object) -> str:
    """``value`` of ``key`` as an error message shows it: its ``repr``, except that a secret
    key's (or anything inside one) reads <redacted>, and a URL key's string loses its userinfo
    and query (``redact_url``; any other value of a URL key reads <redacted>)."""
    if _under(key, SECRET_KEYS):
        return REDACTED
    if _under(key, URL_KEYS):
        return repr(redact_url(value)) if isinstance(value, str) else REDACTED
    return repr(value)


def _under(key: str, keys: tuple[str, ...]) -> bool:
    return any(key == k or key.startswith((f"{k}.", f"{k}[")) for k in keys)


def _replace(tree: dict[str, object], key: str, change: Callable[[str], str]) -> None:
    *sections, leaf = key.split(".")
    for section in sections:
        inner = tree.get(section)
        if not isinstance(inner, dict):
            return
        tree = inner
    value = tree.get(leaf)
    if isinstance(value, str):
        tree[leaf] = change(value)


def redact_url(text: str) -> str:
    """``text`` as typed, with what may be a credential read REDACTED: everything between the
    scheme and the last ``@`` (a user and password), and the query and fragment. Works on
    anything, URL or not: no parser decides where the password ends (a ``/`` or ``?`` in an
    unencoded password would fool one), so when in doubt more is hidden, never less."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    if "@" in rest:
        rest = f"{REDACTED}@{rest.rsplit('@', 1)[1]}"
    for mark in "?#":
        head, found, _ = rest.partition(mark)
        if found:
            rest = f"{head}{mark}{REDACTED}"
    return f"{scheme}{sep}{rest}"


def save_to(path: Path, config: Config) -> None:
    """Write ``dump(config)`` to ``path`` (mode 0600: it may hold api_key or S3 secrets)."""
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(dump(config))
    os.replace(temporary, path)


def _drop_none(value: object) -> object:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def leaf_keys() -> list[str]:
    """Every key of Config, dotted (``media.image.quality.jpeg``); ``store.*`` lists the keys
    of both store types."""
    return layered.leaf_keys(Config)


def leaf_type(key: str) -> object:
    """The type of a key without None and constraints (``int``, ``Literal[...]``)."""
    return layered.leaf_type(Config, key)
