"""OS definitions: search path, lookup, Ganeti's script environment, running scripts."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from haven.errors import InvalidInput, OpExecError
from haven.osdef import (
    SYSTEM_OS_PATH,
    BootHints,
    DiskEnv,
    NicEnv,
    diagnose_os,
    expand_vars,
    find_os,
    list_os,
    os_core_environment,
    os_environment,
    run_os_script,
    search_path,
    split_name,
)

REPO_OS = Path(__file__).resolve().parents[2] / "share" / "os"
OK_SCRIPT = "#!/bin/sh\nexit 0\n"


def make_os(top: Path, name: str, *, api: str = "20\n", variants: str | None = "default\n",
            parameters: str | None = "", scripts: dict[str, str] | None = None,
            haven_json: str | None = None, skip: tuple[str, ...] = ()) -> Path:
    d = top / name
    d.mkdir(parents=True)
    (d / "ganeti_api_version").write_text(api)
    if variants is not None:
        (d / "variants.list").write_text(variants)
    if parameters is not None:
        (d / "parameters.list").write_text(parameters)
    for script in ("create", "import", "export", "rename", "verify"):
        if script in skip:
            continue
        p = d / script
        p.write_text((scripts or {}).get(script, OK_SCRIPT))
        p.chmod(0o755)
    if haven_json is not None:
        (d / "haven.json").write_text(haven_json)
    return d


def test_search_path_is_extra_then_env_then_share_then_ganeti() -> None:
    path = search_path(["/x/os"], environ={"HAVEN_OS_PATH": "/a/os::/b/os:/x/os"})
    assert path[:3] == [Path("/x/os"), Path("/a/os"), Path("/b/os")]
    assert path[3] == REPO_OS
    assert path[4:] == [Path(p) for p in SYSTEM_OS_PATH]
    assert path[4:] == [Path("/srv/ganeti/os"), Path("/usr/local/lib/ganeti/os"),
                        Path("/usr/lib/ganeti/os"), Path("/usr/share/ganeti/os")]


def test_search_path_without_haven_os_path_starts_with_haven_share() -> None:
    assert search_path(environ={})[0] == REPO_OS


@pytest.mark.parametrize(("given", "expected"), [
    ("debootstrap+default", ("debootstrap", "default")),
    ("debootstrap", ("debootstrap", None)),
    ("debootstrap+", ("debootstrap", "")),
    ("a+b+c", ("a", "b+c")),
])
def test_split_name_takes_the_variant_after_the_first_plus(
        given: str, expected: tuple[str, str | None]) -> None:
    assert split_name(given) == expected


def test_find_os_returns_the_definition_and_the_variant(tmp_path: Path) -> None:
    make_os(tmp_path, "deb", variants="# comment\n\nbookworm\ntrixie\n",
            parameters="dhcp Whether to use dhcp\nroot_size\n")
    os_def, variant = find_os("deb+trixie", [tmp_path])
    assert variant == "trixie"
    assert os_def.name == "deb" and os_def.path == tmp_path / "deb"
    assert os_def.api_versions == (20,) and os_def.api_version == 20
    assert os_def.variants == ("bookworm", "trixie")
    assert os_def.parameters == (("dhcp", "Whether to use dhcp"), ("root_size", ""))
    assert os_def.boot is None
    assert find_os("deb", [tmp_path])[1] is None


def test_first_directory_of_a_name_wins_even_when_invalid(tmp_path: Path) -> None:
    make_os(tmp_path / "one", "deb", api="5\n")
    make_os(tmp_path / "two", "deb")
    with pytest.raises(InvalidInput, match=r"OS 'deb' in .*one is not usable: API version"):
        find_os("deb", [tmp_path / "one", tmp_path / "two"])
    status = diagnose_os([tmp_path / "one", tmp_path / "two"])
    assert [(s.valid, s.shadowed) for s in status] == [(False, False), (True, True)]
    assert list_os([tmp_path / "one", tmp_path / "two"]) == []


def test_unknown_os_lists_what_exists_and_the_fix(tmp_path: Path) -> None:
    make_os(tmp_path, "deb", variants="bookworm\ntrixie\n")
    make_os(tmp_path, "plain", variants=None)
    with pytest.raises(InvalidInput) as err:
        find_os("centos+9", [tmp_path])
    msg = err.value.message
    assert "OS 'centos' was not found" in msg
    assert "known OSes: deb+bookworm, deb+trixie, plain" in msg
    assert "HAVEN_OS_PATH" in msg


def test_unknown_variant_lists_the_variants(tmp_path: Path) -> None:
    make_os(tmp_path, "deb", variants="bookworm\ntrixie\n")
    with pytest.raises(InvalidInput, match=r"OS 'deb' has no variant 'sid'; its variants "
                                           r"are bookworm, trixie; use e.g. 'deb\+bookworm'"):
        find_os("deb+sid", [tmp_path])


def test_variant_given_to_an_os_without_variants_is_refused(tmp_path: Path) -> None:
    make_os(tmp_path, "plain", variants=None)
    with pytest.raises(InvalidInput, match="does not support variants"):
        find_os("plain+x", [tmp_path])


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"skip": ("rename",)}, "file 'rename' is missing"),
    ({"skip": ("verify",)}, "file 'verify' is missing"),
    ({"parameters": None}, "file 'parameters.list' is missing"),
    ({"api": "25\n"}, "API version mismatch"),
    ({"api": "twenty\n"}, "cannot read the API version"),
    ({"haven_json": "{nope"}, "haven.json is not valid JSON"),
    ({"haven_json": '{"kernel_path": 3}'}, "string values"),
])
def test_diagnose_names_why_an_os_is_invalid(tmp_path: Path, kwargs: dict[str, object],
                                             reason: str) -> None:
    make_os(tmp_path, "bad", **kwargs)  # type: ignore[arg-type]
    (status,) = diagnose_os([tmp_path])
    assert not status.valid and reason in status.reason
    with pytest.raises(InvalidInput, match=reason):
        find_os("bad", [tmp_path])


def test_non_executable_script_makes_the_os_invalid(tmp_path: Path) -> None:
    d = make_os(tmp_path, "bad")
    (d / "create").chmod(0o644)
    (status,) = diagnose_os([tmp_path])
    assert "script 'create'" in status.reason and "not executable" in status.reason


def test_api_15_needs_neither_verify_nor_parameters(tmp_path: Path) -> None:
    make_os(tmp_path, "old", api="15\n10\n", parameters=None, skip=("verify",))
    (os_def,) = list_os([tmp_path])
    assert os_def.api_version == 15


def test_boot_hints_expand_variables_and_defaults(tmp_path: Path) -> None:
    make_os(tmp_path, "bb", haven_json='{"kernel_path": "${GUEST:-/cache}/vmlinuz", '
            '"initrd_path": "img/initrd.gz", "kernel_args": "console=ttyS0 x=$X"}')
    os_def, _ = find_os("bb", [tmp_path], environ={"X": "1"})
    assert os_def.boot == BootHints(kernel_path="/cache/vmlinuz",
                                    initrd_path=str(tmp_path / "bb" / "img/initrd.gz"),
                                    kernel_args="console=ttyS0 x=1")
    os_def, _ = find_os("bb", [tmp_path], environ={"GUEST": "/g"})
    assert os_def.boot is not None and os_def.boot.kernel_path == "/g/vmlinuz"


def test_expand_vars_is_shell_like() -> None:
    env = {"A": "a", "E": ""}
    assert expand_vars("$A ${A} ${B:-d} ${E:-e} ${B} $B.", env) == "a a d e  ."


def test_the_shipped_busybox_os_is_valid_and_boots_a_kernel() -> None:
    os_def, variant = find_os("busybox+default", environ={"HAVEN_GUEST_DIR": "/g"})
    assert variant == "default" and os_def.path == REPO_OS / "busybox"
    assert os_def.boot == BootHints("/g/vmlinuz", "/g/initrd.gz",
                                    "console=ttyS0 quiet sysrq_always_enabled=1")
    os_def, _ = find_os("busybox", environ={})
    assert os_def.boot is not None
    assert os_def.boot.kernel_path == "/var/cache/haven/guest/vmlinuz"


def test_environment_has_ganeti_names_and_values(tmp_path: Path) -> None:
    make_os(tmp_path, "deb", variants="bookworm\ntrixie\n")
    os_def, _ = find_os("deb", [tmp_path])
    env = os_environment(
        os_def, None, "vm1.example.com",
        ["/dev/vg/disk0", DiskEnv("/srv/d1.img", access="ro", uuid="u1", size_mib=512,
                                  name="data", backend_type="file:loop")],
        "kvm", {"EXTRA": "x"},
        nics=[NicEnv("aa:00:00:00:00:01", ip="192.0.2.5", mode="bridged", link="br0",
                     uuid="n0"), NicEnv("aa:00:00:00:00:02", mode="routed", link="100")],
        osparams={"root-size": "8"}, beparams={"maxmem": 512, "auto_balance": True},
        hvparams={"disk_type": "paravirtual", "nic_type": "paravirtual"},
        instance_uuid="iu", primary_node="node01", secondary_nodes=["node02"], debug=1)
    assert env == {
        "OS_API_VERSION": "20", "OS_NAME": "deb", "OS_VARIANT": "bookworm",
        "DEBUG_LEVEL": "1", "PATH": "/sbin:/bin:/usr/sbin:/usr/bin", "OSP_ROOT_SIZE": "8",
        "INSTANCE_NAME": "vm1.example.com", "INSTANCE_OS": "deb+bookworm",
        "INSTANCE_UUID": "iu", "INSTANCE_PRIMARY_NODE": "node01",
        "INSTANCE_SECONDARY_NODES": "node02", "HYPERVISOR": "kvm",
        "DISK_COUNT": "2", "NIC_COUNT": "2",
        "DISK_0_ACCESS": "rw", "DISK_0_UUID": "", "DISK_0_PATH": "/dev/vg/disk0",
        "DISK_0_FRONTEND_TYPE": "paravirtual", "DISK_0_BACKEND_TYPE": "file:loop",
        "DISK_1_ACCESS": "ro", "DISK_1_UUID": "u1", "DISK_1_SIZE": "512",
        "DISK_1_PATH": "/srv/d1.img", "DISK_1_NAME": "data",
        "DISK_1_FRONTEND_TYPE": "paravirtual", "DISK_1_BACKEND_TYPE": "file:loop",
        "NIC_0_MAC": "aa:00:00:00:00:01", "NIC_0_UUID": "n0", "NIC_0_IP": "192.0.2.5",
        "NIC_0_MODE": "bridged", "NIC_0_BRIDGE": "br0", "NIC_0_LINK": "br0",
        "NIC_0_FRONTEND_TYPE": "paravirtual",
        "NIC_1_MAC": "aa:00:00:00:00:02", "NIC_1_UUID": "", "NIC_1_MODE": "routed",
        "NIC_1_LINK": "100", "NIC_1_FRONTEND_TYPE": "paravirtual",
        "INSTANCE_BE_maxmem": "512", "INSTANCE_BE_auto_balance": "True",
        "INSTANCE_HV_disk_type": "paravirtual", "INSTANCE_HV_nic_type": "paravirtual",
        "EXTRA": "x",
    }


def test_environment_for_rename_import_export_and_reinstall(tmp_path: Path) -> None:
    make_os(tmp_path, "plain", variants=None)
    os_def, _ = find_os("plain", [tmp_path])
    disks = ["/d0", "/d1"]
    env = os_environment(os_def, None, "new", disks, "kvm", old_name="old", reinstall=True)
    assert env["OLD_INSTANCE_NAME"] == "old" and env["INSTANCE_REINSTALL"] == "1"
    assert env["OS_VARIANT"] == "" and env["INSTANCE_OS"] == "plain"
    env = os_environment(os_def, None, "vm", disks, "kvm", export_index=1)
    assert (env["EXPORT_DEVICE"], env["EXPORT_DISK_PATH"], env["EXPORT_INDEX"]) == \
        ("/d1", "/d1", "1")
    env = os_environment(os_def, None, "vm", disks, "kvm", import_index=0)
    assert (env["IMPORT_DEVICE"], env["IMPORT_DISK_PATH"], env["IMPORT_INDEX"]) == \
        ("/d0", "/d0", "0")
    assert "EXPORT_DEVICE" not in env and "OLD_INSTANCE_NAME" not in env


def test_verify_gets_only_the_core_environment(tmp_path: Path) -> None:
    make_os(tmp_path, "deb", variants="bookworm\n")
    os_def, _ = find_os("deb", [tmp_path])
    assert os_core_environment(os_def, "bookworm", {"dhcp": "no"}) == {
        "OS_API_VERSION": "20", "OS_NAME": "deb", "OS_VARIANT": "bookworm",
        "DEBUG_LEVEL": "0", "PATH": "/sbin:/bin:/usr/sbin:/usr/bin", "OSP_DHCP": "no"}


ECHO_ENV = "#!/bin/sh\necho \"cwd=$(pwd) args=$* name=$INSTANCE_NAME home=${HOME:-unset}\"\n"


def test_script_runs_with_exactly_the_environment_and_logs(tmp_path: Path) -> None:
    d = make_os(tmp_path / "os", "t", scripts={"create": ECHO_ENV, "verify": ECHO_ENV})
    os_def, _ = find_os("t", [tmp_path / "os"])
    env = os_environment(os_def, None, "vm1", [], "kvm")
    run_os_script(os_def, "create", env, tmp_path / "logs" / "create.log", timeout=10)
    assert (tmp_path / "logs" / "create.log").read_text() == \
        f"cwd={d} args= name=vm1 home=unset\n"
    run_os_script(os_def, "verify", os_core_environment(os_def, None), tmp_path / "v.log", 10)
    assert "args=parameters name= " in (tmp_path / "v.log").read_text()


def test_failing_create_keeps_its_log_and_raises_with_the_last_lines(tmp_path: Path) -> None:
    script = "#!/bin/sh\nfor i in $(seq 1 30); do echo line $i; done\necho oops >&2\nexit 3\n"
    make_os(tmp_path / "os", "t", scripts={"create": script})
    os_def, _ = find_os("t", [tmp_path / "os"])
    log = tmp_path / "create.log"
    with pytest.raises(OpExecError) as err:
        run_os_script(os_def, "create", os_environment(os_def, None, "vm1", [], "kvm"),
                      log, timeout=10)
    msg = err.value.message
    assert msg.startswith("OS 't' script 'create' for vm1 failed with exit code 3")
    assert str(log) in msg
    assert msg.endswith("last lines: line 22 | line 23 | line 24 | line 25 | line 26 | "
                        "line 27 | line 28 | line 29 | line 30 | oops")
    assert log.read_text().splitlines()[0] == "line 1"
    assert log.read_text().splitlines()[-1] == "oops"


def test_a_script_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    make_os(tmp_path / "os", "t", scripts={
        "rename": f"#!/bin/sh\necho started\nsleep 30 &\necho $! > {pidfile}\nwait\n"})
    os_def, _ = find_os("t", [tmp_path / "os"])
    with pytest.raises(OpExecError, match=r"script 'rename' timed out after 0.5 s and was "
                                          r"killed .*last lines: started"):
        run_os_script(os_def, "rename", {}, tmp_path / "r.log", timeout=0.5)
    child = int(pidfile.read_text())
    for _ in range(100):  # the killed child may linger a moment as a zombie of init
        try:
            os.kill(child, 0)
            if Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
                break
        except (ProcessLookupError, FileNotFoundError):
            break
        time.sleep(0.02)
    else:
        pytest.fail(f"the script's child {child} survived the timeout")


def test_export_stdout_is_the_data_and_import_reads_stdin(tmp_path: Path) -> None:
    make_os(tmp_path / "os", "t", scripts={
        "export": "#!/bin/sh\necho progress >&2\nprintf 'DATA'\n",
        "import": "#!/bin/sh\ncat > \"$IMPORT_DEVICE\"\necho imported\n"})
    os_def, _ = find_os("t", [tmp_path / "os"])
    disk = tmp_path / "disk"
    with (tmp_path / "out").open("wb") as out:
        run_os_script(os_def, "export", {}, tmp_path / "e.log", 10, stdout=out)
    assert (tmp_path / "out").read_bytes() == b"DATA"
    assert (tmp_path / "e.log").read_text() == "progress\n"
    env = os_environment(os_def, None, "vm", [str(disk)], "kvm", import_index=0)
    with (tmp_path / "out").open("rb") as data:
        run_os_script(os_def, "import", env, tmp_path / "i.log", 10, stdin=data)
    assert disk.read_bytes() == b"DATA"


def test_a_missing_script_is_reported_not_raised_raw(tmp_path: Path) -> None:
    d = make_os(tmp_path / "os", "t")
    os_def, _ = find_os("t", [tmp_path / "os"])
    (d / "export").unlink()
    with pytest.raises(OpExecError, match="script 'export' could not be started"):
        run_os_script(os_def, "export", {}, tmp_path / "e.log", 10)


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None or shutil.which("debugfs") is None,
                    reason="e2fsprogs (mkfs.ext4, debugfs) is not installed")
def test_busybox_os_creates_renames_and_verifies(tmp_path: Path) -> None:
    os_def, variant = find_os("busybox+default", environ={})
    disk = tmp_path / "disk0"
    with disk.open("wb") as f:
        f.truncate(16 << 20)
    env = os_environment(os_def, variant, "vm1.example.com", [str(disk)], "kvm")
    run_os_script(os_def, "create", env, tmp_path / "create.log", timeout=60)
    assert "formatting disk 0" in (tmp_path / "create.log").read_text()

    def cat(path: str) -> str:
        out = subprocess.run(["debugfs", "-R", f"cat {path}", str(disk)],
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()

    assert cat("/etc/hostname") == "vm1.example.com"
    env = os_environment(os_def, variant, "vm2", [str(disk)], "kvm",
                         old_name="vm1.example.com")
    run_os_script(os_def, "rename", env, tmp_path / "rename.log", timeout=60)
    assert cat("/etc/hostname") == "vm2"
    run_os_script(os_def, "verify", os_core_environment(os_def, variant), tmp_path / "v.log",
                  timeout=10)
    with pytest.raises(OpExecError, match="has no parameters; remove: dhcp"):
        run_os_script(os_def, "verify", os_core_environment(os_def, variant, {"dhcp": "no"}),
                      tmp_path / "v.log", timeout=10)


# -- booting: which kernel, which command line (haven.osdef.boot) ----------------------
REPO = Path(__file__).resolve().parents[2]
needs_mke2fs = pytest.mark.skipif(shutil.which("mke2fs") is None or
                                  shutil.which("debugfs") is None,
                                  reason="e2fsprogs (mke2fs, debugfs) is not installed")


def ext4_disk(tmp_path: Path, boot_files: dict[str, bytes], name: str = "disk0") -> Path:
    """A raw disk that is one ext4 file system holding ``/boot/<file>`` (as
    ganeti-instance-debootstrap makes with PARTITION_STYLE=none), built without mounting."""
    root = tmp_path / f"{name}-root"
    (root / "boot").mkdir(parents=True)
    for fname, data in boot_files.items():
        (root / "boot" / fname).write_bytes(data)
    (root / "vmlinuz").symlink_to("boot/vmlinuz-6.1.0-10-cloud-amd64")
    disk = tmp_path / name
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(root), str(disk), "8M"],
                   check=True, capture_output=True)
    return disk


@needs_mke2fs
def test_a_disk_with_its_own_kernel_boots_the_newest_one_with_root_on_the_whole_disk(
        tmp_path: Path) -> None:
    from haven.osdef.boot import plan_boot

    disk = ext4_disk(tmp_path, {
        "vmlinuz-6.1.0-9-cloud-amd64": b"old kernel",
        "initrd.img-6.1.0-9-cloud-amd64": b"old initrd",
        "vmlinuz-6.1.0-10-cloud-amd64": b"new kernel",
        "initrd.img-6.1.0-10-cloud-amd64": b"new initrd",
        "config-6.1.0-10-cloud-amd64": b"x"})
    plan = plan_boot("vm1", {}, None, str(disk), tmp_path / "boot" / "vm1")
    assert plan.source == "disk"
    assert Path(plan.kernel_path).read_bytes() == b"new kernel"  # 10 > 9, not "1" < "9"
    assert Path(plan.initrd_path).read_bytes() == b"new initrd"
    assert plan.kernel_args == "root=/dev/vda ro console=ttyS0"
    # Ganeti's parameters still apply to the disk's kernel.
    plan = plan_boot("vm1", {"kernel_args": "quiet", "serial_console": False,
                             "root_path": "/dev/vdb"}, None, str(disk), tmp_path / "b2")
    assert plan.source == "disk" and plan.kernel_args == "root=/dev/vdb quiet"
    from haven.osdef.boot import forget_boot

    forget_boot(tmp_path / "boot" / "vm1")
    assert not (tmp_path / "boot" / "vm1").exists()


@needs_mke2fs
def test_a_disk_kernel_without_initrd_boots_alone(tmp_path: Path) -> None:
    from haven.osdef.boot import plan_boot

    disk = ext4_disk(tmp_path, {"vmlinuz-6.1.0-10-cloud-amd64": b"k"})
    boot_dir = tmp_path / "boot"
    boot_dir.mkdir()
    (boot_dir / "initrd.img").write_bytes(b"stale initrd of an earlier kernel")
    plan = plan_boot("vm1", {}, None, str(disk), boot_dir)
    assert plan.source == "disk" and plan.initrd_path == ""
    assert not (boot_dir / "initrd.img").exists()


@needs_mke2fs
@pytest.mark.parametrize("case", ["no-fs", "no-kernel", "qcow2"])
def test_without_a_kernel_in_the_disk_it_boots_from_the_disk(tmp_path: Path,
                                                             case: str) -> None:
    from haven.osdef.boot import plan_boot

    if case == "no-fs":  # e.g. PARTITION_STYLE=msdos: a partition table, maybe GRUB
        disk = tmp_path / "disk0"
        disk.write_bytes(b"\0" * 4096)
    else:
        disk = ext4_disk(tmp_path, {"config-6.1.0-10-cloud-amd64": b"x"})
    plan = plan_boot("vm1", {}, None, str(disk), tmp_path / "boot",
                     disk0_raw=case != "qcow2")
    assert plan == plan.__class__("", "", "", "bootloader")
    assert not (tmp_path / "boot").exists()


@needs_mke2fs
def test_kernel_path_boots_that_kernel_with_ganetis_command_line(tmp_path: Path) -> None:
    from haven.osdef.boot import plan_boot

    kernel = tmp_path / "vmlinuz-host"
    kernel.write_bytes(b"k")
    whole = ext4_disk(tmp_path, {"vmlinuz-6.1.0-10-cloud-amd64": b"guest"})
    parted = tmp_path / "parted"
    parted.write_bytes(b"\0" * 4096)
    hints = BootHints("/g/vmlinuz", "/g/initrd.gz", "console=ttyS0 quiet")
    hv: dict[str, object] = {"kernel_path": str(kernel)}
    plan = plan_boot("vm1", hv, hints, str(whole), tmp_path / "b")
    assert (plan.source, plan.kernel_path, plan.initrd_path) == ("hvparams", str(kernel), "")
    assert plan.kernel_args == "root=/dev/vda ro console=ttyS0"
    plan = plan_boot("vm1", hv, None, str(parted), tmp_path / "b")
    assert plan.kernel_args == "root=/dev/vda1 ro console=ttyS0"  # Ganeti's default
    hv.update(initrd_path=str(kernel), root_path="/dev/vdb2", kernel_args="single",
              serial_console="False")
    plan = plan_boot("vm1", hv, None, str(whole), tmp_path / "b")
    assert (plan.initrd_path, plan.kernel_args) == (str(kernel), "root=/dev/vdb2 single")


def test_the_os_kernel_is_used_unless_hvparams_name_one(tmp_path: Path) -> None:
    from haven.osdef.boot import plan_boot

    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.gz"
    kernel.write_bytes(b"k")
    initrd.write_bytes(b"i")
    hints = BootHints(str(kernel), str(initrd), "console=ttyS0 quiet")
    plan = plan_boot("vm1", {}, hints, None, tmp_path / "b")
    assert plan == plan.__class__(str(kernel), str(initrd), "console=ttyS0 quiet", "os")
    plan = plan_boot("vm1", {"kernel_args": "console=ttyS0", "root_path": "/dev/vda"},
                     hints, None, tmp_path / "b")
    assert plan.kernel_args == "root=/dev/vda console=ttyS0"


@pytest.mark.parametrize(("hv", "expect"), [
    ({"kernel_path": "/nonexistent/vmlinuz"},
     "Instance vm1: the kernel /nonexistent/vmlinuz (-H kernel_path) does not exist on "
     "node node01; install it there or leave kernel_path unset to boot the kernel in the "
     "instance's disk."),
    ({"kernel_path": "boot/vmlinuz"}, "-H kernel_path=boot/vmlinuz is not an absolute path"),
    ({"initrd_path": "/nonexistent/initrd"}, "the initrd /nonexistent/initrd (-H initrd_path)"),
])
def test_a_missing_kernel_or_initrd_is_one_sentence(tmp_path: Path, hv: dict[str, object],
                                                    expect: str) -> None:
    from haven.osdef.boot import plan_boot

    with pytest.raises(InvalidInput) as err:
        plan_boot("vm1", hv, None, None, tmp_path / "b", node="node01")
    assert expect in err.value.message and err.value.message.count(". ") == 0
    # A hypervisor that boots nothing (fake) is not checked.
    plan_boot("vm1", hv, None, None, tmp_path / "b", node="node01", inspect=False)


def test_a_missing_os_kernel_says_how_to_build_it(tmp_path: Path) -> None:
    from haven.errors import OpPrereqError
    from haven.osdef.boot import plan_boot

    hints = BootHints(str(tmp_path / "vmlinuz"), "", "console=ttyS0")
    with pytest.raises(OpPrereqError, match="make setup"):
        plan_boot("vm1", {}, hints, None, tmp_path / "b", node="node01")


# -- ganeti-instance-debootstrap's configuration (setup/debootstrap.sh) ----------------
def run_setup(conf: Path, cache: Path) -> str:
    proc = subprocess.run(["bash", str(REPO / "setup" / "debootstrap.sh"), str(conf),
                           str(cache)], capture_output=True, text=True, check=True)
    return proc.stderr


def dpkg_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True,
                          text=True).stdout.strip() or "amd64"


def test_setup_adds_what_haven_needs_once_and_drops_a_cache_without_the_kernel(
        tmp_path: Path) -> None:
    conf, cache, arch = tmp_path / "ganeti-instance-debootstrap", tmp_path / "cache", \
        dpkg_arch()
    conf.write_text('# SUITE="wheezy"\nGENERATE_CACHE="yes"\n')
    cache.mkdir()
    for suite in ("bookworm", "trixie", "other"):
        (cache / f"cache-{suite}-{arch}.tar").write_text("made without EXTRA_PKGS")
    run_setup(conf, cache)
    text = conf.read_text()
    assert text.startswith('# SUITE="wheezy"\nGENERATE_CACHE="yes"\n\n# BEGIN Haven')
    assert 'PARTITION_STYLE="none"' in text
    assert f'EXTRA_PKGS="linux-image-cloud-{arch},dbus"' in text
    suites = [line.split('"')[1] for line in text.splitlines() if line.startswith("SUITE=")]
    assert len(suites) == 1
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        f"cache-{s}-{arch}.tar" for s in ("bookworm", "trixie", "other") if s != suites[0])
    assert run_setup(conf, cache) == "" and conf.read_text() == text  # idempotent
    # An older Haven block is Haven's to rewrite; the cache made with it goes.
    conf.write_text(text.replace(",dbus", ""))
    (cache / f"cache-{suites[0]}-{arch}.tar").write_text("made without dbus")
    assert "removed" in run_setup(conf, cache)
    assert conf.read_text() == text and not (cache / f"cache-{suites[0]}-{arch}.tar").exists()


def test_setup_keeps_what_the_administrator_set(tmp_path: Path) -> None:
    conf, cache, arch = tmp_path / "conf", tmp_path / "cache", dpkg_arch()
    conf.write_text('SUITE="trixie"\nEXTRA_PKGS="linux-image-amd64"\n')
    cache.mkdir()
    (cache / f"cache-trixie-{arch}.tar").write_text("x")
    run_setup(conf, cache)
    text = conf.read_text()
    assert text.startswith('SUITE="trixie"\nEXTRA_PKGS="linux-image-amd64"\n')
    assert text.count("SUITE=") == 1 and text.count("EXTRA_PKGS=") == 1
    assert 'PARTITION_STYLE="none"' in text
    assert (cache / f"cache-trixie-{arch}.tar").exists()  # its package list is the admin's
    conf.write_text('SUITE="trixie"\nPARTITION_STYLE="msdos"\nEXTRA_PKGS=""\n')
    run_setup(conf, cache)
    assert "Haven" not in conf.read_text()  # nothing left to set: no block


@pytest.mark.skipif(not Path("/usr/share/ganeti/os/debootstrap").is_dir(),
                    reason="ganeti-instance-debootstrap is not installed")
def test_the_installed_debootstrap_os_is_found_with_its_default_variant() -> None:
    os_def, variant = find_os("debootstrap+default", environ={})
    assert os_def.path == Path("/usr/share/ganeti/os/debootstrap") and variant == "default"
    assert os_def.api_version == 20 and os_def.boot is None  # boots the disk's kernel


@needs_mke2fs
def test_a_disk_that_looks_like_ext4_but_cannot_be_read_is_one_sentence(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from haven.errors import OpPrereqError
    from haven.osdef import boot

    disk = tmp_path / "disk0"
    disk.write_bytes(b"\xff" * 1080 + b"\x53\xef" + b"\xff" * 4000)  # magic, garbage
    monkeypatch.setattr(boot, "_DEBUGFS_TRIES", 1)
    with pytest.raises(OpPrereqError) as err:
        boot.plan_boot("vm1", {}, None, str(disk), tmp_path / "b")
    assert err.value.message.startswith(f"Cannot read the file system of {disk} to find "
                                        "its kernel (debugfs: ")
    assert "-H kernel_path" in err.value.message and "\n" not in err.value.message
    monkeypatch.setattr(boot, "DEBUGFS", "debugfs-not-installed")
    with pytest.raises(OpPrereqError, match="debugfs is missing; install e2fsprogs"):
        boot.plan_boot("vm1", {}, None, str(disk), tmp_path / "b")


@needs_mke2fs
def test_the_kernel_is_read_from_a_disk_whose_bitmaps_are_stale(tmp_path: Path) -> None:
    """A running guest's file system has on-disk bitmaps that do not match their checksums
    (the guest holds the current ones in memory): a migration target reads it anyway."""
    from haven.osdef.boot import plan_boot

    disk = ext4_disk(tmp_path, {"vmlinuz-6.1.0-10-cloud-amd64": b"the kernel"})
    subprocess.run(["debugfs", "-w", "-R", "set_bg 0 block_bitmap_csum 0x1234", str(disk)],
                   check=True, capture_output=True)
    plain = subprocess.run(["debugfs", "-R", "ls /boot", str(disk)], capture_output=True,
                           text=True)
    assert "checksum does not match" in plain.stderr  # the state the guest leaves
    plan = plan_boot("vm1", {}, None, str(disk), tmp_path / "boot")
    assert Path(plan.kernel_path).read_bytes() == b"the kernel"
