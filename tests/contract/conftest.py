"""Fixtures that run one test suite against both store implementations.

``backend`` is parametrized: ``memory`` (a MemoryStore on a fake clock) and ``etcd``
(a throwaway etcd started once per session; every test gets its own random prefix).
``backend.advance(seconds)`` lets time pass: the fake clock jumps (and expired leases
are reaped), or for etcd the test really sleeps.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from haven.store import MemoryStore, Store, StoreUnavailable, Watch, WatchEvent
from haven.store.etcd import EtcdStore


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class EtcdServer:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed")
    tmp = tmp_path_factory.mktemp("etcd")
    client, peer, metrics = (f"http://127.0.0.1:{free_port()}" for _ in range(3))
    log = tmp / "etcd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["etcd", "--name", "t", "--data-dir", str(tmp / "data"),
             "--listen-client-urls", client, "--advertise-client-urls", client,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"t={peer}", "--listen-metrics-urls", metrics],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                r = httpx.post(f"{client}/v3/maintenance/status", json={}, timeout=1,
                               trust_env=False)
                if r.status_code == 200 and r.json().get("leader"):
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"etcd did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield EtcdServer(client, proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Backend:
    kind: str
    store: Store
    prefix: str
    # A second store object on the same keyspace (a second daemon), optionally with
    # another prefix.
    make: Callable[[str | None], Store]
    advance: Callable[[float], None]
    clock: Callable[[], float]
    _opened: list[Store] = field(default_factory=list)

    def other(self, prefix: str | None = None) -> Store:
        s = self.make(prefix)
        self._opened.append(s)
        return s

    @staticmethod
    def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError("condition not reached in time")
            time.sleep(0.01)

    @staticmethod
    def collect(watch: Watch, n: int, timeout: float = 5.0) -> list[WatchEvent]:
        """The first ``n`` events of ``watch`` (fewer if it times out); raises what
        the iteration raised."""
        events: list[WatchEvent] = []
        error: list[BaseException] = []

        def run() -> None:
            try:
                for ev in watch:
                    events.append(ev)
                    if len(events) >= n:
                        break
            except BaseException as exc:
                error.append(exc)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(timeout)
        watch.close()
        t.join(2)
        assert not t.is_alive(), "close() did not end the watch iteration"
        if error:
            raise error[0]
        return events


def _prefix() -> str:
    return f"/test-{uuid.uuid4().hex[:10]}/"


def memory_backend() -> Backend:
    clock = FakeClock()
    prefix = _prefix()
    store = MemoryStore(prefix, clock=clock)

    def advance(seconds: float) -> None:
        clock.advance(seconds)
        store.expire_leases()

    return Backend("memory", store, prefix, lambda p: store.clone_view(p), advance, clock)


@pytest.fixture
def mem_backend() -> Iterator[Backend]:
    b = memory_backend()
    yield b
    b.store.close()


@pytest.fixture(params=["memory", pytest.param("etcd", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        b = memory_backend()
    else:
        server: EtcdServer = request.getfixturevalue("etcd_server")
        prefix = _prefix()
        b = Backend("etcd", EtcdStore([server.url], prefix), prefix,
                    lambda p: EtcdStore([server.url], prefix if p is None else p),
                    time.sleep, time.monotonic)
    yield b
    for s in [b.store, *b._opened]:
        s.close()


class FlakyStore(Store):
    """Delegates to ``inner``; :meth:`cut` drops open watches and refuses new ones."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.broken = False
        self.watches: list[Watch] = []
        self.watch_calls: list[int] = []

    def cut(self) -> None:
        self.broken = True
        for w in self.watches:
            w.close()

    def heal(self) -> None:
        self.broken = False

    def get(self, key: str):  # type: ignore[no-untyped-def]
        return self.inner.get(key)

    def list(self, prefix: str):  # type: ignore[no-untyped-def]
        return self.inner.list(prefix)

    def txn(self, compares, success, failure=()):  # type: ignore[no-untyped-def]
        return self.inner.txn(compares, success, failure)

    def lease_grant(self, ttl: int) -> tuple[int, int]:
        return self.inner.lease_grant(ttl)

    def lease_keepalive(self, lease_id: int) -> int:
        return self.inner.lease_keepalive(lease_id)

    def lease_ttl(self, lease_id: int) -> float:
        return self.inner.lease_ttl(lease_id)

    def lease_revoke(self, lease_id: int) -> None:
        self.inner.lease_revoke(lease_id)

    def watch(self, prefix: str, start_revision: int) -> Watch:
        self.watch_calls.append(start_revision)
        if self.broken:
            raise StoreUnavailable("test: the connection to the store is cut")
        w = self.inner.watch(prefix, start_revision)
        self.watches.append(w)
        return w

    def compact(self, revision: int) -> None:
        self.inner.compact(revision)

    def revision(self) -> int:
        return self.inner.revision()


