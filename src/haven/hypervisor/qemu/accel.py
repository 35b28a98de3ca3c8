"""What accelerator ``auto`` means on this node: KVM only if it really runs guest code.

A ``/dev/kvm`` that opens is not enough.  On the development machines it exists, QEMU
starts with ``-accel kvm`` and SeaBIOS even boots, yet guest code runs about 200 times
slower than under TCG (measured: SeaBIOS takes 1.4 s to reach the boot sector instead
of 0.06 s; the 20 million iteration loop below takes 7.6 s instead of 0.04 s; a Linux
kernel needs more than 10 s just to set up its memory).  So the probe boots a tiny boot
sector under KVM that enters 32-bit protected mode, writes ``0x01`` to the debug console
(port 0x402), spins 20 million iterations of ``dec ecx; jnz`` and writes ``0x02``.  Real
KVM runs the loop in about 10-20 ms, TCG in 40 ms; KVM is chosen only if the loop ends
within :data:`LOOP_BUDGET` seconds.

The result is cached in ``<run_dir>/.accel.json`` with the QEMU version and the host's
boot id: it holds until QEMU is upgraded or the host reboots.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_FILE = ".accel.json"  # hidden: a VM may be called "accel" (its spec is accel.json)
LOOP_BUDGET = 0.5  # seconds for the 20M-iteration loop (real KVM: ~0.02, TCG: ~0.04)
BOOT_BUDGET = 10.0  # seconds for SeaBIOS to reach the boot sector (broken KVM here: 1.4)

# The boot sector (as --32, ld -Ttext 0x7c00 --oformat binary), padded to 510 bytes plus
# the 0x55 0xAA signature:
#   .code16: cli; xor ax,ax; mov ds,ax; mov dx,0x402; lgdtl gdtdesc;
#            mov eax,cr0; or eax,1; mov cr0,eax; ljmpl 0x08:pm
#   .code32 pm: mov ax,0x10; mov ds,ax; mov ss,ax; mov al,1; out dx,al;
#            mov ecx,20000000; 1: dec ecx; jnz 1b; mov al,2; out dx,al; 2: hlt; jmp 2b
#   gdt: null, code 0x00cf9a000000ffff, data 0x00cf92000000ffff; gdtdesc: .word 23, .long gdt
_BOOT_CODE = bytes.fromhex(
    "fa31c08ed8ba0204660f0116587c0f20c06683c8010f22c066ea207c0000080066b810008ed88ed0"
    "b001eeb9002d31014975fdb002eef4ebfd8db426000000000000000000000000ffff0000009acf00"
    "ffff00000092cf001700407c0000"
)
BOOT_SECTOR = _BOOT_CODE.ljust(510, b"\0") + b"\x55\xaa"


@dataclass(frozen=True)
class AccelChoice:
    """The probe's verdict.  ``reason`` is one sentence for logs and ``gnt-node info``."""

    accel: str  # "kvm" or "tcg"
    reason: str
    qemu_version: str = ""
    boot_id: str = ""
    kvm_loop_seconds: float | None = None
    probed_at: float = 0.0


def qemu_version(qemu_binary: str) -> str:
    """The first line of ``qemu --version`` ("" if it cannot run)."""
    try:
        out = subprocess.run([qemu_binary, "--version"], capture_output=True, text=True,
                             timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.splitlines()[0].strip() if out else ""


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def resolve_accel(run_dir: Path, qemu_binary: str) -> AccelChoice:
    """The cached choice if it is still valid, else a fresh probe (cached)."""
    version, boot = qemu_version(qemu_binary), boot_id()
    cache = run_dir / CACHE_FILE
    with contextlib.suppress(OSError, ValueError, TypeError):
        data = json.loads(cache.read_text())
        cached = AccelChoice(**data)
        if cached.qemu_version == version and cached.boot_id == boot \
                and cached.accel in ("kvm", "tcg"):
            return cached
    ok, reason, seconds = probe_kvm(qemu_binary, run_dir)
    choice = AccelChoice("kvm" if ok else "tcg", reason, version, boot, seconds, time.time())
    log.info("Accelerator for auto: %s (%s)", choice.accel, reason)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(choice), indent=1) + "\n")
    tmp.replace(cache)
    return choice


def probe_kvm(qemu_binary: str, work_dir: Path, loop_budget: float = LOOP_BUDGET,
              boot_budget: float = BOOT_BUDGET,
              accel: str = "kvm") -> tuple[bool, str, float | None]:
    """Run the boot sector under KVM: (usable, one-sentence reason, loop seconds).

    ``accel="tcg"`` runs the same probe under TCG (the tests use it to check the boot
    sector itself)."""
    if accel == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible", None
    work_dir.mkdir(parents=True, exist_ok=True)
    tag = f"accel-probe-{os.getpid()}"
    img, dbg, err = (work_dir / f"{tag}.img", work_dir / f"{tag}.dbg", work_dir / f"{tag}.err")
    img.write_bytes(BOOT_SECTOR.ljust(64 * 1024, b"\0"))
    dbg.write_bytes(b"")
    argv = [qemu_binary, "-accel", accel, "-cpu", "host" if accel == "kvm" else "qemu64",
            "-M", "pc", "-m", "16",
            "-nodefaults", "-no-user-config", "-display", "none",
            "-drive", f"file={img},format=raw,if=ide",
            "-chardev", f"file,id=dbg,path={dbg}",
            "-device", "isa-debugcon,iobase=0x402,chardev=dbg"]
    try:
        with open(err, "wb") as errf:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=errf,
                                    stderr=subprocess.STDOUT)
        try:
            return _watch(proc, dbg, err, accel.upper(), loop_budget, boot_budget)
        finally:
            proc.kill()
            proc.wait()
    except OSError as exc:
        return False, f"QEMU could not be run for the KVM probe: {exc}", None
    finally:
        for f in (img, dbg, err):
            with contextlib.suppress(OSError):
                f.unlink()


def _watch(proc: subprocess.Popen[bytes], dbg: Path, err: Path, what: str,
           loop_budget: float, boot_budget: float) -> tuple[bool, str, float | None]:
    t0 = time.monotonic()
    started: float | None = None
    while True:
        now = time.monotonic()
        out = dbg.read_bytes()
        if started is None and b"\x01" in out:
            started = now
        if started is not None and b"\x02" in out:
            seconds = round(now - started, 3)
            return True, f"{what} ran the probe loop in {seconds} s", seconds
        if proc.poll() is not None:
            tail = err.read_text(errors="replace").strip().splitlines()[-1:]
            return False, f"QEMU exited under {what}: {' '.join(tail) or proc.returncode}", None
        if started is None and now - t0 > boot_budget:
            return False, f"{what} did not reach the boot sector within {boot_budget:g} s", None
        if started is not None and now - started > loop_budget:
            return False, (f"{what} is too slow: the probe loop did not finish within "
                           f"{loop_budget:g} s (TCG needs about 0.04 s)"), None
        time.sleep(0.005)
