"""RAPI's version-1 instance creation body (``instance-create-reqv1``) as Haven's job.

Ganeti's server fills ``OpInstanceCreate`` from the body, renaming ``os`` to
``os_type`` and ``name`` to ``instance_name`` (rlib2.R_2_instances.POST_RENAME).  Haven
does the same and then:

- keeps the parameters its ``OP_INSTANCE_CREATE`` takes;
- drops Ganeti parameters Haven has no use for when they carry their "off" value
  (``identify_defaults: false``, ``src_node: null``, ``compress: "none"``...);
- refuses, before anything is queued, what it cannot do: import modes, another node
  group, any other parameter with a value, a disk template the cluster has not enabled;
- turns ``tags`` into a second opcode of the same job (``OP_TAGS_SET``), so the new
  instance carries them when the job ends.
"""

from __future__ import annotations

from typing import Any

from haven.api.routing import HttpError, Request
from haven.errors import InvalidInput

REQ_VERSION = "__version__"
RENAME = {"os": "os_type", "name": "instance_name"}
# What Haven's OP_INSTANCE_CREATE takes (see master/opcodes/instance_create.py).
HAVEN_PARAMS = frozenset({
    "instance_name", "os_type", "disk_template", "disks", "nics", "beparams", "hvparams",
    "osparams", "pnode", "snode", "start", "no_install", "hypervisor", "iallocator",
    "wait_for_sync", "name_check", "ip_check", "conflicts_check", "file_storage_dir",
    "file_driver", "disk_format", "os_variant", "comment", "priority", "depends",
    "debug_level"})
# Ganeti parameters that mean nothing to Haven while they hold their "off" value.
IGNORED_WHEN_OFF = frozenset({
    "force_variant", "identify_defaults", "opportunistic_locking",
    "instance_communication", "forthcoming", "commit", "osparams_private",
    "osparams_secret", "compress", "src_node", "src_path", "src_node_uuid",
    "source_handshake", "source_instance_name", "source_shutdown_timeout",
    "source_x509_ca", "helper_startup_timeout", "helper_shutdown_timeout",
    "pnode_uuid", "snode_uuid", "reason"})
OFF_VALUES: tuple[Any, ...] = (None, False, "", "none", 0)


def _is_off(value: Any) -> bool:
    if isinstance(value, dict | list):
        return not value
    return any(value is v or (value == v and type(value) is type(v)) for v in OFF_VALUES)


def create_ops(body: Any, enabled_templates: tuple[str, ...] | None = None
               ) -> list[dict[str, Any]]:
    """The opcodes of the job a version-1 creation body asks for."""
    if not isinstance(body, dict):
        raise HttpError(400, "The instance creation body must be a JSON object.")
    version = body.get(REQ_VERSION, 0)
    if version == 0:
        raise HttpError(400, "Instance creation request version 0 is no longer "
                             "supported; send __version__ 1.")
    if version != 1:
        raise HttpError(400, f"Unsupported request data version {version!r}.")
    data = {k: v for k, v in body.items() if k != REQ_VERSION}
    mode = data.pop("mode", "create")
    if mode != "create":
        raise HttpError(400, f"Instance creation mode {mode!r} is not supported by Haven; "
                             f"only 'create' (no import or remote-import).")
    for old, new in RENAME.items():
        if old in data:
            if new in data and data[new] != data[old]:
                raise InvalidInput(f"Give only one of {old!r} and {new!r}.")
            data[new] = data.pop(old)
    group = data.pop("group_name", None)
    if group not in (None, "", "default"):
        raise HttpError(400, f"Node group {group!r} does not exist; Haven has one group, "
                             f"'default'.", "unknown_entity")
    tags = data.pop("tags", None) or []
    if not isinstance(tags, list):
        raise InvalidInput("The instance's tags must be a list of strings.")
    op: dict[str, Any] = {"OP_ID": "OP_INSTANCE_CREATE"}
    unsupported = []
    for key, value in data.items():
        if key in HAVEN_PARAMS:
            if value is not None:
                op[key] = value
        elif key in IGNORED_WHEN_OFF and _is_off(value):
            continue
        else:
            unsupported.append(key)
    if unsupported:
        raise HttpError(400, f"Haven does not support the instance creation parameter(s) "
                             f"{', '.join(sorted(unsupported))}.")
    if isinstance(op.get("nics"), list):
        op["nics"] = [_nic(i, n) for i, n in enumerate(op["nics"])]
    tmpl = op.get("disk_template")
    if isinstance(op.get("disks"), list):
        op["disks"] = [_disk(i, dk, tmpl == "ext") for i, dk in enumerate(op["disks"])]
    if enabled_templates is not None and isinstance(tmpl, str) and \
            tmpl not in enabled_templates:
        raise InvalidInput(f"Disk template {tmpl!r} is not enabled in this cluster "
                           f"(enabled: {', '.join(enabled_templates)}).")
    ops = [op]
    if tags:
        ops.append({"OP_ID": "OP_TAGS_SET", "kind": "instance",
                    "name": op.get("instance_name"), "tags": tags})
    return ops


