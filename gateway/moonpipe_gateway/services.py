"""What the routes share: the settings, the Triton forwarder and the metrics."""

from __future__ import annotations

from dataclasses import dataclass

from moonpipe_gateway.config import GatewayConfig
from moonpipe_gateway.forward import Forwarder
from moonpipe_gateway.metrics import GatewayMetrics

__all__ = ["Services"]


@dataclass(frozen=True, slots=True)
class Services:
    """One per app; built by :func:`moonpipe_gateway.app.create_app`."""

    config: GatewayConfig
    forwarder: Forwarder
    metrics: GatewayMetrics
