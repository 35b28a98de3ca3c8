"""The QEMU command line of a VM: a pure function of its spec (no I/O).

Files of VM ``<name>`` in the node's run dir (QEMU runs with the run dir as its cwd)::

    <name>.qmp         QMP monitor for commands and sessions (one client at a time)
    <name>.qmp-status  a second QMP monitor, only for quick status polls (``list()``), so
                       that a long session on the first one never blinds the agent
    <name>.qmp-events  a third one, held by the node daemon to hear replication errors at
                       once (:mod:`haven.daemon.mirror_watch`)
    <name>.console     serial console ttyS0 (unix socket server, no wait)
    <name>.console.log everything the guest wrote on ttyS0 since it started, whether or
                       not a console was attached (a boot that hangs shows where)
    <name>.ticker      second serial port ttyS1 (tests and the migration benchmarks)

Sockets are given by absolute path when it fits into a unix socket address (107 bytes)
and relative to the run dir otherwise.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from haven.hypervisor.base import DiskSpec, HypervisorError, NicSpec, VmSpec

QMP_SUFFIX = ".qmp"
STATUS_QMP_SUFFIX = ".qmp-status"
EVENTS_QMP_SUFFIX = ".qmp-events"
CONSOLE_SUFFIX = ".console"
TICKER_SUFFIX = ".ticker"
CONSOLE_LOG_SUFFIX = ".console.log"
SOCKET_SUFFIXES = (QMP_SUFFIX, STATUS_QMP_SUFFIX, EVENTS_QMP_SUFFIX, CONSOLE_SUFFIX,
                   TICKER_SUFFIX)

# Instance names are host names; anything else could break QEMU's option syntax
# (commas) or escape the run dir.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_MAX_SUN_PATH = 107


def check_name(name: str) -> None:
    """Raise unless ``name`` is usable as a VM name (a host name, at most 63 chars)."""
    if not _NAME_RE.match(name):
        raise HypervisorError(f"Instance name {name!r} is not usable for a QEMU VM: use "
                              "letters, digits, '.', '-' and '_' (at most 63).")


def pid_marker(name: str) -> str:
    """What ``/proc/<pid>/cmdline`` of the VM's QEMU contains (guards against reused
    pids; the comma keeps ``vm1`` from matching ``vm10``)."""
    return f"guest={name},"


def _socket(run_dir: Path, name: str, suffix: str) -> str:
    path = str(run_dir / f"{name}{suffix}")
    return path if len(os.fsencode(path)) <= _MAX_SUN_PATH else f"{name}{suffix}"


def _opt(value: str) -> str:
    """A value inside a QEMU ``key=value,...`` option: commas are doubled."""
    return value.replace(",", ",,")


def cpu_model(spec: VmSpec, accel: str) -> str:
    """The ``-cpu`` model: the spec's, except that the default ``qemu64`` means "the
    accelerator's default": ``host`` under KVM."""
    if accel == "kvm" and spec.cpu_model == "qemu64":
        return "host"
    return spec.cpu_model


def disk_args(disk: DiskSpec, direct: bool = True) -> list[str]:
    """``-blockdev`` file and format nodes plus the virtio-blk device of one disk.

    ``direct``: O_DIRECT (``cache.direct=on``); the caller turns it off for files on a
    file system that rejects O_DIRECT.
    """
    if disk.uri:
        return _uri_disk_args(disk)
    i = disk.index
    ro = ",read-only=on" if disk.read_only else ""
    nodes = [
        "-blockdev",
        f"driver=file,filename={_opt(disk.path)},node-name=file{i},"
        f"cache.direct={'on' if direct else 'off'},aio=threads{ro}",
        "-blockdev", f"driver={disk.format},file=file{i},node-name=disk{i}{ro}",
    ]
    if disk.replicated and not disk.read_only:
        # The guest writes through a quorum of the image and the replica's slot, which
        # starts with a placeholder (haven.hypervisor.qemu.quorum); werror=stop: a
        # write that fails on either side pauses the guest before it is acknowledged.
        if disk.size <= 0:
            raise HypervisorError(f"Disk {i} ({disk.path}) is replicated but its size is "
                                  "unknown; the storage template must give it.")
        return [
            *nodes,
            "-blockdev", json.dumps(placeholder_args(f"null{i}", disk.size)),
            "-blockdev", f"driver=quorum,node-name=q{i},vote-threshold=2,read-pattern=fifo,"
            f"children.0=disk{i},children.1=null{i}",
            "-device", f"virtio-blk-pci,drive=q{i},id=vblk{i},werror=stop,rerror=stop",
        ]
    return [*nodes, "-device", f"virtio-blk-pci,drive=disk{i},id=vblk{i}"]


