"""Sending raised and cleared alarms where the administrator said: a webhook (an HTTP
POST of the notice as JSON) and/or a local command (the notice as JSON on its stdin).

Each target has its own queue and thread, so a slow webhook never delays the command,
and neither ever delays the alarm loop that queues them.  A failure is logged and the
notice is dropped: alarms stay in the store and ``haven alarms`` either way.  The queue
is bounded; when a target falls that far behind, new notices are dropped and logged.

The notice::

    {"event": "raised" | "cleared" | "updated", "cluster": "...", "master": "node01",
     "alarm": {"id": "node-unreachable:node02", "kind": ..., "severity": ..., ...}}
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import shlex
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from haven.model.alarm import Alarm, AlarmSettings

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000


def notice(event: str, alarm: Alarm, cluster: str, master: str) -> bytes:
    return json.dumps({"event": event, "cluster": cluster, "master": master,
                       "alarm": alarm.to_json()}, sort_keys=True).encode()


def post_webhook(url: str, body: bytes, timeout: float) -> None:
    """POST ``body``; raises ``OSError`` (``URLError``, ``HTTPError``...) on failure."""
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json",
                                          "User-Agent": "haven-alarms"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        resp.read(65536)


def run_command(command: str, body: bytes, timeout: float) -> None:
    """Run ``command`` with ``body`` on stdin; raises ``OSError`` or
    ``subprocess.SubprocessError`` if it cannot start, times out or exits non-zero."""
    proc = subprocess.run(shlex.split(command), input=body, capture_output=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise subprocess.SubprocessError(
            f"exit status {proc.returncode}" + (f": {err[-1]}" if err else ""))


class _Sender:
    """One target: a bounded queue drained by one daemon thread."""

    def __init__(self, name: str, send: Callable[[AlarmSettings, bytes], None]) -> None:
        self.name = name
        self.send = send
        self.queue: queue.Queue[tuple[AlarmSettings, str, bytes] | None] = \
            queue.Queue(QUEUE_SIZE)
        self.thread = threading.Thread(target=self._run, name=f"alarm-{name}", daemon=True)

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            settings, what, body = item
            try:
                self.send(settings, body)
                log.debug("alarms: %s sent for %s", self.name, what)
            except (OSError, subprocess.SubprocessError, ValueError) as exc:
                log.warning("alarms: the %s for %s failed: %s", self.name, what, exc)
            except Exception:  # a bug here must not end the thread
                log.exception("alarms: the %s for %s failed", self.name, what)

    def put(self, settings: AlarmSettings, what: str, body: bytes) -> None:
        try:
            self.queue.put_nowait((settings, what, body))
        except queue.Full:
            log.warning("alarms: %d notices wait for the %s; dropping the one for %s",
                        QUEUE_SIZE, self.name, what)


class Notifier:
    """Queues each notice for the targets the settings name; :meth:`stop` lets the
    queued ones go out (in their threads) and ends the threads after them."""

    def __init__(self, cluster: str, master: str,
                 webhook: Callable[[str, bytes, float], None] = post_webhook,
                 command: Callable[[str, bytes, float], None] = run_command) -> None:
        self.cluster = cluster
        self.master = master
        self._webhook = _Sender("webhook", lambda s, b: webhook(s.webhook_url, b,
                                                                s.webhook_timeout))
        self._command = _Sender("command", lambda s, b: command(s.command, b,
                                                                s.command_timeout))
        self._started = False

    def start(self) -> None:
        self._webhook.thread.start()
        self._command.thread.start()
        self._started = True

    def stop(self) -> None:
        if self._started:
            for s in (self._webhook, self._command):
                # Daemon threads: a full queue's thread ends with the process.
                with contextlib.suppress(queue.Full):
                    s.queue.put_nowait(None)

    def send(self, event: str, alarm: Alarm, settings: AlarmSettings) -> int:
        """Queue ``event`` of ``alarm``; returns how many targets it was queued for."""
        body = notice(event, alarm, self.cluster, self.master)
        what = f"{event} {alarm.id}"
        n = 0
        if settings.webhook_url:
            self._webhook.put(settings, what, body)
            n += 1
        if settings.command:
            self._command.put(settings, what, body)
            n += 1
        return n

    def pending(self) -> dict[str, Any]:
        return {"webhook": self._webhook.queue.qsize(),
                "command": self._command.queue.qsize()}
