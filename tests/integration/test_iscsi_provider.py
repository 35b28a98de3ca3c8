"""The built-in ``iscsi`` ExtStorage provider against a real tgtd, with real QEMU tools
opening the LUNs through libiscsi with CHAP (the password only ever in a file).

The provider runs through its shell scripts (``haven/extstorage/iscsi/<action>``), as
Haven's ExtStorage runner will run it.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import haven
from haven.hypervisor.qemu.qmp import qmp_call
from haven.storage.iscsi_provider import restore
from haven.storage.tgt import TgtError, free_control
from haven.storage.tgt_server import ServerInfo, start_server, stop_server

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("tgtd") is None and not Path("/usr/sbin/tgtd").exists(),
                       reason="tgtd is not installed (apt-get install tgt)"),
    pytest.mark.skipif(shutil.which("qemu-io") is None,
                       reason="qemu-io is not installed (apt-get install qemu-utils)"),
]

PROVIDER_DIR = Path(haven.__file__).parent / "extstorage" / "iscsi"
NODE1 = "iqn.2026-12.org.haven:node1"
NODE2 = "iqn.2026-12.org.haven:node2"
CHAP_USER = "haven"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])




@dataclass(frozen=True)
class Env:
    server: ServerInfo
    data_dir: Path
    pool: Path
    secret_file: Path
    prefix: str

    def run(self, action: str, vol: str, **extra: str) -> subprocess.CompletedProcess[str]:
        """Run one provider script the way Haven's runner does."""
        env = {"PATH": os.environ["PATH"], "HAVEN_PYTHON": sys.executable,
               "HAVEN_DATA_DIR": str(self.data_dir), "HAVEN_NODE": "node1",
               "VOL_NAME": vol, **extra}
        return subprocess.run([str(PROVIDER_DIR / action)], env=env, capture_output=True,
                              text=True, timeout=60, check=False)

    def target(self, vol: str) -> str:
        return f"{self.prefix}.{vol.lower()}"

    def found(self, vol: str) -> object:
        return self.server.tgtadm.target_named(self.target(vol))


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("iscsi")
    secret = secrets.token_hex(12)
    secret_file = root / "chap.secret"
    secret_file.write_text(secret)
    secret_file.chmod(0o600)
    server = start_server(root / "run", "127.0.0.1", free_port(), free_control(), CHAP_USER,
                          secret)
    data_dir = root / "data"
    (data_dir / "extstorage").mkdir(parents=True)
    prefix = f"iqn.2026-12.org.haven:t{server.control}"
    conf = {"portal": server.portal, "control": server.control, "mgmt": [],
            "pool": str(root / "pool"), "target_prefix": prefix, "chap_user": CHAP_USER,
            "chap_secret_file": str(secret_file)}
    (data_dir / "extstorage" / "iscsi.conf").write_text(json.dumps(conf))
    try:
        yield Env(server, data_dir, root / "pool", secret_file, prefix)
    finally:
        stop_server(server)


def image_opts(env: Env, vol: str, initiator: str, **more: str) -> str:
    opts = {"driver": "iscsi", "transport": "tcp", "portal": env.server.portal,
            "target": env.target(vol), "lun": "1", "user": CHAP_USER,
            "password-secret": "s", "initiator-name": initiator, **more}
    return ",".join(f"{k}={v}" for k, v in opts.items())


