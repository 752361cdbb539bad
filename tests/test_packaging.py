"""The shipped packaging: the systemd unit (``systemd-analyze verify`` when systemd is
installed, and the directives it must keep), the example configuration of
docs/operations.md against that unit, and the container image's files, read statically
(Docker does not run where these tests run)."""

from __future__ import annotations

import fnmatch
import http.server
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from pictrs_trio import config as cfg

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "pictrs-trio.service"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker" / "docker-compose.yml"
OPERATIONS = ROOT / "docs" / "operations.md"
STATE = "/var/lib/pictrs-trio"
DEFAULTS = cfg.Config()


# --- systemd ----------------------------------------------------------------------------


def _directives(text: str) -> dict[str, dict[str, list[str]]]:
    """``{section: {key: [values in order]}}`` of a unit file (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


SERVICE = _directives(UNIT.read_text())["Service"]


def _one(key: str) -> str:
    values = SERVICE.get(key, [])
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


def _seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min|m)?", text)
    assert m, text
    return float(m[1]) * (60 if m[2] in ("min", "m") else 1)


def _systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    if subprocess.run([exe, "--version"], capture_output=True).returncode != 0:
        pytest.skip("systemd-analyze is installed but does not run here")
    return exe


def _verify(text: str, folder: Path) -> tuple[int, list[str]]:
    """``systemd-analyze verify`` on the unit ``text``: its exit status and every line it
    printed about this unit. ExecStart's program is swapped for one that exists (verify
    refuses a missing one, and the test machine has no /opt/pictrs-trio); nothing else is
    changed."""
    exe = _systemd_analyze()
    text = re.sub(
        r"^ExecStart=\S+", f"ExecStart={sys.executable}", text, count=1, flags=re.MULTILINE
    )
    unit = folder / UNIT.name
    unit.write_text(text)
    done = subprocess.run(
        [exe, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=120
    )
    lines = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if UNIT.name in line or str(folder) in line
    ]
    return done.returncode, lines


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    code, lines = _verify(UNIT.read_text(), tmp_path)
    assert code == 0 and lines == [], "\n".join(lines)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("ProtectSystem=strict", "ProtectSystm=strict"),  # unknown directive
        ("KillSignal=SIGTERM", "KillSignal=SIGNOPE"),  # bad value
        ("Type=exec", "Type=sometimes"),  # bad value
        ("[Service]", "[Servise]"),  # unknown section: no ExecStart left
    ],
)
def test_verify_catches_a_broken_unit(tmp_path: Path, old: str, new: str) -> None:
    """The check above can fail: each of these mistakes is reported."""
    text, n = re.subn(rf"^{re.escape(old)}$", new, UNIT.read_text(), flags=re.MULTILINE)
    assert n == 1
    code, lines = _verify(text, tmp_path)
    assert code != 0 or lines, f"{old} -> {new} passed verify"


def test_verify_refuses_a_missing_program(tmp_path: Path) -> None:
    """Why _verify swaps the program: verify fails on an ExecStart that does not exist."""
    exe = _systemd_analyze()
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/pictrs-trio", str(tmp_path / "absent")))
    done = subprocess.run([exe, "verify", "--man=no", str(unit)], capture_output=True)
    assert done.returncode != 0


def test_unit_runs_the_venv_with_the_etc_config() -> None:
    argv = shlex.split(_one("ExecStart"))
    assert argv == [
        "/opt/pictrs-trio/.venv/bin/pictrs-trio",
        "-c",
        "/etc/pictrs-trio/pictrs.toml",
        "run",
    ]
    # The server sends no sd_notify readiness; exec reports a missing program or user.
    assert _one("Type") == "exec"
    assert _one("User") == "pictrs"
    # The configuration is read once: nothing for a reload to do.
    assert "ExecReload" not in SERVICE


def test_unit_stops_gracefully_within_the_grace() -> None:
    assert _one("KillSignal") == "SIGTERM"
    # SIGTERM to the server alone: it stops its children once requests are done.
    assert _one("KillMode") == "mixed"
    grace = DEFAULTS.server.shutdown_timeout
    assert grace + 5 <= _seconds(_one("TimeoutStopSec")) <= grace + 30
    assert _one("Restart") == "on-failure"
    assert "2" in _one("RestartPreventExitStatus").split()  # a configuration error


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectHome", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("StateDirectory", "pictrs-trio"),
    ],
)
def test_unit_sandbox(key: str, value: str) -> None:
    assert _one(key) == value


def test_unit_sandbox_lists() -> None:
    assert set(_one("RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    filters = SERVICE["SystemCallFilter"]
    assert "@system-service" in filters
    # The engine workers cap themselves with setrlimit (in @resources).
    assert not any("@resources" in f for f in filters)
    assert STATE in _one("ReadWritePaths").split()
    assert _one("MemoryMax")
    assert int(_one("LimitNOFILE")) >= 4096


def test_unit_leaves_the_temporary_directory_writable() -> None:
    """The scratch folder defaults to the OS temp dir (/tmp, TMPDIR being unset under
    systemd), which ProtectSystem=strict leaves writable only as a PrivateTmp."""
    assert DEFAULTS.server.temporary_directory is None
    assert "TMPDIR" not in " ".join(SERVICE.get("Environment", []))
    assert _one("PrivateTmp") == "yes"


def _toml_blocks(markdown: str) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", markdown, flags=re.DOTALL)


def test_documented_config_fits_the_unit(tmp_path: Path) -> None:
    """docs/operations.md's /etc/pictrs-trio/pictrs.toml loads cleanly and puts every
    folder the server writes where the sandbox lets it write."""
    section = OPERATIONS.read_text().partition("### systemd")[2].partition("\n## ")[0]
    blocks = [b for b in _toml_blocks(section) if "[repo]" in b]
    assert len(blocks) == 1
    path = tmp_path / "pictrs.toml"
    path.write_text(blocks[0])
    loaded = cfg.load_all(file=path)
    assert loaded.ignored == ()
    c = loaded.config
    assert isinstance(c.store, cfg.FilesystemStore)
    for folder in (c.repo.path, c.repo.export_path, c.store.path):
        assert PurePosixPath(folder).is_relative_to(STATE), folder
    assert c.server.address.startswith("127.0.0.1:")
    assert tomllib.loads(blocks[0])["server"]["api_key"]


# --- container image ----------------------------------------------------------------------


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


STEPS = _instructions(DOCKERFILE.read_text())
_last_from = max(i for i, (word, _) in enumerate(STEPS) if word == "FROM")
FINAL = STEPS[_last_from:]


def _args(word: str, steps: list[tuple[str, str]] = STEPS) -> list[str]:
    return [rest for w, rest in steps if w == word]


def test_image_is_debian_slim() -> None:
    for base in _args("FROM"):
        assert re.match(r"debian:\w+-slim\b", base), base


def test_image_runs_as_991() -> None:
    users = _args("USER", FINAL)
    assert users and users[-1] in ("991", "991:991")
    assert "useradd --uid 991 --gid 991" in " ".join(_args("RUN", FINAL))


def test_image_installs_runtime_dependencies_only() -> None:
    commands = [part for run in _args("RUN") for part in re.split(r"&&|;", run)]
    syncs = [command for command in commands if "uv sync" in command]
    assert syncs
    for sync in syncs:
        assert "--no-dev" in sync and "--frozen" in sync, sync
    runs = " ".join(commands)
    # scripts/bootstrap installs the dev group (and nginx); pip only ever installs uv.
    assert "bootstrap" not in runs
    assert re.findall(r"pip install (?:--\S+ )*(\S+)", runs) == ['"uv==$UV_VERSION"']
    # The tools come from Debian, in the image that runs them.
    final_runs = " ".join(_args("RUN", FINAL))
    for package in ("ffmpeg", "libimage-exiftool-perl", "python3", "tini"):
        assert re.search(rf"apt-get install [^&]*\b{package}\b", final_runs), package
    # The final image takes the built environment, not the sources.
    for copy in _args("COPY", FINAL):
        assert copy.startswith("--from="), copy


def test_image_uv_is_the_one_bootstrap_pins() -> None:
    pinned = re.search(r'^UV_VERSION="([^"]+)"', (ROOT / "scripts/bootstrap").read_text(), re.M)
    assert pinned
    assert f"UV_VERSION={pinned[1]}" in _args("ARG")


def test_image_serves_plain_run_on_the_mnt_volume() -> None:
    assert _args("CMD", FINAL) == ['["pictrs-trio", "run"]']
    assert _args("VOLUME", FINAL) == ["/mnt"]
    made = " ".join(_args("RUN", FINAL))
    assert isinstance(DEFAULTS.store, cfg.FilesystemStore)
    for folder in (DEFAULTS.store.path, DEFAULTS.repo.path, DEFAULTS.repo.export_path):
        assert folder.startswith("/mnt/") and folder in made, folder


def _healthcheck() -> list[str]:
    (check,) = _args("HEALTHCHECK", FINAL)
    options, _, command = check.partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    argv: list[str] = json.loads(command)
    assert argv[0] == "python3"
    return argv


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_image_healthcheck_asks_healthz(
    health_server: http.server.HTTPServer,
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    healthy: bool,
) -> None:
    """The image's check command, run as Docker runs it: exit 0 on 200 from /healthz on
    the port of PICTRS__SERVER__ADDRESS, non-zero on a 503."""
    monkeypatch.setattr(_Health, "status", status)
    port = health_server.server_address[1]
    argv = [sys.executable, *_healthcheck()[1:]]
    env = {"PICTRS__SERVER__ADDRESS": f"0.0.0.0:{port}"}
    done = subprocess.run(argv, env=env, capture_output=True, timeout=30)
    assert (done.returncode == 0) is healthy, done.stderr


def _ignored(path: str, rules: list[str]) -> bool:
    """Whether Docker leaves ``path`` out of the build context: the last rule matching the
    path or one of its folders decides, ``!`` letting it back in (a close reading of
    Docker's rules, enough for these patterns)."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for rule in rules:
        negated = rule.startswith("!")
        pattern = rule.removeprefix("!").strip("/")
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            ignored = not negated
    return ignored


DOCKER_RULES = [
    line.strip()
    for line in DOCKERIGNORE.read_text().splitlines()
    if line.strip() and not line.startswith("#")
]


@pytest.mark.parametrize(
    "path",
    [
        "tests/test_packaging.py",
        "tests/e2e/conftest.py",
        "fuzz/test_query.py",
        "bench/README.md",
        "docs/operations.md",
        ".git/HEAD",
        ".venv/bin/python",
        ".tools/bin/uv",
        "data/sqlite/pictrs.sqlite3",
        "docker/volumes/pictrs/files/x",
        "pictrs_trio/__pycache__/config.cpython-311.pyc",
        "scripts/bootstrap",
    ],
)
def test_dockerignore_keeps_out(path: str) -> None:
    assert _ignored(path, DOCKER_RULES)


def test_dockerignore_lets_in_what_the_image_copies() -> None:
    sources = []
    for copy in _args("COPY"):
        if copy.startswith("--from="):
            continue
        sources += copy.split()[:-1]
    assert sources
    for source in sources:
        probe = source if "." in PurePosixPath(source).name else f"{source}/__init__.py"
        assert (ROOT / probe).exists(), probe
        assert not _ignored(probe, DOCKER_RULES), probe


def test_compose_waits_for_the_drain() -> None:
    m = re.search(r"^\s*stop_grace_period:\s*(\S+)", COMPOSE.read_text(), re.MULTILINE)
    assert m
    assert _seconds(m[1]) >= DEFAULTS.server.shutdown_timeout + 5
