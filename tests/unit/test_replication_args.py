"""The pure parts of replication: export argv, QMP arguments, job phases, resync modes."""

from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from haven.hypervisor.base import HypervisorError
from haven.hypervisor.qemu import replication as repl
from haven.hypervisor.qemu.exports import (
    TLS_PRIORITY,
    ExportDisk,
    check_disks,
    exited,
    port_in_use,
    qsd_argv,
    write_psk_dir,
)

DISKS = [ExportDisk("uuid-0", "/srv/a,b.raw"), ExportDisk("uuid-1", "/srv/c.qcow2", "qcow2")]


def values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


# -- qemu-storage-daemon -----------------------------------------------------------------------

def test_export_argv_binds_one_address_and_exports_each_disk_writable_and_durable() -> None:
    argv = qsd_argv("qsd", DISKS, "192.0.2.7", 11000, "/run/vm1.qsd.qmp", None, [True, False])
    assert argv[0] == "qsd" and values(argv, "--object") == []
    assert values(argv, "--blockdev") == [
        "driver=file,filename=/srv/a,,b.raw,node-name=file0,cache.direct=on,aio=threads",
        "driver=raw,file=file0,node-name=disk0",
        "driver=file,filename=/srv/c.qcow2,node-name=file1,cache.direct=off,aio=threads",
        "driver=qcow2,file=file1,node-name=disk1"]
    assert values(argv, "--nbd-server") == [
        "addr.type=inet,addr.host=192.0.2.7,addr.port=11000"]
    assert values(argv, "--export") == [
        "type=nbd,id=exp0,node-name=disk0,name=uuid-0,writable=on,writethrough=on",
        "type=nbd,id=exp1,node-name=disk1,name=uuid-1,writable=on,writethrough=on"]
    # The monitor comes last: once it answers, every export exists.
    assert argv[-2:] == ["--monitor", "chardev=haven-mon"]


def test_export_argv_with_a_psk_requires_tls_and_can_skip_writethrough() -> None:
    argv = qsd_argv("qsd", DISKS[:1], "::1", 11000, "m.qmp", "/run/vm1.qsd.tls",
                    writethrough=False)
    assert values(argv, "--object") == [
        "tls-creds-psk,id=tls0,endpoint=server,dir=/run/vm1.qsd.tls,"
        f"priority={TLS_PRIORITY}"]
    assert values(argv, "--nbd-server")[0].endswith(",tls-creds=tls0")
    assert values(argv, "--export")[0].endswith(",writethrough=off")


@pytest.mark.parametrize(("disks", "message"), [
    ([], "no disk given"),
    ([ExportDisk("a,b", "/x")], "not a unique simple name"),
    ([ExportDisk("d", "/x"), ExportDisk("d", "/y")], "not a unique simple name"),
    ([ExportDisk("d", "/x", "vmdk")], "is not raw or qcow2"),  # type: ignore[arg-type]
])
def test_unusable_export_disks_are_refused_naming_the_instance(
        disks: list[ExportDisk], message: str) -> None:
    with pytest.raises(HypervisorError, match=message) as err:
        check_disks("vm1", disks)
    assert "vm1" in str(err.value)


def test_psk_dir_holds_one_private_key_line(tmp_path: Path) -> None:
    key = "ab" * 32
    d = write_psk_dir(tmp_path / "tls", key)
    keys = d / "keys.psk"
    assert keys.read_text() == f"haven:{key}\n"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    with pytest.raises(HypervisorError, match="hex-encoded"):
        write_psk_dir(tmp_path / "bad", "not-hex")


def test_a_bound_port_is_in_use_and_a_free_one_is_not() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
    assert not port_in_use("127.0.0.1", port)


def test_a_running_process_has_not_exited_and_a_missing_one_has() -> None:
    assert not exited(os.getpid())
    assert exited(2**22 + 1)  # above the default pid_max


# -- QMP arguments -----------------------------------------------------------------------------

TARGET = repl.NbdTarget("192.0.2.7", 11000, "uuid-0")


def test_nbd_node_never_waits_to_reconnect_and_uses_tls_only_with_a_psk() -> None:
    assert repl.nbd_node_args(2, TARGET) == {
        "driver": "nbd", "node-name": "repl2", "export": "uuid-0",
        "server": {"type": "inet", "host": "192.0.2.7", "port": "11000"},
        "reconnect-delay": 0}
    tls = repl.NbdTarget("192.0.2.7", 11000, "uuid-0", "/run/tls")
    assert repl.nbd_node_args(2, tls)["tls-creds"] == "repl2-tls"
    assert repl.tls_object_args(2, tls) == {
        "qom-type": "tls-creds-psk", "id": "repl2-tls", "endpoint": "client",
        "dir": "/run/tls", "username": "haven", "priority": TLS_PRIORITY}


def test_mirror_is_synchronous_pauses_on_target_errors_and_is_kept_after_it_ends() -> None:
    assert repl.mirror_args(1, "full") == {
        "job-id": "mirror1", "device": "disk1", "target": "repl1", "sync": "full",
        "copy-mode": "write-blocking", "on-target-error": "stop", "auto-dismiss": False}
    assert repl.mirror_args(1, "none")["sync"] == "none"


def test_resync_backup_copies_the_bitmap_and_clears_it_only_on_success() -> None:
    assert repl.backup_args(0) == {
        "job-id": "resync0", "device": "disk0", "target": "repl0", "sync": "bitmap",
        "bitmap": "repl0-dirty", "bitmap-mode": "on-success", "auto-dismiss": False}


@pytest.mark.parametrize(("fmt", "persistent"), [("raw", False), ("qcow2", True)])
def test_the_resync_bitmap_is_persistent_on_qcow2_only(fmt: str, persistent: bool) -> None:
    assert repl.bitmap_args(0, fmt) == {"node": "disk0", "name": "repl0-dirty",
                                        "granularity": 65536, "persistent": persistent}


@pytest.mark.parametrize(("jid", "disk"), [
    ("mirror0", 0), ("mirror12", 12), ("resync3", 3), ("mirror", None), ("backup1", None),
    ("mirror1x", None)])
def test_replication_jobs_are_recognised_by_id(jid: str, disk: int | None) -> None:
    assert repl.disk_of_job(jid) == disk


@pytest.mark.parametrize(("file", "target"), [
    ("nbd://192.0.2.7:11000/uuid-0", ("192.0.2.7", 11000, "uuid-0")),
    ("nbd://[::1]:11000/uuid-0", ("::1", 11000, "uuid-0")),
    ("nbd://host/uuid-0", None)])
def test_the_target_of_an_nbd_node_is_read_from_its_file_name(
        file: str, target: tuple[str, int, str] | None) -> None:
    assert repl.target_of({"drv": "nbd", "file": file}) == target
    assert repl.target_of({"drv": "raw", "file": file}) is None
    assert repl.target_of(None) is None


# -- phases and modes --------------------------------------------------------------------------

def job(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"device": "mirror0", "type": "mirror", "status": "running",
                            "ready": False, "paused": False, "io-status": "ok",
                            "offset": 10, "len": 100}
    return base | kw


@pytest.mark.parametrize(("entry", "phase"), [
    (job(), "syncing"),
    (job(status="ready", ready=True), "ready"),
    # After BLOCK_JOB_ERROR action=stop: standby/paused, ready kept, io-status failed.
    (job(status="standby", ready=True, paused=True, **{"io-status": "failed"}), "failed"),
    (job(status="paused", paused=True, **{"io-status": "failed"}), "failed"),
    (job(status="paused", paused=True), "failed"),
    (job(status="concluded"), "none"),
    (job(status="concluded", error="Input/output error"), "failed"),
    (job(type="backup", device="resync0"), "syncing"),
])
def test_job_phase(entry: dict[str, Any], phase: str) -> None:
    assert repl.phase_of(entry) == phase


@pytest.mark.parametrize(("entry", "same", "bitmap", "trust", "mode"), [
    # The job survived and the export is back where it was: resume it.
    (job(status="standby", ready=True, paused=True), True, True, True, "resume"),
    (job(status="paused", paused=True), True, False, True, "resume"),
    # New address: the bitmap, if the job had been ready since it was created ...
    (job(status="standby", ready=True, paused=True), False, True, True, "bitmap"),
    # ... not if it failed during its initial sync (the bitmap misses unsynced blocks).
    (job(status="paused", paused=True), False, True, True, "full"),
    # No job (QEMU restarted with a persistent bitmap): the caller's word decides.
    (None, False, True, True, "bitmap"),
    (None, False, True, False, "full"),
    (None, True, False, True, "full"),
    # A concluded job cannot say whether it was ever ready: be conservative.
    (job(status="concluded"), True, True, True, "full"),
])
def test_resync_mode_is_incremental_only_when_provably_safe(
        entry: dict[str, Any] | None, same: bool, bitmap: bool, trust: bool,
        mode: str) -> None:
    assert repl.choose_mode(entry, same, bitmap, trust) == mode


def test_progress_is_the_jobs_offset_over_its_length() -> None:
    assert repl.MirrorState(0, "mirror0", "syncing", 25, 100).percent == 25.0
    assert repl.MirrorState(0, "mirror0", "ready", 100, 100).percent == 100.0
    assert repl.MirrorState(0, "", "none").percent == 0.0


@pytest.mark.parametrize(("before", "after", "is_stalled"), [
    # A write is stuck on the peer: nothing moved, bytes pending in both snapshots.
    ((100, 104), (100, 104), True),
    ((100, 104), (100, 108), True),  # more writes queued behind it
    ((100, 104), (104, 104), False),  # it completed
    ((100, 100), (100, 100), False),  # idle guest
    ((50, 100), (80, 100), False),  # a sync in progress
])
def test_a_peer_is_stalled_when_pending_writes_make_no_progress(
        before: tuple[int, int], after: tuple[int, int], is_stalled: bool) -> None:
    a = repl.MirrorState(0, "mirror0", "ready", *before)
    b = repl.MirrorState(0, "mirror0", "ready", *after)
    assert repl.stalled(a, b) is is_stalled
    assert b.pending == after[1] - after[0]
    assert not repl.stalled(a, repl.MirrorState(0, "mirror0", "failed", *after))


def test_probe_refuses_a_closed_port_and_a_server_that_is_not_nbd() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(HypervisorError, match="is not reachable"):
        repl.probe(repl.NbdTarget("127.0.0.1", port, "d0"), timeout=1)

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()

        def answer() -> None:
            conn, _ = srv.accept()
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

        threading.Thread(target=answer, daemon=True).start()
        with pytest.raises(HypervisorError, match="is not an NBD server"):
            repl.probe(repl.NbdTarget("127.0.0.1", srv.getsockname()[1], "d0"), timeout=2)
