"""``moonpipe-gateway``: serve Moondream's REST API and OpenAI chat completions over HTTP,
forwarding every request to Triton's gRPC endpoint (uvicorn, one process).

API keys: ``--api-key KEY`` (repeatable), ``MOONPIPE_GATEWAY_API_KEYS`` (comma-separated)
or ``--api-keys-file`` (one key per line). Without keys there is no authentication, which
is the default on loopback; bound elsewhere without keys, the gateway warns at start.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from moonpipe_gateway.config import DEFAULT_HOST, DEFAULT_PORT, MIB, GatewayConfig

__all__ = ["build_config", "main", "parser"]

KEYS_ENV = "MOONPIPE_GATEWAY_API_KEYS"
TRITON_ENV = "MOONPIPE_TRITON_URL"
log = logging.getLogger("moonpipe_gateway")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moonpipe-gateway", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}, Moondream's)")
    p.add_argument("--triton-url", default=os.environ.get(TRITON_ENV, "127.0.0.1:8001"), metavar="HOST:PORT",
                   help=f"Triton's gRPC address (env {TRITON_ENV}; default 127.0.0.1:8001)")
    p.add_argument("--model-name", default="moondream", help="the Triton model (default moondream)")
    p.add_argument("--model-id", action="append", default=[], metavar="NAME",
                   help="another name clients may send as `model` (repeatable), e.g. moondream2")
    p.add_argument("--api-key", action="append", default=[], metavar="KEY", help="accepted API key (repeatable)")
    p.add_argument("--api-keys-file", type=Path, metavar="PATH", help="file with one accepted API key per line")
    p.add_argument("--max-body-mb", type=float, default=48.0, help="largest request body in MiB (default 48)")
    p.add_argument("--max-image-mb", type=float, default=32.0,
                   help="largest decoded image in MiB (default 32, the engine's own limit)")
    p.add_argument("--request-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="limit for a whole request, streams included (504 after it; default 300)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--access-log", action="store_true", help="log one line per HTTP request")
    return p


def _keys(args: argparse.Namespace) -> frozenset[str]:
    keys = [k.strip() for k in args.api_key]
    keys += [k.strip() for k in os.environ.get(KEYS_ENV, "").split(",") if k.strip()]
    if args.api_keys_file is not None:
        try:
            lines = args.api_keys_file.read_text().splitlines()
        except OSError as exc:
            raise SystemExit(f"moonpipe-gateway: cannot read --api-keys-file {args.api_keys_file}: {exc}") from None
        keys += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return frozenset(keys)


def build_config(args: argparse.Namespace) -> GatewayConfig:
    """The config of parsed arguments; exits with the message of a bad value."""
    try:
        return GatewayConfig(host=args.host, port=args.port, triton_url=args.triton_url,
                             model_name=args.model_name, model_ids=tuple(args.model_id), api_keys=_keys(args),
                             max_body_bytes=int(args.max_body_mb * MIB), max_image_bytes=int(args.max_image_mb * MIB),
                             request_timeout_s=args.request_timeout)
    except ValueError as exc:
        raise SystemExit(f"moonpipe-gateway: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    from moonpipe_gateway.app import create_app

    args = parser().parse_args(argv)
    config = build_config(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if config.exposed_without_keys:
        log.warning("listening on %s without API keys: anyone who can reach port %d can use the model; "
                    "set --api-key / %s", config.host, config.port, KEYS_ENV)
    log.info("moonpipe gateway on http://%s:%d/v1 -> Triton %s (model %s), API keys %s", config.host, config.port,
             config.triton_url, config.model_name, "required" if config.auth_required else "off")
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level=args.log_level,
                access_log=args.access_log, loop="auto", http="auto", timeout_graceful_shutdown=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
