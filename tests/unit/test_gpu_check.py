"""``moonpipe gpu-check``: the dry run, the step runner, and the whole check on CPU as
the GPU machine would run it (no tqdm, matplotlib, tritonclient, grpc, pytest plugins)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from moonpipe.cli import main
from moonpipe.gpucheck.plan import DEVICE_RUN_TIMEOUT_S, STEP_NAMES, Step, build_plan, total_budget
from moonpipe.gpucheck.report import format_report
from moonpipe.gpucheck.runner import run_plan

ROOT = Path(__file__).resolve().parents[2]
ABSENT_ON_GPU_MACHINE = ("tqdm", "matplotlib", "tritonclient", "grpc", "moonpipe_client", "pytriton")

BLOCKER = textwrap.dedent(f'''
    """Hides the packages the GPU machine lacks (a test's sitecustomize): every import
    finder answers "not found" for them, as if they were not installed."""
    import sys

    BLOCKED = {ABSENT_ON_GPU_MACHINE!r}

    class _Hide:
        def __init__(self, inner):
            self.inner = inner

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                return None
            find = getattr(self.inner, "find_spec", None)
            return None if find is None else find(name, path, target)

        def __getattr__(self, attr):
            return getattr(self.inner, attr)

    sys.meta_path[:] = [_Hide(finder) for finder in sys.meta_path]
''')


def test_dry_run_prints_the_plan_and_the_device_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gpu-check", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for name in STEP_NAMES:
        assert f". {name} (" in out
    assert "pytest -m gpu tests/gpu" in out
    assert "--device cuda --model md2 --streams 1,8,32" in out
    assert "--concurrency 1,64" in out
    assert f"run(command='PYTHONPATH=. python3 -m moonpipe.cli gpu-check --out $OUT/gpu-check', " \
           f"timeout_s={DEVICE_RUN_TIMEOUT_S})" in out


def test_the_gpu_plan_fits_eight_minutes_with_room_for_a_rerun() -> None:
    steps = build_plan("cuda", "md2", Path("/out"))
    assert [s.name for s in steps] == list(STEP_NAMES)
    assert sum(s.budget_s for s in steps) <= total_budget("cuda") <= 8 * 60
    assert total_budget("cuda") < DEVICE_RUN_TIMEOUT_S <= 10 * 60  # the device tool's limit per call
    assert all("--no-plot" in s.argv for s in steps if s.name.startswith(("pipeline", "short")))


def test_only_and_skip_select_steps(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gpu-check", "--dry-run", "--only", "env,short", "--skip", "short"]) == 0
    out = capsys.readouterr().out
    assert "1. env (" in out and "short (" not in out and "2." not in out
    with pytest.raises(SystemExit):
        main(["gpu-check", "--dry-run", "--only", "everything"])
    with pytest.raises(SystemExit, match="--out"):
        main(["gpu-check"])


def _step(name: str, code: str, budget: int = 60) -> Step:
    return Step(name, name, budget, (sys.executable, "-c", code))


def test_runner_continues_past_failures_and_timeouts(tmp_path: Path) -> None:
    steps = [
        _step("fails", "import sys; print('boom'); sys.exit(3)"),
        _step("hangs", "import time; print('waiting', flush=True); time.sleep(60)", budget=2),
        _step("works", "print('fine')"),
    ]
    lines: list[str] = []
    doc = run_plan(steps, tmp_path, device="cpu", model="tiny", total_budget_s=120, echo=lines.append)
    status = {s["name"]: s["status"] for s in doc["steps"]}
    assert status == {"fails": "failed", "hangs": "timeout", "works": "ok"}
    assert doc["steps"][0]["returncode"] == 3 and doc["steps"][0]["tail"] == ["boom"]
    assert doc["steps"][1]["seconds"] < 30
    assert doc["summary"] == {"ok": 1, "failed": 1, "timeout": 1, "skipped": 0}
    assert json.loads((tmp_path / "gpu-check.json").read_text())["summary"] == doc["summary"]
    log = (tmp_path / "gpu-check.log").read_text()
    assert "[fails] boom" in log and "[works] fine" in log and "[works] fine" in lines
    assert "boom" in format_report(doc)  # a failed step without a table shows its output


def test_a_failed_step_shows_no_result_of_an_earlier_run(tmp_path: Path) -> None:
    (tmp_path / "old.json").write_text('{"rows": ["from an earlier run"]}')
    step = Step("fails", "fails", 60, (sys.executable, "-c", "raise SystemExit(1)"), result="old.json")
    doc = run_plan([step], tmp_path, device="cpu", model="tiny", total_budget_s=60, echo=lambda _: None)
    assert doc["steps"][0]["status"] == "failed" and doc["steps"][0]["result"] is None


def test_runner_skips_steps_past_the_total_budget(tmp_path: Path) -> None:
    steps = [_step("slow", "import time; time.sleep(60)", budget=60), _step("next", "print(1)")]
    doc = run_plan(steps, tmp_path, device="cpu", model="tiny", total_budget_s=12, echo=lambda _: None)
    assert [s["status"] for s in doc["steps"]] == ["timeout", "skipped"]


@pytest.mark.slow
def test_cpu_gpu_check_runs_every_step_as_the_gpu_machine_would(tmp_path: Path) -> None:
    """Every step end to end on CPU (tiny model, kernels under the interpreter), with the
    packages the GPU machine lacks made unimportable in every process of the run."""
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=f"{blocker}{os.pathsep}{ROOT}", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    done = subprocess.run([sys.executable, "-m", "moonpipe.cli", "gpu-check", "--device", "cpu", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    doc = json.loads((out / "gpu-check.json").read_text())
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    steps = {s["name"]: s for s in doc["steps"]}
    assert list(steps) == list(STEP_NAMES) and all(s["status"] == "ok" for s in steps.values())
    assert set(ABSENT_ON_GPU_MACHINE[:3]) <= set(steps["env"]["result"]["absent_optional"])
    counts = steps["kernels"]["result"]["counts"]
    assert counts["fused"]["total"] < counts["triton"]["total"] < counts["torch"]["total"]
    for kind in ("fused", "torch", "triton"):
        pipe = steps[f"pipeline-{kind}"]["result"]
        assert pipe["decode_kernels_used"] == kind and pipe["kernels_per_step"]["total"] > 0
        assert pipe["rows"] and all(row["identical_outputs"] for row in pipe["rows"])
    short = steps["short"]["result"]
    # auto: torch on CPU; on a GPU the attention kernel when it passes its start-up check
    assert short["decode_kernels_used"] == "torch" and all(row["errors"] == 0 for row in short["rows"])
    assert {row["prefix_cache"] for row in short["rows"]} == {True}  # as Moondream measures
    assert steps["pytest-gpu"]["result"]["failures"] == 0
    assert not list(out.glob("*.png"))  # no matplotlib: no plots, and no failure for it
    assert "kernels per step" in (out / "gpu-check.txt").read_text()
