"""The QEMU driver's stop right after a start: a power-button press made while the
guest boots is lost, so the driver presses again until the guest hears it (real QEMU,
TCG, the busybox test guest of ``guest/build-guest.sh``)."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from haven.hypervisor.base import VmSpec
from haven.hypervisor.qemu import QemuHypervisor
from haven.hypervisor.qemu.driver import PRESS_INTERVAL

GUEST_DIR = Path(os.environ.get("HAVEN_GUEST_DIR", "/var/cache/haven/guest"))

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                       reason="qemu-system-x86_64 is not installed"),
    pytest.mark.skipif(not (GUEST_DIR / "initrd.gz").exists(),
                       reason=f"no test guest in {GUEST_DIR} (make setup builds it)"),
]


@pytest.fixture
def hv(tmp_path: Path) -> Iterator[QemuHypervisor]:
    hv = QemuHypervisor(tmp_path / "run")
    yield hv
    for name in list(hv.list()):
        hv.kill(name)


def test_stop_right_after_start_powers_the_guest_off_in_seconds(
        hv: QemuHypervisor, caplog: pytest.LogCaptureFixture) -> None:
    name = f"t-{uuid.uuid4().hex[:8]}"
    hv.start(VmSpec(name=name, uuid=str(uuid.uuid4()), memory=128, accel="tcg",
                    kernel_path=str(GUEST_DIR / "vmlinuz"),
                    initrd_path=str(GUEST_DIR / "initrd.gz"),
                    kernel_args="console=ttyS0 quiet"))
    # start() returns while the guest kernel still boots: the first press is lost.
    t0 = time.monotonic()
    with caplog.at_level("INFO", logger="haven.hypervisor.qemu.driver"):
        hv.stop(name, timeout=120)
    took = time.monotonic() - t0
    assert took < 30, f"stop took {took:.1f} s: the guest never heard the button"
    assert hv.list() == {}
    messages = [r.getMessage() for r in caplog.records]
    assert f"Instance {name} powered off" in messages, messages
    assert any("pressed the power button again (1)" in m for m in messages), messages
    print(f"stop right after start: {took:.1f} s (presses every {PRESS_INTERVAL:g} s)")
