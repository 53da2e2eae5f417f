"""Container health for moonpipe: Triton's endpoint AND the engine's own gauge.

Usage: ``healthcheck.py /v2/health/live`` (liveness) or ``healthcheck.py /v2/health/ready``
(readiness). Triton 2.51 cannot hear from a Python model that its engine died (the model
stays "ready" while every request gets ``UNAVAILABLE``), so this also reads
``moonpipe_engine_ready`` from the metrics port: 0 fails both checks, and a failing
liveness check makes Kubernetes restart the container with a fresh engine. While the
model is still loading the gauge does not exist yet; liveness then passes on Triton's
word alone (startup is the startup probe's business).
"""

from __future__ import annotations

import os
import re
import sys
import urllib.error
import urllib.request

HTTP = os.environ.get("MOONPIPE_HEALTH_HTTP", "http://127.0.0.1:8000")
METRICS = os.environ.get("MOONPIPE_HEALTH_METRICS", "http://127.0.0.1:8002/metrics")
GAUGE = re.compile(r"^moonpipe_engine_ready\{[^}]*\}\s+(\S+)\s*$", re.MULTILINE)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError as exc:
        return 0, str(exc)


def check(path: str) -> str | None:
    """None when healthy, else the reason."""
    status, _ = _get(HTTP + path)
    if status != 200:
        return f"{path} answered {status or 'nothing'}"
    status, text = _get(METRICS)
    values = [float(v) for v in GAUGE.findall(text)] if status == 200 else []
    if any(v == 0.0 for v in values):
        return "moonpipe_engine_ready is 0: the engine stopped (see the server log)"
    if path.endswith("/ready") and not values:
        return "moonpipe_engine_ready not exported yet"
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in ("/v2/health/live", "/v2/health/ready"):
        print("usage: healthcheck.py /v2/health/live|/v2/health/ready", file=sys.stderr)
        return 2
    problem = check(argv[1])
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
