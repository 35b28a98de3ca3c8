"""Ganeti OS definitions: find them, describe them, build their environment, run them.

An OS definition is a directory in the OS search path holding ``ganeti_api_version``,
``variants.list``, ``parameters.list`` and the executable scripts ``create``, ``import``,
``export``, ``rename`` and ``verify`` (ganeti-os-interface(7)); ``ganeti-instance-
debootstrap`` is one.  Haven reads one extra, optional file, ``haven.json``, naming a
kernel and initrd the hypervisor boots directly (the disk is then only data)::

    {"kernel_path": "${HAVEN_GUEST_DIR:-/var/cache/haven/guest}/vmlinuz",
     "initrd_path": "...", "kernel_args": "console=ttyS0 quiet"}

``$VAR``, ``${VAR}`` and ``${VAR:-default}`` are expanded when the definition is read;
relative paths are taken from the OS directory.

The lookup rules are Ganeti's (``backend._TryOSFromDisk``): the first directory of that
name in the search path is *the* OS, valid or not; a variant is the part after ``+``.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from haven.errors import InvalidInput
from haven.osdef.scripts import (
    DiskEnv,
    NicEnv,
    OsScript,
    os_core_environment,
    os_environment,
    run_os_script,
)

__all__ = [
    "SCRIPTS", "SUPPORTED_API_VERSIONS", "SYSTEM_OS_PATH", "BootHints", "DiskEnv", "NicEnv",
    "OsDefinition", "OsScript", "OsStatus", "diagnose_os", "expand_vars", "find_os",
    "list_os", "load_os", "os_core_environment", "os_environment", "run_os_script",
    "search_path", "split_name",
]

#: The OS API versions Haven speaks (Ganeti's ``constants.OS_API_VERSIONS``).
SUPPORTED_API_VERSIONS = frozenset({10, 15, 20})
#: Ganeti's ``pathutils.OS_SEARCH_PATH``, searched after ``$HAVEN_OS_PATH`` and Haven's own.
SYSTEM_OS_PATH = ("/srv/ganeti/os", "/usr/local/lib/ganeti/os", "/usr/lib/ganeti/os",
                  "/usr/share/ganeti/os")
SCRIPTS = ("create", "import", "export", "rename", "verify")
VARIANT_DELIM = "+"
HAVEN_FILE = "haven.json"


@dataclass(frozen=True)
class BootHints:
    """How a hypervisor boots this OS without a boot loader (from ``haven.json``)."""

    kernel_path: str = ""
    initrd_path: str = ""
    kernel_args: str = ""


@dataclass(frozen=True)
class OsDefinition:
    """One valid OS definition as found on disk."""

    name: str
    path: Path
    api_versions: tuple[int, ...]
    variants: tuple[str, ...] = ()
    parameters: tuple[tuple[str, str], ...] = ()  # (name, description)
    boot: BootHints | None = None

    @property
    def api_version(self) -> int:
        """The API version Haven talks to it with (the highest both support)."""
        return max(SUPPORTED_API_VERSIONS.intersection(self.api_versions))

    def script(self, name: str) -> Path:
        return self.path / name

    def default_variant(self) -> str:
        """The variant used when none is given: Ganeti takes the first listed."""
        return self.variants[0] if self.variants and self.api_version >= 15 else ""


@dataclass(frozen=True)
class OsStatus:
    """One candidate directory of :func:`diagnose_os` (Ganeti's ``DiagnoseOS`` row).
    ``shadowed``: a directory of the same name earlier in the path is the one used."""

    name: str
    path: Path
    valid: bool
    reason: str = ""
    definition: OsDefinition | None = None
    shadowed: bool = False


def _default_share_os() -> Path:
    repo = Path(__file__).resolve().parents[3] / "share" / "os"
    return repo if repo.is_dir() else Path(sys.prefix) / "share" / "haven" / "os"


def search_path(extra: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> list[Path]:
    """Where OS definitions are looked for, first match wins: ``extra``, then
    ``$HAVEN_OS_PATH`` (colon-separated), Haven's ``share/os`` (the repository's, else
    ``<prefix>/share/haven/os``), then Ganeti's search path.  Duplicates are dropped."""
    env = os.environ if environ is None else environ
    dirs: list[str] = [*extra, *env.get("HAVEN_OS_PATH", "").split(":"),
                       str(_default_share_os()), *SYSTEM_OS_PATH]
    out: list[Path] = []
    for d in dirs:
        if d and Path(d) not in out:
            out.append(Path(d))
    return out


def split_name(name_with_variant: str) -> tuple[str, str | None]:
    """``"debootstrap+default"`` -> ``("debootstrap", "default")``; no ``+`` -> None."""
    name, sep, variant = name_with_variant.partition(VARIANT_DELIM)
    return name, (variant if sep else None)


_VAR = re.compile(r"\$(?:\{(\w+)(?::-([^}]*))?\}|(\w+))")


