"""The dashboard's first paint with many instances, measured in headless Chromium.

No cluster: a local Starlette app serves the real page and ``/haven/live`` (from
``haven.api.ui``) next to synthetic RAPI reads (``/2/instances?bulk=1`` with N
instances in Haven's shape, nodes, jobs, events).  Chromium loads ``/ui/#/instances``
and the script reports, as JSON, how long until the instances table holds every row
(``first_paint_s``, from navigation start, in the page's own clock), when the instance
list had arrived (``instances_loaded_s``) and the browser's first-contentful-paint.

    .venv/bin/python bench/ui_paint.py [--instances 200] [--runs 5]
    .venv/bin/python bench/ui_paint.py --serve 8765   # the same app, for a person

``--serve`` also changes an instance's state every 2 s (the page shows it live) and
answers the console WebSocket with a toy shell (``uname`` -> ``Linux``).
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from haven.api import ui

USERS = {"admin": ("secret", True), "viewer": ("viewer", False)}


class FakeAuth:
    """The token interface of ``api.http.Authenticator``, with fixed users."""

    loaded = True

    def __init__(self) -> None:
        self.tokens: dict[str, tuple[str, bool]] = {}

    def check(self, header: str | None) -> tuple[str | None, bool]:
        if not header or not header.startswith("Basic "):
            return None, False
        user, _, pw = base64.b64decode(header[6:]).decode().partition(":")
        entry = USERS.get(user)
        return (user, entry[1]) if entry and entry[0] == pw else (None, False)

    def issue_token(self, user: str, write: bool, ttl: float = 0) -> str:
        token = f"t{len(self.tokens)}-{random.getrandbits(64):x}"
        self.tokens[token] = (user, write)
        return token

    def check_token(self, token: str) -> tuple[str | None, bool]:
        return self.tokens.get(token, (None, False))


class FakeHub:
    def __init__(self) -> None:
        self.subs: list[tuple[str, Callable[[str], None]]] = []

    def subscribe(self, prefix: str, fn: Callable[[str], None]) -> None:
        self.subs.append((prefix, fn))

    def changed(self, key: str) -> None:
        for prefix, fn in list(self.subs):
            if key.startswith(prefix):
                fn(key)


class FakeDaemon:
    """What ``ui.routes`` reads of a ``NodeDaemon``."""

    def __init__(self) -> None:
        self.name = "node01"
        self.api = type("Api", (), {"auth": FakeAuth()})()
        self.joined = type("Joined", (), {"hub": FakeHub()})()


def synthetic(n_instances: int, n_nodes: int = 3) -> dict[str, Any]:
    """Nodes, instances, jobs and events in RAPI's bulk shapes."""
    names = [f"node{i + 1:02d}" for i in range(n_nodes)]
    nodes = [{"name": n, "pip": f"127.0.0.{i + 1}", "alive": True, "offline": False,
              "drained": False, "master": i == 0, "master_candidate": True, "role": "C",
              "vm_capable": True, "mtotal": 65536, "mfree": 30000 - 1000 * i, "ctotal": 16,
              "pinst_cnt": 0, "sinst_cnt": 0, "etcd_member_id": f"{i + 1:x}",
              "api_port": None} for i, n in enumerate(names)]
    instances = []
    for k in range(n_instances):
        p, s = names[k % n_nodes], names[(k + 1) % n_nodes]
        running = k % 5 != 0
        instances.append({
            "name": f"vm{k:04d}", "pnode": p, "snodes": [s], "disk_template": "drbd",
            "status": "running" if running else "ADMIN_down", "admin_up": running,
            "oper_ram": 512 if running else None, "oper_vcpus": 1 if running else None,
            "beparams": {"memory": 512, "vcpus": 1}, "os": "busybox",
            "disks": [{"size": 1024}], "replicas": {p: {"0": {"state": "UpToDate",
                                                              "percent": 100.0,
                                                              "message": ""}}},
            "degraded": [], "ha": "on", "ha_state": "", "ha_reason": "", "observed": ""})
        nodes[k % n_nodes]["pinst_cnt"] = int(nodes[k % n_nodes]["pinst_cnt"] or 0) + 1
    jobs = [{"id": j, "status": "success", "ops": [{"OP_ID": "OP_INSTANCE_STARTUP",
                                                     "instance_name": f"vm{j:04d}"}],
             "opstatus": ["success"], "opresult": [None],
             "oplog": [[[1, time.time(), "message", "started"]]],
             "received_ts": [int(time.time()) - 60, 0], "start_ts": [int(time.time()) - 59, 0],
             "end_ts": [int(time.time()) - 58, 0], "summary": [], "master": "node01"}
            for j in range(1, 51)]
    events = [{"key": f"events/{i:020d}-node01", "ts": time.time() - 100 + i,
               "kind": "started", "object": f"instance/vm{i:04d}", "node": "node01",
               "message": f"vm{i:04d} started", "severity": "info"} for i in range(50)]
    return {"nodes": nodes, "instances": instances, "jobs": jobs, "events": events,
            "info": {"name": "bench", "master": "node01"},
            "ha": {"master": "node01", "nodes": [{"name": n, "state": "online",
                                                  "reason": ""} for n in names]}}


