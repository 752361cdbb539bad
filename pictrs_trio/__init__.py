"""pictrs-trio: a pict-rs compatible media server on trio."""

from __future__ import annotations


def version() -> str:
    """The installed package version (``unknown`` when run from an uninstalled tree)."""
    import importlib.metadata  # ~2 MB of modules: not in every process that imports us

    try:
        return importlib.metadata.version("pictrs-trio")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
