"""moonpipe's REST gateway: Moondream's REST API and OpenAI chat completions over HTTP,
forwarded to Triton over gRPC streaming with ``moonpipe_client``'s async client.

It is a Triton client like any other (it never imports the engine). Run it with
``moonpipe-gateway --triton-url HOST:8001`` (``moonpipe serve`` starts it on
127.0.0.1:2020), then::

    import moondream as md
    model = md.vl(endpoint="http://127.0.0.1:2020/v1")
    print(model.caption(image)["caption"])
"""

from __future__ import annotations

from moonpipe_gateway.app import create_app
from moonpipe_gateway.config import DEFAULT_HOST, DEFAULT_PORT, GatewayConfig

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "GatewayConfig", "create_app"]

__version__ = "0.1.0"
