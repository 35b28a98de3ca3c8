"""The Debian guest (``-o debootstrap+default``): how long creating it takes, and booting
it to ``login:`` on the serial console under this machine's accelerator.

A one-node ``haven up`` (two for ``--template drbd``); each run: ``gnt-instance add
--no-start`` (the OS create: debootstrap from the package's cache, or a download when
there is none), ``gnt-instance startup`` until ``login:`` appears in the console log,
a root login on ``gnt-instance console`` running one command, ``gnt-instance shutdown``
(ACPI), ``gnt-instance remove``.  ``--fresh`` deletes the package's cache first, so the
first run measures a create that downloads Debian (the cache is rebuilt by that run).

Usage: python bench/debian_guest.py [--runs 3] [--template file|drbd] [--fresh]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BIN, local_cluster, summary, write_json

CACHE_DIR = Path("/var/cache/ganeti-instance-debootstrap")
CONF = Path("/etc/default/ganeti-instance-debootstrap")


def gnt(env: dict[str, str], *argv: str, timeout: float = 900) -> float:
    """Run a gnt-* command; the seconds it took (raises on failure)."""
    t0 = time.monotonic()
    proc = subprocess.run([str(BIN / argv[0]), *argv[1:]], env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return time.monotonic() - t0


def wait_text(path: Path, text: str, since: float, timeout: float = 600) -> float:
    """Seconds from ``since`` until ``text`` appears in the file at ``path``."""
    while time.monotonic() < since + timeout:
        try:
            if text in path.read_text(errors="replace"):
                return time.monotonic() - since
        except FileNotFoundError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"no {text!r} in {path} within {timeout} s")


def root_login(env: dict[str, str], name: str) -> float:
    """Log in as root (no password) on the console and run one command: seconds."""
    t0 = time.monotonic()
    proc = subprocess.Popen([str(BIN / "gnt-instance"), "console", name], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    out = b""
    try:
        for line, expect in (("", b"login:"), ("root", b"# "),
                             ("echo x-$((6*7))", b"x-42")):
            proc.stdin.write(line.encode() + b"\r")
            proc.stdin.flush()
            mark = len(out)
            while expect not in out[mark:]:
                chunk = proc.stdout.read1(4096)
                if not chunk or time.monotonic() - t0 > 120:
                    raise RuntimeError(f"the console of {name} did not answer {expect!r}: "
                                       f"{out[-400:]!r}")
                out += chunk
        proc.stdin.write(b"exit\r")
        proc.stdin.close()
        return time.monotonic() - t0
    finally:
        proc.kill()
        proc.wait()


def cache_file() -> Path | None:
    found = sorted(CACHE_DIR.glob("cache-*.tar"))
    return found[0] if found else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--template", choices=("file", "drbd"), default="file")
    ap.add_argument("--memory", default="512")
    ap.add_argument("--fresh", action="store_true",
                    help="delete the package's cache first (the first run downloads)")
    ap.add_argument("--subnet", default="127.0.33")
    args = ap.parse_args()
    if args.fresh:
        for tar in CACHE_DIR.glob("cache-*.tar"):
            tar.unlink()
    rows: list[dict[str, float | bool]] = []
    nodes = 2 if args.template == "drbd" else 1
    with local_cluster(nodes, args.subnet) as (base, env):
        for i in range(args.runs):
            name = f"deb{i + 1}"
            cached = cache_file() is not None
            where = "node01:node02" if nodes == 2 else "node01"
            create = gnt(env, "gnt-instance", "add", "-t", args.template, "--disk",
                         "0:size=1g", "-B", f"memory={args.memory}", "-o",
                         "debootstrap+default", "--no-start", "-n", where, name)
            t0 = time.monotonic()
            gnt(env, "gnt-instance", "startup", name, timeout=300)
            boot = wait_text(base / "node01" / "run" / f"{name}.console.log", "login:", t0)
            login = root_login(env, name)
            shutdown = gnt(env, "gnt-instance", "shutdown", name, timeout=300)
            gnt(env, "gnt-instance", "remove", "-f", name, timeout=300)
            row = {"cached": cached, "create_s": round(create, 2),
                   "start_to_login_s": round(boot, 2), "root_login_s": round(login, 2),
                   "shutdown_s": round(shutdown, 2)}
            rows.append(row)
            print(f"run {i + 1}: create {create:.1f} s ({'cached' if cached else 'download'}),"
                  f" start to login: {boot:.1f} s, root login + command {login:.1f} s, "
                  f"shutdown {shutdown:.1f} s", flush=True)
    cached_creates = [float(r["create_s"]) for r in rows if r["cached"]]
    result = {
        "template": args.template, "memory_mib": int(args.memory), "runs": rows,
        "create_cached_s": summary(cached_creates) if cached_creates else None,
        "create_download_s": [r["create_s"] for r in rows if not r["cached"]],
        "start_to_login_s": summary([float(r["start_to_login_s"]) for r in rows]),
        "shutdown_s": summary([float(r["shutdown_s"]) for r in rows]),
        "settings": [line for line in CONF.read_text().splitlines()
                     if line and not line.startswith("#")] if CONF.exists() else [],
        "host": {"cpus": os.cpu_count(), "kernel": platform.release()},
    }
    path = write_json(f"debian_guest_{args.template}", result)
    print(f"start to login (s): {result['start_to_login_s']}; written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
