"""The cluster's certificate authority and the node certificates it signs.

etcd's client and peer ports accept only TLS connections whose client certificate was
signed by the cluster's CA (``--client-cert-auth``, ``--peer-client-cert-auth``).  Each
node holds one certificate from it, for its own address and name, valid both as server
(its etcd member) and as client (its daemon's store connection, its member's peer
links).  The CA key is kept by every node (0600, never in etcd), because any master
candidate may have to sign a new node's certificate; Ganeti likewise copies its cluster
keys to every node.

Built on ``cryptography`` (a kept library), not the ``openssl`` command.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from haven.errors import InvalidInput

TOKEN_PREFIX = "hvn1"
CA_DAYS = 3650
NODE_DAYS = 3650


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both PEM."""

    cert_pem: str
    key_pem: str


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Haven"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _now() -> datetime.datetime:
    # A minute back: a node whose clock is slightly behind still accepts it at once.
    return datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1)


def _self_signed_builder(key: ec.EllipticCurvePrivateKey, name: x509.Name, days: int
                         ) -> x509.CertificateBuilder:
    now = _now()
    return (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=days)))


def _pair(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> KeyPair:
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key))


def make_ca(cluster_name: str) -> KeyPair:
    """A new self-signed CA for the cluster ``cluster_name``."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_self_signed_builder(key, _name(f"Haven cluster CA {cluster_name}"), CA_DAYS)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False),
                critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return _pair(cert, key)


def self_signed(common_name: str) -> KeyPair:
    """A self-signed certificate for the node API (the cluster certificate: clients
    pin it whole, so it names no address)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (_self_signed_builder(key, name, NODE_DAYS)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return _pair(cert, key)


def issue(ca: KeyPair, common_name: str, addresses: list[str]) -> KeyPair:
    """A certificate for ``common_name`` signed by ``ca``, valid for the IP
    ``addresses``, usable as TLS server and client."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    ca_key = serialization.load_pem_private_key(ca.key_pem.encode(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the cluster CA key is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(a))
                                    for a in dict.fromkeys(addresses)]
    now = _now()
    cert = (x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=NODE_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_encipherment=True, key_cert_sign=False,
                crl_sign=False, content_commitment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False),
                critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key))


def node_certificate(ca: KeyPair, node: str, *addresses: str) -> KeyPair:
    """Node ``node``'s certificate for etcd, for its ``addresses`` (primary and
    secondary IP) and the loopback (see :func:`node_addresses`)."""
    return issue(ca, node, node_addresses(*addresses))


def node_addresses(*addresses: str) -> list[str]:
    """The IP addresses a node's certificate names.  etcd checks a peer's client
    certificate against the address the connection comes from, and a connection to a
    loopback address comes from 127.0.0.1 (every node of ``haven up`` on one machine),
    so that is always included; DNS names are not, since etcd would resolve them on
    every mismatch."""
    return [*dict.fromkeys(a for a in addresses if a), "127.0.0.1"]


def fingerprint(cert_pem: str) -> str:
    """``sha256:<hex>`` of the certificate's DER form (what a join token pins)."""
    der = x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(
        serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def signed_by(cert_pem: str, ca_pem: str) -> bool:
    """True if ``cert_pem`` was issued by the CA ``ca_pem`` (signature checked)."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    ca = x509.load_pem_x509_certificate(ca_pem.encode())
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def split_token(token: str) -> tuple[str, str]:
    """(secret, certificate fingerprint ``sha256:<hex>``) of a node's join token,
    ``hvn1.<32 hex secret>.<64 hex sha256 of the node's standby certificate>``."""
    parts = token.strip().split(".")
    try:
        valid = (len(parts) == 3 and parts[0] == TOKEN_PREFIX and len(parts[1]) == 32
                 and len(parts[2]) == 64 and int(parts[1], 16) >= 0
                 and int(parts[2], 16) >= 0)
    except ValueError:
        valid = False
    if not valid:
        raise InvalidInput("The join token is not valid; print the node's token with "
                           "'haven join-token' on that node and copy it whole.")
    return parts[1], "sha256:" + parts[2]


def serial(cert_pem: str) -> int:
    """The serial number of a certificate (what a revocation list names)."""
    return int(x509.load_pem_x509_certificate(cert_pem.encode()).serial_number)


def make_crl(ca: KeyPair, serials: Iterable[int]) -> str:
    """A revocation list signed by ``ca`` naming ``serials`` (PEM).  etcd reads its
    ``--client-crl-file``/``--peer-crl-file`` again for every new connection and refuses
    a certificate whose serial is listed (measured with etcd 3.4.23), so a list written
    in place takes effect at once; connections already open stay open."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    ca_key = serialization.load_pem_private_key(ca.key_pem.encode(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the cluster CA key is not an EC key")
    now = _now()
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca_cert.subject)
               .last_update(now)
               .next_update(now + datetime.timedelta(days=CA_DAYS)))
    for number in sorted(set(serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(number)
            .revocation_date(now).build())
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(
        serialization.Encoding.PEM).decode()


def crl_serials(crl_pem: str) -> set[int]:
    """The serial numbers a revocation list names."""
    crl = x509.load_pem_x509_crl(crl_pem.encode())
    return {int(r.serial_number) for r in crl}


def crl_signed_by(crl_pem: str, ca_pem: str) -> bool:
    """True if ``crl_pem`` parses and was signed by the CA ``ca_pem``: a node writes no
    other list for its etcd member, since one it cannot parse refuses every client."""
    try:
        crl = x509.load_pem_x509_crl(crl_pem.encode())
        ca = x509.load_pem_x509_certificate(ca_pem.encode())
        return bool(crl.is_signature_valid(ca.public_key()))  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return False
