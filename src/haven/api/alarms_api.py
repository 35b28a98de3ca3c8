"""Alarms: list, acknowledge, settings (being built for issue 12)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from haven.api.http import Router

if TYPE_CHECKING:
    from haven.daemon.noded import NodeDaemon


def install(r: Router, d: NodeDaemon) -> None:
    """Register the ``/haven/alarms`` routes."""
