"""The environment of OS scripts and running them (Ganeti's ``backend.OSEnvironment``,
``OSCoreEnv`` and ``RunCmd(..., reset_env=True)``).

Scripts get *only* these variables (no inherited environment), the OS directory as
working directory and, unless told otherwise, ``/dev/null`` as stdin.  Variable names
and values follow Ganeti exactly, including its quirks: ``INSTANCE_BE_*`` and
``INSTANCE_HV_*`` keep the parameter's own (lower) case, booleans are ``True``/``False``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import stat
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

from haven.errors import OpExecError
from haven.logtail import tail_lines

if TYPE_CHECKING:
    from haven.osdef.api import OsDefinition

log = logging.getLogger(__name__)

OsScript = Literal["create", "import", "export", "rename", "verify"]
#: Ganeti's ``constants.HOOKS_PATH``: the PATH every OS script gets.
HOOKS_PATH = "/sbin:/bin:/usr/sbin:/usr/bin"
TAIL_LINES = 10


@dataclass(frozen=True)
class DiskEnv:
    """What an OS script is told about one disk.  ``backend_type``: ``block`` or
    ``file:<driver>``; None guesses from ``path`` (a block device, else ``file:loop``)."""

    path: str
    access: Literal["rw", "ro"] = "rw"
    uuid: str = ""
    size_mib: int | None = None
    name: str = ""
    uri: str = ""
    backend_type: str | None = None


@dataclass(frozen=True)
class NicEnv:
    """What an OS script is told about one NIC (``mode``: bridged, routed, openvswitch,
    or Haven's ``user``)."""

    mac: str
    ip: str = ""
    mode: str = "bridged"
    link: str = ""
    uuid: str = ""
    name: str = ""


def os_core_environment(os_def: OsDefinition, variant: str | None,
                        osparams: Mapping[str, str] | None = None,
                        debug: int = 0) -> dict[str, str]:
    """The variables every script gets; ``verify`` gets only these (``OSCoreEnv``)."""
    api = os_def.api_version
    env = {
        "OS_API_VERSION": str(api),
        "OS_NAME": os_def.name,
        "DEBUG_LEVEL": str(debug),
        "OS_VARIANT": (variant or os_def.default_variant()) if api >= 15 and os_def.variants
        else "",
        "PATH": HOOKS_PATH,
    }
    for pname, pvalue in (osparams or {}).items():
        env["OSP_" + pname.upper().replace("-", "_")] = str(pvalue)
    return env


def _backend_type(disk: DiskEnv) -> str:
    if disk.backend_type is not None:
        return disk.backend_type
    try:
        return "block" if stat.S_ISBLK(os.stat(disk.path).st_mode) else "file:loop"
    except OSError:
        return "file:loop"


def os_environment(
    os_def: OsDefinition,
    variant: str | None,
    instance_name: str,
    disks: Sequence[str | DiskEnv],
    hypervisor: str,
    extra: Mapping[str, str] | None = None,
    *,
    nics: Sequence[NicEnv] = (),
    osparams: Mapping[str, str] | None = None,
    beparams: Mapping[str, object] | None = None,
    hvparams: Mapping[str, object] | None = None,
    instance_uuid: str = "",
    primary_node: str = "",
    secondary_nodes: Sequence[str] = (),
    debug: int = 0,
    reinstall: bool = False,
    old_name: str | None = None,
    export_index: int | None = None,
    import_index: int | None = None,
) -> dict[str, str]:
    """The full environment of an instance's OS script (``backend.OSEnvironment``).

    ``reinstall`` adds ``INSTANCE_REINSTALL=1`` (create); ``old_name`` adds
    ``OLD_INSTANCE_NAME`` (rename); ``export_index``/``import_index`` add
    ``EXPORT_*``/``IMPORT_*`` for that disk.  ``extra`` is merged last, as is.
    """
    env = os_core_environment(os_def, variant, osparams, debug)
    v = env["OS_VARIANT"]
    env.update({
        "INSTANCE_NAME": instance_name,
        "INSTANCE_OS": os_def.name + (f"+{v}" if v else ""),
        "INSTANCE_UUID": instance_uuid,
        "INSTANCE_PRIMARY_NODE": primary_node,
        "INSTANCE_SECONDARY_NODES": " ".join(secondary_nodes),
        "HYPERVISOR": hypervisor,
        "DISK_COUNT": str(len(disks)),
        "NIC_COUNT": str(len(nics)),
    })
    hv = dict(hvparams or {})
    for idx, item in enumerate(disks):
        disk = DiskEnv(path=item) if isinstance(item, str) else item
        env[f"DISK_{idx}_ACCESS"] = disk.access
        env[f"DISK_{idx}_UUID"] = disk.uuid
        if disk.size_mib is not None:
            env[f"DISK_{idx}_SIZE"] = str(disk.size_mib)
        if disk.path:
            env[f"DISK_{idx}_PATH"] = disk.path
        if disk.uri:
            env[f"DISK_{idx}_URI"] = disk.uri
        if disk.name:
            env[f"DISK_{idx}_NAME"] = disk.name
        if "disk_type" in hv:
            env[f"DISK_{idx}_FRONTEND_TYPE"] = str(hv["disk_type"])
        env[f"DISK_{idx}_BACKEND_TYPE"] = _backend_type(disk)
    for idx, nic in enumerate(nics):
        env[f"NIC_{idx}_MAC"] = nic.mac
        env[f"NIC_{idx}_UUID"] = nic.uuid
        if nic.name:
            env[f"NIC_{idx}_NAME"] = nic.name
        if nic.ip:
            env[f"NIC_{idx}_IP"] = nic.ip
        env[f"NIC_{idx}_MODE"] = nic.mode
        if nic.mode == "bridged":
            env[f"NIC_{idx}_BRIDGE"] = nic.link
        if nic.link:
            env[f"NIC_{idx}_LINK"] = nic.link
        if "nic_type" in hv:
            env[f"NIC_{idx}_FRONTEND_TYPE"] = str(hv["nic_type"])
    for kind, params in (("BE", beparams or {}), ("HV", hv)):
        for key, value in params.items():
            env[f"INSTANCE_{kind}_{key}"] = str(value)
    if reinstall:
        env["INSTANCE_REINSTALL"] = "1"
    if old_name is not None:
        env["OLD_INSTANCE_NAME"] = old_name
    for kind, index in (("IMPORT", import_index), ("EXPORT", export_index)):
        if index is None:
            continue
        if f"DISK_{index}_PATH" in env:
            env[f"{kind}_DEVICE"] = env[f"{kind}_DISK_PATH"] = env[f"DISK_{index}_PATH"]
        if f"DISK_{index}_URI" in env:
            env[f"{kind}_DISK_URI"] = env[f"DISK_{index}_URI"]
        env[f"{kind}_INDEX"] = str(index)
    env.update(extra or {})
    return env


def run_os_script(
    os_def: OsDefinition,
    script: OsScript,
    env: Mapping[str, str],
    log_path: Path,
    timeout: float,
    stdin: IO[bytes] | int | None = None,
    *,
    stdout: IO[bytes] | int | None = None,
    args: Sequence[str] | None = None,
) -> None:
    """Run one script of ``os_def`` with exactly ``env``; its whole output goes to
    ``log_path`` (overwritten), except stdout when ``stdout`` is given (``export``
    writes the disk image there).  ``verify`` gets the argument ``parameters`` unless
    ``args`` says otherwise.  On a non-zero exit, a signal, a timeout (the script's
    process group is killed) or a script that cannot start, raises
    :class:`~haven.errors.OpExecError` naming the OS, the script, the log and the last
    lines of the log.
    """
    path = os_def.script(script)
    argv = [str(path), *(args if args is not None else
                         (["parameters"] if script == "verify" else []))]
    instance = env.get("INSTANCE_NAME", "")
    what = f"OS '{os_def.name}' script '{script}'" + (f" for {instance}" if instance else "")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log_path.open("wb") as logf:
        try:
            proc = subprocess.Popen(
                argv, cwd=os_def.path, env=dict(env),
                stdin=subprocess.DEVNULL if stdin is None else stdin,
                stdout=logf if stdout is None else stdout, stderr=logf,
                start_new_session=True)
        except OSError as exc:
            raise OpExecError(f"{what} could not be started ({exc.strerror or exc}); "
                              f"check that {path} exists and is executable") from exc
        try:
            rc: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    elapsed = time.monotonic() - started
    if rc == 0:
        log.info("%s succeeded in %.1f s (log %s)", what, elapsed, log_path)
        return
    if rc is None:
        cause = f"timed out after {timeout:g} s and was killed"
    elif rc < 0:
        cause = f"was killed by signal {-rc}"
    else:
        cause = f"failed with exit code {rc}"
    tail = tail_lines(log_path, TAIL_LINES)
    last = "; last lines: " + " | ".join(tail) if tail else "; the log is empty"
    raise OpExecError(f"{what} {cause} (full log in {log_path}){last}")
