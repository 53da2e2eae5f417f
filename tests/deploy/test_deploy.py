"""Static validation of the deployment files (issue 8): Dockerfile, compose, Kubernetes.

No Docker engine or cluster: each external validator (hadolint, shellcheck,
docker-compose, kubernetes-validate, kubectl kustomize) runs on the real files, and on a
deliberately broken copy to prove the check can fail. A validator that cannot be
installed skips its test with the reason; the project's own structural checks always run.
The entrypoint is run for real with fake ``tritonserver``/``moonpipe`` commands.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "docker"))

import deploy_static_checks as static  # noqa: E402
import render_model_repository as render  # noqa: E402
import validate_deploy as vd  # noqa: E402

BROKEN_DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: broken
spec:
  replicas: two
  selector:
    matchLabels: {app: broken}
  template:
    metadata:
      labels: {app: broken}
    spec:
      containers:
        - name: c
          image: x:1
          portz: [8000]
"""


def _require(result: vd.CheckResult) -> vd.CheckResult:
    if result.status == "skip":
        print(f"SKIP {result.name}: {result.detail}")
        pytest.skip(result.detail)
    return result


def _assert_pass(result: vd.CheckResult) -> None:
    _require(result)
    assert result.status == "pass", f"{result.name}:\n{result.detail}"


@pytest.fixture(scope="module")
def compose_available() -> bool:
    binary, why = vd.ensure_docker_compose(install=True)
    if binary is None:
        print(f"docker-compose unavailable: {why}")
    return binary is not None


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_passes_hadolint() -> None:
    _assert_pass(vd.lint_dockerfile(ROOT))


