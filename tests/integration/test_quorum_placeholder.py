"""The slot placeholder of an unprotected ``drbd`` disk on QEMU's real block layer
(``qemu-io``): a read that fails on the local image fails for the guest; a bare
``null-co`` placeholder would hand it zeros as data."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from haven.hypervisor.qemu.cmdline import placeholder_args

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("qemu-io") is None, reason="needs qemu-io")]

SIZE = 4 << 20


def _quorum(local: dict[str, Any], slot: dict[str, Any]) -> str:
    slot = {k: v for k, v in slot.items() if k != "node-name"}
    return "json:" + json.dumps({"driver": "quorum", "vote-threshold": 2,
                                 "read-pattern": "fifo", "children": [local, slot]})


def _failing_local(image: Path) -> dict[str, Any]:
    """The local image with every read failing (a dying disk), writes working."""
    return {"driver": "raw", "file": {
        "driver": "blkdebug",
        "inject-error": [{"event": "read_aio", "iotype": "read", "errno": 5}],
        "image": {"driver": "file", "filename": str(image)}}}


def _io(target: str, *cmds: str) -> str:
    argv = ["qemu-io"]
    for c in cmds:
        argv += ["-c", c]
    p = subprocess.run([*argv, target], capture_output=True, text=True, timeout=60)
    return p.stdout + p.stderr


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    subprocess.run(["qemu-img", "create", "-f", "raw", str(path), str(SIZE)], check=True,
                   capture_output=True)
    out = _io(str(path), "write -P 0xab 0 64k")
    assert "wrote 65536/65536" in out, out
    return path


def test_a_local_read_error_fails_for_the_guest_instead_of_reading_zeros(
        image: Path) -> None:
    out = _io(_quorum(_failing_local(image), placeholder_args("null0", SIZE)),
              "read 0 64k")
    assert "read failed: Input/output error" in out, out
    # What a bare null-co placeholder did: the read "succeeds", with zeros.
    bare = {"driver": "null-co", "size": SIZE, "read-zeroes": True}
    out = _io(_quorum(_failing_local(image), bare), "read -P 0 0 64k")
    assert "read 65536/65536" in out and "failed" not in out, out


def test_with_a_healthy_image_the_placeholder_takes_writes_and_is_never_read(
        image: Path) -> None:
    local = {"driver": "file", "filename": str(image)}
    out = _io(_quorum(local, placeholder_args("null0", SIZE)), "read -P 0xab 0 64k",
              "write -P 0xcd 64k 4k", "read -P 0xcd 64k 4k")
    assert "failed" not in out and out.count("read ") >= 2, out
    assert "wrote 4096/4096" in out, out
