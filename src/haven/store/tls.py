"""The client side of etcd's TLS: which files, and the SSL context made from them."""

from __future__ import annotations

import ssl
from typing import NamedTuple


class TlsFiles(NamedTuple):
    """PEM files: the CA that signed etcd's certificates, and this client's own
    certificate and key (etcd is run with ``--client-cert-auth``)."""

    ca: str
    cert: str
    key: str


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """A context that trusts only the cluster's CA and presents the client
    certificate.  Host names are not checked: the private CA signs nothing but the
    cluster's own nodes, so a certificate from it is the identity (as the pinned
    cluster certificate is for the node API), whatever address reached it."""
    ctx = ssl.create_default_context(cafile=files.ca)
    ctx.check_hostname = False
    ctx.load_cert_chain(files.cert, files.key)
    return ctx
