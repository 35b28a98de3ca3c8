"""The cluster CA, node certificates and join tokens (haven.pki, LocalState)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from haven import pki
from haven.daemon.localstate import LocalState
from haven.errors import InvalidInput, NodeSetupError


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
