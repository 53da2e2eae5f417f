"""Where and how a client connects: the gRPC target, TLS, and per-call metadata (headers).

``url`` is what a user types: ``host:port`` (plain gRPC), or with a scheme,
``http://host:port`` / ``grpc://`` (plain) and ``https://host:port`` / ``grpcs://`` (TLS);
gRPC's own target forms (``dns:///host:port``, ``unix:/path``, ``ipv4:...``) pass through
unchanged. TLS uses the system's root certificates unless ``ca_cert`` is given; a client
certificate and key give mutual TLS. ``headers`` travel as gRPC metadata with every call
(for an authenticating proxy, or Triton's ``--grpc-restricted-protocol``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from moonpipe_client.protocol import CHANNEL_OPTIONS

__all__ = ["Connection", "Headers", "PemInput", "parse_header", "split_url"]

PemInput = str | Path | bytes  # a PEM file's path, or its bytes
Headers = Mapping[str, str] | Iterable[tuple[str, str]]

_PLAIN_SCHEMES = ("http", "grpc")
_TLS_SCHEMES = ("https", "grpcs")
_GRPC_TARGET_SCHEMES = ("dns", "unix", "unix-abstract", "ipv4", "ipv6", "vsock")
# gRPC metadata keys: lower-case letters, digits and - _ . ; "grpc-" is reserved.
_HEADER_NAME_RE = re.compile(r"[0-9a-z_.-]+")


def split_url(url: str) -> tuple[str, bool | None]:
    """The gRPC target of ``url`` and whether its scheme asks for TLS (None: no scheme said).

    Raises ``ValueError`` for an unknown scheme or a URL with a path.
    """
    text = url.strip()
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", text)
    if match is None or match.group(1).lower() in _GRPC_TARGET_SCHEMES:
        return text, None
    scheme, rest = match.group(1).lower(), match.group(2).rstrip("/")
    if scheme not in _PLAIN_SCHEMES + _TLS_SCHEMES:
        raise ValueError(f"unknown scheme {scheme}:// in {url!r}: give host:port (e.g. 127.0.0.1:8001), "
                         "or http:// (plain) or https:// (TLS) in front of it")
    if not rest or "/" in rest:
        raise ValueError(f"{url!r} is not a gRPC address: give scheme://host:port without a path "
                         "(e.g. http://127.0.0.1:8001)")
    return rest, scheme in _TLS_SCHEMES


def parse_header(text: str) -> tuple[str, str]:
    """``"Name: value"`` or ``"name=value"`` as a ``(name, value)`` metadata pair."""
    sep = min((i for i in (text.find(":"), text.find("=")) if i > 0), default=-1)
    if sep < 0:
        raise ValueError(f"header {text!r}: expected NAME: VALUE or NAME=VALUE")
    return _check_header(text[:sep], text[sep + 1:].strip())


def _check_header(name: str, value: str) -> tuple[str, str]:
    key = name.strip().lower()
    if not _HEADER_NAME_RE.fullmatch(key) or key.startswith("grpc-"):
        raise ValueError(f"header name {name!r}: use letters, digits, '-', '_' or '.' "
                         "(gRPC metadata keys; names starting with grpc- are reserved)")
    if key.endswith("-bin"):
        raise ValueError(f"header {name!r}: binary (-bin) headers are not supported")
    if any(ord(c) < 0x20 or ord(c) > 0x7E for c in value):
        raise ValueError(f"header {name!r}: the value must be printable ASCII")
    return key, value


def _pem(value: PemInput | None, what: str) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    try:
        return Path(value).expanduser().read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} {value}: {exc.strerror or exc}") from exc


@dataclass(frozen=True, slots=True)
class Connection:
    """A resolved connection: gRPC ``target``, TLS material and call ``metadata``."""

    target: str
    tls: bool = False
    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None
    metadata: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.target:
            raise ValueError("the server address is empty; give host:port (e.g. 127.0.0.1:8001)")
        if (self.private_key is None) != (self.certificate_chain is None):
            raise ValueError("mutual TLS needs both the client certificate and its key")
        if not self.tls and (self.root_certificates or self.private_key):
            raise ValueError("certificates were given for a plain (non-TLS) connection")

    @classmethod
    def create(cls, url: str, *, tls: bool | None = None, ca_cert: PemInput | None = None,
               client_cert: PemInput | None = None, client_key: PemInput | None = None,
               headers: Headers | None = None) -> Connection:
        """Resolve a user's ``url`` and options; ``tls=None`` means: TLS if the scheme is
        https/grpcs or a certificate is given. Raises ``ValueError`` on bad input."""
        target, scheme_tls = split_url(url)
        wants_tls = scheme_tls or any(v is not None for v in (ca_cert, client_cert, client_key))
        if tls is False and wants_tls:
            raise ValueError(f"tls=False contradicts {url!r} or the certificates given")
        pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
        return cls(target=target, tls=bool(tls) if tls is not None else bool(wants_tls),
                   root_certificates=_pem(ca_cert, "CA certificate"),
                   private_key=_pem(client_key, "client key"),
                   certificate_chain=_pem(client_cert, "client certificate"),
                   metadata=tuple(_check_header(k, v) for k, v in pairs))

    def _credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.root_certificates,
                                            private_key=self.private_key,
                                            certificate_chain=self.certificate_chain)

    def channel(self) -> grpc.Channel:
        """A new synchronous channel."""
        if self.tls:
            return grpc.secure_channel(self.target, self._credentials(), options=list(CHANNEL_OPTIONS))
        return grpc.insecure_channel(self.target, options=list(CHANNEL_OPTIONS))

    def aio_channel(self) -> grpc.aio.Channel:
        """A new asyncio channel (create it inside the running event loop)."""
        if self.tls:
            return grpc.aio.secure_channel(self.target, self._credentials(), options=list(CHANNEL_OPTIONS))
        return grpc.aio.insecure_channel(self.target, options=list(CHANNEL_OPTIONS))

    def call_options(self, timeout: float | None) -> dict[str, Any]:
        """Keyword arguments for one RPC: its deadline and the metadata."""
        return {"timeout": timeout, "metadata": self.metadata or None}
