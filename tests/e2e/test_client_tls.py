"""The client over TLS with per-call headers, against a real tritonserver that serves gRPC
over TLS only and admits inference calls only with a header (``--grpc-restricted-protocol``)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from moonpipe_client import Caption, Client, ConnectionFailed
from moonpipe_client.cli import EXIT_OK, EXIT_UNREACHABLE, main

ROOT = Path(__file__).resolve().parents[2]
# Triton checks a restricted protocol's key as the header triton-grpc-protocol-<key>.
KEY = "moonpipe-key"
HEADER = (f"triton-grpc-protocol-{KEY}", "open-sesame")

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")]


@dataclass(frozen=True)
class TlsServer:
    url: str  # host:port of the TLS gRPC endpoint
    ca: Path  # the self-signed certificate, to trust


def _self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture(scope="module")
def tls_server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    from moonpipe.triton_local import TritonServer, free_port

    folder = tmp_path_factory.mktemp("tls")
    cert, key = _self_signed(folder)
    server = TritonServer(ROOT / "model_repository", http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port(), env={"MOONPIPE_CHECKPOINT": str(tiny_checkpoint)},
                          log_path=folder / "server.log",
                          extra_args=["--grpc-use-ssl=true", f"--grpc-server-cert={cert}",
                                      f"--grpc-server-key={key}",
                                      f"--grpc-restricted-protocol=inference,health:{KEY}={HEADER[1]}"])
    with server:
        yield TlsServer(url=server.urls.grpc, ca=cert)


def test_tls_with_the_header_works(tls_server: TlsServer, sample_image_bytes: bytes) -> None:
    with Client(f"https://{tls_server.url}", ca_cert=tls_server.ca, headers=dict([HEADER])) as client:
        assert client.is_ready()
        assert isinstance(client.caption(sample_image_bytes, max_tokens=2), Caption)


def test_without_the_header_the_server_refuses(tls_server: TlsServer, sample_image_bytes: bytes) -> None:
    with Client(tls_server.url, ca_cert=tls_server.ca) as client:
        with pytest.raises(ConnectionFailed, match=f"expecting header '{HEADER[0]}'.*--header"):
            client.caption(sample_image_bytes, max_tokens=2)


def test_plain_grpc_to_a_tls_server_is_unreachable(tls_server: TlsServer, sample_image_bytes: bytes) -> None:
    with Client(tls_server.url, timeout=20, headers=dict([HEADER])) as client:
        with pytest.raises(ConnectionFailed, match="TLS"):
            client.caption(sample_image_bytes, max_tokens=2)


def test_cli_tls_and_header_options(tls_server: TlsServer, tmp_path: Path, sample_image_bytes: bytes,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(sample_image_bytes)
    header = f"{HEADER[0]}: {HEADER[1]}"
    assert main(["--url", tls_server.url, "--ca-cert", str(tls_server.ca), "caption", str(image),
                 "--max-tokens", "2", "--json", "--header", header]) == EXIT_OK
    assert '"caption"' in capsys.readouterr().out
    untrusted = main(["--url", tls_server.url, "--tls", "--timeout", "20", "caption", str(image),
                      "--header", header])
    assert untrusted == EXIT_UNREACHABLE
    assert "TLS" in capsys.readouterr().err
