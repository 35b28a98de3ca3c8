"""The built-in ``iscsi`` provider's configuration and its naming of volumes.

``$HAVEN_DATA_DIR/extstorage/iscsi.conf`` (JSON), every key overridable per disk by
``EXTP_<KEY>``; see :mod:`haven.storage.iscsi_provider` for what the provider does.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from haven.errors import OpExecError
from haven.storage.tgt import DEFAULT_BSOFLAGS, DEFAULT_BSTYPE, Tgtadm

PROVIDER = "iscsi"
LUN = 1
CONF_NAME = "extstorage/iscsi.conf"

# (key, description) in parameters.list order; each may be set per disk as EXTP_<KEY>.
PARAMETERS: tuple[tuple[str, str], ...] = (
    ("portal", "host:port of the tgtd iSCSI portal"),
    ("control", "tgtadm control port index (-C) of that tgtd"),
    ("mgmt", "command prefix to reach the storage server, JSON list or words (empty: local)"),
    ("pool", "directory for the LUN backing files on the storage server"),
    ("target_prefix", "target name prefix, e.g. iqn.2026-12.org.haven:cluster1"),
    ("chap_user", "CHAP account the targets require"),
    ("chap_secret_file", "mode-0600 file on this node holding the CHAP password"),
    ("bstype", "tgt backing store type (default rdwr)"),
    ("bsoflags", "tgt backing store open flags (default none: the page cache, synced "
                 "on every flush)"),
    ("live_grow", "true: grow even while sessions are open (I/O fails for milliseconds)"),
)


class ProviderError(OpExecError):
    """A provider step failed; the message is the one sentence for stderr."""


@dataclass(frozen=True)
class Config:
    """iscsi.conf merged with the disk's EXTP_* overrides."""

    portal: str
    control: int
    mgmt: tuple[str, ...]
    pool: str
    target_prefix: str
    chap_user: str
    chap_secret_file: str
    bstype: str = DEFAULT_BSTYPE
    bsoflags: str = DEFAULT_BSOFLAGS
    live_grow: bool = False
    source: str = ""

    @property
    def tgtadm(self) -> Tgtadm:
        return Tgtadm(control=self.control, mgmt=self.mgmt)

    @property
    def fix_hint(self) -> str:
        return f"start tgtd or fix portal/control in {self.source}"


def _bool(value: object) -> bool:
    return value is True or str(value).strip().lower() in ("1", "true", "yes", "on")


def load_config(env: Mapping[str, str], volume: str, step: str) -> Config:
    """Read ``$HAVEN_DATA_DIR/extstorage/iscsi.conf`` and apply ``EXTP_*``."""
    data_dir = env.get("HAVEN_DATA_DIR", "")
    path = Path(data_dir) / CONF_NAME if data_dir else None
    raw: dict[str, object] = {}
    if path is None:
        pass
    elif path.exists():
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ProviderError(f"{PROVIDER}: cannot {step} volume {volume}: {path} is not "
                                f"readable JSON ({exc}); fix that file") from exc
        if not isinstance(loaded, dict):
            raise ProviderError(f"{PROVIDER}: cannot {step} volume {volume}: {path} must hold "
                                "a JSON object; fix that file")
        raw.update(loaded)
    for key, _ in PARAMETERS:
        if f"EXTP_{key.upper()}" in env:
            raw[key] = env[f"EXTP_{key.upper()}"]
    where = str(path) if path else "HAVEN_DATA_DIR (unset)"
    missing = [k for k in ("portal", "pool", "target_prefix", "chap_user", "chap_secret_file")
               if not raw.get(k)]
    if missing:
        raise ProviderError(f"{PROVIDER}: cannot {step} volume {volume}: no "
                            f"{', '.join(missing)} configured; write them in {where} or "
                            f"pass EXTP_{missing[0].upper()}")
    mgmt_raw = raw.get("mgmt", [])
    if isinstance(mgmt_raw, str):
        try:
            mgmt_raw = (json.loads(mgmt_raw) if mgmt_raw.strip().startswith("[")
                        else shlex.split(mgmt_raw))
        except ValueError as exc:
            raise ProviderError(f"{PROVIDER}: cannot {step} volume {volume}: mgmt "
                                f"{mgmt_raw!r} is neither a JSON list nor words ({exc}); "
                                f"fix it in {where}") from exc
    if not isinstance(mgmt_raw, list):
        raise ProviderError(f"{PROVIDER}: cannot {step} volume {volume}: mgmt must be a list "
                            f"of words; fix it in {where}")
    try:
        control = int(str(raw.get("control", 0)))
        if not 0 <= control <= 32767:
            raise ValueError(control)
    except ValueError as exc:
        raise ProviderError(f"{PROVIDER}: cannot {step} volume {volume}: control must be an "
                            f"integer from 0 to 32767; fix it in {where}") from exc
    if not re.fullmatch(r"[^:\s]+:\d+", str(raw["portal"])):
        raise ProviderError(f"{PROVIDER}: cannot {step} volume {volume}: portal "
                            f"{raw['portal']!r} is not host:port; fix it in {where}")
    return Config(
        portal=str(raw["portal"]), control=control,
        mgmt=tuple(str(x) for x in mgmt_raw),
        pool=str(raw["pool"]), target_prefix=str(raw["target_prefix"]),
        chap_user=str(raw["chap_user"]), chap_secret_file=str(raw["chap_secret_file"]),
        bstype=str(raw.get("bstype", DEFAULT_BSTYPE)),
        bsoflags=str(raw.get("bsoflags", DEFAULT_BSOFLAGS)),
        live_grow=_bool(raw.get("live_grow", False)), source=where)


def sanitize(vol_name: str) -> str:
    """A volume name as an IQN component: lower case, [a-z0-9.-] only."""
    return re.sub(r"[^a-z0-9.-]", "-", vol_name.lower()).strip(".-") or "vol"


@dataclass(frozen=True)
class Volume:
    """One volume as the provider names it."""

    name: str
    conf: Config

    @property
    def target(self) -> str:
        return f"{self.conf.target_prefix}.{sanitize(self.name)}"

    @property
    def backing(self) -> str:
        return f"{self.conf.pool.rstrip('/')}/{sanitize(self.name)}.img"

    @property
    def sidecar(self) -> str:
        return f"{self.conf.pool.rstrip('/')}/{sanitize(self.name)}.meta"

    @property
    def acl(self) -> str:
        return f"{self.conf.pool.rstrip('/')}/{sanitize(self.name)}.acl"

    @property
    def uri(self) -> str:
        return f"iscsi://{self.conf.chap_user}@{self.conf.portal}/{self.target}/{LUN}"
