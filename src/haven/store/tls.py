"""The client side of etcd's TLS: which files, and the SSL contexts made from them."""

from __future__ import annotations

import ssl
import threading
import weakref
from typing import NamedTuple


class TlsFiles(NamedTuple):
    """PEM files: the CA that signed etcd's certificates, and this client's own
    certificate and key (etcd is run with ``--client-cert-auth``)."""

    ca: str
    cert: str
    key: str


# Every context made here, by the files it was made from: a renewed certificate is
# loaded into them in place (:func:`reload_certificates`), so that the connections a
# long-lived daemon opens after a renewal present the new one, before the old one is
# revoked.
_LIVE: weakref.WeakKeyDictionary[ssl.SSLContext, TlsFiles] = weakref.WeakKeyDictionary()
_LIVE_LOCK = threading.Lock()


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """A context that trusts only the cluster's CA and presents the client
    certificate.  Host names are not checked: the private CA signs nothing but the
    cluster's own nodes, so a certificate from it is the identity (as the pinned
    cluster certificate is for the node API), whatever address reached it."""
    ctx = ssl.create_default_context(cafile=files.ca)
    ctx.check_hostname = False
    ctx.load_cert_chain(files.cert, files.key)
    with _LIVE_LOCK:
        _LIVE[ctx] = files
    return ctx


def reload_certificates(files: TlsFiles) -> int:
    """Load the certificate and key in ``files`` again into every live context made
    from them; connections opened from now on present it (those already open keep
    theirs).  Returns how many contexts were reloaded."""
    with _LIVE_LOCK:
        contexts = [ctx for ctx, f in _LIVE.items() if f == files]
    for ctx in contexts:
        ctx.load_cert_chain(files.cert, files.key)
    return len(contexts)
