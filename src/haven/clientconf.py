"""The client config: how a CLI finds and authenticates to the cluster's API.

Written by ``gnt-cluster init``/``haven up`` and re-pushed by ``gnt-cluster
redist-conf``; read by every ``gnt-*`` command.  Kept import-light (the CLI loads it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DEFAULT_PATHS = (Path("/etc/haven/client.json"), Path("/var/lib/haven/client.json"))


def config_path() -> Path:
    """``$HAVEN_CLIENT_CONFIG``, else the first default path that exists."""
    env = os.environ.get("HAVEN_CLIENT_CONFIG")
    if env:
        return Path(env)
    for p in DEFAULT_PATHS:
        if p.exists():
            return p
    return DEFAULT_PATHS[0]


def load(path: Path | None = None) -> dict[str, Any] | None:
    try:
        data = json.loads((path or config_path()).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def save(data: dict[str, Any], path: Path | None = None) -> Path:
    target = path or config_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, target)
    return target


def build(cluster_name: str, endpoints: list[str], cert_pem: str, user: str,
          password: str, master: str | None = None) -> dict[str, Any]:
    """``endpoints``: ``address:port`` of every node's API, the master's first."""
    return {"cluster": cluster_name, "endpoints": endpoints, "cert": cert_pem,
            "user": user, "password": password, "master": master}
