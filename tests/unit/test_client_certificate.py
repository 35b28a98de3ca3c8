"""The CLI's client after ``renew-crypto --new-cluster-certificate``: it follows a new
certificate its config file pins, and otherwise says in one sentence what to do."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from haven import clientconf, pki
from haven.cli.client import Client
from haven.errors import ApiUnavailable


class _Info(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"name": "c1"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, pki.KeyPair]]:
    """An HTTPS server presenting a new cluster certificate."""
    pair = pki.self_signed("c1")
    (tmp_path / "s.pem").write_text(pair.cert_pem)
    (tmp_path / "s.key").write_text(pair.key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "s.pem", tmp_path / "s.key")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Info)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}", pair
    finally:
        httpd.shutdown()
        httpd.server_close()


def _client(path: Path, endpoint: str, cert: str) -> Client:
    clientconf.save(clientconf.build("c1", [endpoint], cert, "u", "p"), path)
    conf = clientconf.load(path)
    assert conf is not None
    return Client(conf["endpoints"], conf["cert"], "u", "p", path)


def test_a_client_follows_the_certificate_its_config_now_pins(
        server: tuple[str, pki.KeyPair], tmp_path: Path) -> None:
    endpoint, new = server
    path = tmp_path / "client.json"
    client = _client(path, endpoint, pki.self_signed("c1").cert_pem)  # the old one
    # A node rewrote this config with the new certificate after the renewal.
    clientconf.save(clientconf.build("c1", [endpoint], new.cert_pem, "u", "p"), path)
    assert client.get("/2/info") == {"name": "c1"}


def test_a_client_pinning_an_old_certificate_says_what_to_do(
        server: tuple[str, pki.KeyPair], tmp_path: Path) -> None:
    endpoint, _new = server
    client = _client(tmp_path / "client.json", endpoint, pki.self_signed("c1").cert_pem)
    with pytest.raises(ApiUnavailable, match="renew-crypto") as err:
        client.get("/2/info")
    assert "copy the client config from a node" in err.value.message