NIC_KEYS = frozenset({"mac", "ip", "mode", "link", "name"})
DISK_KEYS = frozenset({"size", "mode"})
# Disk keys of Ganeti's that do not apply to Haven's files and replicas.
DISK_IGNORED = frozenset({"name", "vg", "metavg", "spindles", "uuid"})


def _nic(i: int, nic: Any) -> Any:
    """Ganeti's NIC: a ``link`` without a ``mode`` is a bridge (Ganeti's default mode);
    networks and VLANs are refused (Haven has neither)."""
    if not isinstance(nic, dict):
        return nic  # the opcode's own check names it
    out = {k: v for k, v in nic.items() if v is not None}
    unknown = sorted(set(out) - NIC_KEYS)
    if unknown:
        raise HttpError(400, f"NIC {i}: Haven does not support the NIC parameter(s) "
                             f"{', '.join(unknown)}.")
    if out.get("link") and "mode" not in out:
        out["mode"] = "bridged"
    return out


def _disk(i: int, disk: Any, ext: bool = False) -> Any:
    """Ganeti's disk; with ``-t ext`` every other key is a parameter of the provider."""
    if not isinstance(disk, dict):
        return disk
    out = {k: v for k, v in disk.items() if v is not None and k not in DISK_IGNORED}
    if ext:
        return out
    unknown = sorted(set(out) - DISK_KEYS)
    if unknown:
        raise HttpError(400, f"Disk {i}: Haven does not support the disk parameter(s) "
                             f"{', '.join(unknown)} (no adoption; provider= needs -t ext).")
    return out


def reinstall_ops(name: str, body: Any, os_query: str | None, no_startup: bool
                  ) -> list[dict[str, Any]]:
    """Ganeti's reinstall (rlib2._ParseInstanceReinstallRequest): shut down, reinstall,
    and start again unless ``start`` is false.  Body ``{"os", "osparams", "start"}``
    (``instance-reinstall-reqv1``), or the older query ``?os=NAME&nostartup=1``."""
    if body:
        if os_query is not None or no_startup:
            raise HttpError(400, "Can't combine query and body parameters.")
        if not isinstance(body, dict):
            raise HttpError(400, "Invalid body contents, not a dictionary.")
        unknown = sorted(set(body) - {"os", "osparams", "start"})
        if unknown:
            raise HttpError(400, f"Reinstalling does not take parameter(s) "
                                 f"{', '.join(unknown)}.")
        os_name, osparams, start = body.get("os"), body.get("osparams"), \
            body.get("start", True)
        if not isinstance(start, bool):
            raise InvalidInput(f"Parameter 'start' must be true or false, not {start!r}.")
    else:
        os_name, osparams, start = os_query, None, not no_startup
    reinstall: dict[str, Any] = {"OP_ID": "OP_INSTANCE_REINSTALL", "instance_name": name}
    if os_name:
        reinstall["os_type"] = os_name
    if osparams:
        reinstall["osparams"] = osparams
    ops = [{"OP_ID": "OP_INSTANCE_SHUTDOWN", "instance_name": name}, reinstall]
    if start:
        ops.append({"OP_ID": "OP_INSTANCE_STARTUP", "instance_name": name})
    return ops


def refuse_dry_run(q: Request) -> None:
    """Haven's job runner has no dry-run mode: refuse rather than do the real thing."""
    if q.qbool("dry_run"):
        raise HttpError(501, "Dry runs (dry_run=1) are not supported by Haven; nothing "
                             "was queued.", "wrong_input")


__all__ = ["create_ops", "refuse_dry_run", "reinstall_ops"]
