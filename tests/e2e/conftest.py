"""E2E fixtures: real local clusters (`haven up`) on their own loopback subnets, with
real etcd members and node daemons, torn down by pid at the end."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
_subnets = itertools.count(20)


@dataclass
class Sim:
    base: Path
    subnet: str
    env: dict[str, str]

    def run(self, *argv: str, timeout: float = 120, data_dir: str | None = None,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run a command as a user would (``gnt-node``, ``haven``, ...)."""
        env = dict(self.env)
        if data_dir:
            env["HAVEN_DATA_DIR"] = str(self.base / data_dir)
        cmd = [str(BIN / argv[0]), *argv[1:]]
        if argv[0] == "haven":
            cmd[1:1] = ["--base-dir", str(self.base)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if check and proc.returncode != 0:
            raise AssertionError(f"{argv} failed ({proc.returncode}):\n{proc.stdout}\n"
                                 f"{proc.stderr}")
        return proc

    def master(self) -> str:
        p = self.run("gnt-cluster", "getmaster")
        return p.stdout.strip() if p.returncode == 0 else ""

    def wait_master(self, not_node: str | None = None, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = self.master()
            if m and m != not_node:
                return m
            time.sleep(0.2)
        raise AssertionError(f"no master (other than {not_node}) within {timeout} s")

    def wait_verify_ok(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            p = self.run("gnt-cluster", "verify")
            if p.returncode == 0:
                return p.stdout
            if time.monotonic() > deadline:
                raise AssertionError(f"verify still failing:\n{p.stdout}\n{p.stderr}")
            time.sleep(0.5)

    def address(self, node: str) -> str:
        return f"{self.subnet}.{int(node[-2:])}"

    def join_token(self, node: str) -> str:
        """What an administrator reads on a standby node before 'gnt-node add'."""
        return self.run("haven", "join-token", "--data-dir", str(self.base / node),
                        check=True).stdout.strip()


def make_sim(tmp: Path, nodes: int, witness: bool = False,
             extra: tuple[str, ...] = ()) -> Iterator[Sim]:
    subnet = f"127.0.{next(_subnets)}"
    base = tmp / "sim"
    env = dict(os.environ)
    env["HAVEN_CLIENT_CONFIG"] = str(base / "client.json")
    env.pop("HAVEN_DATA_DIR", None)
    sim = Sim(base, subnet, env)
    try:
        sim.run("haven", "up", "--nodes", str(nodes), "--subnet", subnet,
                *(["--witness"] if witness else []), *extra, check=True, timeout=180)
        yield sim
    finally:
        # HAVEN_KEEP_LOGS=DIR keeps each node's logs there (for a failure's post-mortem).
        # A copy that fails must not keep the cluster from being torn down.
        keep = os.environ.get("HAVEN_KEEP_LOGS")
        for log in [*sim.base.rglob("*.log"), *sim.base.rglob("*.stderr")] if keep else ():
            dest = Path(str(keep)) / tmp.name / log.relative_to(sim.base)
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, dest)
            except OSError:
                pass
        sim.run("haven", "down", "--destroy", timeout=120)


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    yield from make_sim(tmp_path_factory.mktemp("c3"), 3)


@pytest.fixture()
def cluster2(tmp_path: Path) -> Iterator[Sim]:
    yield from make_sim(tmp_path, 2)


@pytest.fixture()
def cluster1(tmp_path: Path) -> Iterator[Sim]:
    yield from make_sim(tmp_path, 1)
