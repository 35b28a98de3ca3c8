"""Haven's built-in ``iscsi`` ExtStorage provider: one tgt target per volume.

Run as ``python -m haven.storage.iscsi_provider <action>`` by the scripts of
``haven/extstorage/iscsi/`` (Ganeti's ExtStorage interface, man
ganeti-extstorage-interface), with everything passed in the environment:

    VOL_NAME, VOL_SIZE / VOL_NEW_SIZE (MiB), VOL_METADATA, EXTP_<KEY> (per-disk
    overrides of the configuration), HAVEN_NODE, HAVEN_INITIATOR (that node's IQN),
    HAVEN_DATA_DIR (holds extstorage/iscsi.conf).

Layout on the storage server: the backing file ``<pool>/<volume>.img`` (plus
``<volume>.meta`` for setinfo) is LUN 1 of the target ``<target_prefix>.<volume>``,
which requires the CHAP account ``chap_user``; its ACL holds the initiator names of the
nodes the volume is attached to, so detaching or fencing a node is per volume.

Actions (each exits 0, or 1 with one sentence on stderr):

- create: space check ("full target"), backing file, target, LUN, CHAP; undone on failure.
- attach: admit HAVEN_INITIATOR; print "", ``kvm:iscsi://<user>@<portal>/<target>/1``
  and ``secret:<chap_secret_file>`` (root-only file with the CHAP password).
- detach / fence: remove HAVEN_INITIATOR from the ACL, close its connections, and
  check both; fence exits 0 only when that initiator can no longer write.
- remove: target and files gone (a missing volume is not an error).
- grow: extend the file, then delete and re-add LUN 1 (tgt reads a LUN's size only when
  it is added); a running QEMU then sees the new size on ``block_resize``.  Refused
  while sessions are open unless ``live_grow`` is true: while the LUN is re-added
  (milliseconds) an I/O to it fails.
- setinfo: metadata in the sidecar file; verify: configuration, secret, portal, daemon.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import re
import shlex
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from haven.errors import HavenError
from haven.storage.iscsi_config import (
    LUN,
    PARAMETERS,
    PROVIDER,
    Config,
    ProviderError,
    Volume,
    load_config,
    sanitize,
)
from haven.storage.tgt import TgtError
from haven.storage.tgt_show import Target

log = logging.getLogger(__name__)
T = TypeVar("T")

ACTIONS = ("create", "attach", "detach", "remove", "grow", "setinfo", "verify", "fence")


class Provider:
    """The actions for one volume; every failure is a :class:`ProviderError`."""

    def __init__(self, action: str, env: Mapping[str, str]) -> None:
        self.action = action
        self.env = env
        self.vol_name = env.get("VOL_NAME", "")
        if action not in ("verify", "restore") and not self.vol_name:
            raise self.error("VOL_NAME is not set", "run it through Haven's ExtStorage runner")
        self.conf = load_config(env, self.vol_name or "-", action)
        self.vol = Volume(self.vol_name, self.conf)
        self.adm = self.conf.tgtadm

    # -- helpers ----------------------------------------------------------------------
    def error(self, reason: str, fix: str) -> ProviderError:
        return ProviderError(f"{PROVIDER}: cannot {self.action} volume "
                             f"{self.vol_name or '-'}: {reason}; {fix}")

    def mapped(self, exc: TgtError) -> ProviderError:
        """The provider's sentence for a failed tgtadm step."""
        if exc.unreachable:
            return self.error(f"tgtd at {self.conf.portal} (control port {self.conf.control}) "
                              "does not answer", self.conf.fix_hint)
        return self.error(exc.message.removeprefix("cannot ").split("; ")[0],
                          "see tgtd's log on the storage server")

    def tgt(self, fn: Callable[[], T]) -> T:
        """Run a tgtadm step, turning its failure into the provider's sentence."""
        try:
            return fn()
        except TgtError as exc:
            raise self.mapped(exc) from exc

    def targets(self) -> list[Target]:
        return self.tgt(self.adm.targets)

    def find(self) -> Target | None:
        return next((t for t in self.targets() if t.name == self.vol.target), None)

    def sh(self, script: str, *args: str, stdin: str | None = None, step: str) -> str:
        """Run a POSIX shell script on the storage server (locally when mgmt is empty)."""
        argv = ["sh", "-c", script, "sh", *args]
        cmd = [*self.conf.mgmt, shlex.join(argv)] if self.conf.mgmt else argv
        try:
            res = subprocess.run(cmd, input=stdin, capture_output=True, text=True,
                                 timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise self.error(f"{step} failed ({exc})", "check the storage server") from exc
        if res.returncode != 0:
            err = " ".join(res.stderr.split()) or f"exit status {res.returncode}"
            raise self.error(f"{step} failed ({err})", "check the pool on the storage server")
        return res.stdout

    def mib(self, var: str) -> int:
        value = self.env.get(var, "")
        if not value.isdigit() or int(value) <= 0:
            raise self.error(f"{var}={value!r} is not a positive size in MiB",
                             "pass the size in MiB")
        return int(value)

    def initiator(self) -> str:
        iqn = self.env.get("HAVEN_INITIATOR", "")
        if not re.fullmatch(r"(iqn|eui|naa)\.\S+", iqn):
            raise self.error(f"HAVEN_INITIATOR={iqn!r} is not an initiator name (iqn....)",
                             f"set the iSCSI initiator name of node "
                             f"{self.env.get('HAVEN_NODE', '?')}")
        return iqn

    @contextmanager
    def pool_lock(self) -> Iterator[None]:
        """Serialise tid allocation on this machine (several nodes may create at once).
        With a remote server, tgtd itself refuses a tid or name already taken and the
        allocation retries (see :meth:`new_target`)."""
        if self.conf.mgmt:
            yield
            return
        Path(self.conf.pool).mkdir(parents=True, exist_ok=True)
        with open(Path(self.conf.pool) / ".haven-iscsi.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def read_secret(self) -> str:
        path = Path(self.conf.chap_secret_file)
        try:
            st = path.stat()
            secret = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise self.error(f"the CHAP secret file {path} cannot be read ({exc.strerror})",
                             f"create it with mode 0600 or fix chap_secret_file in "
                             f"{self.conf.source}") from exc
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise self.error(f"the CHAP secret file {path} is readable by others "
                             f"(mode {stat.S_IMODE(st.st_mode):o})", f"chmod 600 {path}")
        if not secret:
            raise self.error(f"the CHAP secret file {path} is empty",
                             "write the CHAP password into it")
        if secret != secret.strip():
            # QEMU sends the file's bytes as they are: a final newline would be part of
            # the password and every login would fail with "Authentication failure".
            raise self.error(f"the CHAP secret file {path} has white space or a newline "
                             "around the password, which QEMU would send as part of it",
                             f"write it without one (printf %s PASSWORD > {path})")
        return secret

    # -- actions ------------------------------------------------------------------------
    def create(self) -> str:
        size = self.mib("VOL_SIZE")
        if self.find() is not None:
            raise self.error(f"target {self.vol.target} already exists",
                             "remove the volume first or choose another name")
        undo: list[tuple[str, Callable[[], object]]] = []
        try:
            self.check_space(size)
            if self.sh('[ -e "$1" ] && echo y || true', self.vol.backing,
                       step="looking for the backing file").strip() == "y":
                raise self.error(f"the backing file {self.vol.backing} already exists "
                                 "(left by an earlier volume?)",
                                 "remove the volume (or that file) first")
            self.sh('set -e; mkdir -p "$(dirname "$1")"; '
                    'fallocate -l "$2" "$1" 2>/dev/null || truncate -s "$2" "$1"',
                    self.vol.backing, str(size << 20), step=f"creating {self.vol.backing}")
            undo.append(("backing file", lambda: self.sh('rm -f "$1"', self.vol.backing,
                                                         step="removing the backing file")))
            with self.pool_lock():
                tid = self.export(undo)
        except HavenError:
            for what, fn in reversed(undo):
                try:
                    fn()
                except HavenError as exc:
                    log.warning("could not undo the %s of volume %s: %s", what, self.vol_name,
                                exc)
            raise
        return f"created {self.vol.target} (tid {tid}, {size} MiB)"

    def export(self, undo: list[tuple[str, Callable[[], object]]]) -> int:
        """Serve the backing file as LUN 1 of a new target that requires CHAP; append
        the undo steps to ``undo``; return the tid.  Call it under :meth:`pool_lock`."""
        tid = self.new_target()
        undo.append(("target", lambda: self.adm.delete_target(tid, force=True)))
        self.tgt(lambda: self.adm.new_lun(tid, LUN, self.vol.backing, self.conf.bstype,
                                          self.conf.bsoflags))
        if self.conf.chap_user not in self.tgt(self.adm.accounts):
            secret = self.read_secret()
            self.tgt(lambda: self.adm.new_account(self.conf.chap_user, secret))
        self.tgt(lambda: self.adm.bind_account(tid, self.conf.chap_user))
        return tid

    def check_space(self, size: int) -> None:
        out = self.sh('mkdir -p "$1" && stat -f -c "%a %S" "$1"', self.conf.pool,
                      step=f"checking the free space of {self.conf.pool}")
        avail, bsize = (int(x) for x in out.split())
        free = avail * bsize >> 20
        if free < size:
            raise self.error(f"full target: the pool {self.conf.pool} has {free} MiB free, "
                             f"{size} MiB are needed", "free space in the pool or add storage")

    def new_target(self) -> int:
        """Create the target under a free tid; retry when another creator took it."""
        for _ in range(20):
            used = {t.tid for t in self.targets()}
            tid = next(i for i in range(1, len(used) + 2) if i not in used)
            try:
                self.adm.new_target(tid, self.vol.target)
                return tid
            except TgtError as exc:
                if "already exists" not in exc.detail:
                    raise self.mapped(exc) from exc
                if self.find() is not None:
                    raise self.error(f"target {self.vol.target} was created meanwhile",
                                     "remove the volume first or choose another name") from exc
        raise self.error("no free target id after 20 tries", "retry")

    def existing(self) -> Target:
        """The volume's target; served again from the pool when tgtd lost it (tgtd keeps
        targets in memory only, so a restarted daemon forgets them)."""
        target = self.find()
        if target is not None:
            return target
        if self.sh('[ -e "$1" ] && echo y || true', self.vol.backing,
                   step="looking for the backing file").strip() != "y":
            raise self.error(f"target {self.vol.target} does not exist",
                             "create the volume first")
        log.info("tgtd lost %s (restarted?): serving %s again", self.vol.target,
                 self.vol.backing)
        self.reexport()
        target = self.find()
        if target is None:
            raise self.error(f"target {self.vol.target} vanished while it was served again",
                             "check tgtd on the storage server")
        return target

    def reexport(self) -> str:
        """Serve an existing backing file again, to the initiators of its ACL file."""
        with self.pool_lock():
            if self.find() is not None:  # someone else did it meanwhile
                return ""
            tid = self.export([])
            acl = self.sh('cat "$1" 2>/dev/null || true', self.vol.acl,
                          step=f"reading {self.vol.acl}").split()
            for iqn in acl:
                self.tgt(functools.partial(self.adm.bind_initiator, tid, iqn))
        return f"{self.vol.target} (tid {tid}) for {', '.join(acl) or 'nobody'}"

    def acl_file(self, op: str, iqn: str) -> None:
        """Keep the admitted initiators in ``<volume>.acl`` beside the backing file, so a
        restarted tgtd serves the volume to them again (:func:`restore`) and never to a
        node that was detached or fenced meanwhile."""
        script = {"add": 'grep -qxF "$2" "$1" 2>/dev/null || echo "$2" >> "$1"',
                  "del": '[ ! -e "$1" ] || { grep -vxF "$2" "$1" > "$1.tmp"; '
                         'mv "$1.tmp" "$1"; }'}[op]
        lock = f"{self.conf.pool.rstrip('/')}/.haven-iscsi-acl.lock"
        self.sh(f'[ -d "$(dirname "$1")" ] || exit 0; exec 9>>"$3" && flock 9 && {script}',
                self.vol.acl, iqn, lock,
                step=f"updating {self.vol.acl}")

    def attach(self) -> str:
        iqn = self.initiator()
        target = self.existing()
        self.acl_file("add", iqn)
        if iqn not in target.acl:
            self.tgt(lambda: self.adm.bind_initiator(target.tid, iqn))
        return f"\nkvm:{self.vol.uri}\nsecret:{self.conf.chap_secret_file}"

    def detach(self) -> str:
        iqn = self.initiator()
        # The file first (even when tgtd does not answer): a tgtd restarted after this
        # point must not admit that initiator again.
        self.acl_file("del", iqn)
        target = self.find()
        if target is None:
            return ""
        if iqn in target.acl:
            self.tgt(lambda: self.adm.unbind_initiator(target.tid, iqn))
        self.drop_sessions(target.tid, iqn)
        return ""

    def drop_sessions(self, tid: int, iqn: str, timeout: float = 10.0) -> None:
        """Close every connection of ``iqn`` on ``tid`` until none is left.  The ACL no
        longer admits it, so an initiator that logs in again is refused."""
        deadline = time.monotonic() + timeout
        settled = False
        while True:
            conns = [c for c in self.tgt(lambda: self.adm.connections(tid))
                     if c.initiator == iqn]
            if not conns:
                if settled:
                    return
                # A login that passed the ACL check just before the unbind may still be
                # completing: look again a moment later before declaring it cut off.
                settled = True
                time.sleep(0.2)
                continue
            settled = False
            if time.monotonic() > deadline:
                raise self.error(f"initiator {iqn} still has {len(conns)} connection(s) to "
                                 f"target {self.vol.target}", "check tgtd on the storage server")
            for c in conns:
                try:
                    self.adm.drop_connection(tid, c.sid, c.cid)
                except TgtError as exc:
                    # A connection that closed meanwhile is what we want.
                    if exc.unreachable:
                        raise self.mapped(exc) from exc
            time.sleep(0.05)

    def fence(self) -> str:
        iqn = self.initiator()
        self.detach()
        target = self.find()
        if target is not None and iqn in target.acl:
            raise self.error(f"initiator {iqn} is still in the ACL of {self.vol.target}",
                             "check tgtd on the storage server")
        return ""

    def remove(self) -> str:
        target = self.find()
        if target is not None:
            self.tgt(lambda: self.adm.delete_target(target.tid, force=True))
        self.sh('rm -f "$1" "$2" "$3"', self.vol.backing, self.vol.sidecar, self.vol.acl,
                step=f"removing {self.vol.backing}")
        return ""

    def grow(self) -> str:
        new = self.mib("VOL_NEW_SIZE")
        target = self.existing()
        lun = target.lun(LUN)
        if target.sessions and not self.conf.live_grow:
            raise self.error(f"{len(target.sessions)} session(s) are open on "
                             f"{self.vol.target} and tgt must re-add the LUN to show a new size",
                             "stop the instance first (or set live_grow)")
        cur = int(self.sh('stat -c %s "$1"', self.vol.backing, step="reading the size").strip())
        if new << 20 < cur:
            raise self.error(f"{new} MiB is smaller than the volume ({cur >> 20} MiB)",
                             "volumes only grow")
        self.check_space((new << 20) - cur >> 20)
        self.sh('fallocate -l "$2" "$1" 2>/dev/null || truncate -s "$2" "$1"',
                self.vol.backing, str(new << 20), step=f"extending {self.vol.backing}")
        if lun is not None:
            self.retry(lambda: self.adm.delete_lun(target.tid, LUN), "still active",
                       "the LUN is busy with I/O: stop the instance first, then grow again")
        # From here until the LUN is back, I/O to it fails (LOGICAL UNIT NOT SUPPORTED).
        self.retry(lambda: self.adm.new_lun(target.tid, LUN, self.vol.backing,
                                            self.conf.bstype, self.conf.bsoflags), "",
                   f"LUN {LUN} is missing now: run grow again to add it back")
        return ""

    def retry(self, fn: Callable[[], None], transient: str, fix: str,
              timeout: float = 2.0) -> None:
        """Run a tgtadm step again while it fails with ``transient`` in its answer
        ("" = any refusal) for up to ``timeout`` seconds; then fail with ``fix``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                fn()
                return
            except TgtError as exc:
                if exc.unreachable:
                    raise self.mapped(exc) from exc
                if transient not in exc.detail or time.monotonic() > deadline:
                    raise self.error(exc.message.removeprefix("cannot ").split("; ")[0],
                                     fix) from exc
            time.sleep(0.05)

    def setinfo(self) -> str:
        self.existing()
        self.sh('cat > "$1.tmp" && mv "$1.tmp" "$1"', self.vol.sidecar,
                stdin=self.env.get("VOL_METADATA", ""), step=f"writing {self.vol.sidecar}")
        return ""

    def verify(self) -> str:
        self.read_secret()
        host, _, port = self.conf.portal.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=3).close()
        except OSError as exc:
            raise self.error(f"the portal {self.conf.portal} does not answer ({exc})",
                             self.conf.fix_hint) from exc
        self.targets()
        if self.sh('[ -d "$1" ] && [ -w "$1" ] && echo y || true', self.conf.pool,
                   step=f"checking the pool {self.conf.pool}").strip() != "y":
            raise self.error(f"the pool {self.conf.pool} is not a writable directory on the "
                             "storage server", f"create it or fix pool in {self.conf.source}")
        return ""


def restore(conf_path: Path) -> list[str]:
    """Serve every volume of the pool again after tgtd started afresh (it keeps targets
    in memory only): target, LUN 1, CHAP, and the initiators of ``<volume>.acl``.
    Volumes already served are left alone.  Returns one line per volume served."""
    env = {"HAVEN_DATA_DIR": str(conf_path.parent.parent)}
    lister = Provider("restore", env)
    names = lister.sh('cd "$1" 2>/dev/null || exit 0; for f in *.img; do '
                      '[ -e "$f" ] && echo "${f%.img}"; done; true', lister.conf.pool,
                      step=f"listing {lister.conf.pool}").split()
    served: list[str] = []
    existing = {t.name for t in lister.targets()}
    for name in names:
        p = Provider("restore", {**env, "VOL_NAME": name})
        if p.vol.target in existing:
            continue
        line = p.reexport()
        if line:
            served.append(line)
            log.info("restored %s", line)
    return served


def run(action: str, env: Mapping[str, str]) -> str:
    """Run ``action`` and return what it prints on stdout (raises ProviderError)."""
    provider = Provider(action, env)
    out = getattr(provider, action)()
    assert isinstance(out, str)
    log.info("iscsi %s %s: ok", action, provider.vol_name)
    return out if action == "attach" else ""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the scripts: ``main([action])``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ACTIONS:
        print(f"{PROVIDER}: unknown action {' '.join(args) or '(none)'}; use one of "
              f"{', '.join(ACTIONS)}", file=sys.stderr)
        return 2
    env = dict(os.environ)
    try:
        out = run(args[0], env)
    except HavenError as exc:
        print(exc.message, file=sys.stderr)
        return 1
    except Exception as exc:  # one sentence, never a traceback
        print(f"{PROVIDER}: cannot {args[0]} volume {env.get('VOL_NAME', '-')}: unexpected "
              f"{type(exc).__name__} ({exc}); report this as a bug", file=sys.stderr)
        return 1
    if out:
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["ACTIONS", "PARAMETERS", "Config", "ProviderError", "Volume", "load_config",
           "main", "restore", "run", "sanitize"]