def qemu_io(env: Env, vol: str, initiator: str, *cmds: str,
            secret_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["qemu-io", "--object", f"secret,id=s,file={secret_file or env.secret_file}",
            "--image-opts", image_opts(env, vol, initiator)]
    for c in cmds:
        argv += ["-c", c]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


class QemuIo:
    """A long-running qemu-io (an open iSCSI session) driven command by command."""

    def __init__(self, env: Env, vol: str, initiator: str) -> None:
        self.proc = subprocess.Popen(
            ["qemu-io", "--object", f"secret,id=s,file={env.secret_file}", "--image-opts",
             image_opts(env, vol, initiator)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        # The first prompt: the image is open (logged in).
        assert self.wait_prompt(10.0) == "", "qemu-io could not open the LUN"

    def wait_prompt(self, timeout: float) -> str | None:
        """Output up to the next prompt (a finished command), None on timeout."""
        assert self.proc.stdout is not None
        buf = ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.05)
            if ready:
                chunk = self.proc.stdout.read() or ""
                if not chunk and self.proc.poll() is not None:
                    return None
                buf += chunk
                if buf.endswith("qemu-io> "):
                    return buf.removesuffix("qemu-io> ")
        return None

    def cmd(self, line: str, timeout: float = 10.0) -> str | None:
        """Send one command; its output, or None when it did not finish in time."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.wait_prompt(timeout)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def file_bytes(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(length)


def test_volume_lifecycle_create_attach_io_grow_setinfo_detach_remove(srv: Env) -> None:
    vol = "0f3c.ext.disk0"
    res = srv.run("create", vol, VOL_SIZE="16")
    assert res.returncode == 0, res.stderr
    backing = srv.pool / f"{vol}.img"
    assert backing.stat().st_size == 16 << 20
    target = srv.server.tgtadm.target_named(srv.target(vol))
    assert target is not None
    lun = target.lun(1)
    assert lun is not None and lun.backing_path == str(backing) and lun.bstype == "rdwr"
    assert target.accounts == (CHAP_USER,) and target.acl == ()

    # attach: "" (no block device), the kvm URI, the secret file; idempotent.
    for _ in range(2):
        res = srv.run("attach", vol, HAVEN_INITIATOR=NODE1)
        assert res.returncode == 0, res.stderr
        assert res.stdout.split("\n") == [
            "", f"kvm:iscsi://{CHAP_USER}@{srv.server.portal}/{srv.target(vol)}/1",
            f"secret:{srv.secret_file}", ""]
    target = srv.server.tgtadm.target_named(srv.target(vol))
    assert target is not None and target.acl == (NODE1,)
    assert (srv.pool / f"{vol}.acl").read_text() == NODE1 + "\n"

    # The admitted initiator writes and reads; the data is in the backing file.
    io = qemu_io(srv, vol, NODE1, "write -P 0xa5 1M 64k", "read -P 0xa5 1M 64k")
    assert io.returncode == 0 and "read 65536/65536" in io.stdout, io.stdout + io.stderr
    assert file_bytes(backing, 1 << 20, 65536) == b"\xa5" * 65536
    # Another initiator is not in the ACL; a wrong CHAP secret is refused.
    io = qemu_io(srv, vol, NODE2, "read 0 4k")
    assert io.returncode != 0 and "Target not found" in io.stderr
    wrong = srv.pool.parent / "wrong.secret"
    wrong.write_text("not-the-secret")
    io = qemu_io(srv, vol, NODE1, "read 0 4k", secret_file=wrong)
    assert io.returncode != 0 and "Authentication failure" in io.stderr

    # grow with no session open: the LUN reports the new size, the data stays.
    res = srv.run("grow", vol, VOL_SIZE="16", VOL_NEW_SIZE="32")
    assert res.returncode == 0, res.stderr
    assert backing.stat().st_size == 32 << 20
    io = qemu_io(srv, vol, NODE1, "length", "read -P 0xa5 1M 64k", "write -P 0x5a 30M 4k")
    assert io.returncode == 0 and "32 MiB" in io.stdout and "wrote 4096" in io.stdout, io.stdout

    # grow with a session open: refused by default; with live_grow the open session sees
    # the new size after a resize (qemu-io's truncate = QMP block_resize's code path).
    session = QemuIo(srv, vol, NODE1)
    try:
        assert session.cmd("length") == "32 MiB\n"
        res = srv.run("grow", vol, VOL_SIZE="32", VOL_NEW_SIZE="48")
        assert res.returncode == 1 and "stop the instance first" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
        assert backing.stat().st_size == 32 << 20
        res = srv.run("grow", vol, VOL_SIZE="32", VOL_NEW_SIZE="48", EXTP_LIVE_GROW="true")
        assert res.returncode == 0, res.stderr
        assert session.cmd("truncate 48M") is not None
        assert session.cmd("length") == "48 MiB\n"
        out = session.cmd("write -P 0x77 47M 4k")
        assert out is not None and "wrote 4096" in out
    finally:
        session.close()
    assert file_bytes(backing, 47 << 20, 4096) == b"\x77" * 4096

    # setinfo keeps the metadata beside the backing file.
    res = srv.run("setinfo", vol, VOL_METADATA="originstname+vm1")
    assert res.returncode == 0, res.stderr
    assert (srv.pool / f"{vol}.meta").read_text() == "originstname+vm1"

    # detach: the initiator leaves the ACL and can no longer log in; idempotent.
    for _ in range(2):
        res = srv.run("detach", vol, HAVEN_INITIATOR=NODE1)
        assert res.returncode == 0, res.stderr
    target = srv.server.tgtadm.target_named(srv.target(vol))
    assert target is not None and target.acl == ()
    io = qemu_io(srv, vol, NODE1, "read 0 4k")
    assert io.returncode != 0 and "Target not found" in io.stderr

    # remove: target and files gone; removing again is not an error.
    for _ in range(2):
        res = srv.run("remove", vol)
        assert res.returncode == 0, res.stderr
    assert srv.found(vol) is None
    assert not backing.exists() and not (srv.pool / f"{vol}.meta").exists()
    assert not (srv.pool / f"{vol}.acl").exists()


def test_fence_cuts_the_open_session_of_a_node_so_its_next_write_never_lands(
        srv: Env) -> None:
    vol = "f3nce.ext.disk0"
    assert srv.run("create", vol, VOL_SIZE="8").returncode == 0
    assert srv.run("attach", vol, HAVEN_INITIATOR=NODE1).returncode == 0
    assert srv.run("attach", vol, HAVEN_INITIATOR=NODE2).returncode == 0
    backing = srv.pool / f"{vol}.img"
    frozen = QemuIo(srv, vol, NODE1)
    survivor = QemuIo(srv, vol, NODE2)
    try:
        out = frozen.cmd("write -P 0x11 0 4k")
        assert out is not None and "wrote 4096" in out
        res = srv.run("fence", vol, HAVEN_INITIATOR=NODE1, HAVEN_NODE="node1")
        assert res.returncode == 0, res.stderr
        tid = srv.server.tgtadm.target_named(srv.target(vol))
        assert tid is not None and tid.acl == (NODE2,)
        assert [c for c in srv.server.tgtadm.connections(tid.tid) if c.initiator == NODE1] == []
        # The fenced node's next write is never acknowledged (libiscsi keeps trying to
        # log in again and is refused) and never reaches the LUN.
        assert frozen.cmd("write -P 0x22 0 4k", timeout=3.0) is None
        # The other node is untouched.
        out = survivor.cmd("write -P 0x33 4k 4k")
        assert out is not None and "wrote 4096" in out
    finally:
        frozen.close()
        survivor.close()
    assert file_bytes(backing, 0, 4096) == b"\x11" * 4096
    assert file_bytes(backing, 4096, 4096) == b"\x33" * 4096
    io = qemu_io(srv, vol, NODE1, "read 0 4k")
    assert io.returncode != 0 and "Target not found" in io.stderr
    # Fencing again (or a volume already gone) is done, not an error.
    assert srv.run("fence", vol, HAVEN_INITIATOR=NODE1).returncode == 0
    assert srv.run("remove", vol).returncode == 0
    assert srv.run("fence", vol, HAVEN_INITIATOR=NODE1).returncode == 0


def test_failed_create_is_undone(srv: Env) -> None:
    vol = "und0.ext.disk0"
    res = srv.run("create", vol, VOL_SIZE="8", EXTP_BSTYPE="nosuchstore")
    assert res.returncode == 1
    assert res.stderr.startswith(f"iscsi: cannot create volume {vol}: ")
    assert len(res.stderr.strip().splitlines()) == 1
    assert srv.found(vol) is None
    assert not (srv.pool / f"{vol}.img").exists()
    # The name is free again.
    assert srv.run("create", vol, VOL_SIZE="8").returncode == 0
    assert srv.run("create", vol, VOL_SIZE="8").returncode == 1  # already exists
    assert srv.run("remove", vol).returncode == 0


def test_full_target_is_refused_and_leaves_nothing_behind(srv: Env) -> None:
    vol = "b1g.ext.disk0"
    st = os.statvfs(srv.pool)
    too_big = (st.f_bavail * st.f_frsize >> 20) + 1024
    res = srv.run("create", vol, VOL_SIZE=str(too_big))
    assert res.returncode == 1 and "full target" in res.stderr, res.stderr
    assert srv.found(vol) is None and not (srv.pool / f"{vol}.img").exists()


def test_two_creators_at_once_get_distinct_targets(srv: Env) -> None:
    vols = [f"p{i}.ext.disk0" for i in range(3)]
    results: dict[str, int] = {}

    def create(v: str) -> None:
        results[v] = srv.run("create", v, VOL_SIZE="4").returncode

    threads = [threading.Thread(target=create, args=(v,)) for v in vols]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == dict.fromkeys(vols, 0)
    tids = {t.name: t.tid for t in srv.server.tgtadm.targets()}
    assert len({tids[srv.target(v)] for v in vols}) == 3
    for v in vols:
        assert srv.run("remove", v).returncode == 0


def test_bad_configuration_and_inputs_give_one_sentence(srv: Env, tmp_path: Path) -> None:
    def one_line(res: subprocess.CompletedProcess[str]) -> str:
        assert res.returncode == 1
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
        return res.stderr

    # No configuration at all.
    empty = tmp_path / "empty"
    empty.mkdir()
    err = one_line(srv.run("create", "x.ext.disk0", VOL_SIZE="4", HAVEN_DATA_DIR=str(empty)))
    assert "iscsi: cannot create volume x.ext.disk0: no portal" in err and "iscsi.conf" in err

    # A portal / control index nobody answers on.
    conf = json.loads((srv.data_dir / "extstorage" / "iscsi.conf").read_text())
    conf.update(portal=f"127.0.0.1:{free_port()}", control=free_control())
    bad = tmp_path / "bad"
    (bad / "extstorage").mkdir(parents=True)
    (bad / "extstorage" / "iscsi.conf").write_text(json.dumps(conf))
    err = one_line(srv.run("create", "x.ext.disk0", VOL_SIZE="4", HAVEN_DATA_DIR=str(bad)))
    assert "does not answer" in err and "start tgtd" in err
    err = one_line(srv.run("verify", "", HAVEN_DATA_DIR=str(bad)))
    assert f"portal {conf['portal']} does not answer" in err
    # Fencing cannot be confirmed when the daemon does not answer.
    err = one_line(srv.run("fence", "x.ext.disk0", HAVEN_INITIATOR=NODE1,
                           HAVEN_DATA_DIR=str(bad)))
    assert "does not answer" in err

    # verify passes on the good configuration, fails on an unsafe secret file.
    res = srv.run("verify", "")
    assert res.returncode == 0, res.stderr
    loose = tmp_path / "loose.secret"
    loose.write_text("x")
    loose.chmod(0o644)
    err = one_line(srv.run("verify", "", EXTP_CHAP_SECRET_FILE=str(loose)))
    assert "chmod 600" in err
    newline = tmp_path / "newline.secret"
    newline.write_text(srv.secret_file.read_text() + "\n")
    newline.chmod(0o600)
    err = one_line(srv.run("verify", "", EXTP_CHAP_SECRET_FILE=str(newline)))
    assert "newline" in err
    err = one_line(srv.run("verify", "", EXTP_POOL=str(tmp_path / "no" / "such")))
    assert "not a writable directory" in err

    # Attaching a volume that does not exist, or without an initiator name.
    err = one_line(srv.run("attach", "nope.ext.disk0", HAVEN_INITIATOR=NODE1))
    assert "does not exist" in err and "create the volume first" in err
    err = one_line(srv.run("attach", "nope.ext.disk0"))
    assert "HAVEN_INITIATOR" in err
    err = one_line(srv.run("create", "x.ext.disk0", VOL_SIZE="lots"))
    assert "VOL_SIZE" in err


def test_stop_server_ends_tgtd_that_ignores_sigterm_and_refuses_a_used_control(
        srv: Env, tmp_path: Path) -> None:
    with pytest.raises(TgtError, match="already used"):
        start_server(tmp_path, "127.0.0.1", free_port(), srv.server.control, "u", "p")
    other = start_server(tmp_path, "127.0.0.1", free_port(), free_control(), "u", "pw12345")
    assert other.tgtadm.accounts() == ["u"]
    other.tgtadm.new_target(1, "iqn.2026-12.org.haven:other")
    stop_server(other)
    assert not Path(f"/proc/{other.pid}").exists()
    assert not other.tgtadm.answers()
    assert not Path(f"/var/run/tgtd/socket.{other.control}").exists()
    # The first daemon is untouched.
    assert srv.server.tgtadm.answers()


def test_restore_serves_the_pool_again_to_the_admitted_initiators_only(
        srv: Env, tmp_path: Path) -> None:
    port, control = free_port(), free_control()
    secret = srv.secret_file.read_text()
    server = start_server(tmp_path / "run", "127.0.0.1", port, control, CHAP_USER, secret)
    try:
        conf = json.loads((srv.data_dir / "extstorage" / "iscsi.conf").read_text())
        conf.update(portal=server.portal, control=control, pool=str(tmp_path / "pool"))
        conf_path = tmp_path / "data" / "extstorage" / "iscsi.conf"
        conf_path.parent.mkdir(parents=True)
        conf_path.write_text(json.dumps(conf))
        env = Env(server, tmp_path / "data", tmp_path / "pool", srv.secret_file, srv.prefix)
        vol, vol2 = "r3st.ext.disk0", "r3st.ext.disk1"
        assert env.run("create", vol, VOL_SIZE="4").returncode == 0
        assert env.run("create", vol2, VOL_SIZE="4").returncode == 0
        assert env.run("attach", vol2, HAVEN_INITIATOR=NODE2).returncode == 0
        for node in (NODE1, NODE2):
            assert env.run("attach", vol, HAVEN_INITIATOR=node).returncode == 0
        assert qemu_io(env, vol, NODE1, "write -P 0x42 0 4k").returncode == 0
        assert env.run("fence", vol, HAVEN_INITIATOR=NODE2).returncode == 0
        stop_server(server)
        assert not Path(f"/proc/{server.pid}").exists()
        # tgtd comes back empty; restore serves the volume to node1 only.
        server = start_server(tmp_path / "run", "127.0.0.1", port, control, CHAP_USER, secret)
        assert server.tgtadm.targets() == []
        # attach serves a lost volume again by itself (to its ACL file's initiators).
        res = env.run("attach", vol2, HAVEN_INITIATOR=NODE2)
        assert res.returncode == 0, res.stderr
        target2 = server.tgtadm.target_named(env.target(vol2))
        assert target2 is not None and target2.acl == (NODE2,)
        assert len(restore(conf_path)) == 1
        assert restore(conf_path) == []
        target = server.tgtadm.target_named(env.target(vol))
        assert target is not None and target.acl == (NODE1,)
        io = qemu_io(env, vol, NODE1, "read -P 0x42 0 4k")
        assert io.returncode == 0, io.stdout + io.stderr
        io = qemu_io(env, vol, NODE2, "read 0 4k")
        assert io.returncode != 0 and "Target not found" in io.stderr
    finally:
        stop_server(server)


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed")
def test_live_grow_is_seen_by_a_running_qemu_after_block_resize(srv: Env, tmp_path: Path) -> None:
    vol = "l1ve.ext.disk0"
    assert srv.run("create", vol, VOL_SIZE="8").returncode == 0
    assert srv.run("attach", vol, HAVEN_INITIATOR=NODE1).returncode == 0
    qmp = tmp_path / "qmp.sock"
    node = {"driver": "iscsi", "node-name": "iscsi0", "transport": "tcp",
            "portal": srv.server.portal, "target": srv.target(vol), "lun": 1,
            "user": CHAP_USER, "password-secret": "s", "initiator-name": NODE1,
            "cache": {"direct": True}}
    vm = subprocess.Popen(
        ["qemu-system-x86_64", "-M", "none", "-accel", "tcg", "-nodefaults", "-display",
         "none", "-S", "-qmp", f"unix:{qmp},server=on,wait=off",
         "-object", f"secret,id=s,file={srv.secret_file}", "-blockdev", json.dumps(node)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not qmp.exists():
            assert vm.poll() is None and time.monotonic() < deadline, vm.stderr
            time.sleep(0.02)

        def size() -> int:
            nodes = qmp_call(qmp, "query-named-block-nodes", {"flat": True}, label="iscsi")
            return int(next(n["image"]["virtual-size"] for n in nodes
                            if n["node-name"] == "iscsi0"))

        assert size() == 8 << 20
        res = srv.run("grow", vol, VOL_SIZE="8", VOL_NEW_SIZE="24", EXTP_LIVE_GROW="yes")
        assert res.returncode == 0, res.stderr
        assert size() == 8 << 20  # QEMU learns the new size only when asked to resize
        qmp_call(qmp, "block_resize", {"node-name": "iscsi0", "size": 24 << 20}, label="iscsi")
        assert size() == 24 << 20
    finally:
        vm.kill()
        vm.wait(10)
    assert srv.run("remove", vol).returncode == 0


def test_a_management_prefix_runs_every_step_through_a_remote_shell(srv: Env) -> None:
    """``mgmt`` as ssh would use it: one quoted command line for a remote shell (here a
    local ``sh -c``, which parses it the same way)."""
    vol = "rem0te.ext.disk0"
    mgmt = {"EXTP_MGMT": '["sh", "-c"]'}
    res = srv.run("create", vol, VOL_SIZE="4", **mgmt)
    assert res.returncode == 0, res.stderr
    res = srv.run("attach", vol, HAVEN_INITIATOR=NODE1, **mgmt)
    assert res.returncode == 0 and res.stdout.startswith("\nkvm:iscsi://"), res.stderr
    assert qemu_io(srv, vol, NODE1, "write -P 0x61 0 4k").returncode == 0
    assert srv.run("setinfo", vol, VOL_METADATA="a 'quoted' value", **mgmt).returncode == 0
    assert (srv.pool / f"{vol}.meta").read_text() == "a 'quoted' value"
    assert srv.run("fence", vol, HAVEN_INITIATOR=NODE1, **mgmt).returncode == 0
    assert srv.run("verify", vol, **mgmt).returncode == 0
    assert srv.run("remove", vol, **mgmt).returncode == 0
    assert srv.found(vol) is None and not (srv.pool / f"{vol}.img").exists()


def test_a_local_account_is_made_over_tgtds_socket_not_on_a_command_line(
        srv: Env, tmp_path: Path) -> None:
    """tgtadm would show the password in the process list: the account is made over
    tgtd's management socket, and logins with it work (the lifecycle test); a second
    account of the same name is one clear error."""
    from haven.storage import tgt_ipc
    from haven.storage.tgt import Tgtadm, TgtError

    adm = Tgtadm(control=srv.server.control)
    assert CHAP_USER in adm.accounts()
    adm.new_account("second", "pw-" + "x" * 12)
    assert "second" in adm.accounts()
    with pytest.raises(TgtError, match="cannot create CHAP account second") as err:
        adm.new_account("second", "again")
    assert not err.value.unreachable
    with pytest.raises(tgt_ipc.TgtIpcError, match="may not contain"):
        tgt_ipc.new_account(srv.server.control, "third", "a,b")
