"""Where a node keeps its files: one data directory per node."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

__all__ = [
    "API_SOCKET",
    "API_TOKEN",
    "CONFIG_FILE",
    "DB_FILE",
    "NODE_KEY",
    "PID_FILE",
    "resolve_data_dir",
]

NODE_KEY = "node.key"
CONFIG_FILE = "config.toml"
API_SOCKET = "api.sock"
API_TOKEN = "api.token"
DB_FILE = "meshd.db"
PID_FILE = "meshd.pid"


def resolve_data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: the explicit one, else `$MESHD_HOME`, else the user data dir."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("MESHD_HOME")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("meshd", appauthor=False))
