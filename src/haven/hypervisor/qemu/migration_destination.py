"""The destination side of a live migration (see :mod:`.migration` for the phases and
the contracts): make the destination QEMU listen, wait until it has taken over, or kill
one that never did."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from haven.hypervisor.base import HypervisorError
from haven.hypervisor.qemu import replication
from haven.hypervisor.qemu.migration_spec import _ENDED_BADLY, _cause, tcp_uri
from haven.hypervisor.qemu.qmp import (
    QmpCommandError,
    QmpError,
    QmpSession,
    instance_of,
    qmp_session,
)

if TYPE_CHECKING:
    from haven.hypervisor.qemu.driver import QemuHypervisor

log = logging.getLogger(__name__)


def accept(dest_qmp: Path | str, address: str, port: int, bitmaps: Sequence[int] = ()) -> str:
    """Make the destination (started with ``spec.incoming``, status ``inmigrate``) listen
    on ``address:port``; returns the URI to give to :func:`migrate`.

    For every disk index in ``bitmaps`` the replication bitmap
    (``replication.BITMAP``) is added on ``disk<i>`` first: QEMU accepts it on
    the still-inactive node, and from activation on it records every write, so the old
    primary can later become this VM's secondary with a bitmap resync
    (``replication.resync(..., trust_bitmap=True)``) instead of a full copy.  Not
    persistent: a restart of the destination means a full resync.
    """
    name = instance_of(dest_qmp)
    uri = tcp_uri(address, port)
    with qmp_session(dest_qmp, label=name) as s:
        state = s.execute("query-status").get("status")
        if state != "inmigrate":
            raise HypervisorError(f"Cannot accept a migration of instance '{name}': its "
                                  f"QEMU is {state}, not waiting for one (start it with "
                                  "incoming=True).")
        s.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "events", "state": True}]})
        for disk in bitmaps:
            with contextlib.suppress(QmpCommandError):  # already there: keep it
                s.execute("block-dirty-bitmap-add", {
                    "node": f"disk{disk}", "name": replication.BITMAP.format(disk),
                    "granularity": replication.BITMAP_GRANULARITY})
        try:
            s.execute("migrate-incoming", {"uri": uri})
        except QmpCommandError as exc:
            raise HypervisorError(f"Instance '{name}' cannot accept a migration on {uri}: "
                                  f"{exc}") from exc
    log.info("Instance %s: waiting for its migration on %s", name, uri)
    return uri


def wait_destination(hv: QemuHypervisor, name: str, timeout: float = 30.0,
                     resume: bool = False) -> str:
    """After :func:`migrate` returned: wait until the destination VM ``name`` of driver
    ``hv`` has loaded the state and left ``inmigrate``; its run state (``running``, or
    ``paused`` if the source was paused).

    The source's ``completed`` only means all was sent: the destination still loads the
    device state and activates its disks (10-50 ms under TCG), its monitors failing even
    the QMP negotiation meanwhile.  ``paused`` for a running source means it could not
    activate its disks (e.g. the image lock): treat that as a failure too.  Raises
    :class:`HypervisorError` if it exited or its load failed; then kill it and
    :func:`resume_source`.  ``resume``: a non-live migration's destination arrives
    paused; continue it (then ``running``).

    This runs exactly while the guest resumes on a 2-core host, so it must cost little
    CPU: one monitor session (the negotiation itself waits for the busy main loop),
    the pid checked rather than ``list()``, a query every 20 ms."""
    deadline = time.monotonic() + timeout
    state = "unknown"
    session: QmpSession | None = None
    try:
        while True:
            if not hv.alive(name):
                raise HypervisorError(f"The destination QEMU of instance '{name}' exited "
                                      f"while taking over (see {hv.path(name, '.log')}); "
                                      "resume the source.")
            try:
                if session is None:
                    session = qmp_session(hv.qmp_path(name), timeout=2.0, label=name)
                state = str(session.execute("query-status")["status"])
                if state == "paused" and resume:
                    session.execute("cont")
                    state = str(session.execute("query-status")["status"])
                if state != "inmigrate":
                    return state
                incoming = session.execute("query-migrate")
                if incoming.get("status") in _ENDED_BADLY:
                    raise HypervisorError(f"The destination of instance '{name}' could not "
                                          f"load the migration ({_cause(incoming)}); resume "
                                          "the source.")
            except QmpError:  # busy loading, or it died: reconnect, the pid tells
                if session is not None:
                    session.close()
                session = None
            if time.monotonic() > deadline:
                raise HypervisorError(f"The destination of instance '{name}' did not take "
                                      f"over within {timeout:g} s (still {state}).")
            time.sleep(0.02)
    finally:
        if session is not None:
            session.close()


def abort_incoming(hv: QemuHypervisor, name: str, settle: float = 5.0) -> bool:
    """Kill the destination QEMU of a failed migration; True if one was killed.

    Only one still ``incoming`` is killed: one that runs or is paused has activated its
    disks and *is* the instance now, so that raises.  While it loads the final state it
    answers nothing (``unknown``): that is waited out for up to ``settle`` seconds, and
    only a destination that stays silent is killed."""
    deadline = time.monotonic() + settle
    while (info := hv.list().get(name)) is not None and info.status == "unknown" \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    if info is None:
        hv.cleanup(name)
        return False
    if info.status not in ("incoming", "unknown"):
        raise HypervisorError(f"Not aborting the incoming migration of instance '{name}': "
                              f"its destination QEMU is {info.status}, so it holds the "
                              "instance now; stop it explicitly if that is wrong.")
    hv.kill(name)
    hv.cleanup(name)
    return True
