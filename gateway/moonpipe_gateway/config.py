"""The gateway's settings: one frozen dataclass, validated where it is built."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "GatewayConfig", "is_loopback"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 2020  # Moondream Station's port: the official client's local default
MIB = 1024 * 1024


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Everything the gateway needs; ``ValueError`` names the bad field.

    ``triton_url``: Triton's gRPC ``host:port``; ``model_name``: the Triton model;
    ``model_ids``: the names clients may send as ``model`` (and ``GET /v1/models``
    lists), the Triton model name first; ``api_keys``: accepted keys (empty: no
    authentication); ``max_body_bytes``: largest request body; ``max_image_bytes``: largest
    decoded image (the engine's own limit by default); ``request_timeout_s``: the whole
    request, streaming included (504 after it); ``ready_timeout_s``: how long ``/health``
    waits for Triton's answer.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    triton_url: str = "127.0.0.1:8001"
    model_name: str = "moondream"
    model_ids: tuple[str, ...] = ()
    api_keys: frozenset[str] = field(default_factory=frozenset)
    max_body_bytes: int = 48 * MIB
    max_image_bytes: int = 32 * MIB
    request_timeout_s: float = 300.0
    ready_timeout_s: float = 2.0

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("host: must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: must be in [0, 65535], got {self.port}")
        if not self.triton_url or ":" not in self.triton_url:
            raise ValueError(f"triton_url: expected host:port, got {self.triton_url!r}")
        if not self.model_name:
            raise ValueError("model_name: must not be empty")
        if any(not m for m in self.model_ids):
            raise ValueError("model_ids: names must not be empty")
        if any(not k.strip() for k in self.api_keys):
            raise ValueError("api_keys: keys must not be empty or blank")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes: must be at least 1024, got {self.max_body_bytes}")
        if self.max_image_bytes < 1:
            raise ValueError(f"max_image_bytes: must be positive, got {self.max_image_bytes}")
        if not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s: must be positive, got {self.request_timeout_s}")
        if not self.ready_timeout_s > 0:
            raise ValueError(f"ready_timeout_s: must be positive, got {self.ready_timeout_s}")

    @property
    def served_models(self) -> tuple[str, ...]:
        """The model names clients may ask for, the Triton model's own name first."""
        return (self.model_name, *(m for m in self.model_ids if m != self.model_name))

    @property
    def auth_required(self) -> bool:
        return bool(self.api_keys)

    @property
    def exposed_without_keys(self) -> bool:
        """Bound beyond loopback with no API key: anyone who can reach the port may call it."""
        return not self.api_keys and not is_loopback(self.host)
