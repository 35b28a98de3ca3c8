"""A typed wrapper over ``tgtadm`` (Linux SCSI target framework, Debian's ``tgt``).

Every call runs ``tgtadm -C <control> --lld iscsi ...``, optionally behind a management
prefix (``["ssh", "root@san"]``; empty when tgtd runs on this machine), with a timeout.
Every failure becomes one :class:`TgtError` whose message is a sentence naming the
step and the daemon; ``unreachable`` tells a daemon that does not answer apart from a
refused request.  ``tgtadm --op show`` output is parsed by :mod:`haven.storage.tgt_show`;
a local ``tgtd`` is started and stopped by :mod:`haven.storage.tgt_server`.

Facts this module relies on (tgt 1.0.85, measured):

- ``-Q IQN`` binds an initiator *name*; ``-I`` binds an *address* (an IQN given to
  ``-I`` makes every login fail with "Target not found").
- tgtd reads a LUN's size when the LUN is added; a grown backing file is only seen
  after the LUN is deleted and added again (``--op update`` cannot change the size).
- Several daemons coexist with different ``-C`` and portals.
- ``tgtadm`` takes an account's password only as an argument, visible in the process
  list while it runs: a local daemon's account is created over its management socket
  instead (:mod:`haven.storage.tgt_ipc`); only a remote one (``mgmt`` through ssh) gets
  it from tgtadm's argument.  Nothing logs a secret.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from haven.errors import OpExecError
from haven.storage import tgt_ipc
from haven.storage.tgt_show import Connection, Target, parse_connections, parse_targets

log = logging.getLogger(__name__)

TGTADM = "tgtadm"

# Backing store chosen for new LUNs, measured with ``qemu-img bench`` over iscsi://
# against tgtd on 127.0.0.1 (2 cores, ext4 on virtio, 3 rounds alternated, noisy;
# median [range]):
#   synced 4 KiB writes (-t directsync -d 1, 1500 writes), IOPS:
#       rdwr 417 [370-970], rdwr + bsoflags direct 717 [516-1771],
#       aio 5119 [4792-6122] but aio issues no fdatasync at all (strace: 200 synced
#       writes -> 200 io_submit, 0 fdatasync): it acknowledges FUA/flush without
#       making data durable, so it is unsafe for guests and never chosen;
#       aio refuses --bsoflags direct ("invalid request").
#   synced 1 MiB writes (-t directsync -d 16, 300 MiB), MiB/s:
#       rdwr 115 [97-255], rdwr + direct 143 [132-199], aio 194 [174-258].
#   1 MiB writes (-t none -d 64, 500 MiB), MiB/s:
#       rdwr 171 [132-315], rdwr + direct 211 [163-238], aio 234 [185-311].
#   rdwr and rdwr + direct both fdatasync once per synced write (201 for 200).
# Measured again from inside a guest (bench/storage.py, in-guest dd and diskw, flush
# counted, noisy): with the target keys below, rdwr through the page cache reached
# 0.88-0.89 of a local file for 1 MiB writes and 0.74-0.85 for 4 KiB synced writes,
# rdwr + direct 0.69-0.80 and 0.71-0.86.  rdwr still fdatasyncs on every flush/FUA
# (201 for 200 synced writes): what the guest was told is durable is.  Chosen: rdwr.
DEFAULT_BSTYPE = "rdwr"
DEFAULT_BSOFLAGS = ""
# Negotiation keys offered on every new target: tgt's defaults are 8 KiB data PDUs,
# InitialR2T=Yes and 256 KiB bursts; libiscsi offers 256 KiB PDUs and a 256 KiB first
# burst, each side takes the min (or the AND).  Protocol only: durability is unchanged.
TARGET_KEYS = {"MaxRecvDataSegmentLength": "262144", "MaxXmitDataSegmentLength": "262144",
               "FirstBurstLength": "262144", "MaxBurstLength": "1048576",
               "InitialR2T": "No", "ImmediateData": "Yes"}


class TgtError(OpExecError):
    """A tgtadm request failed, or tgtd could not be started or stopped."""

    def __init__(self, message: str, *, unreachable: bool = False, detail: str = "") -> None:
        super().__init__(message)
        self.unreachable = unreachable
        self.detail = detail


@dataclass(frozen=True)
class Tgtadm:
    """tgtadm against one daemon: control index ``control``, reached through
    ``mgmt`` (a command prefix such as ``("ssh", "root@san")``; empty locally)."""

    control: int = 0
    mgmt: tuple[str, ...] = ()
    timeout: float = 15.0
    binary: str = TGTADM

    @property
    def where(self) -> str:
        """The daemon, for messages: "tgtd (control port 7)" or "... via ssh root@san"."""
        via = f" via {' '.join(self.mgmt)}" if self.mgmt else ""
        return f"tgtd (control port {self.control}){via}"

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` behind the management prefix; a remote shell gets one quoted line."""
        if not self.mgmt:
            return list(argv)
        return [*self.mgmt, shlex.join(argv)]

    def run(self, *args: str, what: str) -> str:
        """Run one tgtadm request and return its stdout; ``what`` names the step."""
        argv = self.command([self.binary, "-C", str(self.control), "--lld", "iscsi", *args])
        # The password of "--op new --mode account" must not reach the log.
        shown = ["***" if i > 0 and args[i - 1] == "--password" else a
                 for i, a in enumerate(args)]
        log.debug("tgtadm -C %d %s", self.control, " ".join(shown))
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout,
                                 check=False)
        except FileNotFoundError as exc:
            raise TgtError(f"cannot {what}: {argv[0]} is not installed; install tgt "
                           "(apt-get install tgt)", unreachable=True) from exc
        except subprocess.TimeoutExpired as exc:
            raise TgtError(f"cannot {what}: {self.where} did not answer within "
                           f"{self.timeout:g} s; check that tgtd runs", unreachable=True) from exc
        if res.returncode != 0:
            lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("Try ")]
            err = (lines or [f"exit status {res.returncode}"])[0]
            err = err.removeprefix("tgtadm: ")
            down = res.returncode == 107 or "tgt daemon" in err or "connect" in err
            hint = "start tgtd or fix the control index" if down else "see tgtd's log"
            raise TgtError(f"cannot {what}: {self.where} answered '{err}'; {hint}",
                           unreachable=down, detail=err)
        return res.stdout

    # -- queries --------------------------------------------------------------------
    def targets(self) -> list[Target]:
        """Every target with its LUNs, accounts, ACL and sessions."""
        return parse_targets(self.run("--op", "show", "--mode", "target",
                                      what="list targets"))

    def target_named(self, name: str) -> Target | None:
        """The target called ``name``, if it exists."""
        return next((t for t in self.targets() if t.name == name), None)

    def accounts(self) -> list[str]:
        """The CHAP account names tgtd knows."""
        out = self.run("--op", "show", "--mode", "account", what="list accounts")
        return [ln.strip() for ln in out.splitlines()[1:] if ln.strip()]

    def connections(self, tid: int) -> list[Connection]:
        """The connections open on target ``tid``."""
        return parse_connections(self.run("--op", "show", "--mode", "conn", "--tid", str(tid),
                                          what=f"list the connections of target {tid}"))

    def answers(self) -> bool:
        """True when the daemon answers a harmless request."""
        try:
            self.run("--op", "show", "--mode", "sys", what="query the system state")
        except TgtError:
            return False
        return True

    # -- changes --------------------------------------------------------------------
    def new_target(self, tid: int, name: str,
                   keys: Mapping[str, str] | None = None) -> None:
        """Create target ``tid`` called ``name`` (fails if either exists) offering the
        negotiation ``keys`` (default :data:`TARGET_KEYS`)."""
        self.run("--op", "new", "--mode", "target", "--tid", str(tid), "-T", name,
                 what=f"create target {name} (tid {tid})")
        for key, value in (TARGET_KEYS if keys is None else keys).items():
            self.run("--op", "update", "--mode", "target", "--tid", str(tid), "--name", key,
                     "--value", value, what=f"set {key} on target {name}")

    def new_lun(self, tid: int, lun: int, path: str, bstype: str = DEFAULT_BSTYPE,
                bsoflags: str = DEFAULT_BSOFLAGS) -> None:
        """Add LUN ``lun`` backed by the file ``path``; see the measurements above."""
        opts = ["--bstype", bstype] if bstype else []
        if bsoflags:
            opts += ["--bsoflags", bsoflags]
        self.run("--op", "new", "--mode", "logicalunit", "--tid", str(tid), "--lun", str(lun),
                 "-b", path, *opts, what=f"add LUN {lun} ({path}) to target {tid}")

    def delete_lun(self, tid: int, lun: int) -> None:
        """Remove LUN ``lun`` from target ``tid`` (its backing file stays)."""
        self.run("--op", "delete", "--mode", "logicalunit", "--tid", str(tid), "--lun",
                 str(lun), what=f"delete LUN {lun} of target {tid}")

    def delete_target(self, tid: int, force: bool = True) -> None:
        """Delete target ``tid``; ``force`` also closes its sessions."""
        self.run("--op", "delete", "--mode", "target", "--tid", str(tid),
                 *(["--force"] if force else []), what=f"delete target {tid}")

    def new_account(self, user: str, password: str) -> None:
        """Create CHAP account ``user``.  On this machine the password goes to tgtd over
        its management socket (:mod:`haven.storage.tgt_ipc`), never on a command line;
        through a management prefix (ssh) only tgtadm's argument can carry it."""
        if not self.mgmt:
            log.debug("tgtd -C %d: new CHAP account %s (over its socket)", self.control,
                      user)
            try:
                tgt_ipc.new_account(self.control, user, password, self.timeout)
            except tgt_ipc.TgtIpcError as exc:
                raise TgtError(f"cannot create CHAP account {user} on {self.where}: "
                               f"{exc}", unreachable=not exc.code) from exc
            return
        self.run("--op", "new", "--mode", "account", "--user", user, "--password", password,
                 what=f"create CHAP account {user}")

    def bind_account(self, tid: int, user: str) -> None:
        """Require CHAP account ``user`` for logins to target ``tid``."""
        self.run("--op", "bind", "--mode", "account", "--tid", str(tid), "--user", user,
                 what=f"bind CHAP account {user} to target {tid}")

    def unbind_account(self, tid: int, user: str) -> None:
        """Stop requiring account ``user`` on target ``tid``."""
        self.run("--op", "unbind", "--mode", "account", "--tid", str(tid), "--user", user,
                 what=f"unbind CHAP account {user} from target {tid}")

    def bind_initiator(self, tid: int, iqn: str) -> None:
        """Admit the initiator *name* ``iqn`` (``-Q``) to target ``tid``."""
        self.run("--op", "bind", "--mode", "target", "--tid", str(tid), "-Q", iqn,
                 what=f"admit initiator {iqn} to target {tid}")

    def unbind_initiator(self, tid: int, iqn: str) -> None:
        """Remove the initiator name ``iqn`` from target ``tid``'s ACL."""
        self.run("--op", "unbind", "--mode", "target", "--tid", str(tid), "-Q", iqn,
                 what=f"remove initiator {iqn} from target {tid}")

    def drop_connection(self, tid: int, sid: int, cid: int) -> None:
        """Close connection ``cid`` of session ``sid`` on target ``tid``."""
        self.run("--op", "delete", "--mode", "conn", "--tid", str(tid), "--sid", str(sid),
                 "--cid", str(cid), what=f"close connection {sid}/{cid} of target {tid}")

    def set_state(self, state: str) -> None:
        """Set the daemon's state ("offline" refuses new work, "ready" resumes)."""
        self.run("--op", "update", "--mode", "sys", "--name", "State", "-v", state,
                 what=f"set the system state to {state}")

    def shutdown(self) -> None:
        """Ask the daemon to exit (``--op delete --mode system``)."""
        self.run("--op", "delete", "--mode", "system", what="stop the daemon")


def free_control(start: int = 0) -> int:
    """A tgtd control index no daemon answers on (``tgtadm -C`` takes up to 32767):
    from ``start`` upwards, or a random one when ``start`` is 0."""
    import secrets

    for n in range(50):
        control = start + n if start else 1000 + secrets.randbelow(30000)
        if not Tgtadm(control=control).answers():
            return control
    raise TgtError("no free tgtd control index; stop old tgtd processes (pkill tgtd)")