def test_hadolint_fails_on_a_bad_dockerfile(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM ubuntu\nRUN cd /tmp && apt-get install curl\n")
    result = _require(vd.lint_dockerfile(tmp_path, "Dockerfile"))
    assert result.status == "fail"
    assert "DL3006" in result.detail  # untagged base image


def test_entrypoint_passes_shellcheck() -> None:
    _assert_pass(vd.lint_shell(ROOT))


def test_dockerfile_contract() -> None:
    text = (ROOT / "docker/Dockerfile").read_text()
    assert "ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3" in text
    assert "torch==2.13.0+cu126" in text and "whl/cu126" in text
    assert "USER 10001:10001" in text
    assert "/v2/health/ready" in text.split("HEALTHCHECK", 1)[1]
    assert "MOONPIPE_CHECKPOINT=/models/checkpoint" in text
    assert os.access(ROOT / "docker/entrypoint.sh", os.X_OK)


def test_image_serves_the_tests_model_repository() -> None:
    _assert_pass(vd.check_image_layout(ROOT))


def test_dockerignore_keeps_weights_and_venv_out() -> None:
    rules = (ROOT / ".dockerignore").read_text()
    for path in (".venv/bin/python", "checkpoints/tiny/model.safetensors", "moonpipe/w.safetensors",
                 "model_repository/moondream/1/__pycache__/model.cpython-310.pyc", "bench/results/a.csv",
                 ".git/HEAD", "tests/unit/test_x.py"):
        assert static.dockerignore_excludes(rules, path), path
    for path in (*static.MODEL_FILES, "moonpipe/config.py", "docker/entrypoint.sh"):
        assert not static.dockerignore_excludes(rules, path), path


def test_image_layout_check_fails_when_the_repository_is_not_copied(tmp_path: Path) -> None:
    for rel in static.MODEL_FILES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker/Dockerfile").write_text("FROM a:1\nCOPY model_repository/moondream/1/ /opt/m/1/\n")
    problems = static.check_image_layout(tmp_path)
    assert any("config.pbtxt" in p for p in problems)
    assert any("does not COPY model_repository/" in p for p in problems)


def test_image_code_is_python_310_compatible() -> None:
    _assert_pass(vd.check_image_python(ROOT))


def test_python_compat_check_catches_311_features(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from typing import Self\nimport tomllib\nimport enum\nx = enum.StrEnum\n")
    problems = static.check_python_compat([bad])
    assert len(problems) == 3


# ---------------------------------------------------------------- entrypoint and rendering


def _fake_bin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "moonpipe").write_text('#!/bin/sh\nmkdir -p "$5" && : > "$5/model.safetensors"\n')
    (bin_dir / "tritonserver").write_text('#!/bin/sh\necho "CKPT=$MOONPIPE_CHECKPOINT ARGS=$*"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return bin_dir


def _run_entrypoint(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "PATH": f"{_fake_bin(tmp_path)}:{os.environ['PATH']}",
        "MOONPIPE_VENV": str(Path(sys.executable).parent.parent),
        "MOONPIPE_RUNTIME_DIR": str(tmp_path / "run"),
        "MOONPIPE_MODEL_REPOSITORY": str(ROOT / "model_repository"),
        **env,
    }
    return subprocess.run(["bash", str(ROOT / "docker/entrypoint.sh"), "--log-info=true"], env=full_env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_entrypoint_makes_the_synthetic_checkpoint_and_renders_overrides(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = _run_entrypoint(tmp_path, MOONPIPE_CHECKPOINT=str(tmp_path / "empty"),
                           MOONPIPE_PARAM_max_batch_size="16", TRITON_EXTRA_ARGS="--log-verbose=1")
    assert proc.returncode == 0, proc.stderr
    rendered = tmp_path / "run/model_repository"
    assert f"CKPT={tmp_path / 'run/synthetic-tiny'}" in proc.stdout
    assert f"--model-repository={rendered}" in proc.stdout
    assert "--disable-auto-complete-config" in proc.stdout
    assert proc.stdout.strip().endswith("--log-verbose=1 --log-info=true")
    config = (rendered / "moondream/config.pbtxt").read_text()
    assert 'key: "max_batch_size"   value: { string_value: "16" }' in config
    assert (rendered / "moondream/1/model.py").read_text() == (ROOT / static.MODEL_FILES[1]).read_text()


def test_entrypoint_fixes_the_shm_region_and_restricts_the_admin_apis(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = _run_entrypoint(tmp_path, MOONPIPE_CHECKPOINT=str(tmp_path / "empty"),
                           MOONPIPE_PARAM_max_image_bytes="16777216", MOONPIPE_ADMIN_KEY="s3cret-key")
    assert proc.returncode == 0, proc.stderr
    region = 2 * 16777216 + 8 * 1024 * 1024  # from the rendered config.pbtxt's max_image_bytes
    for flag in (f"--backend-config=python,shm-default-byte-size={region}",
                 "--backend-config=python,shm-growth-byte-size=1099511627776",
                 "--http-restricted-api=model-repository,shared-memory,trace,logging:moonpipe-admin-key=s3cret-key",
                 "--grpc-restricted-protocol=model-repository,shared-memory,trace,logging:moonpipe-admin-key=s3cret-key"):
        assert f" {flag} " in proc.stdout, flag
    assert "admin APIs need header moonpipe-admin-key" in proc.stderr
    (tmp_path / "again").mkdir()
    closed = _run_entrypoint(tmp_path / "again", MOONPIPE_CHECKPOINT=str(tmp_path / "empty"), MOONPIPE_ADMIN_KEY="")
    assert "--http-restricted-api=model-repository,shared-memory,trace,logging:moonpipe-admin-key=" in closed.stdout
    assert "admin APIs closed" in closed.stderr  # a random key nobody knows


def test_entrypoint_serves_a_mounted_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"")
    proc = _run_entrypoint(tmp_path, MOONPIPE_CHECKPOINT=str(ckpt), MOONPIPE_REQUIRE_CHECKPOINT="1")
    assert proc.returncode == 0, proc.stderr
    assert f"CKPT={ckpt} " in proc.stdout


def test_entrypoint_refuses_a_missing_checkpoint_when_required(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = _run_entrypoint(tmp_path, MOONPIPE_CHECKPOINT=str(tmp_path / "empty"), MOONPIPE_REQUIRE_CHECKPOINT="1")
    assert proc.returncode == 1
    assert "MOONPIPE_REQUIRE_CHECKPOINT=1" in proc.stderr
    assert "ARGS=" not in proc.stdout


def test_entrypoint_forwards_sigterm_to_the_server_and_its_stub(tmp_path: Path) -> None:
    """docker stop / the kubelet signal PID 1 only; the stub must see SIGTERM too."""
    bin_dir = _fake_bin(tmp_path)
    marker = tmp_path / "signals"
    # A fake server with a fake "stub" child in its process group, both recording SIGTERM.
    (bin_dir / "tritonserver").write_text(
        "#!/bin/bash\n"
        f"(trap 'echo stub >> {marker}; exit 0' TERM; : > {marker}.stub; while :; do sleep 0.05; done) &\n"
        f"trap 'echo server >> {marker}; wait; exit 7' TERM\n"
        f"while [ ! -e {marker}.stub ]; do sleep 0.01; done\n"
        "echo started\n"
        "while :; do sleep 0.05; done\n"
    )
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "MOONPIPE_VENV": str(Path(sys.executable).parent.parent),
        "MOONPIPE_RUNTIME_DIR": str(tmp_path / "run"),
        "MOONPIPE_MODEL_REPOSITORY": str(ROOT / "model_repository"),
        "MOONPIPE_CHECKPOINT": str(ckpt),
    }
    proc = subprocess.Popen(["bash", str(ROOT / "docker/entrypoint.sh")], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        proc.send_signal(signal.SIGTERM)  # to the entrypoint (PID 1 in a container) only
        assert proc.wait(timeout=20) == 7  # the server's own exit status is passed on
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert sorted(marker.read_text().split()) == ["server", "stub"]


def test_render_sets_existing_and_new_parameters() -> None:
    text = 'parameters: { key: "device" value: { string_value: "auto" } }\n'
    out = render.set_parameter(text, "device", "cuda")
    assert out.startswith('parameters: { key: "device" value: { string_value: "cuda" } }')
    out = render.set_parameter(out, "seed", 'a"b')
    assert render.has_parameter(out, "seed") and 'string_value: "a\\"b"' in out
    assert render.overrides_from_env({"MOONPIPE_PARAM_seed": "3", "OTHER": "x"}) == {"seed": "3"}
    with pytest.raises(ValueError):
        render.set_parameter(text, "bad name", "x")


# ---------------------------------------------------------------- compose


def test_compose_file_passes_docker_compose_config(compose_available: bool) -> None:
    if not compose_available:
        print("SKIP docker-compose config: docker-compose cannot be installed; structural check runs instead")
        pytest.skip("docker-compose cannot be installed")
    _assert_pass(vd.validate_compose(ROOT))


def test_docker_compose_config_fails_on_a_broken_file(tmp_path: Path, compose_available: bool) -> None:
    if not compose_available:
        pytest.skip("docker-compose cannot be installed")
    text = (ROOT / "docker-compose.yml").read_text().replace("retries: 3", "retries: three")
    (tmp_path / "docker-compose.yml").write_text(text)
    assert vd.validate_compose(tmp_path).status == "fail"


def test_compose_structure() -> None:
    _assert_pass(vd.check_compose_structure(ROOT))


def test_compose_structure_check_fails_without_gpu_and_shm(tmp_path: Path) -> None:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    del doc["services"]["triton"]["deploy"]
    del doc["services"]["triton"]["shm_size"]
    doc["services"]["triton"]["environment"]["MOONPIPE_PARAM_max_batchsize"] = "4"
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(doc))
    problems = static.check_compose(ROOT, tmp_path / "docker-compose.yml")
    assert any("GPU" in p for p in problems)
    assert any("shm_size" in p for p in problems)
    assert any("max_batchsize" in p for p in problems)


def test_shm_and_admin_key_checks_fail_on_an_unbounded_or_leaky_compose_file(tmp_path: Path) -> None:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    doc["services"]["triton"]["shm_size"] = "2gb"
    doc["services"]["triton"]["environment"]["MOONPIPE_ADMIN_KEY"] = "written-in-the-file"
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(doc))
    problems = static.check_compose(ROOT, tmp_path / "docker-compose.yml")
    assert any("/dev/shm is 2gb (2048 MiB)" in p for p in problems)
    assert any("MOONPIPE_ADMIN_KEY must come from the shell" in p for p in problems)
    # A larger max_image_bytes needs a larger /dev/shm: the same 256mb is then too small.
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    doc["services"]["triton"]["environment"]["MOONPIPE_PARAM_max_image_bytes"] = str(128 << 20)
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(doc))
    assert any("must be 296-1056 MiB" in p for p in static.check_compose(ROOT, tmp_path / "docker-compose.yml"))


# ---------------------------------------------------------------- Kubernetes


def test_kubernetes_manifests_validate() -> None:
    results = vd.validate_kubernetes(ROOT)
    for result in results:
        _assert_pass(result)
    assert len(results) == 3


def test_kubernetes_validate_fails_on_a_broken_manifest(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN_DEPLOYMENT)
    result = _require(vd.validate_manifest_files(tmp_path, [broken]))
    assert result.status == "fail"
    assert "replicas" in result.detail or "portz" in result.detail


def test_broken_kustomization_fails(tmp_path: Path) -> None:
    k8s = tmp_path / "docker/k8s"
    shutil.copytree(ROOT / "docker/k8s", k8s)
    (k8s / "extra.yaml").write_text(BROKEN_DEPLOYMENT)
    deployment = (k8s / "deployment.yaml").read_text()
    (k8s / "deployment.yaml").write_text(deployment.replace("path: /v2/health/live", "path: /healthz"))
    results = {r.name.split(" (")[0]: r for r in vd.validate_kubernetes(tmp_path)}
    assert results["kustomization listing docker/k8s"].status == "fail"
    assert "extra.yaml" in results["kustomization listing docker/k8s"].detail


def test_manifest_consistency_catches_a_wrong_hpa_metric() -> None:
    rendered, _ = vd.render_manifests(ROOT)
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    for doc in docs:
        if doc["kind"] == "HorizontalPodAutoscaler":
            doc["spec"]["metrics"][0]["pods"]["metric"]["name"] = "nv_inference_queue_duration_us"
        if doc["kind"] == "Deployment":
            doc["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["exec"]["command"][2] = "/x"
        if doc["kind"] == "Deployment":
            pod = doc["spec"]["template"]["spec"]
            next(v for v in pod["volumes"] if v["name"] == "dshm")["emptyDir"]["sizeLimit"] = "2Gi"
            pod["containers"][0]["env"] = [e for e in pod["containers"][0]["env"]
                                           if e["name"] != "MOONPIPE_ADMIN_KEY"]
    problems = static.check_manifest_consistency(ROOT, docs)
    assert any("/dev/shm is 2Gi (2048 MiB)" in p for p in problems)
    assert any("MOONPIPE_ADMIN_KEY must come from a Secret" in p for p in problems)
    assert any("HPA metric nv_inference_queue_duration_us" in p for p in problems)
    assert any("probe paths" in p for p in problems)


def test_healthcheck_script_reads_triton_and_the_engine_gauge(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("healthcheck", ROOT / "docker/healthcheck.py")
    assert spec is not None and spec.loader is not None
    hc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hc)
    answers: dict[str, tuple[int, str]] = {}
    monkeypatch.setattr(hc, "_get", lambda url: answers[url.rsplit(":", 1)[-1].split("/", 1)[-1]])
    ok = 'moonpipe_engine_ready{model="moondream"} 1\n'
    dead = 'moonpipe_engine_ready{model="moondream"} 0\n'
    answers.update({"v2/health/live": (200, ""), "v2/health/ready": (200, ""), "metrics": (200, ok)})
    assert hc.check("/v2/health/live") is None and hc.check("/v2/health/ready") is None
    answers["metrics"] = (200, dead)
    assert "engine stopped" in str(hc.check("/v2/health/live"))
    assert "engine stopped" in str(hc.check("/v2/health/ready"))
    answers["metrics"] = (200, "nv_gpu_utilization 0\n")  # still loading: alive, not ready
    assert hc.check("/v2/health/live") is None and hc.check("/v2/health/ready") is not None
    answers["v2/health/ready"] = (503, "")
    assert "answered 503" in str(hc.check("/v2/health/ready"))
    assert hc.main(["healthcheck.py", "/bogus"]) == 2


def test_validate_deploy_cli_reports_failures(tmp_path: Path) -> None:
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker/Dockerfile").write_text("FROM ubuntu\n")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/validate_deploy.py"), "--root", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1
    assert "FAIL" in proc.stdout


def test_manifests_render_without_kubectl(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(vd.shutil, "which", lambda name: None if name == "kubectl" else real_which(name))
    rendered, how = vd.render_manifests(ROOT)
    kinds = {d["kind"] for d in yaml.safe_load_all(rendered) if d}
    assert "kubectl not found" in how
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodMonitor", "ConfigMap"} <= kinds
