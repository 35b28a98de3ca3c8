"""How :class:`haven.store.etcd.EtcdStore` reaches etcd: the HTTP clients, the order
in which members are tried, timeouts, resends and the mapping of failures to the
store's errors.

Endpoint rotation.  A request goes to the endpoint that answered last; when it cannot
be delivered (connection refused, connect timeout) or etcd refuses it before acting
("no leader", a learner, a stopping server) the next endpoint is tried.

A frozen member (SIGSTOP, a stalled disk under its process) accepts connections and
request bytes but never answers.  So a request that is safe to resend (reads,
keepalives, revokes) waits only ``fast_timeout`` (0.6 s) for each member, then goes to
the next, round after round for up to ``RETRY_PATIENCE`` s; only then does it try them
all once more with the full ``timeout`` (a slow but live cluster still answers; not
for keepalives, whose keeper retries by itself within its deadline).  A
member that did not answer in time goes to the back of the order until it answers
again (at most ``SUSPECT_FOR`` s), so other requests do not wait for it too; a warning
names it, and the member that answered instead, once per such episode.

After a *write* whose outcome is unknown (the reply timed out, "request timed out",
"leader changed") nothing is resent: a resent compare-and-swap could fail against our
own first attempt and report a conflict that is not one.  The caller gets
:class:`OutcomeUnknown` and re-reads, as after any outage.  That is the rule of etcd's
own Go client.  Reads, keepalives and revokes are resent freely; ``Store.put`` and
``Store.cas`` resend once themselves (see :mod:`haven.store.base`).  "Unknown"
includes "later": a member frozen with the write in its socket buffer may apply it
when it resumes, seconds after the caller re-read and moved on (5 times in 12 with a
SIGSTOPped etcd 3.4.23 member; closing the connection with a reset does not stop it).

Every ``httpx`` exception of a request is mapped here (a watch's in
:mod:`haven.store.etcd_watch`); none escapes the store.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Sequence

import httpx

from haven.store.errors import (
    LeaseExpired,
    OutcomeUnknown,
    StoreClosed,
    StoreError,
    StoreUnavailable,
)
from haven.store.etcd_wire import (
    Json,
    _AllFailed,
    _error_of,
    _Refused,
    _TimedOut,
    _url,
    _why,
)
from haven.store.tls import TlsFiles, client_context

log = logging.getLogger(__name__)

# Refused before anything was proposed to raft: safe to resend anywhere.
_NOT_APPLIED = (
    "etcdserver: no leader",
    "etcdserver: not capable",
    "etcdserver: rpc not supported for learner",
    "etcdserver: server stopped",
    "etcdserver: too many requests",
    # Dropped before it reached the log (e.g. during a leadership transfer).
    "raft proposal dropped",
)
# The proposal may still commit: resend only idempotent requests.
_MAYBE_APPLIED = (
    "etcdserver: request timed out",
    "etcdserver: leader changed",
    "context deadline exceeded",
    # The member is stopping (removed, or shut down) and may have handed the proposal
    # to raft already (raft's node.stepWait returns this after the step too).
    "raft: stopped",
)
_GRPC_UNAVAILABLE = 14
# A raft leader election takes 1-2 s here: requests that are safe to repeat wait that
# out instead of failing the caller.
RETRY_PATIENCE = 3.0

# A request that is safe to resend waits this long for one member in its first round
# (a frozen member never answers; etcd answers a keepalive or a read in milliseconds).
# Under a third of the 4 s the lease keeper has to renew (TTL 5 - margin 1).
FAST_TIMEOUT = 0.6
# A member that did not answer in time is tried last for this long (or until it
# answers): the next request must not wait for it again.
SUSPECT_FOR = 10.0

# Detect a peer that vanished without closing (power loss, partition) on idle watch
# connections within ~11 s instead of the kernel's two hours.
_SOCKET_OPTIONS = [
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 5),
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2),
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3),
]


class _EtcdTransport:
    """The endpoints of one :class:`haven.store.etcd.EtcdStore` and the requests sent
    to them.  Thread-safe."""

    def __init__(self, endpoints: Sequence[str], timeout: float, tls: TlsFiles | None,
                 fast_timeout: float) -> None:
        # With TLS files, bare host:port endpoints mean https, and every connection
        # presents the client certificate etcd's --client-cert-auth asks for.
        self._scheme = "https" if tls else "http"
        self._tls = tls
        verify: ssl.SSLContext | bool = client_context(tls) if tls else True
        self._endpoints = [_url(e, self._scheme) for e in endpoints]
        self._timeout = timeout
        # First-round wait for one member, for requests that are safe to resend.
        self._fast_timeout = min(fast_timeout, timeout)
        self._lock = threading.Lock()
        # Endpoint URL -> when it last failed to answer in time (monotonic) and how
        # long it had been given; it is ordered last while that is recent.  Cleared
        # when it answers again.
        self._silent: dict[str, tuple[float, float]] = {}
        self._silent_reported: set[str] = set()  # warned about in this episode
        self._shut = False  # close() was called
        self._current = 0  # index of the endpoint that answered last
        # trust_env=False: an HTTP(S)_PROXY meant for the outside world must not
        # capture traffic to etcd.
        self._client = httpx.Client(
            timeout=timeout, trust_env=False,
            transport=httpx.HTTPTransport(socket_options=_SOCKET_OPTIONS, verify=verify))
        # Watches block in reads for as long as nothing changes: no read timeout, and
        # no pooling of their connections (close() shuts their sockets down).
        self._watch_client = httpx.Client(
            timeout=httpx.Timeout(timeout, read=None), trust_env=False,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
            transport=httpx.HTTPTransport(socket_options=_SOCKET_OPTIONS, verify=verify))

    @property
    def endpoints(self) -> list[str]:
        return list(self._endpoints)

    @property
    def tls(self) -> TlsFiles | None:
        """The TLS files this store connects with (for a sibling store)."""
        return self._tls

    # -- transport -----------------------------------------------------------------
    def set_endpoints(self, endpoints: Sequence[str]) -> None:
        """Use these endpoints from now on (the cluster's members changed); the first
        one is tried first.  Requests under way finish on the old list."""
        if not endpoints:
            return
        urls = [_url(e, self._scheme) for e in endpoints]
        with self._lock:
            if urls != self._endpoints:
                self._endpoints = urls
                self._current = 0

    def _order(self) -> list[tuple[int, str]]:
        """Each endpoint with its index, the last one that answered first, and those
        that recently did not answer in time last."""
        now = time.monotonic()
        with self._lock:
            start, eps = self._current, self._endpoints
            silent = {ep for ep, (t, _) in self._silent.items() if now - t < SUSPECT_FOR}
        n = len(eps)
        order = [((start + i) % n, eps[(start + i) % n]) for i in range(n)]
        return ([o for o in order if o[1] not in silent]
                + [o for o in order if o[1] in silent])

    def _worked(self, idx: int) -> None:
        with self._lock:
            self._current = idx

    def _answered(self, idx: int, ep: str, path: str) -> None:
        """``ep`` answered ``path``: it comes first from now on, and each member that
        recently did not answer in time is named once per episode (here, where the
        member that answered instead is known)."""
        with self._lock:
            self._current = idx
            back = self._silent.pop(ep, None) is not None
            self._silent_reported.discard(ep)
            news = [(e, waited) for e, (_, waited) in self._silent.items()
                    if e not in self._silent_reported]
            self._silent_reported.update(e for e, _ in news)
        if back:
            log.info("etcd member %s answers again", ep)
        for silent_ep, waited in news:
            log.warning("etcd member %s did not answer in %.1f s; %s answered %s instead "
                        "(the silent member is tried last until it answers again)",
                        silent_ep, waited, ep, path)

    def _timed_out(self, ep: str, waited: float) -> None:
        """``ep`` accepted a request but did not answer it within ``waited`` s."""
        now = time.monotonic()
        with self._lock:
            last = self._silent.get(ep)
            if last is not None and now - last[0] >= SUSPECT_FOR:
                self._silent_reported.discard(ep)  # an old episode: warn again
            self._silent[ep] = (now, waited)

    def _unavailable(self, path: str, errors: list[str], electing: bool = False
                     ) -> StoreUnavailable:
        cls = _AllFailed if electing else StoreUnavailable
        return cls(
            f"No etcd endpoint answered {path} ({'; '.join(errors)}); check that etcd is "
            f"running and reachable at {', '.join(self._endpoints)}."
        )

    def _post(self, path: str, body: Json, *, idempotent: bool, patient: bool = True
              ) -> Json:
        """POST to the endpoints in turn (see the module docstring for when); when every
        endpoint failed in a way that is safe to retry (etcd electing a leader, members
        restarting), try them all again for up to ``RETRY_PATIENCE`` seconds.

        A request that is safe to resend gives each member ``fast_timeout``, round after
        round for up to ``RETRY_PATIENCE`` s: while a frozen leader is replaced, the
        followers hold requests (forwarded to it) until a new one is elected, and only
        a request sent after that is answered.  Then, if ``patient``, one last round
        waits the full ``timeout`` for each member (slow, not silent, perhaps); a lease
        keepalive is not patient: its keeper retries by itself, within its deadline."""
        deadline = time.monotonic() + RETRY_PATIENCE
        timeout = self._fast_timeout if idempotent and self._fast_timeout < self._timeout \
            else None
        while True:
            try:
                return self._post_round(path, body, idempotent=idempotent, timeout=timeout,
                                        until=deadline if timeout is not None else None)
            except _AllFailed:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
            except _TimedOut:
                if timeout is None or (time.monotonic() >= deadline and not patient):
                    raise
                if time.monotonic() >= deadline:
                    timeout = None  # the last round, with the full timeout

    def _post_round(self, path: str, body: Json, *, idempotent: bool,
                    timeout: float | None = None, until: float | None = None) -> Json:
        """One try at each endpoint; ``timeout`` (default: the store's) for each, cut
        short so that no try runs past ``until`` (monotonic) if given."""
        errors: list[str] = []
        electing = False  # some member answered, but the cluster has no usable leader
        last: Exception | None = None
        timed_out = False  # some member did not answer in time
        for idx, ep in self._order():
            if until is not None and timeout is not None:
                left = until - time.monotonic()
                if left < 0.1:
                    errors.append(f"{ep}: not tried, out of time")
                    timed_out = True
                    continue
                timeout = min(timeout, left)
            waited = self._timeout if timeout is None else timeout
            try:
                resp = self._send(ep + path, body, timeout)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout,
                    httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
                errors.append(f"{ep}: {_why(exc)}")
                last = exc
                if isinstance(exc, httpx.ConnectTimeout):
                    # Unreachable (a partition, a powered-off host): as silent as a
                    # frozen member, and as costly to wait for again.
                    self._timed_out(ep, waited)
                    timed_out = True
                continue
            except httpx.HTTPError as exc:
                errors.append(f"{ep}: {_why(exc)}")
                last = exc
                if isinstance(exc, httpx.TimeoutException):
                    # Connected, sent, no answer: a frozen or badly stalled member.  The
                    # read timed out, so httpx does not pool this connection again.
                    self._timed_out(ep, waited)
                    timed_out = True
                if idempotent:
                    continue
                self._worked((idx + 1) % len(self._endpoints))
                raise OutcomeUnknown(
                    f"etcd at {ep} did not answer {path} ({_why(exc)}); "
                    "the write may or may not have been applied: re-read before retrying."
                ) from exc
            try:
                data = resp.json()
            except ValueError:
                data = None
            if not isinstance(data, dict):
                raise StoreError(f"etcd at {ep} sent a malformed answer to {path}.")
            if resp.status_code == 200 and "error" not in data:
                self._answered(idx, ep, path)
                return data
            text, code = _error_of(data, resp.status_code)
            log.debug("etcd %s%s: %s (code %s)", ep, path, text, code)
            errors.append(f"{ep}: {text}")
            if text.startswith(_NOT_APPLIED) or (
                    idempotent and (text.startswith(_MAYBE_APPLIED) or code == _GRPC_UNAVAILABLE)):
                electing = True
                continue
            if text.startswith(_MAYBE_APPLIED):
                self._worked((idx + 1) % len(self._endpoints))
                raise OutcomeUnknown(
                    f"etcd at {ep} answered {path} with {text!r}; the write may or may not "
                    "have been applied: re-read before retrying."
                )
            if code == _GRPC_UNAVAILABLE:
                raise StoreUnavailable(f"etcd at {ep} cannot serve {path} now: {text}.")
            if "lease not found" in text:
                raise LeaseExpired(f"etcd no longer knows the lease used by {path} ({text}).")
            raise _Refused(f"etcd at {ep} refused {path}: {text}.", text, code)
        if timed_out and timeout is not None and not electing:
            raise _TimedOut(f"No etcd endpoint answered {path} in time "
                            f"({'; '.join(errors)}).") from last
        raise self._unavailable(path, errors, electing) from last

    def _post_one(self, endpoint: str, path: str, body: Json, timeout: float) -> Json:
        # One named endpoint, no rotation: status and defragment are per member.
        ep = _url(endpoint, self._scheme)
        try:
            resp = self._send(ep + path, body, timeout)
            data = resp.json()
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            raise StoreUnavailable(
                f"etcd at {ep} did not answer {path} ({_why(exc)}); check "
                "that this member is running."
            ) from exc
        if not isinstance(data, dict):
            raise StoreUnavailable(f"etcd at {ep} sent a malformed answer to {path}.")
        if resp.status_code != 200 or "error" in data:
            text, _ = _error_of(data, resp.status_code)
            raise StoreUnavailable(f"etcd at {ep} refused {path}: {text}.")
        return data

    def _send(self, url: str, body: Json, timeout: float | None = None) -> httpx.Response:
        if self._shut:
            raise self._closed_error()
        try:
            if timeout is None:
                return self._client.post(url, json=body)
            return self._client.post(url, json=body, timeout=timeout)
        except RuntimeError:
            if self._shut:  # closed under this request, by another thread
                raise self._closed_error() from None
            raise

    def _closed_error(self) -> StoreClosed:
        return StoreClosed("This node's connection to etcd was closed (the node left the "
                           "cluster or is reconnecting); retry the request.")
