"""Ganeti's ExtStorage interface: find a provider, run its scripts, read their answers.

A provider is a directory named after it, holding the executables ``create attach
detach remove grow setinfo verify`` and the text file ``parameters.list`` (man
ganeti-extstorage-interface).  Providers are searched, in order, in Ganeti's
``/srv/ganeti/extstorage`` and ``/usr/share/ganeti/extstorage``, then in Haven's own
(``haven/extstorage``: the built-in ``iscsi``).  Every script gets only Ganeti's
environment (``VOL_NAME``, ``VOL_SIZE``, ``VOL_NEW_SIZE``, ``VOL_METADATA``,
``VOL_CNAME``, ``VOL_UUID``, ``EXTP_<PARAM>``) plus a sane ``PATH`` and Haven's own
``HAVEN_NODE``, ``HAVEN_INITIATOR``, ``HAVEN_DATA_DIR`` and ``HAVEN_PYTHON``.

``attach`` prints the block device path on its first line (empty when the volume is
reached in user space only) and then ``<hypervisor>:<uri>`` lines, as Ganeti's KVM
reads them for RBD or Gluster; Haven also reads a ``secret:<file>`` line (the password
of the URI's user, handed to QEMU as a secret object, never on its command line).  An
optional ``fence`` script (Haven's) cuts a dead node off the volume at the storage.

Nothing here is specific to one provider; :mod:`haven.storage.ext` uses it as a disk
template.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from haven.storage.base import StorageError

log = logging.getLogger(__name__)

SEARCH_PATH = (Path("/srv/ganeti/extstorage"), Path("/usr/share/ganeti/extstorage"),
               Path(__file__).resolve().parent.parent / "extstorage")
REQUIRED = ("create", "attach", "detach", "remove", "grow", "setinfo", "verify")
# Haven's URIs are for QEMU, which Ganeti calls "kvm".
HYPERVISOR = "kvm"
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ExtStorageError(StorageError):
    """A provider is missing, refused its input, failed, or printed something unusable."""


@dataclass(frozen=True)
class Provider:
    """One installed provider: its directory and the parameters it declares."""

    name: str
    path: Path
    parameters: dict[str, str]  # name -> description, from parameters.list

    def has(self, script: str) -> bool:
        return os.access(self.path / script, os.X_OK)


@dataclass(frozen=True)
class Attached:
    """What ``attach`` printed: a block device, a URI for QEMU, or both."""

    dev_path: str
    uri: str = ""
    secret_file: str = ""


@dataclass(frozen=True)
class Context:
    """Who runs the script: the node concerned, its initiator name, its data dir."""

    node: str
    initiator: str
    data_dir: Path


def search_path() -> tuple[Path, ...]:
    """Where providers are looked for (``HAVEN_EXTSTORAGE_PATH``, colon-separated,
    comes first: tests and local clusters add their own directories there)."""
    extra = tuple(Path(p) for p in os.environ.get("HAVEN_EXTSTORAGE_PATH", "").split(":")
                  if p)
    return extra + SEARCH_PATH


def initiator_name(cluster: str, node: str) -> str:
    """The iSCSI initiator name (IQN) a node of ``cluster`` uses, unique per node."""
    safe = "".join(c if c.isalnum() or c in ".-" else "-" for c in f"{cluster}.{node}")
    return f"iqn.2026-12.org.haven:{safe.lower()}"


def vol_name(disk_uuid: str, index: int) -> str:
    """Ganeti's volume name: ``UUID.ext.diskX``."""
    return f"{disk_uuid}.ext.disk{index}"


def find(name: str, node: str = "") -> Provider:
    """The provider called ``name``; a missing or incomplete one is one sentence."""
    where = f" on node {node}" if node else ""
    if not name or "/" in name or name.startswith("."):
        raise ExtStorageError(f"ExtStorage provider name {name!r} is not valid; give "
                              f"provider=NAME in --disk.")
    dirs = search_path()
    for base in dirs:
        path = base / name
        if not path.is_dir():
            continue
        missing = [s for s in REQUIRED if not os.access(path / s, os.X_OK)]
        plist = path / "parameters.list"
        if missing or not plist.is_file():
            what = ", ".join(missing + ([] if plist.is_file() else ["parameters.list"]))
            raise ExtStorageError(f"ExtStorage provider {name} at {path}{where} is "
                                  f"incomplete: {what} missing or not executable; "
                                  f"reinstall it.")
        return Provider(name, path, _parameters(plist))
    raise ExtStorageError(f"ExtStorage provider {name} is not installed{where} (searched "
                          f"{', '.join(str(d) for d in dirs)}); install it in "
                          f"/srv/ganeti/extstorage/{name} on every node.")


