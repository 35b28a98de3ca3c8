"""The node agent's loop: observe -> plan -> execute -> one summary line."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from haven.agent.plan import Action, AgentView, plan, summary
from haven.errors import HavenError
from haven.master import state
from haven.model import event
from haven.model.keys import LOCKS, MIGRATIONS, Keys

if TYPE_CHECKING:
    from haven.daemon.noded import NodeDaemon

log = logging.getLogger(__name__)

PERIOD = 2.0  # seconds between cycles when nothing wakes the agent


class Agent:
    def __init__(self, daemon: NodeDaemon) -> None:
        self.d = daemon
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_summary = ""
        self._cycle_lock = threading.Lock()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="agent", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                line = self.cycle()
            except HavenError as exc:
                line = f"cannot run a cycle: {exc.message}"
            except Exception:  # the loop must survive a bug in one cycle
                log.exception("agent cycle failed")
                line = "cycle failed"
            if line != self.last_summary:
                log.info("agent: %s", line)
                self.last_summary = line
            self.wake.wait(PERIOD)
            self.wake.clear()

    def cycle(self) -> str:
        with self._cycle_lock:
            view = self.observe()
            actions = plan(view)
            for a in actions:
                self.execute(a, view)
            line = summary(actions, sum(1 for i in view.instances.values()
                                        if i.primary_node == view.node))
            if view.start_blocked:
                line += f"; no VM is started here: {view.start_blocked}"
            if any(i.disk_template == "drbd" for i in view.instances.values()):
                line += self.replicate(view)
            return line + self.resume_stalled(view)

    def resume_stalled(self, view: AgentView) -> str:
        """``ext`` guests that a storage outage paused (``werror=stop``) go on when the
        storage answers again: tried at every cycle, logged when one goes on."""
        from haven.hypervisor.qemu import QemuHypervisor

        done = []
        for name, vm in view.vms.items():
            inst = view.instances.get(name)
            if vm.status != "paused" or inst is None or inst.disk_template != "ext" or \
                    inst.primary_node != view.node or name in view.locked:
                continue
            hv = self.d.instances.hypervisor(inst.hypervisor)
            if isinstance(hv, QemuHypervisor) and hv.resume_after_io_error(name):
                done.append(name)
                self.d.instances.emit("resumed", inst, f"resumed on {view.node} after a "
                                      f"storage I/O error paused it")
        return ("; resumed after a storage error: " + ", ".join(done)) if done else ""

    def replicate(self, view: AgentView) -> str:
        """The replication half of the cycle (drbd instances only)."""
        from haven.agent.replan import RepView, plan_replication

        rep = self.d.replication
        running = frozenset(n for n, vm in view.vms.items()
                            if vm.status in ("running", "paused"))
        rview = RepView(view.node, view.instances, view.locked, running, rep.exported(),
                        rep.mirrors(view.instances, running), rep.replicas(),
                        frozenset(state.alive(self.d.store())))
        done = []
        for a in plan_replication(rview):
            if self.d.store().get(Keys.lock(f"instance/{a.name}")) is not None:
                continue
            try:
                rep.execute(a, view.instances.get(a.name))
                done.append(f"{a.kind} {a.name}")
            except HavenError as exc:
                log.warning("agent: %s %s failed: %s", a.kind, a.name, exc.message)
        done += [f"thaw {n}" for n in rep.release_frozen(view.instances, running,
                                                          rview.mirrors)]
        return ("; " + ", ".join(done)) if done else ""

    def observe(self) -> AgentView:
        store = self.d.store()
        instances = state.instances(store)
        observed = state.all_observed(store)
        lkvs, _ = store.list(LOCKS + "instance/")
        locked = frozenset(kv.key[len(LOCKS + "instance/"):] for kv in lkvs)
        # An interrupted migration may have a copy on each side: only its cleanup (the
        # master starts one) may decide which one lives.
        mkvs, _ = store.list(MIGRATIONS)
        locked |= {kv.key[len(MIGRATIONS):] for kv in mkvs}
        node = self.d.node_record()
        vms = {name: info for name, (_hv, info) in self.d.instances.all_vms().items()}
        return AgentView(self.d.name, bool(node and node.offline), instances, observed,
                         locked, vms, self.d.start_blocked(), now=time.time(),
                         started=self.d.started)

    def execute(self, a: Action, view: AgentView) -> None:
        store = self.d.store()
        if store.get(Keys.lock(f"instance/{a.name}")) is not None:
            return  # a job took it since we looked
        mgr = self.d.instances
        inst = view.instances.get(a.name)
        try:
            if a.kind == "stop":
                mgr.stop(a.name, timeout=30, force=a.force,
                         reason=f"{'killed' if a.force else 'stopped'} ({a.reason})")
                if inst is None:
                    ev = event.new("stopped", f"instance/{a.name}", self.d.name,
                                   f"Instance {a.name}: stopped on {self.d.name} "
                                   f"({a.reason})", "warning")
                    store.put(ev.key(), ev.encode())
            elif a.kind == "start":
                assert inst is not None
                if a.reason == "crashed":
                    mgr.emit("crashed", inst, f"its process on {self.d.name} died; "
                             f"restarting ({a.restarts}/5)", "warning")
                elif a.reason == "went down with its node":
                    mgr.emit("crashed", inst, f"it went down with {self.d.name}; "
                             f"restarting (not counted: {a.restarts}/5)", "warning")
                mgr.start(a.name, a.generation, reason="restarted", restarts=a.restarts)
            elif a.kind == "give_up":
                assert inst is not None
                mgr.publish(inst, "failed", None, restarts=a.restarts,
                            message=f"gave up after {a.restarts} restarts")
                mgr.emit("gave-up", inst, f"gave up after {a.restarts} automatic restarts; "
                         f"start it with gnt-instance startup {a.name}", "error")
            elif a.kind == "publish":
                assert inst is not None
                info = view.vms.get(a.name)
                mgr.publish(inst, a.state, info, restarts=a.restarts)
                if a.state == "user_down":
                    mgr.emit("stopped", inst, "the guest powered itself off (USER_down)")
        except HavenError as exc:
            log.warning("agent: %s %s failed: %s", a.kind, a.name, exc.message)
            if a.kind == "start" and inst is not None:
                # Count the failed attempt, so a VM that cannot start is given up on.
                mgr.publish(inst, "stopped", None, restarts=a.restarts,
                            message=exc.message)
                mgr.emit("start-failed", inst, exc.message, "error")
