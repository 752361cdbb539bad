"""The package's layers, as imports: each floor imports only floors below it, and the
journal imports nothing of pictrs_trio (docs: README "Code layout")."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# floor of each top-level part; a module may import its own floor and those below
FLOORS = {
    "journal": 1,
    "pictrs_trio.config": 1,
    "pictrs_trio.rules": 2,
    "pictrs_trio.metrics": 2,
    "pictrs_trio.media": 3,
    "pictrs_trio.store": 3,
    "pictrs_trio.repo": 3,
    "pictrs_trio.services": 4,
    "pictrs_trio.http": 5,
    "pictrs_trio.runtime": 6,
    "pictrs_trio.__main__": 7,
}


def floor_of(module: str) -> int | None:
    for prefix, floor in FLOORS.items():
        if module == prefix or module.startswith(prefix + "."):
            return floor
    return None


def imports(path: Path) -> list[tuple[str, int]]:
    """(imported module, line) of every import in ``path``, type-checking ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            # Relative imports would slip past the checks below: the code uses none.
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            assert node.module is not None
            found.append((node.module, node.lineno))
            found.extend((f"{node.module}.{alias.name}", node.lineno) for alias in node.names)
    return found


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def test_journal_imports_nothing_of_pictrs_trio() -> None:
    offending = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted((ROOT / "journal").rglob("*.py"))
        for name, line in imports(path)
        if name == "pictrs_trio" or name.startswith("pictrs_trio.")
    ]
    assert offending == []


def test_no_import_goes_up_a_floor() -> None:
    offending = []
    for path in sorted((ROOT / "pictrs_trio").rglob("*.py")):
        here = floor_of(module_name(path))
        if here is None:
            continue
        for name, line in imports(path):
            there = floor_of(name)
            if there is not None and there > here:
                offending.append(f"{path.relative_to(ROOT)}:{line} (floor {here}) imports "
                                 f"{name} (floor {there})")  # fmt: skip
    assert offending == []


def test_the_guard_sees_imports() -> None:
    """The checks above would notice an upward import (they are not vacuous)."""
    handlers = ROOT / "pictrs_trio" / "services" / "handlers.py"
    assert floor_of(module_name(handlers)) == 4
    assert any(floor_of(name) == 3 for name, _ in imports(handlers))
