"""pictrs-trio: a pict-rs compatible media server on trio."""

from __future__ import annotations

import importlib.metadata


def version() -> str:
    """The installed package version (``unknown`` when run from an uninstalled tree)."""
    try:
        return importlib.metadata.version("pictrs-trio")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
