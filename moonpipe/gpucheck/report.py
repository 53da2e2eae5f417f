"""The GPU check's printed summary: one status line per step, then each step's table."""

from __future__ import annotations

from typing import Any

__all__ = ["format_report", "step_table"]


def _pytest_table(res: dict[str, Any]) -> str:
    if "error" in res:
        return str(res["error"])
    lines = [f"{res['passed']} passed, {res['failures'] + res['errors']} failed, {res['skipped']} skipped"]
    lines += [f"  FAILED {f['test']}: {f['message']}" for f in res["failed_tests"]]
    return "\n".join(lines)


def step_table(name: str, res: Any) -> str | None:
    """The table of one step's result (None when it has none)."""
    if not isinstance(res, dict) or ("error" in res and len(res) == 1):
        return None
    if name == "env":
        from moonpipe.gpucheck.env import format_env

        return format_env(res)
    if name == "kernels":
        from moonpipe.gpucheck.kernels import format_kernels

        return format_kernels(res)
    if name == "pytest-gpu":
        return _pytest_table(res)
    if name.startswith("pipeline-"):
        from moonpipe.bench.pipeline import format_table

        return format_table(res)
    if name == "short":
        from moonpipe.bench.short import format_short_table

        return format_short_table(res)
    return None


def format_report(doc: dict[str, Any]) -> str:
    lines = [f"moonpipe gpu-check on {doc['device']} ({doc['model']}): {doc.get('summary', {})} "
             f"in {doc.get('seconds', 0)} s"]
    for step in doc["steps"]:
        extra = step.get("reason") or (f"exit {step['returncode']}" if step["status"] != "ok" else "")
        lines.append(f"  {step['name']:<16} {step['status']:<8} {step.get('seconds', 0):>6} s / "
                     f"{step['budget_s']} s  {extra}")
    for step in doc["steps"]:
        table = step_table(step["name"], step.get("result"))
        if table is None and step["status"] not in ("ok", "skipped"):
            table = "\n".join(step.get("tail", [])[-15:])
        if table:
            lines += ["", f"-- {step['name']} ({step['status']})", table]
    return "\n".join(lines)
