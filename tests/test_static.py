"""Static checks run with the suite, so CI enforces them: mypy (strict, as configured in
pyproject.toml) over pictrs_trio/ and journal/, and ruff's lint and format checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_mypy_strict() -> None:
    pytest.importorskip("mypy")
    done = _run(sys.executable, "-m", "mypy")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("check", [["check"], ["format", "--check"]])
def test_ruff(check: list[str]) -> None:
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff is not installed next to this Python")
    done = _run(str(ruff), *check, "pictrs_trio", "journal", "tests", "fuzz", "bench")
    assert done.returncode == 0, done.stdout + done.stderr
