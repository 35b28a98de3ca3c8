"""The lifecycle of a local ``tgtd`` storage server: started in its own process group
(waiting until tgtadm answers, creating the CHAP account) and stopped cleanly, with
SIGKILL to its process group as the last resort.

Facts this module relies on (tgt 1.0.85, measured):

- tgtd ignores SIGTERM: stop it with ``State offline``, ``delete target --force`` for
  each target, then ``delete --mode system``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from haven.storage.tgt import Tgtadm, TgtError

log = logging.getLogger(__name__)

TGTD = "/usr/sbin/tgtd"
CONTROL_DIR = "/var/run/tgtd"


@dataclass(frozen=True)
class ServerInfo:
    """A tgtd started by :func:`start_server`."""

    pid: int
    address: str
    port: int
    control: int
    run_dir: Path
    log_path: Path = field(compare=False)

    @property
    def portal(self) -> str:
        """``host:port`` as initiators and iscsi.conf write it."""
        return f"{self.address}:{self.port}"

    @property
    def tgtadm(self) -> Tgtadm:
        """A tgtadm for this daemon."""
        return Tgtadm(control=self.control)


def _alive(pid: int) -> bool:
    try:
        # Reap it if it is our child and has exited (else it lingers as a zombie).
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start_server(run_dir: Path, address: str, port: int, control: int, chap_user: str,
                 chap_secret: str, timeout: float = 10.0) -> ServerInfo:
    """Start ``tgtd -f`` in its own process group, serving iSCSI on ``address:port``
    with control index ``control``; wait until tgtadm answers; create the CHAP account.

    The log is ``run_dir/tgtd-<control>.log`` and the pid ``run_dir/tgtd-<control>.pid``.
    Refuses a control index another daemon answers on (two daemons on one index would
    share a control socket).
    """
    adm = Tgtadm(control=control)
    if adm.answers():
        raise TgtError(f"cannot start tgtd on {address}:{port}: control port {control} is "
                       "already used by another tgtd; choose another control index")
    if not Path(TGTD).exists():
        raise TgtError(f"cannot start tgtd: {TGTD} is not installed; apt-get install tgt")
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / f"tgtd-{control}.log"
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            [TGTD, "-f", "-C", str(control), "-t", "2", "--iscsi",
             f"portal={address}:{port}"],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
            start_new_session=True)
    (run_dir / f"tgtd-{control}.pid").write_text(f"{proc.pid}\n", encoding="ascii")
    info = ServerInfo(proc.pid, address, port, control, run_dir, log_path)
    deadline = time.monotonic() + timeout
    while not adm.answers():
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill(proc.pid)
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
            raise TgtError(f"cannot start tgtd on {address}:{port} (control port {control}): "
                           f"it {'exited' if proc.poll() is not None else 'did not answer'}"
                           f" ({' '.join(tail) or 'no log'}); see {log_path}")
        time.sleep(0.05)
    try:
        if chap_user not in adm.accounts():
            adm.new_account(chap_user, chap_secret)
    except TgtError:
        stop_server(info)
        raise
    log.info("tgtd started on %s (control port %d, pid %d)", info.portal, control, proc.pid)
    return info


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    _wait_gone(pid, 5.0)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def stop_server(info: ServerInfo, timeout: float = 10.0) -> None:
    """Stop a daemon started by :func:`start_server`: go offline, delete every target
    (``--force`` closes their sessions), ``delete --mode system``, then make sure the
    process is gone (SIGKILL to its process group as the last resort)."""
    adm = info.tgtadm
    if _alive(info.pid):
        try:
            adm.set_state("offline")
            for target in adm.targets():
                adm.delete_target(target.tid, force=True)
            adm.shutdown()
        except TgtError as exc:
            log.info("tgtd pid %d did not stop cleanly (%s); killing it", info.pid, exc)
        if not _wait_gone(info.pid, timeout):
            log.info("tgtd pid %d still runs after %g s; killing it", info.pid, timeout)
            _kill(info.pid)
    (info.run_dir / f"tgtd-{info.control}.pid").unlink(missing_ok=True)
    # tgtd leaves its control socket behind; this index was ours alone (start_server
    # refuses an index another daemon answers on).
    for name in (f"socket.{info.control}", f"socket.{info.control}.lock"):
        Path(CONTROL_DIR, name).unlink(missing_ok=True)
    log.info("tgtd on %s (control port %d) stopped", info.portal, info.control)
