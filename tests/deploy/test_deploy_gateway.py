"""The REST gateway in the deployment files: compose service, second container of the pod,
Service port, probes; the static checks catch a gateway that is missing or miswired."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import deploy_static_checks as static  # noqa: E402
import validate_deploy as vd  # noqa: E402


def _rendered() -> list[dict[str, Any]]:
    rendered, _ = vd.render_manifests(ROOT)
    return [d for d in yaml.safe_load_all(rendered) if d]


def _pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]


def test_the_pod_runs_the_gateway_beside_triton() -> None:
    docs = _rendered()
    assert static.check_manifest_consistency(ROOT, docs) == []
    names = [c["name"] for c in _pod(docs)["containers"]]
    assert names == ["triton", "gateway"]


def test_consistency_catches_a_miswired_gateway() -> None:
    docs = _rendered()
    gateway = next(c for c in _pod(docs)["containers"] if c["name"] == "gateway")
    gateway["args"] = ["--port", "2021", "--triton-url", "moonpipe-triton:8001"]
    gateway["livenessProbe"]["httpGet"]["path"] = "/health"
    for doc in docs:
        if doc["kind"] == "Service":
            doc["spec"]["ports"] = [p for p in doc["spec"]["ports"] if p.get("targetPort") != "rest"]
    problems = static.check_manifest_consistency(ROOT, docs)
    assert any("localhost:8001" in p for p in problems)
    assert any("is not the --port" in p for p in problems)
    assert any("livenessProbe must not depend on Triton" in p for p in problems)
    assert any("gateway's `rest` port" in p for p in problems)
    _pod(docs)["containers"] = [c for c in _pod(docs)["containers"] if c["name"] != "gateway"]
    assert any("no `gateway` container" in p for p in static.check_manifest_consistency(ROOT, docs))


def test_compose_check_catches_a_miswired_gateway(tmp_path: Path) -> None:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    doc["services"]["gateway"]["command"] = ["--port", "2020", "--triton-url", "localhost:8001"]
    doc["services"]["gateway"]["ports"] = []
    doc["services"]["gateway"]["depends_on"] = ["triton"]
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(doc))
    problems = static.check_compose(ROOT, tmp_path / "docker-compose.yml")
    assert any("--triton-url triton:8001" in p for p in problems)
    assert any("not published" in p for p in problems)
    assert any("healthy" in p for p in problems)
    del doc["services"]["gateway"]
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(doc))
    assert any("no `gateway` service" in p for p in static.check_compose(ROOT, tmp_path / "docker-compose.yml"))


def test_the_image_installs_the_gateway() -> None:
    copies = {src for c in static.parse_copies(ROOT / "docker/Dockerfile") for src in c.sources}
    assert {"client/", "gateway/"} <= copies
    assert "EXPOSE 8000 8001 8002 2020" in (ROOT / "docker/Dockerfile").read_text()