def placeholder_args(name: str, size: int) -> dict[str, Any]:
    """``blockdev-add`` (or ``-blockdev`` as JSON) of a slot placeholder: writes vanish,
    reads fail with EIO.  Reads go to the local image first and reach the slot only when
    the local read failed: a ``null-co`` alone would then hand the guest zeros as data
    (measured with qemu-io); the failing read stops the guest instead (``rerror=stop``).
    ``blkdebug`` fails every read once the ``raw`` node above it has announced one
    (its ``read_aio`` event), and passes writes through."""
    return {"driver": "raw", "node-name": name,
            "file": {"driver": "blkdebug",
                     "inject-error": [{"event": "read_aio", "iotype": "read", "errno": 5}],
                     "image": {"driver": "null-co", "size": size}}}


def uri_node(disk: DiskSpec) -> tuple[list[str], dict[str, object]]:
    """The ``-object secret`` arguments and the protocol block node (no node name) that
    open a disk QEMU reaches itself (an ExtStorage provider's ``kvm:`` URI).

    The password of the URI's user is read from ``secret_file`` (a secret object): it
    is never on a command line, nor in any log.  Used for the VM and for ``qemu-img``.
    """
    i = disk.index
    parsed = urlsplit(disk.uri)
    objects: list[str] = []
    node: dict[str, object]
    if parsed.scheme == "iscsi":
        target, _, lun = parsed.path.lstrip("/").rpartition("/")
        if not parsed.hostname or not target or not lun.isdigit():
            raise HypervisorError(f"Disk {i}: the iSCSI URI {disk.uri!r} is not "
                                  f"iscsi://[user@]host[:port]/target/lun.")
        node = {"driver": "iscsi", "transport": "tcp",
                "portal": f"{parsed.hostname}:{parsed.port or 3260}", "target": target,
                "lun": int(lun)}
        if parsed.username:
            node["user"] = unquote(parsed.username)
            if disk.secret_file:
                objects = [f"secret,id=sec{i},format=raw,file={_opt(disk.secret_file)}"]
                node["password-secret"] = f"sec{i}"
        if disk.initiator:
            node["initiator-name"] = disk.initiator
    elif parsed.scheme == "nbd":
        node = {"driver": "nbd", "server": {"type": "inet", "host": parsed.hostname or "",
                                            "port": str(parsed.port or 10809)}}
        if parsed.path.strip("/"):
            node["export"] = parsed.path.strip("/")
    else:
        raise HypervisorError(f"Disk {i}: Haven's QEMU driver cannot open {disk.uri!r} "
                              f"(only iscsi:// and nbd:// URIs); use a provider that gives "
                              f"a block device.")
    return objects, node


def _uri_disk_args(disk: DiskSpec) -> list[str]:
    """Storage errors stop the guest (``werror``/``rerror=stop``) instead of reaching
    its file system: it goes on when the storage answers again."""
    i = disk.index
    objects, node = uri_node(disk)
    node.update({"node-name": f"file{i}", "cache": {"direct": True}})
    if disk.read_only:
        node["read-only"] = True
    fmt: dict[str, object] = {"driver": disk.format, "file": f"file{i}",
                              "node-name": f"disk{i}"}
    if disk.read_only:
        fmt["read-only"] = True
    argv = [a for obj in objects for a in ("-object", obj)]
    return [
        *argv,
        "-blockdev", json.dumps(node, separators=(",", ":")),
        "-blockdev", json.dumps(fmt, separators=(",", ":")),
        "-device", f"virtio-blk-pci,drive=disk{i},id=vblk{i},werror=stop,rerror=stop",
    ]


