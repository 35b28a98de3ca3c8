"""The QEMU command line built from a VmSpec (pure; no QEMU needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from haven.hypervisor.base import DiskSpec, HypervisorError, NicSpec, VmSpec
from haven.hypervisor.qemu.cmdline import build_argv, pid_marker, supports_direct_io

RUN = Path("/run/haven")
UUID = "6f1c3a52-7d2e-4b8a-9d55-0c1e2f3a4b5c"


def spec(**kw: object) -> VmSpec:
    base: dict[str, object] = {"name": "vm1", "uuid": UUID, "memory": 256}
    base.update(kw)
    return VmSpec(**base)  # type: ignore[arg-type]


def argv_of(s: VmSpec, accel: str = "tcg", **kw: object) -> list[str]:
    return build_argv(s, RUN, accel, "/usr/bin/qemu-system-x86_64", **kw)  # type: ignore[arg-type]


def value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_base_command_line_names_the_guest_and_keeps_qemu_after_poweroff() -> None:
    argv = argv_of(spec(vcpus=2))
    assert argv[0] == "/usr/bin/qemu-system-x86_64"
    assert value(argv, "-name") == "guest=vm1,debug-threads=on"
    assert pid_marker("vm1") in " ".join(argv)
    assert value(argv, "-uuid") == UUID
    assert value(argv, "-accel") == "tcg"
    assert value(argv, "-M") == "pc"
    assert value(argv, "-cpu") == "qemu64"
    assert value(argv, "-m") == "256"
    assert value(argv, "-smp") == "2"
    for flag in ("-nodefaults", "-no-user-config", "-no-shutdown"):
        assert flag in argv
    assert value(argv, "-display") == "none"
    assert "-incoming" not in argv and "-kernel" not in argv


def test_sockets_console_ticker_and_three_monitors_live_in_the_run_dir() -> None:
    argv = argv_of(spec())
    chardevs = values(argv, "-chardev")
    assert chardevs == [
        "socket,id=con0,path=/run/haven/vm1.console,server=on,wait=off,"
        "logfile=vm1.console.log,logappend=off",
        "socket,id=tick0,path=/run/haven/vm1.ticker,server=on,wait=off",
    ]
    assert values(argv, "-serial") == ["chardev:con0", "chardev:tick0"]
    assert values(argv, "-qmp") == [
        "unix:/run/haven/vm1.qmp,server=on,wait=off",
        "unix:/run/haven/vm1.qmp-status,server=on,wait=off",
        "unix:/run/haven/vm1.qmp-events,server=on,wait=off",
    ]


def test_socket_paths_too_long_for_sun_path_become_relative_to_the_run_dir() -> None:
    deep = Path("/tmp/" + "d" * 120)
    argv = build_argv(spec(), deep, "tcg", "qemu-system-x86_64")
    assert "unix:vm1.qmp,server=on,wait=off" in values(argv, "-qmp")
    assert values(argv, "-chardev")[0].startswith("socket,id=con0,path=vm1.console,")


def test_kvm_uses_the_host_cpu_unless_the_spec_names_a_model() -> None:
    assert value(argv_of(spec(), "kvm"), "-cpu") == "host"
    assert value(argv_of(spec(), "kvm"), "-accel") == "kvm"
    assert value(argv_of(spec(cpu_model="Haswell"), "kvm"), "-cpu") == "Haswell"
    assert value(argv_of(spec(cpu_model="Haswell"), "tcg"), "-cpu") == "Haswell"


def test_kernel_initrd_and_append_only_when_a_kernel_is_given() -> None:
    argv = argv_of(spec(kernel_path="/img/vmlinuz", initrd_path="/img/initrd.gz",
                        kernel_args="console=ttyS0 quiet"))
    assert value(argv, "-kernel") == "/img/vmlinuz"
    assert value(argv, "-initrd") == "/img/initrd.gz"
    assert value(argv, "-append") == "console=ttyS0 quiet"
    no_kernel = argv_of(spec(initrd_path="/img/initrd.gz", kernel_args="x"))
    assert "-initrd" not in no_kernel and "-append" not in no_kernel


def test_disks_are_file_and_format_blockdevs_behind_virtio_blk_in_index_order() -> None:
    disks = (DiskSpec(1, "/data/vm1-1.qcow2", format="qcow2", read_only=True),
             DiskSpec(0, "/data/vm1-0.raw"))
    argv = argv_of(spec(disks=disks))
    assert values(argv, "-blockdev") == [
        "driver=file,filename=/data/vm1-0.raw,node-name=file0,cache.direct=on,aio=threads",
        "driver=raw,file=file0,node-name=disk0",
        "driver=file,filename=/data/vm1-1.qcow2,node-name=file1,cache.direct=on,"
        "aio=threads,read-only=on",
        "driver=qcow2,file=file1,node-name=disk1,read-only=on",
    ]
    assert [d for d in values(argv, "-device") if d.startswith("virtio-blk")] == [
        "virtio-blk-pci,drive=disk0,id=vblk0", "virtio-blk-pci,drive=disk1,id=vblk1"]


def test_direct_io_is_turned_off_for_disks_whose_file_system_refuses_it() -> None:
    argv = argv_of(spec(disks=(DiskSpec(0, "/dev/shm/d0"),)), direct_io={"/dev/shm/d0": False})
    assert "cache.direct=off" in values(argv, "-blockdev")[0]


def test_commas_in_paths_are_escaped_for_qemu_options() -> None:
    argv = argv_of(spec(disks=(DiskSpec(0, "/data/a,b.raw"),)))
    assert values(argv, "-blockdev")[0].startswith("driver=file,filename=/data/a,,b.raw,")


def test_user_and_bridged_nics_get_virtio_net_with_their_mac() -> None:
    nics = (NicSpec(0, "52:54:00:12:34:56"),
            NicSpec(1, "52:54:00:12:34:57", mode="bridged", link="br0", tap="hv-vm1-1"))
    argv = argv_of(spec(nics=nics))
    assert values(argv, "-netdev") == [
        "user,id=net0", "tap,id=net1,ifname=hv-vm1-1,script=no,downscript=no"]
    assert [d for d in values(argv, "-device") if d.startswith("virtio-net")] == [
        "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56,id=nic0",
        "virtio-net-pci,netdev=net1,mac=52:54:00:12:34:57,id=nic1"]


def test_incoming_waits_for_a_deferred_migration() -> None:
    argv = argv_of(spec(incoming=True))
    assert argv[-2:] == ["-incoming", "defer"]


@pytest.mark.parametrize(("kw", "accel", "text"), [
    ({"name": "bad,name"}, "tcg", "not usable"),
    ({"name": "../x"}, "tcg", "not usable"),
    ({}, "auto", "not kvm or tcg"),
    ({"nics": (NicSpec(0, "not-a-mac"),)}, "tcg", "invalid MAC"),
    ({"nics": (NicSpec(0, "52:54:00:12:34:56", mode="bridged"),)}, "tcg", "no tap"),
])
def test_specs_qemu_cannot_express_are_refused_with_a_sentence(
        kw: dict[str, object], accel: str, text: str) -> None:
    with pytest.raises(HypervisorError, match=text):
        argv_of(spec(**kw), accel)


def test_direct_io_probe_accepts_a_regular_file(tmp_path: Path) -> None:
    f = tmp_path / "disk.raw"
    f.write_bytes(b"\0" * 4096)
    assert supports_direct_io(str(f))
    assert supports_direct_io(str(tmp_path / "missing.raw"))  # QEMU will say it better
