"""The one typed accessor for AppState inside request handlers."""

from __future__ import annotations

from typing import cast

from quart import current_app

from pictrs_trio.services.state import AppState

EXTENSION_KEY = "pictrs_trio"


def app_state() -> AppState:
    return cast(AppState, current_app.extensions[EXTENSION_KEY])