@pytest.fixture
def flaky() -> type[FlakyStore]:
    return FlakyStore


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@dataclass
class EtcdMember:
    """One member of :func:`etcd_cluster`; freeze it with :meth:`freeze`."""

    name: str
    url: str
    proc: subprocess.Popen[bytes]

    def status(self) -> dict[str, Any]:
        r = httpx.post(f"{self.url}/v3/maintenance/status", json={}, timeout=1,
                       trust_env=False)
        data: dict[str, Any] = r.json()
        return data

    def member_id(self) -> int:
        return int(self.status()["header"]["member_id"])

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """SIGSTOP the process for the block: it keeps accepting connections and
        bytes (the kernel does that) but answers nothing, as in the fault campaign."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)


@dataclass
class EtcdCluster:
    members: list[EtcdMember]

    def leader(self) -> EtcdMember:
        """The member every member names as leader (waits for them to agree)."""
        deadline = time.monotonic() + 15
        while True:
            try:
                leaders = {int(m.status().get("leader") or 0) for m in self.members}
                ids = {m.member_id(): m for m in self.members}
            except (httpx.HTTPError, ValueError, KeyError):
                leaders, ids = {0}, {}
            if len(leaders) == 1 and 0 not in leaders and next(iter(leaders)) in ids:
                return ids[next(iter(leaders))]
            if time.monotonic() > deadline:
                raise AssertionError("the etcd members do not agree on a leader")
            time.sleep(0.05)

    def follower(self) -> EtcdMember:
        leader = self.leader()
        return next(m for m in self.members if m is not leader)


@pytest.fixture(scope="module")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """Three real etcd members on loopback, with the flags Haven's managed members use
    that matter here (``--pre-vote``; default election timing)."""
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed")
    tmp = tmp_path_factory.mktemp("etcd3")
    names = ["e0", "e1", "e2"]
    peers = {n: f"http://127.0.0.1:{free_port()}" for n in names}
    clients = {n: f"http://127.0.0.1:{free_port()}" for n in names}
    initial = ",".join(f"{n}={peers[n]}" for n in names)
    members: list[EtcdMember] = []
    try:
        for n in names:
            with (tmp / f"{n}.log").open("wb") as out:
                proc = subprocess.Popen(
                    ["etcd", "--name", n, "--data-dir", str(tmp / n),
                     "--listen-client-urls", clients[n],
                     "--advertise-client-urls", clients[n],
                     "--listen-peer-urls", peers[n],
                     "--initial-advertise-peer-urls", peers[n],
                     "--initial-cluster", initial, "--initial-cluster-state", "new",
                     "--listen-metrics-urls", f"http://127.0.0.1:{free_port()}",
                     "--pre-vote", "--logger", "zap", "--log-level", "warn"],
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            members.append(EtcdMember(n, clients[n], proc))
        cluster = EtcdCluster(members)
        cluster.leader()
        yield cluster
    finally:
        for m in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(m.proc.pid, signal.SIGCONT)
            m.proc.terminate()
        for m in members:
            try:
                m.proc.wait(10)
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait()
