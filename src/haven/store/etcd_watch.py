"""One streamed ``/v3/watch`` of :class:`haven.store.etcd.EtcdStore`."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx

from haven.store.base import Watch, WatchEvent
from haven.store.errors import Compacted, StoreError, StoreUnavailable
from haven.store.etcd_wire import Json, _error_of, _int, _why

if TYPE_CHECKING:
    from haven.store.etcd import EtcdStore


class _EtcdWatch(Watch):
    """One ``/v3/watch`` stream; ``close()`` shuts its socket to wake a blocked read."""

    def __init__(self, store: EtcdStore, body: Json) -> None:
        self._store = store
        self._body = body
        self._lock = threading.Lock()
        self._closed = False
        self._resp: httpx.Response | None = None

    def _open(self) -> tuple[httpx.Response, str] | None:
        st = self._store
        errors: list[str] = []
        last: Exception | None = None
        for idx, ep in st._order():
            if st._shut:
                raise st._closed_error()
            try:
                req = st._watch_client.build_request("POST", ep + "/v3/watch", json=self._body)
                resp = st._watch_client.send(req, stream=True)
            except RuntimeError:
                if st._shut:
                    raise st._closed_error() from None
                raise
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                errors.append(f"{ep}: {_why(exc)}")
                last = exc
                continue
            if resp.status_code != 200:
                resp.close()
                errors.append(f"{ep}: HTTP status {resp.status_code}")
                continue
            st._worked(idx)
            with self._lock:
                if self._closed:
                    resp.close()
                    return None
                self._resp = resp
            return resp, ep
        raise st._unavailable("/v3/watch", errors) from last

    def __iter__(self) -> Iterator[WatchEvent]:
        opened = self._open()
        if opened is None:
            return
        resp, ep = opened
        try:
            for line in resp.iter_lines():
                if not line.strip():
                    continue
                msg = json.loads(line)
                if "error" in msg:
                    text, _ = _error_of(msg, 200)
                    raise StoreUnavailable(f"etcd at {ep} ended a watch: {text}.")
                result = msg.get("result", {})
                compact_rev = _int(result.get("compact_revision"))
                if compact_rev:
                    raise Compacted(
                        f"etcd at {ep} has compacted the history this watch needs (up to "
                        f"revision {compact_rev}); re-list and watch again.", compact_rev)
                if result.get("canceled"):
                    reason = result.get("cancel_reason") or "no reason given"
                    raise StoreUnavailable(f"etcd at {ep} canceled a watch: {reason}.")
                for ev in result.get("events") or []:
                    kv = self._store._kv(ev.get("kv", {}))
                    yield WatchEvent("DELETE" if ev.get("type") == "DELETE" else "PUT", kv)
        except (httpx.HTTPError, httpx.StreamError) as exc:
            if self._closed:
                return
            raise StoreUnavailable(
                f"The watch connection to etcd at {ep} broke ({_why(exc)}); "
                "resume from the last revision seen + 1."
            ) from exc
        except ValueError as exc:
            if self._closed:
                return
            raise StoreError(f"etcd at {ep} sent a malformed watch response.") from exc
        finally:
            resp.close()
        if not self._closed:
            raise StoreUnavailable(
                f"etcd at {ep} ended a watch stream; resume from the last revision seen + 1."
            )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            resp = self._resp
        if resp is None:
            return
        # Closing the socket from another thread does not wake a read blocked on it;
        # shutdown() does (the reader sees EOF, notices _closed and returns).
        stream = resp.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
