"""The gateway's own Prometheus metrics, on its own registry (served at ``GET /metrics``).

- ``moonpipe_gateway_requests_total{route,status}``: finished HTTP requests; for a stream,
  the status is how it really ended (200, the error's status once streaming, 499 when the
  client left);
- ``moonpipe_gateway_request_duration_seconds{route}``: until the last byte was sent;
- ``moonpipe_gateway_time_to_first_byte_seconds{route}``: until the response headers
  (for streams: with the first token);
- ``moonpipe_gateway_requests_in_flight``.

The engine's own metrics (tokens, queue, KV pages) stay on Triton's metrics port.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["GatewayMetrics"]

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class GatewayMetrics:
    """One set of collectors per app (no process-wide registry)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("moonpipe_gateway_requests", "HTTP requests by route and status",
                                ("route", "status"), registry=self.registry)
        self.duration = Histogram("moonpipe_gateway_request_duration_seconds",
                                  "HTTP request duration until the last byte", ("route",),
                                  buckets=_BUCKETS, registry=self.registry)
        self.first_byte = Histogram("moonpipe_gateway_time_to_first_byte_seconds",
                                    "time until the response headers were sent", ("route",),
                                    buckets=_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("moonpipe_gateway_requests_in_flight", "HTTP requests being served",
                               registry=self.registry)

    def observe(self, route: str, status: int, seconds: float, first_byte_s: float | None) -> None:
        self.requests.labels(route, str(status)).inc()
        self.duration.labels(route).observe(seconds)
        if first_byte_s is not None:
            self.first_byte.labels(route).observe(first_byte_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