def app(data: dict[str, Any], d: FakeDaemon) -> Starlette:
    def json_of(key: str) -> Callable[[Request], Any]:
        async def handler(_r: Request) -> Response:
            return JSONResponse(data[key])
        return handler

    async def job(r: Request) -> Response:
        jid = int(r.path_params["id"])
        for j in data["jobs"]:
            if j["id"] == jid:
                return JSONResponse(j)
        return JSONResponse({"code": 404, "message": "no job"}, 404)

    async def events(r: Request) -> Response:
        after = r.query_params.get("after", "")
        return JSONResponse([e for e in data["events"] if e["key"] > after])

    async def status(_r: Request) -> Response:
        return JSONResponse({"node": d.name, "cluster": "bench", "lease_valid": True})

    async def console(ws: WebSocket) -> None:
        await ws.accept()
        line = b""
        try:
            while True:
                got = await ws.receive_bytes()
                await ws.send_bytes(got.replace(b"\r", b"\r\n"))
                line += got
                if b"\r" in line:
                    cmd, line = line.split(b"\r", 1)[0].strip(), b""
                    out = b"Linux\r\n" if cmd == b"uname" else b""
                    await ws.send_bytes(out + b"# ")
        except WebSocketDisconnect:
            pass

    return Starlette(routes=[
        *ui.routes(d),  # type: ignore[arg-type]
        Route("/2/nodes", json_of("nodes")), Route("/2/instances", json_of("instances")),
        Route("/2/jobs", json_of("jobs")), Route("/2/jobs/{id}", job),
        Route("/2/info", json_of("info")), Route("/haven/ha", json_of("ha")),
        Route("/haven/events", events), Route("/haven/status", status),
        WebSocketRoute("/haven/instances/{name}/console/ws", console),
    ], middleware=[Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"],
                              allow_headers=["Authorization", "Content-Type"])])


def serve(application: Starlette, port: int) -> uvicorn.Server:
    server = uvicorn.Server(uvicorn.Config(application, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off",
                                           timeout_graceful_shutdown=1))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the bench server did not start")
        time.sleep(0.02)
    return server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def churn(data: dict[str, Any], d: FakeDaemon) -> None:
    """Flip an instance's state every 2 s, as a cluster would."""
    while True:
        time.sleep(2)
        inst = random.choice(data["instances"])
        inst["status"] = "ADMIN_down" if inst["status"] == "running" else "running"
        d.joined.hub.changed(f"observed/{inst['name']}")


PAINT_JS = """() => new Promise((resolve) => {
  const want = %d;
  const check = () => {
    const rows = document.querySelectorAll('#instances-table tbody tr').length;
    if (rows >= want) {
      const fcp = performance.getEntriesByName('first-contentful-paint')[0];
      const mark = performance.getEntriesByName('haven-painted')[0];
      const data = performance.getEntriesByType('resource')
        .find((e) => e.name.includes('/2/instances'));
      resolve({rows, painted_ms: mark ? mark.startTime : performance.now(),
               fcp_ms: fcp ? fcp.startTime : null, data_ms: data ? data.responseEnd : null});
    } else requestAnimationFrame(check);
  };
  check();
})"""


def measure(url: str, n: int, runs: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    paints, fcps, datas = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                    args=["--no-sandbox", "--disable-dev-shm-usage"])
        for _ in range(runs + 1):  # the first run warms the browser's caches: dropped
            page = browser.new_page()
            page.goto(url + "/ui/#/instances")
            got = page.evaluate(PAINT_JS % n)
            paints.append(got["painted_ms"] / 1000)
            fcps.append((got["fcp_ms"] or 0) / 1000)
            datas.append((got["data_ms"] or 0) / 1000)
            page.close()
        browser.close()
    paints, fcps, datas = paints[1:], fcps[1:], datas[1:]
    return {"bench": "ui_paint", "instances": n, "runs": runs,
            "first_paint_s": round(statistics.median(paints), 4),
            "first_paint_max_s": round(max(paints), 4),
            "first_contentful_paint_s": round(statistics.median(fcps), 4),
            # when /2/instances had arrived: the rest of first_paint_s is the page's own
            "instances_loaded_s": round(statistics.median(datas), 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--serve", type=int, metavar="PORT", help="serve for a person instead")
    args = ap.parse_args()
    data = synthetic(args.instances)
    d = FakeDaemon()
    application = app(data, d)
    if args.serve:
        serve(application, args.serve)
        print(f"http://127.0.0.1:{args.serve}/ui/ (admin/secret, viewer/viewer)")
        churn(data, d)
        return 0
    port = free_port()
    server = serve(application, port)
    try:
        print(json.dumps(measure(f"http://127.0.0.1:{port}", args.instances, args.runs)))
    finally:
        server.should_exit = True
    return 0


if __name__ == "__main__":
    sys.exit(main())
