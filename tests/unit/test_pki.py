"""The cluster CA, node certificates and join tokens (haven.pki, LocalState)."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509

from haven import pki
from haven.daemon.localstate import LocalState
from haven.errors import InvalidInput, NodeSetupError
from haven.store.tls import TlsFiles, client_context, reload_certificates


def test_a_node_certificate_is_signed_by_its_ca_only() -> None:
    ca, other = pki.make_ca("c1"), pki.make_ca("c2")
    pair = pki.issue(ca, "node01", pki.node_addresses("10.0.0.1", "10.0.1.1"))
    assert pki.signed_by(pair.cert_pem, ca.cert_pem)
    assert not pki.signed_by(pair.cert_pem, other.cert_pem)
    assert pki.fingerprint(pair.cert_pem) != pki.fingerprint(ca.cert_pem)
    assert pki.fingerprint(pair.cert_pem).startswith("sha256:")


def test_node_addresses_always_include_loopback_once() -> None:
    assert pki.node_addresses("10.0.0.1", "10.0.0.1", "") == ["10.0.0.1", "127.0.0.1"]


def test_a_node_certificate_loads_as_a_tls_identity(tmp_path: Path) -> None:
    ca = pki.make_ca("c")
    pair = pki.issue(ca, "node01", ["127.0.0.1"])
    (tmp_path / "c.pem").write_text(pair.cert_pem)
    (tmp_path / "c.key").write_text(pair.key_pem)
    (tmp_path / "ca.pem").write_text(ca.cert_pem)
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    ctx.load_cert_chain(str(tmp_path / "c.pem"), str(tmp_path / "c.key"))


@pytest.mark.parametrize("token", ["", "hvn1.nothex", f"hvn1.{'0' * 32}.{'0' * 63}",
                                   f"hvn2.{'0' * 32}.{'0' * 64}",
                                   f"hvn1.{'g' * 32}.{'0' * 64}"])
def test_a_malformed_join_token_is_one_sentence(token: str) -> None:
    with pytest.raises(InvalidInput, match="join token is not valid"):
        pki.split_token(token)


def test_a_join_token_pins_the_standby_certificate_and_is_used_up(tmp_path: Path) -> None:
    local = LocalState(tmp_path)
    local.ensure_dirs()
    token = local.join_token()
    assert local.join_token() == token  # stable until used
    secret, fp = pki.split_token(token)
    assert fp == pki.fingerprint(local.provisional_cert.read_text())
    assert not local.consume_join_token(token.replace(secret, "f" * 32))
    assert local.consume_join_token(token)
    assert not local.consume_join_token(token)  # one time only
    assert local.join_token() != token


def test_key_bundle_round_trip_and_missing_keys(tmp_path: Path) -> None:
    a, b = LocalState(tmp_path / "a"), LocalState(tmp_path / "b")
    a.ensure_dirs()
    b.ensure_dirs()
    with pytest.raises(NodeSetupError, match="no cluster secrets"):
        a.key_bundle()
    from haven.daemon.localstate import ClusterSecrets, make_certificate

    a.save_secrets(ClusterSecrets.new())
    a.save_ca(pki.make_ca("c"))
    a.save_cert(*make_certificate("c"))
    bundle = a.key_bundle()
    written = b.save_key_bundle(bundle)
    assert len(written) == 5 and b.key_bundle() == bundle
    assert b.save_key_bundle(bundle) == []  # nothing changed
    with pytest.raises(NodeSetupError, match="lack"):
        b.save_key_bundle({k: v for k, v in bundle.items() if k != "ca_key"})
    b.forget()
    assert not b.secrets_file.exists() and not b.ca_key_file.exists()


def test_the_api_never_shows_a_join_token() -> None:
    from haven.api.routes import job_dict
    from haven.model.job import Job

    job = Job.new(1, [{"OP_ID": "OP_NODE_ADD", "node_name": "node02",
                       "join_token": f"hvn1.{'a' * 32}.{'0' * 64}"}], 0.0)
    shown = job_dict(job)
    assert shown["ops"][0]["join_token"] == "<hidden>"
    assert "a" * 32 not in str(shown)
    assert job.ops[0]["join_token"].startswith("hvn1.")  # the master still has it


def test_a_revocation_list_names_its_serials_and_is_checked_against_the_ca(
        tmp_path: Path) -> None:
    ca, other = pki.make_ca("c"), pki.make_ca("other")
    a, b = (pki.node_certificate(ca, n, "10.0.0.1") for n in ("a", "b"))
    crl = pki.make_crl(ca, [pki.serial(a.cert_pem)])
    assert pki.crl_serials(crl) == {pki.serial(a.cert_pem)}
    assert pki.serial(b.cert_pem) not in pki.crl_serials(crl)
    assert pki.crl_signed_by(crl, ca.cert_pem)
    assert not pki.crl_signed_by(crl, other.cert_pem)
    assert not pki.crl_signed_by("garbage", ca.cert_pem)
    # A node writes only a list its own CA signed: etcd refuses every client while
    # its list does not parse.
    local = LocalState(tmp_path / "n")
    local.ensure_dirs()
    local.save_ca(ca)
    assert local.save_crl(pki.make_crl(other, [])) == []
    assert not local.crl_file.exists()
    assert local.save_crl(crl) == [str(local.crl_file)]
    assert local.save_crl(crl) == []
    assert local.save_crl("garbage") == [] and local.crl_file.read_text() == crl
    # The key bundle carries it to a joining node.
    from haven.daemon.localstate import ClusterSecrets

    local.save_secrets(ClusterSecrets.new())
    local.save_cert(a.cert_pem, a.key_pem)
    assert local.key_bundle()["crl_pem"] == crl


def test_revoking_keeps_what_was_revoked_and_records_what_was_issued() -> None:
    from haven import revocation
    from haven.store.memory import MemoryStore

    store = MemoryStore()
    ca = pki.make_ca("c")
    a1, a2, b1 = (pki.node_certificate(ca, n, "10.0.0.1") for n in ("a", "a", "b"))
    revocation.record_issued(store, "a", a1.cert_pem, None)
    revocation.record_issued(store, "a", a2.cert_pem, None)
    revocation.record_issued(store, "b", b1.cert_pem, None)
    assert revocation.issued(store, "a") == {pki.serial(a1.cert_pem),
                                             pki.serial(a2.cert_pem)}
    revocation.record_issued(store, "a", a2.cert_pem, None, replace=True)
    assert revocation.issued(store, "a") == {pki.serial(a2.cert_pem)}
    assert revocation.revoked(store) == set()
    revocation.revoke(store, ca, [pki.serial(a1.cert_pem)], None)
    crl = revocation.revoke(store, ca, [pki.serial(b1.cert_pem)], None)
    assert pki.crl_serials(crl) == {pki.serial(a1.cert_pem), pki.serial(b1.cert_pem)}
    assert revocation.revoked(store) == pki.crl_serials(crl)
    # A node that is gone but whose certificates were never revoked: renew-crypto's.
    assert revocation.orphans(store, {"a", "b"}) == {}
    assert revocation.orphans(store, {"a"}) == {"b": {pki.serial(b1.cert_pem)}}


def _presented(ctx: ssl.SSLContext, files: TlsFiles, server: pki.KeyPair) -> int:
    """The serial of the client certificate ``ctx`` presents to a TLS server that asks
    for one from the CA in ``files``."""
    tmp = Path(files.ca).parent
    (tmp / "s.pem").write_text(server.cert_pem)
    (tmp / "s.key").write_text(server.key_pem)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(tmp / "s.pem", tmp / "s.key")
    sctx.load_verify_locations(files.ca)
    sctx.verify_mode = ssl.CERT_REQUIRED
    seen: list[int] = []
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        port = lsock.getsockname()[1]

        def serve() -> None:
            conn, _ = lsock.accept()
            with sctx.wrap_socket(conn, server_side=True) as tls:
                der = tls.getpeercert(binary_form=True)
                assert der is not None
                seen.append(x509.load_der_x509_certificate(der).serial_number)

        t = threading.Thread(target=serve)
        t.start()
        with socket.create_connection(("127.0.0.1", port)) as raw, \
                ctx.wrap_socket(raw) as tls:
            tls.recv(1)
        t.join(5)
    return seen[0]


def test_a_renewed_certificate_is_loaded_into_live_contexts(tmp_path: Path) -> None:
    ca = pki.make_ca("c")
    files = TlsFiles(str(tmp_path / "ca.pem"), str(tmp_path / "c.pem"),
                     str(tmp_path / "c.key"))
    server = pki.node_certificate(ca, "server", "127.0.0.1")
    first, second = (pki.node_certificate(ca, "n", "10.0.0.1") for _ in range(2))
    Path(files.ca).write_text(ca.cert_pem)
    Path(files.cert).write_text(first.cert_pem)
    Path(files.key).write_text(first.key_pem)
    ctx = client_context(files)
    assert _presented(ctx, files, server) == pki.serial(first.cert_pem)
    Path(files.cert).write_text(second.cert_pem)
    Path(files.key).write_text(second.key_pem)
    assert _presented(ctx, files, server) == pki.serial(first.cert_pem)  # until reloaded
    assert reload_certificates(files) >= 1
    assert _presented(ctx, files, server) == pki.serial(second.cert_pem)
