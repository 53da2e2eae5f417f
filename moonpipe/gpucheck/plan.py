"""The steps of ``moonpipe gpu-check`` and their time budgets.

On CUDA (``--model md2``: random full-size weights, bf16, CUDA graphs) the plan fits the
8 minutes a lent GPU gives the check; each budget is that step's timeout, and the run
as a whole stops at ``total_budget_s`` (later steps get what is left). On CPU
(``--device cpu --model tiny``) the same steps run with tiny workloads and the kernel
paths under the Triton interpreter: CI runs it, so a step that breaks on CPU breaks
there before a GPU minute is spent.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEVICE_RUN_TIMEOUT_S", "STEP_NAMES", "Step", "build_plan", "device_run_command"]

# The device tool's `run` call: the check's own total plus slack for start-up and the
# final write; the machine's start (1-2 min) comes on top, within its 15 minutes.
DEVICE_RUN_TIMEOUT_S = 540
TOTAL_BUDGET_S = {"cuda": 480, "cpu": 900}


@dataclass(frozen=True, slots=True)
class Step:
    """One subprocess of the check. ``result`` names the JSON file it writes (if any)."""

    name: str
    what: str
    budget_s: int
    argv: tuple[str, ...]
    result: str | None = None

    def command(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True, slots=True)
class _Sizes:
    """Workload sizes per device: full on a GPU, smoke-sized on CPU."""

    streams: str
    tokens: int
    rounds: int
    repeats: int
    short_concurrency: str
    short_requests: int
    budgets: dict[str, int]


_SIZES = {
    "cuda": _Sizes(streams="1,8,32", tokens=128, rounds=1, repeats=3, short_concurrency="1,64",
                   short_requests=128,
                   budgets={"env": 20, "kernels": 45, "pytest-gpu": 140, "pipeline-fused": 70,
                            "pipeline-torch": 80, "short": 70, "pipeline-triton": 55}),
    "cpu": _Sizes(streams="2", tokens=6, rounds=1, repeats=1, short_concurrency="2", short_requests=2,
                  budgets={"env": 60, "kernels": 120, "pytest-gpu": 120, "pipeline-fused": 150,
                           "pipeline-torch": 120, "short": 150, "pipeline-triton": 150}),
}
STEP_NAMES = tuple(_SIZES["cuda"].budgets)


def build_plan(device: str, model: str, out: Path, python: str = sys.executable) -> list[Step]:
    """The steps for ``device`` (``cuda[:N]`` or ``cpu``) and ``model``, writing under ``out``."""
    kind = "cuda" if device.startswith("cuda") else "cpu"
    sizes = _SIZES[kind]
    budget = sizes.budgets
    cli = (python, "-m", "moonpipe.cli")
    worker = () if kind == "cuda" else ("--cpu-worker", "thread")

    def pipeline(kernels: str) -> Step:
        result = f"pipeline-{kernels}.json"
        return Step(f"pipeline-{kernels}", f"bench pipeline, decode kernels {kernels}: depth 1 vs 2 at "
                    f"{sizes.streams} streams", budget[f"pipeline-{kernels}"],
                    (*cli, "bench", "pipeline", "--device", device, "--model", model, "--streams", sizes.streams,
                     "--tokens", str(sizes.tokens), "--rounds", str(sizes.rounds), "--repeats", str(sizes.repeats),
                     "--decode-kernels", kernels, *worker, "--json", str(out / result), "--no-plot"), result)

    steps = [
        Step("env", "GPU, driver, CUDA, torch, triton and package versions; compiler for Triton",
             budget["env"], (python, "-m", "moonpipe.gpucheck.env", "--json", str(out / "env.json")), "env.json"),
        Step("kernels", "start-up checks of the kernels on the device; kernels per decode step (torch, "
             "triton, fused)", budget["kernels"],
             (python, "-m", "moonpipe.gpucheck.kernels", "--device", device, "--model", model,
              "--json", str(out / "kernels.json")), "kernels.json"),
        Step("pytest-gpu", "pytest -m gpu tests/gpu: graphs == eager, bf16 vs fp32, kernels == torch, no sync "
             "in the decode loop, no memory growth over 10k steps", budget["pytest-gpu"],
             (python, "-m", "pytest", "-m", "gpu", "tests/gpu", "-q", "-p", "no:cacheprovider",
              "--junitxml", str(out / "pytest-gpu.xml")), "pytest-gpu.xml"),
        pipeline("fused"),
        pipeline("torch"),
        Step("short", f"bench short: query (4 tokens), repeated vs unique images at concurrency "
             f"{sizes.short_concurrency}", budget["short"],
             (*cli, "bench", "short", "--device", device, "--model", model, "--skills", "query",
              "--concurrency", sizes.short_concurrency, "--requests", str(sizes.short_requests),
              "--decode-kernels", "auto", "--prefix-cache", "on", "--json", str(out / "short.json"),
              "--no-plot"), "short.json"),
        pipeline("triton"),
    ]
    return steps


def total_budget(device: str) -> int:
    return TOTAL_BUDGET_S["cuda" if device.startswith("cuda") else "cpu"]


def device_run_command(out: str = "$OUT/gpu-check") -> str:
    """The command line for the device tool's ``run`` (from the repository root)."""
    return f"PYTHONPATH=. python3 -m moonpipe.cli gpu-check --out {out}"
