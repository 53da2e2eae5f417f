"""The checkout is self-contained: a fresh clone with nothing beside it has every test input
and every file its docs point at; packaging metadata builds without warnings."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib
from engine_support import GOLDEN_DIR

ROOT = Path(__file__).resolve().parents[2]
GOLDEN_FILES = ("config.json", "golden.json", "golden.safetensors", "image.png", "model.safetensors")
# Text that points outside the checkout: the workspace's shared/ folder or absolute paths.
OUTSIDE = re.compile(r"\.\./shared\b|(?<![\w.])shared/(?:golden|docs)\b|/work/")


def _project_text_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "Makefile", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "bench").rglob("*.md"))]
    files += sorted(p for p in (ROOT / "tests").rglob("*.py") if p != Path(__file__).resolve())
    return files


def test_goldens_ship_inside_the_checkout() -> None:
    assert GOLDEN_DIR.is_relative_to(ROOT), f"{GOLDEN_DIR} lies outside the checkout {ROOT}"
    for name in GOLDEN_FILES:
        assert (GOLDEN_DIR / name).is_file(), f"missing golden file {GOLDEN_DIR / name}"


@pytest.mark.skipif(not (ROOT / ".git").exists() or shutil.which("git") is None,
                    reason="not a git checkout")
def test_goldens_are_tracked_by_git() -> None:
    listed = subprocess.run(["git", "ls-files", "--", str(GOLDEN_DIR.relative_to(ROOT))], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    assert sorted(Path(p).name for p in listed) == sorted(GOLDEN_FILES)


def test_tests_and_docs_do_not_reach_outside_the_checkout() -> None:
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for path in _project_text_files()
             for number, line in enumerate(path.read_text().splitlines(), start=1)
             if OUTSIDE.search(line)]
    assert not found, "references outside the checkout:\n" + "\n".join(found)


def test_docs_name_only_files_the_checkout_has() -> None:
    """Every ``name.md`` the README and docs mention is a file of the project."""
    shipped = {p.name for p in ROOT.rglob("*.md") if ".venv" not in p.parts}
    missing = [f"{path.relative_to(ROOT)}: {name}"
               for path in _project_text_files() if path.suffix == ".md"
               for name in sorted(set(re.findall(r"[\w.-]+\.md\b", path.read_text())))
               if name not in shipped]
    assert not missing, "docs point at files a clone does not have:\n" + "\n".join(missing)


@pytest.mark.parametrize("pyproject", [ROOT / "pyproject.toml", *sorted(ROOT.glob("*/pyproject.toml"))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_license_is_an_spdx_expression(pyproject: Path) -> None:
    """setuptools deprecates ``license = {text = ...}`` (one warning per build step)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    assert isinstance(project.get("license"), str), f"{pyproject}: license must be an SPDX string"
    assert not any(c.startswith("License ::") for c in project.get("classifiers", []))
    requires = tomllib.loads(pyproject.read_text())["build-system"]["requires"]
    assert any(re.fullmatch(r"setuptools>=(\d+).*", r) and int(r.split(">=")[1].split(".")[0]) >= 77
               for r in requires), f"{pyproject}: SPDX license strings need setuptools>=77"


def test_readme_lists_every_moonpipe_metric() -> None:
    exported = set(re.findall(r'"(moonpipe_[a-z_]+)"',
                              (ROOT / "model_repository/moondream/1/moondream_metrics.py").read_text()))
    assert exported, "no metric names found in moondream_metrics.py"
    readme = (ROOT / "README.md").read_text()
    assert not sorted(m for m in exported if m not in readme), "metrics missing from README.md"
