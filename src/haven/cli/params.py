"""Ganeti's option syntaxes: ``-B k=v,k=v``, ``--disk 0:size=1g``, ``-n pnode:snode``."""

from __future__ import annotations

import argparse
from typing import Any


def kv_list(text: str) -> dict[str, Any]:
    """``memory=256,vcpus=2`` -> dict; ``no_foo`` -> False, ``foo`` -> True, like Ganeti."""
    out: dict[str, Any] = {}
    if not text:
        return out
    for item in text.split(","):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if sep:
            out[key.strip()] = value.strip()
        elif key.startswith("no_"):
            out[key[3:]] = False
        else:
            out[key] = True
    return out


def indexed(text: str) -> tuple[str, dict[str, Any]]:
    """``0:size=1g,mode=rw`` -> ("0", {...}); ``add:size=1g``; ``1:remove``."""
    ident, sep, rest = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected N:key=value,... but got {text!r}")
    return ident, kv_list(rest)


def hv_params(text: str) -> dict[str, Any]:
    """``-H kvm:kernel_path=/x`` or ``-H kernel_path=/x``."""
    head, sep, rest = text.partition(":")
    if sep and "=" not in head:
        return kv_list(rest)
    return kv_list(text)


def disks(items: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    from haven.errors import InvalidInput

    out: dict[int, dict[str, Any]] = {}
    for ident, params in items:
        try:
            idx = int(ident)
        except ValueError as exc:
            raise InvalidInput(f"--disk {ident}:...: the disk index must be a number.") \
                from exc
        if idx in out:
            raise InvalidInput(f"--disk {idx} is given twice.")
        out[idx] = params
    if sorted(out) != list(range(len(out))):
        raise InvalidInput("--disk indices must be 0, 1, ... without gaps.")
    return [out[i] for i in sorted(out)]