def expand_vars(text: str, environ: Mapping[str, str]) -> str:
    """Shell-style ``$VAR``, ``${VAR}``, ``${VAR:-default}``; unset without default is ''."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3)
        value = environ.get(name, "")
        if not value and m.group(2) is not None:
            return expand_vars(m.group(2), environ)
        return value

    return _VAR.sub(sub, text)


def _read_lines(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _read_boot(os_dir: Path, environ: Mapping[str, str]) -> BootHints | None:
    path = os_dir / HAVEN_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from exc
    fields = ("kernel_path", "initrd_path", "kernel_args")
    if not isinstance(data, dict) or not all(isinstance(data.get(k, ""), str) for k in fields):
        raise ValueError(f"{path} must be a JSON object with string values for {fields}")
    values = {k: expand_vars(data.get(k, ""), environ).strip() for k in fields}
    for k in ("kernel_path", "initrd_path"):
        if values[k] and not os.path.isabs(values[k]):
            values[k] = str(os_dir / values[k])
    return BootHints(**values)


def load_os(name: str, os_dir: Path,
            environ: Mapping[str, str] | None = None) -> OsDefinition | str:
    """The definition in ``os_dir``, or the reason it is not a valid OS (a sentence)."""
    env = os.environ if environ is None else environ
    api_file = os_dir / "ganeti_api_version"
    try:
        api_versions = tuple(int(v) for v in _read_lines(api_file))
    except FileNotFoundError:
        return f"required file 'ganeti_api_version' is missing under {os_dir}"
    except (OSError, ValueError) as exc:
        return f"cannot read the API version from {api_file}: {exc}"
    if not SUPPORTED_API_VERSIONS.intersection(api_versions):
        return (f"API version mismatch for {os_dir}: found {list(api_versions)}, "
                f"want one of {sorted(SUPPORTED_API_VERSIONS)}")
    required = ["create", "export", "import", "rename"]
    if max(api_versions) >= 20:
        required += ["verify", "parameters.list"]
    for fname in required:
        path = os_dir / fname
        try:
            st = path.stat()
        except OSError:
            return f"file '{fname}' is missing under {os_dir}"
        if not stat.S_ISREG(st.st_mode):
            return f"file '{fname}' under {os_dir} is not a regular file"
        if fname in SCRIPTS and not st.st_mode & stat.S_IXUSR:
            return f"script '{fname}' under {os_dir} is not executable (chmod +x it)"
    try:
        variants: list[str] = []
        if max(api_versions) >= 15 and (os_dir / "variants.list").exists():
            variants = _read_lines(os_dir / "variants.list")
        parameters: list[tuple[str, str]] = []
        if (os_dir / "parameters.list").exists():
            for line in _read_lines(os_dir / "parameters.list"):
                pname, _, help_text = line.partition(" ")
                parameters.append((pname, help_text.strip()))
        boot = _read_boot(os_dir, env)
    except (OSError, ValueError) as exc:
        return str(exc)
    return OsDefinition(name=name, path=os_dir, api_versions=api_versions,
                        variants=tuple(variants), parameters=tuple(parameters), boot=boot)


def diagnose_os(path: Iterable[Path] | None = None,
                environ: Mapping[str, str] | None = None) -> list[OsStatus]:
    """Every OS directory in the search path, in order, valid or not (``gnt-os diagnose``)."""
    seen: set[str] = set()
    out: list[OsStatus] = []
    for top in search_path(environ=environ) if path is None else path:
        try:
            names = sorted(p.name for p in top.iterdir()
                           if p.is_dir() and not p.name.startswith("."))
        except OSError:
            continue
        for name in names:
            result = load_os(name, top / name, environ)
            if isinstance(result, str):
                status = OsStatus(name, top / name, False, result, shadowed=name in seen)
            else:
                status = OsStatus(name, top / name, True, "", result, shadowed=name in seen)
            seen.add(name)
            out.append(status)
    return out


def list_os(path: Iterable[Path] | None = None,
            environ: Mapping[str, str] | None = None) -> list[OsDefinition]:
    """The valid OS definitions that are in effect (the first directory of each name)."""
    return [s.definition for s in diagnose_os(path, environ)
            if s.definition is not None and not s.shadowed]


def find_os(name_with_variant: str, path: Iterable[Path] | None = None,
            environ: Mapping[str, str] | None = None) -> tuple[OsDefinition, str | None]:
    """The OS named ``name[+variant]`` and the variant asked for (None if none).

    Raises :class:`InvalidInput` for an unknown or invalid OS and for a variant the OS
    does not list; the message says what exists and how to fix it.
    """
    name, variant = split_name(name_with_variant)
    dirs = list(search_path(environ=environ) if path is None else path)
    if not name or "/" in name or name.startswith("."):
        raise InvalidInput(f"'{name_with_variant}' is not a valid OS name; use NAME or "
                           f"NAME+VARIANT")
    for top in dirs:
        if (top / name).is_dir():
            result = load_os(name, top / name, environ)
            if isinstance(result, str):
                raise InvalidInput(f"OS '{name}' in {top} is not usable: {result}")
            break
    else:
        known = sorted({d.name + (f"+{v}" if v else "") for d in list_os(dirs, environ)
                        for v in (d.variants or ("",))})
        raise InvalidInput(
            f"OS '{name}' was not found in the OS search path "
            f"({':'.join(str(d) for d in dirs)}); known OSes: {', '.join(known) or 'none'}; "
            f"install it there or add its parent directory to HAVEN_OS_PATH")
    if variant is not None:
        if not result.variants:
            raise InvalidInput(f"OS '{name}' does not support variants ('{variant}' was "
                               f"given); use '{name}'")
        if variant not in result.variants:
            raise InvalidInput(
                f"OS '{name}' has no variant '{variant}'; its variants are "
                f"{', '.join(result.variants)}; use e.g. '{name}+{result.variants[0]}'")
    return result, variant