def _parameters(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        parts = line.strip().split(None, 1)
        if parts:
            out[parts[0]] = parts[1] if len(parts) > 1 else ""
    return out


def check_params(provider: Provider, params: dict[str, str], disk: str) -> None:
    """Refuse parameters the provider does not declare (Ganeti checks them too)."""
    unknown = sorted(set(params) - set(provider.parameters))
    if unknown:
        takes = ", ".join(sorted(provider.parameters)) or "none"
        raise ExtStorageError(f"ExtStorage provider {provider.name} does not take the "
                              f"parameter(s) {', '.join(unknown)} given for {disk} "
                              f"(it takes: {takes}).")


def environment(ctx: Context, vol: str, params: dict[str, str], *, size: int | None = None,
                new_size: int | None = None, metadata: str | None = None,
                disk_uuid: str = "", cname: str = "") -> dict[str, str]:
    """The script's whole environment: Ganeti's variables, nothing inherited."""
    env = {"PATH": _PATH, "VOL_NAME": vol, "HAVEN_NODE": ctx.node,
           "HAVEN_INITIATOR": ctx.initiator, "HAVEN_DATA_DIR": str(ctx.data_dir),
           "HAVEN_PYTHON": sys.executable}
    if disk_uuid:
        env["VOL_UUID"] = disk_uuid
    if cname:
        env["VOL_CNAME"] = cname
    if size is not None:
        env["VOL_SIZE"] = str(size)
    if new_size is not None:
        env["VOL_NEW_SIZE"] = str(new_size)
    if metadata is not None:
        env["VOL_METADATA"] = metadata
    for key, value in params.items():
        env["EXTP_" + key.upper()] = str(value)
    return env


def run(provider: Provider, action: str, env: dict[str, str], what: str,
        timeout: float = 300.0) -> str:
    """Run one script; its stdout, or :class:`ExtStorageError` naming ``what`` (the
    step, e.g. "create volume X for disk 0 of vm1") and the script's own words."""
    script = provider.path / action
    log.info("extstorage %s: %s", provider.name, what)
    try:
        proc = subprocess.run([str(script)], env=env, capture_output=True, text=True,
                              timeout=timeout, cwd="/")
    except subprocess.TimeoutExpired as exc:
        raise ExtStorageError(f"ExtStorage provider {provider.name} did not {what} within "
                              f"{timeout:.0f} s ({action} hung); check its storage "
                              f"server.") from exc
    except OSError as exc:
        raise ExtStorageError(f"ExtStorage provider {provider.name} could not {what}: its "
                              f"{action} script cannot run ({exc.strerror}).") from exc
    if proc.returncode != 0:
        said = _last_line(proc.stderr) or _last_line(proc.stdout) or \
            f"exit code {proc.returncode}"
        raise ExtStorageError(f"ExtStorage provider {provider.name} could not {what}: "
                              f"{said}")
    if proc.stderr.strip():
        log.debug("extstorage %s %s stderr: %s", provider.name, action, proc.stderr.strip())
    return proc.stdout


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:400] if lines else ""


def parse_attach(provider: Provider, out: str, what: str) -> Attached:
    """Read ``attach``'s answer: line 1 a block device (or empty), then
    ``kvm:<uri>`` and Haven's ``secret:<file>`` lines; anything else is ignored as
    Ganeti does (other hypervisors' URIs)."""
    lines = out.splitlines()
    dev = lines[0].strip() if lines else ""
    uri = secret = ""
    for line in lines[1:]:
        line = line.strip()
        if line.startswith(HYPERVISOR + ":") and not uri:
            uri = line[len(HYPERVISOR) + 1:]
        elif line.startswith("secret:"):
            secret = line[len("secret:"):]
    if uri:
        if "://" not in uri and not uri.startswith(("rbd:", "gluster")):
            raise ExtStorageError(f"ExtStorage provider {provider.name} printed an unusable "
                                  f"URI {uri[:80]!r} when asked to {what}; fix its attach "
                                  f"script.")
        if secret and not os.path.isabs(secret):
            raise ExtStorageError(f"ExtStorage provider {provider.name} named the secret "
                                  f"file {secret[:80]!r} (not an absolute path) when asked "
                                  f"to {what}; fix its attach script.")
        return Attached(dev, uri, secret)
    if not dev or not dev.startswith("/"):
        raise ExtStorageError(f"ExtStorage provider {provider.name} printed neither a block "
                              f"device path nor a {HYPERVISOR}: URI when asked to {what} "
                              f"(it printed {out.strip()[:80]!r}); fix its attach script.")
    if not os.path.exists(dev):
        raise ExtStorageError(f"ExtStorage provider {provider.name} attached {dev} when "
                              f"asked to {what}, but {dev} does not exist on this node.")
    return Attached(dev)


__all__ = ["Attached", "Context", "ExtStorageError", "Provider", "check_params",
           "environment", "find", "initiator_name", "parse_attach", "run", "search_path",
           "vol_name"]
