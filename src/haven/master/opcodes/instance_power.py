"""Shutting an instance down from a job: the ACPI power button, pressed again until the
guest hears it, each press in the job log, then the VM stopped.

A press made before the guest listens (its kernel still booting, acpid not started
yet) is lost: one press at the start of a 120 s timeout made a shutdown 6 s after a
start wait the whole timeout and then kill the guest.  Ganeti's shutdown loop calls
the hypervisor's stop (``system_powerdown``) again every 5 s; Haven presses every
:data:`PRESS_INTERVAL` s, so a shutdown takes seconds whenever the guest can hear it.
"""

from __future__ import annotations

import time
from typing import Any

from haven.errors import HavenError
from haven.master.lu import LogicalUnit
from haven.master.opcodes import instance_util as iu

PRESS_INTERVAL = 3.0
RPC_MARGIN = 30.0  # on top of the node's own wait, for the node call itself


def shut_down(lu: LogicalUnit, node: str, name: str, timeout: float) -> dict[str, Any]:
    """Press ``name``'s power button on ``node`` every :data:`PRESS_INTERVAL` s until
    its guest powers off or ``timeout`` s have passed, then stop the VM (QEMU ends; a
    guest still running at the timeout is powered off hard).  The node's ``stop``
    result: ``{"stopped": bool}``."""
    deadline = time.monotonic() + timeout
    presses = 0
    while (left := deadline - time.monotonic()) > 0:
        try:
            res = iu.node_call(lu, node, "power-button", name,
                               {"wait": min(PRESS_INTERVAL, left)},
                               timeout=PRESS_INTERVAL + RPC_MARGIN)
        except HavenError as exc:
            # A node that cannot take this call: its own stop presses and waits.
            lu.feedback(f"* could not press the power button of {name} ({exc.message}); "
                        f"stopping it with the remaining timeout")
            return _stop(lu, node, name, max(0.0, deadline - time.monotonic()))
        outcome = str(res.get("state", ""))
        if outcome == "off":
            break
        if outcome != "on":
            lu.feedback(f"* {name} cannot hear the power button ({outcome}); stopping it")
            break
        if time.monotonic() >= deadline:
            lu.feedback(f"* {name} did not power off within {timeout:g} s; stopping it")
            break
        presses += 1
        lu.feedback(f"* {name} is still running: pressed the power button again "
                    f"({presses})")
    else:
        if timeout > 0:
            lu.feedback(f"* {name} did not power off within {timeout:g} s; stopping it")
    return _stop(lu, node, name, 0.0)


def _stop(lu: LogicalUnit, node: str, name: str, timeout: float) -> dict[str, Any]:
    res = iu.node_call(lu, node, "stop", name, {"timeout": timeout},
                       timeout=timeout + RPC_MARGIN)
    return res if isinstance(res, dict) else {}
