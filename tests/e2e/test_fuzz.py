"""Fuzzing against a real one-node cluster (issue 14): generated REST requests and
malformed HTTP, and ``gnt-*`` commands with generated arguments.

Checked: never a traceback, never a server error (5xx other than 501 "not implemented"
and 503 "retry"), refusals in Ganeti's error shape, Ganeti's CLI exit codes, and the
cluster's configuration unchanged by every refused request (compared before and after).
Names are generated, never those of existing objects, and calls that would end the
cluster itself (destroy, leave, init, join, master-failover) are left out: the fuzzer
must be able to go on.  The number of examples is bounded for ``make test``
(``HAVEN_FUZZ_EXAMPLES`` raises it).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import string
import subprocess
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import BIN, Sim, make_sim

pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("HAVEN_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
# Ganeti's CLI exit codes (ganeti._constants.EXIT_*) and argparse's usage error.
EXIT_CODES = {0, 1, 2, 5, 11, 12, 13, 14}
ROUTES = [
    ("GET", "/2/instances/{name}"), ("GET", "/2/instances/{name}/info"),
    ("DELETE", "/2/instances/{name}"), ("PUT", "/2/instances/{name}/startup"),
    ("PUT", "/2/instances/{name}/shutdown"), ("POST", "/2/instances/{name}/reboot"),
    ("PUT", "/2/instances/{name}/modify"), ("POST", "/2/instances/{name}/reinstall"),
    ("PUT", "/2/instances/{name}/rename"), ("PUT", "/2/instances/{name}/failover"),
    ("PUT", "/2/instances/{name}/migrate"), ("POST", "/2/instances/{name}/replace-disks"),
    ("POST", "/2/instances/{name}/disk/{idx}/grow"), ("GET", "/2/instances/{name}/console"),
    ("POST", "/2/instances"), ("GET", "/2/instances"), ("GET", "/2/nodes/{name}"),
    ("PUT", "/2/nodes/{name}/role"), ("POST", "/2/nodes/{name}/modify"),
    ("POST", "/2/nodes/{name}/evacuate"), ("POST", "/2/nodes/{name}/migrate"),
    ("GET", "/2/groups/{name}"), ("POST", "/2/groups"), ("GET", "/2/query/{name}"),
    ("PUT", "/2/query/{name}"), ("GET", "/2/jobs/{idx}"), ("DELETE", "/2/jobs/{idx}"),
    ("PUT", "/haven/alarms/settings"), ("POST", "/haven/alarms/{name}/ack"),
    ("POST", "/haven/node/instance/{name}/start"), ("POST", "/haven/node/instance/{name}/os"),
    ("POST", "/haven/node/instance/{name}/fence-disks"), ("GET", "/haven/events"),
    ("GET", "/2/instances/{name}/tags"), ("PUT", "/2/instances/{name}/tags"),
]
# What an administrator's configuration is: none of it may change when a request is
# refused.  (Heartbeats, facts, events and jobs change by themselves.)
WATCHED = ("cluster", "nodes/", "instances/", "replicas/", "alarms/settings")

names = st.text(alphabet=string.ascii_letters + string.digits + "-._~%/:@!$&'()*+,;= \\\"<>\x00é",
                min_size=0, max_size=40).filter(lambda s: "node01" not in s)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=6),
    max_leaves=20)
bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.dictionaries(st.sampled_from(["instance_name", "name", "disk_template", "disks",
                                     "os_type", "pnode", "mode", "target_node", "amount",
                                     "role", "new_name", "__version__", "tags", "beparams",
                                     "hvparams", "force", "dry_run", "remote_node"]),
                    json_values, max_size=6).map(lambda v: json.dumps(v).encode()),
)


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    yield from make_sim(tmp_path_factory.mktemp("fuzz"), 1)


class Api:
    def __init__(self, sim: Sim) -> None:
        conf = json.loads((sim.base / "client.json").read_text())
        cert = sim.base / "fuzz-ca.pem"
        cert.write_text(conf["cert"])
        self.host, port = conf["endpoints"][0].rsplit(":", 1)
        self.port = int(port)
        self.ctx = ssl.create_default_context(cafile=str(cert))
        self.ctx.check_hostname = False
        self.client = httpx.Client(base_url=f"https://{self.host}:{self.port}",
                                   verify=self.ctx, auth=(conf["user"], conf["password"]),
                                   timeout=30)

    def settled(self, sim: Sim) -> dict[str, Any]:
        """The configuration once nothing changes it by itself (a cluster that has just
        come up still records its etcd member, its facts...): two equal looks 1 s
        apart."""
        last = self.snapshot(sim)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(1)
            now = self.snapshot(sim)
            if now == last:
                return now
            last = now
        raise AssertionError("the configuration of an idle cluster kept changing")

    def snapshot(self, sim: Sim) -> dict[str, Any]:
        from haven.daemon.localstate import LocalState
        from haven.model.keys import store_prefix
        from haven.store.etcd import EtcdStore

        node = json.loads((sim.base / "node01" / "node.json").read_text())
        store = EtcdStore(list(node["etcd_endpoints"]), store_prefix(node["cluster_name"]),
                          tls=LocalState(sim.base / "node01").etcd_tls())
        try:
            out = {}
            for prefix in WATCHED:
                kvs, _ = store.list(prefix)
                out.update({kv.key: kv.mod_revision for kv in kvs})
            return out
        finally:
            store.close()


def _check_answer(resp: httpx.Response, what: str) -> None:
    assert resp.status_code not in (500, 502, 504) and resp.status_code < 600, \
        f"{what}: {resp.status_code} {resp.text[:300]}"
    assert "Traceback" not in resp.text, f"{what}: {resp.text[:500]}"
    if 400 <= resp.status_code < 500:
        body = resp.json()
        assert set(body) >= {"code", "message"} and body["code"] == resp.status_code, \
            f"{what}: not Ganeti's error shape: {body}"


def test_generated_rest_requests_are_refused_cleanly_and_change_nothing(one: Sim) -> None:
    api = Api(one)
    before = api.settled(one)
    accepted: list[str] = []

    @FUZZ
    @given(route=st.sampled_from(ROUTES), name=names, idx=st.integers(-5, 10**12),
           body=bodies, query=st.dictionaries(st.sampled_from(
               ["bulk", "fields", "dry-run", "force", "tag", "live", "mode", "lock"]),
               st.text(max_size=10), max_size=3))
    def run(route: tuple[str, str], name: str, idx: int, body: bytes,
            query: dict[str, str]) -> None:
        method, template = route
        path = template.replace("{name}", quote(name, safe="/:@!$&'()*+,;=") or "x") \
            .replace("{idx}", str(idx))
        what = f"{method} {path} {body[:80]!r}"
        try:
            resp = api.client.request(method, path, params=query,
                                      content=body if method != "GET" else None)
        except httpx.InvalidURL:
            return
        _check_answer(resp, what)
        if resp.status_code < 300 and method != "GET":
            accepted.append(what)

    run()
    assert accepted == [], f"generated writes were accepted: {accepted[:5]}"
    after = api.snapshot(one)
    changed = sorted(k for k in {*before, *after} if before.get(k) != after.get(k))
    assert not changed, f"a refused request changed the configuration: {changed}"


def _raw(api: Api, data: bytes, wait: float = 5.0) -> bytes:
    with socket.create_connection((api.host, api.port), timeout=wait) as raw, \
            api.ctx.wrap_socket(raw) as tls:
        # Refused before it was all sent: what it answered is still read.
        with contextlib.suppress(ssl.SSLError, BrokenPipeError, ConnectionResetError):
            tls.sendall(data)
        chunks = []
        try:
            while True:
                got = tls.recv(65536)
                if not got:
                    break
                chunks.append(got)
        except (TimeoutError, ssl.SSLError, ConnectionResetError):
            pass
        return b"".join(chunks)


def test_malformed_http_is_refused_and_the_server_goes_on(one: Sim) -> None:
    api = Api(one)
    # Requests that are well formed but huge may be served (the HTTP library decides
    # how much it buffers); the others must be refused.
    for data in (b"GET " + b"/x" * 40000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
                 b"GET /2/info HTTP/1.1\r\nHost: a\r\n" + b"X-A: " + b"b" * 100000
                 + b"\r\n\r\n"):
        answer = _raw(api, data, wait=3.0)
        assert b"Traceback" not in answer and not answer.startswith(b"HTTP/1.1 5"), \
            answer[:300]
    cases = [
        b"GARBAGE\r\n\r\n",
        b"POST /2/instances HTTP/1.1\r\nHost: a\r\nContent-Length: 104857600\r\n\r\n{",
        b"POST /2/instances HTTP/1.1\r\nHost: a\r\nContent-Length: -3\r\n\r\n",
        b"POST /2/instances HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\x16\x03\x01\x00\x00" * 10,
    ]
    for data in cases:
        answer = _raw(api, data, wait=3.0)
        assert b"Traceback" not in answer, answer[:300]
        if answer.startswith(b"HTTP/"):
            status = int(answer.split(b" ", 2)[1])
            assert 400 <= status < 500 or status == 505, (data[:60], answer[:300])
    # A slow client (half a request, then nothing) does not block anyone else.
    with socket.create_connection((api.host, api.port), timeout=10) as raw, \
            api.ctx.wrap_socket(raw) as slow:
        slow.sendall(b"GET /2/info HTTP/1.1\r\nHo")
        t0 = time.monotonic()
        assert api.client.get("/2/info").status_code == 200
        assert time.monotonic() - t0 < 5
    assert api.client.get("/2/info").status_code == 200


CLI_COMMANDS = {
    "gnt-instance": ["add", "remove", "list", "info", "startup", "shutdown", "reboot",
                     "modify", "rename", "failover", "migrate", "move", "console",
                     "grow-disk", "reinstall", "activate-disks", "replace-disks"],
    "gnt-node": ["list", "info", "modify", "evacuate", "migrate", "failover", "add",
                 "remove", "volumes"],
    "gnt-cluster": ["info", "verify", "getmaster", "modify", "verify-disks", "version"],
    "gnt-job": ["list", "info", "cancel", "watch"],
    "haven": ["events", "ha", "alarms"],
}
OPTIONS = ["-f", "--force", "-n", "-t", "--disk", "-o", "-B", "-H", "--submit", "-O",
           "--no-headers", "--separator", "-C", "-D", "--ignore-consistency", "--all",
           "--yes", "-p", "-s", "--no-start", "--json", "-I"]


def test_generated_commands_never_crash_and_use_ganetis_exit_codes(one: Sim) -> None:
    api = Api(one)
    before = api.settled(one)

    @settings(max_examples=max(10, EXAMPLES // 2), deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(cmd=st.sampled_from([(b, s) for b, subs in CLI_COMMANDS.items() for s in subs]),
           args=st.lists(st.one_of(st.sampled_from(OPTIONS), names.filter(
               lambda s: "\x00" not in s)), max_size=6))
    def run(cmd: tuple[str, str], args: list[str]) -> None:
        binary, sub = cmd
        argv = [str(BIN / binary)]
        if binary == "haven":
            argv += ["--base-dir", str(one.base)]
        argv += [sub, *args]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=one.env,
                           stdin=subprocess.DEVNULL)
        assert "Traceback" not in p.stderr + p.stdout, f"{argv}: {p.stderr[-800:]}"
        assert p.returncode in EXIT_CODES, f"{argv}: exit {p.returncode}: {p.stderr[-300:]}"

    run()
    # Generated names match nothing, so nothing may have changed.
    after = api.snapshot(one)
    assert after == before, \
        sorted(k for k in {*before, *after} if before.get(k) != after.get(k))

