"""Connection options of the client: URL schemes, TLS material and headers (no server)."""

from __future__ import annotations

from pathlib import Path

import pytest
from moonpipe_client import Client
from moonpipe_client.connection import Connection, parse_header, split_url


@pytest.mark.parametrize(("url", "target", "tls"), [
    ("127.0.0.1:8001", "127.0.0.1:8001", None),
    ("http://127.0.0.1:8001", "127.0.0.1:8001", False),
    ("grpc://host:8001/", "host:8001", False),
    ("HTTPS://moonpipe.example.com:443", "moonpipe.example.com:443", True),
    ("grpcs://host:9", "host:9", True),
    ("dns:///svc.ns.svc.cluster.local:8001", "dns:///svc.ns.svc.cluster.local:8001", None),
    ("unix:///run/triton.sock", "unix:///run/triton.sock", None),
])
def test_split_url(url: str, target: str, tls: bool | None) -> None:
    assert split_url(url) == (target, tls)


@pytest.mark.parametrize(("url", "match"), [
    ("ftp://host:1", "unknown scheme ftp://"),
    ("http://host:8001/v2/models", "without a path"),
    ("http://", "without a path"),
])
def test_split_url_rejects(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        split_url(url)


@pytest.mark.parametrize(("text", "pair"), [
    ("Authorization: Bearer a=b", ("authorization", "Bearer a=b")),
    ("x-api-key=k:1", ("x-api-key", "k:1")),
    ("tenant:  blue ", ("tenant", "blue")),
])
def test_parse_header(text: str, pair: tuple[str, str]) -> None:
    assert parse_header(text) == pair


@pytest.mark.parametrize("text", ["no separator", ": value", "grpc-timeout: 1", "key-bin: x",
                                  "bad name: x", "k: caf\u00e9"])
def test_parse_header_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_header(text)


def test_tls_follows_the_scheme_and_the_certificates(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    assert not Connection.create("h:1").tls
    assert Connection.create("https://h:1").tls
    assert Connection.create("h:1", tls=True).tls
    with_ca = Connection.create("h:1", ca_cert=ca)
    assert with_ca.tls and with_ca.root_certificates == ca.read_bytes()
    assert Connection.create("h:1", headers={"X-Key": "v"}).call_options(3.0) == {
        "timeout": 3.0, "metadata": (("x-key", "v"),)}
    assert Connection.create("h:1").call_options(None) == {"timeout": None, "metadata": None}


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"client_cert": b"cert"}, "both the client certificate and its key"),
    ({"tls": False, "ca_cert": b"ca"}, "tls=False contradicts"),
    ({"ca_cert": "/no/such/ca.pem"}, "cannot read the CA certificate"),
])
def test_bad_connection_options(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Connection.create("h:1", **kwargs)  # type: ignore[arg-type]


def test_clients_take_the_connection_options() -> None:
    with Client("https://127.0.0.1:1", headers=[("x-key", "v")]) as client:
        assert client.connection.tls and client.connection.target == "127.0.0.1:1"
        assert client.connection.metadata == (("x-key", "v"),)
