"""Reading stored JSON into dataclasses: keys this version does not know are ignored,
so an older daemon can read what a newer one wrote."""

from __future__ import annotations

from dataclasses import fields
from typing import Any


def known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` restricted to the fields of dataclass ``cls``."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}
