"""The ExtStorage runner and the ``ext`` template, with a third-party provider used
unchanged (``tests/extstorage/shareddir``, written from Ganeti's man page) and small
broken providers made here."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from haven.errors import HavenError
from haven.hypervisor.base import DiskSpec
from haven.hypervisor.qemu.cmdline import disk_args
from haven.model.instance import Disk, Instance
from haven.storage import extstorage as es
from haven.storage.base import StoragePaths, template

THIRD_PARTY = Path(__file__).resolve().parent.parent / "extstorage"


@pytest.fixture
def providers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "providers"
    shutil.copytree(THIRD_PARTY, root)
    monkeypatch.setenv("HAVEN_EXTSTORAGE_PATH", str(root))
    return root


def _inst(*disks: Disk) -> Instance:
    return Instance(name="vm1", uuid="u-1", os="busybox", hypervisor="kvm",
                    disk_template="ext", primary_node="node01", disks=disks)


def _tmpl(tmp_path: Path) -> object:
    return template("ext", StoragePaths(tmp_path / "f", tmp_path / "s", node="node01",
                                        initiator=es.initiator_name("c", "node01"),
                                        data_dir=tmp_path))


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


def test_the_third_party_provider_runs_unchanged_through_the_template(
        providers: Path, tmp_path: Path) -> None:
    vols = tmp_path / "vols"
    vols.mkdir()
    t = _tmpl(tmp_path)
    disk = Disk("d-1", 0, 8, provider="shareddir", params={"dir": str(vols)})
    made = t.create(_inst(disk), disk)  # type: ignore[attr-defined]
    assert made.path == "d-1.ext.disk0" and made.provider == "shareddir"
    vol = vols / made.path
    assert vol.stat().st_size == 8 * 2**20
    assert (vols / (made.path + ".meta")).read_text().strip() == "originstname+vm1"
    specs = t.assemble(_inst(made))  # type: ignore[attr-defined]
    assert specs == (DiskSpec(0, str(vol), "raw", False, initiator=specs[0].initiator),)
    t.grow(_inst(made), made, 16)  # type: ignore[attr-defined]
    assert vol.stat().st_size == 16 * 2**20
    t.detach(_inst(made))  # type: ignore[attr-defined]
    assert t.fence(_inst(made), "node02", "iqn.x") == ""  # type: ignore[attr-defined]
    t.remove(_inst(made), made)  # type: ignore[attr-defined]
    assert not vol.exists()


def test_missing_incomplete_and_unknown_parameters_are_one_sentence(
        providers: Path) -> None:
    with pytest.raises(es.ExtStorageError, match=r"provider nosuch is not installed on "
                                                  r"node node01 .*install it in"):
        es.find("nosuch", "node01")
    broken = providers / "broken"
    broken.mkdir()
    _script(broken / "create", "exit 0")
    with pytest.raises(es.ExtStorageError, match=r"incomplete: attach, detach.*"
                                                  r"parameters.list missing"):
        es.find("broken")
    prov = es.find("shareddir")
    with pytest.raises(es.ExtStorageError, match=r"does not take the parameter\(s\) "
                                                  r"colour given for disk 0 of vm1 "
                                                  r"\(it takes: dir\)"):
        es.check_params(prov, {"colour": "red"}, "disk 0 of vm1")
    with pytest.raises(es.ExtStorageError, match="not valid"):
        es.find("../etc")


def test_a_failing_or_garbage_printing_provider_is_named_with_its_words(
        providers: Path, tmp_path: Path) -> None:
    bad = providers / "bad"
    shutil.copytree(providers / "shareddir", bad)
    _script(bad / "attach", "echo 'not a device at all'")
    _script(bad / "setinfo", "echo 'metadata store is read-only' >&2; exit 3")
    vols = tmp_path / "vols"
    vols.mkdir()
    t = _tmpl(tmp_path)
    disk = Disk("d-2", 0, 4, provider="bad", params={"dir": str(vols)})
    with pytest.raises(HavenError, match=r"provider bad could not record the owner of "
                                         r"volume d-2.ext.disk0 \(vm1\): metadata store "
                                         r"is read-only"):
        t.create(_inst(disk), disk)  # type: ignore[attr-defined]
    assert list(vols.iterdir()) == []  # no half-created volume left behind
    made = Disk("d-2", 0, 4, "d-2.ext.disk0", provider="bad", params={"dir": str(vols)})
    (vols / made.path).write_bytes(b"")
    with pytest.raises(HavenError, match=r"printed neither a block device path nor a "
                                         r"kvm: URI .*'not a device at all'"):
        t.assemble(_inst(made))  # type: ignore[attr-defined]
    with pytest.raises(HavenError, match=r"could not create X: its create script cannot run"):
        es.run(es.Provider("gone", tmp_path / "nowhere", {}), "create", {}, "create X")


def test_attach_output_for_user_space_access() -> None:
    prov = es.Provider("p", Path("/x"), {})
    got = es.parse_attach(prov, "\nrbd:pool/x\nkvm:iscsi://u@10.0.0.9:3261/iqn.t:v/1\n"
                                "secret:/etc/haven/chap\n", "attach v")
    assert got == es.Attached("", "iscsi://u@10.0.0.9:3261/iqn.t:v/1", "/etc/haven/chap")
    with pytest.raises(es.ExtStorageError, match="not an absolute path"):
        es.parse_attach(prov, "\nkvm:iscsi://h/t/1\nsecret:chap\n", "attach v")
    with pytest.raises(es.ExtStorageError, match="does not exist on this node"):
        es.parse_attach(prov, "/dev/nonexistent-haven\n", "attach v")


def test_environment_is_ganetis_and_nothing_inherited(tmp_path: Path) -> None:
    ctx = es.Context("node02", "iqn.2026-12.org.haven:c.node02", tmp_path)
    env = es.environment(ctx, "u.ext.disk0", {"portal": "1.2.3.4:3260"}, size=10,
                         new_size=20, metadata="originstname+vm1", disk_uuid="u")
    assert env["VOL_NAME"] == "u.ext.disk0" and env["VOL_SIZE"] == "10"
    assert env["VOL_NEW_SIZE"] == "20" and env["VOL_METADATA"] == "originstname+vm1"
    assert env["EXTP_PORTAL"] == "1.2.3.4:3260" and env["HAVEN_NODE"] == "node02"
    assert env["HAVEN_INITIATOR"].endswith(":c.node02") and "HOME" not in env
    assert es.initiator_name("My_Cluster", "node01") == "iqn.2026-12.org.haven:my-cluster.node01"


def test_qemu_opens_an_iscsi_uri_with_its_secret_object_never_the_password() -> None:
    spec = DiskSpec(0, "", uri="iscsi://haven@127.0.0.9:3260/iqn.2026-12.org.haven:c.v/1",
                    secret_file="/var/lib/haven/chap", initiator="iqn.2026-12.org.haven:c.n1")
    argv = " ".join(disk_args(spec))
    assert "-object secret,id=sec0,format=raw,file=/var/lib/haven/chap" in argv
    assert '"driver":"iscsi"' in argv and '"portal":"127.0.0.9:3260"' in argv
    assert '"target":"iqn.2026-12.org.haven:c.v"' in argv and '"lun":1' in argv
    assert '"password-secret":"sec0"' in argv and '"user":"haven"' in argv
    assert '"initiator-name":"iqn.2026-12.org.haven:c.n1"' in argv
    assert "werror=stop,rerror=stop" in argv
    with pytest.raises(HavenError, match="cannot open 'ftp://x/y'"):
        disk_args(DiskSpec(0, "", uri="ftp://x/y"))
    with pytest.raises(HavenError, match="is not iscsi://"):
        disk_args(DiskSpec(0, "", uri="iscsi://host/only"))
