"""Step ``env`` of the GPU check: what machine this is (``python -m moonpipe.gpucheck.env``).

GPU, driver, CUDA and cuDNN as torch sees them, package versions, which optional
packages are absent (the GPU machine has none of tqdm, matplotlib, tritonclient), and
whether Triton can build its launcher (a C compiler and Python's headers).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

__all__ = ["collect", "main"]

PACKAGES = ("torch", "triton", "numpy", "safetensors", "tokenizers", "pillow", "pytest", "hypothesis")
OPTIONAL = ("tqdm", "matplotlib", "tritonclient", "pytest_timeout")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _nvidia_smi() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi failed: {exc}"
    return done.stdout.strip() or done.stderr.strip()


def _cuda() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    if not info["available"]:
        return info
    props = torch.cuda.get_device_properties(0)
    info.update({
        "device_count": torch.cuda.device_count(),
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "sm_count": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "cudnn": torch.backends.cudnn.version(),
        "nvidia_smi": _nvidia_smi(),
    })
    return info


def collect() -> dict[str, Any]:
    """Everything this step reports, as a JSON-able dict."""
    include = sysconfig.get_paths().get("include", "")
    return {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "packages": {name: _version(name) for name in PACKAGES},
        "absent_optional": [name for name in OPTIONAL if importlib.util.find_spec(name) is None],
        "cuda": _cuda(),
        "triton_build": {"cc": shutil.which("cc") or shutil.which("gcc") or shutil.which("clang"),
                         "python_h": bool(include) and (Path(include) / "Python.h").is_file(),
                         "nvcc": shutil.which("nvcc")},
        "env": {k: os.environ[k] for k in ("TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES", "TRITON_CACHE_DIR")
                if k in os.environ},
    }


def format_env(doc: dict[str, Any]) -> str:
    cuda = doc["cuda"]
    gpu = (f"{cuda['name']} (sm_{cuda['capability'].replace('.', '')}, {cuda['sm_count']} SMs, "
           f"{cuda['memory_gib']} GiB), CUDA {cuda['torch_cuda']}, cuDNN {cuda['cudnn']}, nvidia-smi: {cuda['nvidia_smi']}"
           if cuda["available"] else "no CUDA device")
    packages = ", ".join(f"{k} {v}" for k, v in doc["packages"].items())
    build = doc["triton_build"]
    return "\n".join([
        f"python {doc['python']} ({doc['executable']}) on {doc['platform']}, {doc['cpus']} CPUs",
        f"gpu: {gpu}",
        f"packages: {packages}",
        f"absent: {', '.join(doc['absent_optional']) or 'none'}",
        f"triton build: cc {build['cc']}, Python.h {build['python_h']}, nvcc {build['nvcc']}",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moonpipe.gpucheck.env", description=__doc__)
    parser.add_argument("--json", type=Path, required=True, help="where to write the report")
    args = parser.parse_args(argv)
    doc = collect()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(format_env(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