def nic_args(nic: NicSpec) -> list[str]:
    """``-netdev`` and the virtio-net device of one NIC."""
    i = nic.index
    if not _MAC_RE.match(nic.mac):
        raise HypervisorError(f"NIC {i} has an invalid MAC address {nic.mac!r}.")
    if nic.mode == "bridged":
        if not nic.tap:
            raise HypervisorError(f"Bridged NIC {i} has no tap device name.")
        netdev = f"tap,id=net{i},ifname={_opt(nic.tap)},script=no,downscript=no"
    else:
        netdev = f"user,id=net{i}"
    return ["-netdev", netdev,
            "-device", f"virtio-net-pci,netdev=net{i},mac={nic.mac},id=nic{i}"]


def build_argv(spec: VmSpec, run_dir: Path, accel: str, qemu_binary: str, *,
               direct_io: Mapping[str, bool] | None = None) -> list[str]:
    """The full argv of the VM's QEMU (to be run with ``run_dir`` as its cwd).

    ``accel`` is the resolved accelerator (``kvm`` or ``tcg``, never ``auto``);
    ``direct_io`` maps a disk path to False when O_DIRECT does not work for it (default:
    on).  Raises :class:`HypervisorError` for a spec QEMU cannot express (bad name, MAC,
    a bridged NIC without tap); what QEMU itself rejects is found when it starts.
    """
    check_name(spec.name)
    if accel not in ("kvm", "tcg"):
        raise HypervisorError(f"Accelerator {accel!r} for instance '{spec.name}' is not "
                              "kvm or tcg.")
    name = spec.name
    argv = [
        qemu_binary,
        "-name", f"guest={name},debug-threads=on",
        "-uuid", spec.uuid,
        "-accel", accel,
        "-M", spec.machine,
        "-cpu", cpu_model(spec, accel),
        "-m", str(spec.memory),
        "-smp", str(spec.vcpus),
        "-nodefaults", "-no-user-config", "-display", "none",
        # A guest power-off stops the VM but keeps QEMU: status "shutdown" tells the
        # agent that the user powered it off (Ganeti's USER_down), not that it crashed.
        "-no-shutdown",
    ]
    if spec.kernel_path:
        argv += ["-kernel", spec.kernel_path]
        if spec.initrd_path:
            argv += ["-initrd", spec.initrd_path]
        if spec.kernel_args:
            argv += ["-append", spec.kernel_args]
    # Both serial ports always exist, so that ttyS1 is the ticker whatever the console.
    argv += [
        "-chardev",
        f"socket,id=con0,path={_opt(_socket(run_dir, name, CONSOLE_SUFFIX))},"
        f"server=on,wait=off,logfile={_opt(name + CONSOLE_LOG_SUFFIX)},logappend=off",
        "-serial", "chardev:con0",
        "-chardev",
        f"socket,id=tick0,path={_opt(_socket(run_dir, name, TICKER_SUFFIX))},"
        "server=on,wait=off",
        "-serial", "chardev:tick0",
        "-qmp", f"unix:{_opt(_socket(run_dir, name, QMP_SUFFIX))},server=on,wait=off",
        "-qmp", f"unix:{_opt(_socket(run_dir, name, STATUS_QMP_SUFFIX))},server=on,wait=off",
        "-qmp", f"unix:{_opt(_socket(run_dir, name, EVENTS_QMP_SUFFIX))},server=on,wait=off",
    ]
    direct = direct_io or {}
    for disk in sorted(spec.disks, key=lambda d: d.index):
        argv += disk_args(disk, direct.get(disk.path, True))
    for nic in sorted(spec.nics, key=lambda n: n.index):
        argv += nic_args(nic)
    if spec.incoming:
        argv += ["-incoming", "defer"]
    return argv


def supports_direct_io(path: str) -> bool:
    """True if ``path`` can be opened with O_DIRECT (tmpfs before Linux 6.6 cannot).
    A file that cannot be opened at all counts as True: QEMU reports that better."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as exc:
        return exc.errno != errno.EINVAL  # the file system refuses O_DIRECT
    os.close(fd)
    return True
