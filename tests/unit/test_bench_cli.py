"""Where ``moonpipe bench`` and perf_analyzer write: an untracked folder unless asked to
update the committed results."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from moonpipe.bench.common import LOCAL_RESULTS_DIR, RESULTS_DIR
from moonpipe.cli import build_parser
from moonpipe.commands.bench import output_path

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("bench", ["pipeline", "triton", "short"])
def test_runs_write_to_the_untracked_folder_unless_asked(bench: str) -> None:
    args = build_parser().parse_args(["bench", bench])
    assert output_path(args, "x") == LOCAL_RESULTS_DIR / "x.json"
    args = build_parser().parse_args(["bench", bench, "--update-results"])
    assert output_path(args, "x") == RESULTS_DIR / "x.json"
    args = build_parser().parse_args(["bench", bench, "--json", "mine.json"])
    assert output_path(args, "x") == Path("mine.json")


@pytest.mark.skipif(not (ROOT / ".git").exists() or shutil.which("git") is None, reason="not a git checkout")
def test_the_local_results_folder_is_ignored_by_git() -> None:
    ignored = subprocess.run(["git", "check-ignore", "-q", str(LOCAL_RESULTS_DIR / "pipeline-x.json")], cwd=ROOT,
                             check=False)
    assert ignored.returncode == 0
    committed = subprocess.run(["git", "check-ignore", "-q", str(RESULTS_DIR / "pipeline-x.json")], cwd=ROOT,
                               check=False)
    assert committed.returncode == 1


def test_perf_analyzer_script_defaults_to_the_untracked_folder() -> None:
    sys.path.insert(0, str(ROOT / "bench" / "perf_analyzer"))
    import run_perf_analyzer

    assert run_perf_analyzer.summary_path(None, update=False) == ROOT / LOCAL_RESULTS_DIR / "perf_analyzer-summary.json"
    assert run_perf_analyzer.summary_path(None, update=True) == ROOT / RESULTS_DIR / "perf_analyzer-summary.json"
