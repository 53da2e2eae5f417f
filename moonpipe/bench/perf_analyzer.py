"""perf_analyzer support: install it, write its input data, read its profile export.

``perf_analyzer`` 2.51 comes from the ``tritonclient==2.51.0`` wheel (see
shared/docs/triton-local.md): ``pip install --no-deps --target DIR``, then symlink
``libb64.so.0d`` and ``libcudart.so.12`` from ``nvidia_pytriton.libs/`` (hashed names) into
a folder on ``LD_LIBRARY_PATH``. :func:`install` does both under ``.tools/``.

Input data: one JSON file per skill in perf_analyzer's "real input data" format. The image
uses the ``{"b64": ...}`` form, which perf_analyzer sends as the raw tensor contents: for a
BYTES tensor that is Triton's serialized layout, each element a little-endian u32 length
then its bytes (:func:`serialize_bytes`; plain base64 of the file fails with "incomplete
string data ... expecting string of length N"). Every optional input is given explicitly
so perf_analyzer never invents random values for it.

Profile export (``--profile-export-file``): ``experiments[]`` each with
``experiment: {mode, value}`` and ``requests[]`` carrying ``timestamp`` (ns, sent) and
``response_timestamps`` (ns, one per streamed response). :func:`summarize_export` derives
per concurrency level: TTFT = first response - sent; inter-token latency per request =
(last - first response) / (responses - 1); the gaps between responses; throughput over
the measured span.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import struct
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from moonpipe.bench.latency import summarize

__all__ = [
    "SKILL_INPUTS",
    "format_summaries",
    "input_data",
    "install",
    "load_export",
    "serialize_bytes",
    "summarize_export",
]

TRITONCLIENT_VERSION = "2.51.0"
_LIBS = {"libb64.so.0d": "libb64-", "libcudart.so.12": "libcudart-"}

# Per skill: (PROMPT, LENGTH, MAX_TOKENS, MAX_OBJECTS, STREAM).
SKILL_INPUTS: Mapping[str, tuple[str, str, int, int, bool]] = {
    "caption": ("", "normal", 32, 1, True),
    "query": ("What color is the ball?", "normal", 8, 1, True),
    "point": ("the red ball", "normal", 32, 4, True),
    "detect": ("the red ball", "normal", 32, 4, True),
    "segment": ("the red ball", "normal", 64, 1, False),
}


def serialize_bytes(elements: Sequence[bytes]) -> bytes:
    """Triton's BYTES tensor layout: per element a little-endian u32 length, then the bytes."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def input_data(skill: str, image: bytes) -> dict[str, Any]:
    """perf_analyzer's input JSON for one request of ``skill`` on the encoded ``image``."""
    if skill not in SKILL_INPUTS:
        raise ValueError(f"unknown skill {skill!r}; expected one of {', '.join(SKILL_INPUTS)}")
    prompt, length, max_tokens, max_objects, stream = SKILL_INPUTS[skill]
    return {
        "data": [{
            "SKILL": [skill],
            "IMAGE": {"b64": base64.b64encode(serialize_bytes([image])).decode("ascii")},
            "PROMPT": [prompt],
            "LENGTH": [length],
            "MAX_TOKENS": [max_tokens],
            "TEMPERATURE": [0.0],
            "TOP_P": [1.0],
            "MAX_OBJECTS": [max_objects],
            "STREAM": [stream],
        }]
    }


def install(tools_dir: Path, site_packages: Path | None = None) -> tuple[Path, Path]:
    """Install perf_analyzer under ``tools_dir`` (once); returns (binary, library folder)."""
    target = tools_dir / f"tritonclient-{TRITONCLIENT_VERSION}"
    binary = target / "bin" / "perf_analyzer"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                        str(target), f"tritonclient=={TRITONCLIENT_VERSION}"], check=True)
    if not binary.exists():
        raise FileNotFoundError(f"tritonclient {TRITONCLIENT_VERSION} installed no {binary}")
    if site_packages is None:
        import pytriton

        site_packages = Path(pytriton.__file__).resolve().parent.parent
    bundled = site_packages / "nvidia_pytriton.libs"
    libs = tools_dir / "perf_analyzer-libs"
    libs.mkdir(parents=True, exist_ok=True)
    for plain, prefix in _LIBS.items():
        found = sorted(bundled.glob(prefix + "*"))
        if not found:
            raise FileNotFoundError(f"no {prefix}* under {bundled}: is nvidia-pytriton installed?")
        link = libs / plain
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(found[0].resolve(), link)
    return binary, libs


def _experiment_summary(exp: Mapping[str, Any]) -> dict[str, Any]:
    info = exp.get("experiment", {})
    ttft: list[float] = []
    itl: list[float] = []
    gaps: list[float] = []
    lat: list[float] = []
    responses = 0
    first_sent: int | None = None
    last_seen: int | None = None
    complete = 0
    for req in exp.get("requests", []):
        sent = int(req["timestamp"])
        stamps = [int(t) for t in req.get("response_timestamps", [])]
        if not stamps:
            continue
        complete += 1
        responses += len(stamps)
        first_sent = sent if first_sent is None else min(first_sent, sent)
        last_seen = stamps[-1] if last_seen is None else max(last_seen, stamps[-1])
        ttft.append((stamps[0] - sent) / 1e9)
        lat.append((stamps[-1] - sent) / 1e9)
        gaps.extend((b - a) / 1e9 for a, b in itertools.pairwise(stamps))
        if len(stamps) > 1:
            itl.append((stamps[-1] - stamps[0]) / 1e9 / (len(stamps) - 1))
    span = (last_seen - first_sent) / 1e9 if first_sent is not None and last_seen is not None else 0.0
    return {
        "mode": info.get("mode", ""),
        "value": info.get("value", 0),
        "requests": complete,
        "responses": responses,
        "responses_per_request": responses / complete if complete else 0.0,
        "span_s": span,
        "requests_per_s": complete / span if span > 0 else 0.0,
        "responses_per_s": responses / span if span > 0 else 0.0,
        "ttft": asdict(summarize(ttft)),
        "itl": asdict(summarize(itl)),
        "response_gap": asdict(summarize(gaps)),
        "latency": asdict(summarize(lat)),
    }


def summarize_export(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One summary per experiment (concurrency level) of a perf_analyzer profile export."""
    return [_experiment_summary(exp) for exp in doc.get("experiments", [])]


def format_summaries(rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table of :func:`summarize_export` rows (times in ms)."""
    lines = [f"{'skill':<8} {'conc':>4} {'req':>5} {'req/s':>7} {'resp/req':>8} {'TTFT p50':>9} {'p99':>8} "
             f"{'ITL p50':>8} {'p99':>7} {'lat p50':>8} {'p99':>8}"]
    for r in rows:
        lines.append(
            f"{r.get('skill', ''):<8} {r['value']:>4} {r['requests']:>5} {r['requests_per_s']:>7.2f} "
            f"{r['responses_per_request']:>8.1f} {r['ttft']['p50_ms']:>9.1f} {r['ttft']['p99_ms']:>8.1f} "
            f"{r['itl']['p50_ms']:>8.2f} {r['itl']['p99_ms']:>7.2f} {r['latency']['p50_ms']:>8.1f} "
            f"{r['latency']['p99_ms']:>8.1f}")
    return "\n".join(lines)


def load_export(path: Path) -> dict[str, Any]:
    # request_inputs echo the raw BYTES inputs (the PNG), which are not valid UTF-8
    data: dict[str, Any] = json.loads(path.read_bytes().decode("utf-8", errors="replace"), strict=False)
    return data
