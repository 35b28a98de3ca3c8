"""Shared helpers for benchmarks: a throwaway local cluster and result output."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).resolve().parent / "results"


@contextmanager
def local_cluster(nodes: int, subnet: str, hypervisors: str = "kvm"
                  ) -> Iterator[tuple[Path, dict[str, str]]]:
    """A fresh ``haven up`` in a temporary directory, destroyed afterwards."""
    with tempfile.TemporaryDirectory(prefix="haven-bench-") as tmp:
        base = Path(tmp) / "sim"
        env = dict(os.environ, HAVEN_CLIENT_CONFIG=str(base / "client.json"))
        try:
            run(env, "haven", "--base-dir", str(base), "up", "--nodes", str(nodes),
                "--subnet", subnet, "--hypervisors", hypervisors)
            yield base, env
        finally:
            subprocess.run([str(BIN / "haven"), "--base-dir", str(base), "down",
                            "--destroy"], env=env, capture_output=True, timeout=120)


def run(env: dict[str, str], *argv: str, check: bool = True
        ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(BIN / argv[0]), *argv[1:]], env=env, capture_output=True,
                          text=True, timeout=180)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "min": min(values), "median": statistics.median(values),
            "max": max(values)}


def write_json(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=1))
    return path
