"""Running the GPU check's steps: one subprocess each, in order, never stopping early.

Each step runs from the repository root with ``PYTHONPATH`` set to it (the GPU machine
has no installed moonpipe), in its own process group so a timeout ends the step and
everything it started. Its output goes, line by line, to our stdout and to
``DIR/gpu-check.log``; its status, time, the tail of its output and the JSON it wrote
go to ``DIR/gpu-check.json``, rewritten after every step so a run cut short still
leaves what it measured. On CPU the kernel paths run under the Triton interpreter.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from moonpipe.gpucheck.plan import Step

__all__ = ["ROOT", "run_plan", "step_environment"]

ROOT = Path(__file__).resolve().parents[2]
TAIL_LINES = 40
MIN_STEP_S = 10  # a step with less time left than this is skipped, not started


def step_environment(device: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    if not device.startswith("cuda"):
        env.setdefault("TRITON_INTERPRET", "1")
    return env


def _pump(stream: TextIO, name: str, log: TextIO, tail: deque[str], echo: Callable[[str], None]) -> None:
    for line in stream:
        line = line.rstrip("\n")
        tail.append(line)
        log.write(f"[{name}] {line}\n")
        log.flush()
        echo(f"[{name}] {line}")


def _run_step(step: Step, timeout: float, env: dict[str, str], log: TextIO,
              echo: Callable[[str], None]) -> dict[str, Any]:
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    t0 = time.monotonic()
    status, code = "ok", None
    try:
        proc = subprocess.Popen(step.argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", start_new_session=True)
    except OSError as exc:
        return {"status": "failed", "returncode": None, "seconds": 0.0, "tail": [f"could not start: {exc}"]}
    assert proc.stdout is not None
    reader = threading.Thread(target=_pump, args=(proc.stdout, step.name, log, tail, echo), daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=timeout)
        status = "ok" if code == 0 else "failed"
    except subprocess.TimeoutExpired:
        status = "timeout"
        os.killpg(proc.pid, signal.SIGKILL)  # the step's own process group (start_new_session)
        code = proc.wait()
    reader.join(timeout=10)
    return {"status": status, "returncode": code, "seconds": round(time.monotonic() - t0, 1), "tail": list(tail)}


def _load_result(path: Path) -> Any:
    if not path.is_file():
        return None
    if path.suffix == ".xml":
        return _junit_summary(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        return {"error": f"unreadable JSON: {exc}"}


def _junit_summary(path: Path) -> dict[str, Any]:
    """pytest's JUnit XML -> counts and the failing tests' names and messages."""
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return {"error": "no testsuite in the JUnit XML"}
    failures = []
    for case in suite.iter("testcase"):
        for kind in ("failure", "error"):
            node = case.find(kind)
            if node is not None:
                failures.append({"test": f"{case.get('classname')}::{case.get('name')}",
                                 "message": (node.get("message") or "")[:500]})
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "failed_tests": failures}


def run_plan(steps: Sequence[Step], out: Path, *, device: str, model: str, total_budget_s: float,
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every step (within the total budget), write out/gpu-check.json + .log; the doc."""
    out.mkdir(parents=True, exist_ok=True)
    env = step_environment(device)
    doc: dict[str, Any] = {
        "check": "moonpipe gpu-check", "device": device, "model": model, "python": sys.executable,
        "host": platform.node(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "total_budget_s": total_budget_s, "steps": [],
    }
    start = time.monotonic()
    with open(out / "gpu-check.log", "w", encoding="utf-8") as log:
        for step in steps:
            left = total_budget_s - (time.monotonic() - start)
            entry: dict[str, Any] = {"name": step.name, "what": step.what, "budget_s": step.budget_s,
                                     "command": step.command()}
            if left < MIN_STEP_S:
                entry.update(status="skipped", reason=f"the total budget ({total_budget_s:.0f} s) is spent")
            else:
                timeout = min(step.budget_s, left)
                if step.result:  # a result left by an earlier run in this folder is not this run's
                    (out / step.result).unlink(missing_ok=True)
                echo(f"== {step.name} (budget {timeout:.0f} s): {step.what}")
                log.write(f"== {step.name}: {step.command()}\n")
                entry.update(_run_step(step, timeout, env, log, echo))
                if step.result:
                    entry["result"] = _load_result(out / step.result)
                echo(f"== {step.name}: {entry['status']} in {entry['seconds']} s")
            doc["steps"].append(entry)
            doc["seconds"] = round(time.monotonic() - start, 1)
            (out / "gpu-check.json").write_text(json.dumps(doc, indent=2) + "\n")
    statuses = [s["status"] for s in doc["steps"]]
    doc["summary"] = {k: statuses.count(k) for k in ("ok", "failed", "timeout", "skipped")}
    (out / "gpu-check.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc
