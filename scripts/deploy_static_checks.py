"""Pure-Python checks of the deployment files that no external linter makes.

Each ``check_*`` function returns a list of problems (empty when the file is right), so
``scripts/validate_deploy.py`` and ``tests/deploy`` report every problem at once:

- the image layout: ``docker/Dockerfile``'s COPY sources exist, survive ``.dockerignore``
  and carry the one model repository the tests serve (``model_repository/``);
- the code the image runs parses and imports on the image's Python (3.10);
- compose: the structure issue 8 asks for (GPU, shm, ports, volume, healthcheck, profiles)
  and that it agrees with the Dockerfile, Prometheus config and perf_analyzer inputs;
- /dev/shm (compose ``shm_size``, the Kubernetes memory emptyDir) is bounded consistently
  with ``max_image_bytes`` (``moonpipe.triton_limits.dev_shm_bounds``), and the admin key
  comes from the environment (compose) or a Secret (Kubernetes), never from a file here;
- Kubernetes: the kustomization lists exactly the directory's manifests, CRDs have
  their required fields, ports/probes/metric names agree across files.
"""

from __future__ import annotations

import ast
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from moonpipe.triton_limits import ADMIN_KEY_ENV, dev_shm_bounds

MODEL_FILES = ("model_repository/moondream/config.pbtxt", "model_repository/moondream/1/model.py")
CHECKPOINT_MOUNT = "/models/checkpoint"
SKIP_DIRS = {".venv", ".git", ".tools", "build", "__pycache__", "node_modules"}

# Standard-library names added after Python 3.10 that would break the image's stub.
_NEWER_THAN_310 = {
    ("typing", "Self"), ("typing", "Never"), ("typing", "LiteralString"),
    ("typing", "assert_never"), ("typing", "reveal_type"), ("typing", "NotRequired"),
    ("typing", "Required"), ("typing", "Unpack"), ("typing", "TypeVarTuple"),
    ("typing", "dataclass_transform"), ("typing", "override"), ("typing", "TypeAliasType"),
    ("enum", "StrEnum"), ("enum", "verify"), ("asyncio", "TaskGroup"), ("asyncio", "timeout"),
    ("asyncio", "Runner"), ("datetime", "UTC"), ("contextlib", "chdir"),
    ("hashlib", "file_digest"), ("itertools", "batched"),
}
_NEW_MODULES = {"tomllib"}


@dataclass(frozen=True, slots=True)
class CopyInstruction:
    """One ``COPY`` of a Dockerfile stage: sources relative to the context, or ``--from``."""

    stage: int
    sources: tuple[str, ...]
    destination: str
    from_stage: str | None


def _logical_lines(text: str) -> list[str]:
    """Dockerfile lines with ``\\`` continuations joined and comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") and not current:
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current:
            lines.append(current)
        current = ""
    return lines


def parse_copies(dockerfile: Path) -> list[CopyInstruction]:
    """Every ``COPY``/``ADD`` of ``dockerfile``, numbered by stage (0 = first ``FROM``)."""
    copies: list[CopyInstruction] = []
    stage = -1
    for line in _logical_lines(dockerfile.read_text()):
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stage += 1
        if word.upper() not in ("COPY", "ADD"):
            continue
        rest = rest.strip()
        args = list(ast.literal_eval(rest)) if rest.startswith("[") else shlex.split(rest)
        from_stage = None
        while args and args[0].startswith("--"):
            flag = args.pop(0)
            if flag.startswith("--from="):
                from_stage = flag.split("=", 1)[1]
        copies.append(CopyInstruction(stage, tuple(args[:-1]), args[-1], from_stage))
    return copies


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_excludes(rules_text: str, path: str) -> bool:
    """Whether ``.dockerignore`` rules exclude context ``path`` (last matching rule wins;
    a rule matching a parent directory applies to everything under it)."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for raw in rules_text.splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        regex = _ignore_regex(rule.lstrip("!").strip("/"))
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = not negate
    return excluded


def _files_under(root: Path, rel: str) -> list[str]:
    target = root / rel
    if target.is_file():
        return [rel.rstrip("/")]
    return sorted(
        p.relative_to(root).as_posix() for p in target.rglob("*")
        if p.is_file() and not SKIP_DIRS.intersection(p.relative_to(root).parts)
    )


def check_image_layout(root: Path) -> list[str]:
    """The Dockerfile's context COPYs exist, pass ``.dockerignore``, carry ``model_repository/``
    whole to the path the entrypoint serves, and no second model repository exists."""
    dockerfile = root / "docker/Dockerfile"
    ignore = (root / ".dockerignore").read_text() if (root / ".dockerignore").exists() else ""
    problems: list[str] = []
    shipped: set[str] = set()
    for copy in parse_copies(dockerfile):
        if copy.from_stage is not None:
            continue
        for src in copy.sources:
            if not (root / src).exists():
                problems.append(f"COPY source {src} does not exist")
                continue
            files = _files_under(root, src)
            dropped = [f for f in files if dockerignore_excludes(ignore, f) and not f.endswith((".pyc", ".pyo"))
                       and ".egg-info/" not in f]  # build outputs of `pip install -e`, kept out on purpose
            if dropped:
                problems.append(f"COPY source {src}: .dockerignore excludes {dropped[:5]}")
            shipped.update(f for f in files if not dockerignore_excludes(ignore, f))
    for required in MODEL_FILES:
        if required not in shipped:
            problems.append(f"the image does not get {required}")
    repo_copies = [c for c in parse_copies(dockerfile) if "model_repository/" in c.sources]
    text = dockerfile.read_text()
    if not repo_copies:
        problems.append("docker/Dockerfile does not COPY model_repository/ from the repository root")
    elif f"MOONPIPE_MODEL_REPOSITORY={repo_copies[-1].destination.rstrip('/')}" not in text:
        problems.append("MOONPIPE_MODEL_REPOSITORY does not name the COPY destination of model_repository/")
    stray = [p.relative_to(root).as_posix() for p in root.rglob("config.pbtxt")
             if not SKIP_DIRS.intersection(p.relative_to(root).parts)
             and not p.relative_to(root).as_posix().startswith(("model_repository/", "tests/"))]
    if stray:
        problems.append(f"a second model repository would drift from the served one: {stray}")
    return problems


def _newer_names(tree: ast.AST) -> Iterable[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if (node.module, alias.name) in _NEWER_THAN_310:
                    yield f"from {node.module} import {alias.name}"
            if node.module.split(".")[0] in _NEW_MODULES:
                yield f"from {node.module} import ..."
        elif isinstance(node, ast.Import):
            yield from (f"import {a.name}" for a in node.names if a.name.split(".")[0] in _NEW_MODULES)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in _NEWER_THAN_310:
                yield f"{node.value.id}.{node.attr}"


def check_python_compat(files: Sequence[Path], version: tuple[int, int] = (3, 10)) -> list[str]:
    """Syntax and standard-library names newer than ``version`` in ``files``."""
    problems: list[str] = []
    for path in files:
        source = path.read_text()
        try:
            tree = ast.parse(source, filename=str(path), feature_version=version)
        except SyntaxError as exc:
            problems.append(f"{path}:{exc.lineno}: not Python {version[0]}.{version[1]} syntax: {exc.msg}")
            continue
        if version < (3, 11) and re.search(r"^\s*except\s*\*", source, re.MULTILINE):
            problems.append(f"{path}: except* needs Python 3.11")
        problems.extend(f"{path}: {name} needs Python > {version[0]}.{version[1]}" for name in _newer_names(tree))
    return problems


def _dataclass_fields(path: Path, class_name: str) -> set[str]:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return {s.target.id for s in node.body
                    if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
    return set()


def known_parameters(root: Path) -> set[str]:
    """config.pbtxt parameter names the adapter accepts (EngineConfig + AdapterConfig fields)."""
    return (_dataclass_fields(root / "moonpipe/config.py", "EngineConfig")
            | _dataclass_fields(root / "model_repository/moondream/1/moondream_io.py", "AdapterConfig"))


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)


def size_bytes(text: Any, *, kubernetes: bool) -> int:
    """A size -> bytes. Compose (``256m``, ``256mb``): units are binary however spelt.
    Kubernetes (``256Mi``, ``256M``): ``Mi`` is binary, ``M`` decimal."""
    found = _SIZE.match(str(text))
    if not found:
        raise ValueError(f"not a size: {text!r}")
    number, unit, binary = found.groups()
    power = "kmgt".index(unit.lower()) + 1 if unit else 0
    base = 1000 if kubernetes and not binary else 1024
    return int(float(number) * base**power)


def _max_image_bytes(root: Path, overrides: dict[str, Any]) -> int:
    value = overrides.get("MOONPIPE_PARAM_max_image_bytes")
    if value is None:
        found = re.search(r'key:\s*"max_image_bytes"\s*value:\s*\{\s*string_value:\s*"(\d+)"',
                          (root / MODEL_FILES[0]).read_text())
        value = found.group(1) if found else 32 << 20
    return int(value)


def check_shm_bound(root: Path, size: Any, overrides: dict[str, Any], where: str) -> list[str]:
    """/dev/shm of ``size`` must hold the Python backend's fixed region and stay bounded."""
    try:
        actual = size_bytes(size, kubernetes=where != "compose")
    except ValueError as exc:
        return [f"{where}: /dev/shm {exc}"]
    least, most = dev_shm_bounds(_max_image_bytes(root, overrides))
    if not least <= actual <= most:
        return [f"{where}: /dev/shm is {size} ({actual >> 20} MiB); with this max_image_bytes it must be "
                f"{least >> 20}-{most >> 20} MiB (moonpipe.triton_limits.dev_shm_bounds)"]
    return []


def volume_parts(volume: Any) -> list[str]:
    """A short-syntax compose volume split on ':' (``${VAR:-default}`` kept whole)."""
    text = str(volume)
    holes = re.findall(r"\$\{[^}]*\}", text)
    for n, hole in enumerate(holes):
        text = text.replace(hole, f"\0{n}\0", 1)
    parts = text.split(":")
    for n, hole in enumerate(holes):
        parts = [p.replace(f"\0{n}\0", hole) for p in parts]
    return parts


def _check_param_overrides(env: dict[str, Any], known: set[str], where: str) -> list[str]:
    return [f"{where}: {key} names no config.pbtxt parameter (known: {sorted(known)})"
            for key in env if key.startswith("MOONPIPE_PARAM_")
            and key[len("MOONPIPE_PARAM_"):] not in known]


def check_compose(root: Path, compose_file: Path) -> list[str]:
    """Structure of ``docker-compose.yml`` and its agreement with the other files."""
    doc = yaml.safe_load(compose_file.read_text())
    services = doc.get("services") or {}
    problems: list[str] = []
    triton = services.get("triton")
    if not isinstance(triton, dict):
        return ["compose: no `triton` service"]
    if (triton.get("build") or {}).get("dockerfile") != "docker/Dockerfile":
        problems.append("compose: triton does not build docker/Dockerfile")
    environment = triton.get("environment") or {}
    if not triton.get("shm_size"):
        problems.append("compose: triton has no shm_size")
    else:
        problems.extend(check_shm_bound(root, triton["shm_size"], environment, "compose"))
    if str(environment.get(ADMIN_KEY_ENV, "")).strip() not in ("", f"${{{ADMIN_KEY_ENV}:-}}"):
        problems.append(f"compose: {ADMIN_KEY_ENV} must come from the shell's environment, not the file")
    published = {str(p).split(":")[-1].split("/")[0] for p in triton.get("ports") or []}
    problems.extend(f"compose: port {p} not published" for p in ("8000", "8001", "8002") if p not in published)
    devices = (((triton.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
    if not any("gpu" in (d.get("capabilities") or []) for d in devices):
        problems.append("compose: triton reserves no GPU")
    if not any(volume_parts(v)[1:2] == [CHECKPOINT_MOUNT] for v in triton.get("volumes") or []):
        problems.append(f"compose: no volume mounted at {CHECKPOINT_MOUNT}")
    if "/v2/health/ready" not in " ".join(map(str, (triton.get("healthcheck") or {}).get("test") or [])):
        problems.append("compose: triton healthcheck does not probe /v2/health/ready")
    problems.extend(_check_param_overrides(environment, known_parameters(root), "compose"))
    profiles = {p: name for name, svc in services.items() for p in svc.get("profiles") or []}
    for profile in ("loadtest", "monitoring"):
        if profile not in profiles:
            problems.append(f"compose: no service in profile {profile}")
    base = re.search(r"ARG TRITON_IMAGE=(\S+)", (root / "docker/Dockerfile").read_text())
    loadtest = services.get(profiles.get("loadtest", ""), {})
    if base and loadtest.get("image") != base.group(1) + "-sdk":
        problems.append(f"compose: loadtest image should be {base.group(1)}-sdk (same release as the server)")
    command = " ".join(map(str, loadtest.get("command") or []))
    if "--streaming" not in command or "grpc" not in command:
        problems.append("compose: perf_analyzer must use streaming gRPC (decoupled model)")
    data = re.search(r"--input-data\s+(\S+)", command)
    if not data:
        problems.append("compose: perf_analyzer has no --input-data")
    else:
        mounts = [volume_parts(v) for v in loadtest.get("volumes") or []]
        host = next((h + data.group(1)[len(c):] for h, c, *_ in mounts if data.group(1).startswith(c)), None)
        if host is None or not (root / host).is_file():
            problems.append(f"compose: perf_analyzer input {data.group(1)} maps to no repository file ({host})")
    problems.extend(_check_prometheus(root, services.get(profiles.get("monitoring", ""), {})))
    problems.extend(_check_compose_gateway(services))
    return problems


def _check_compose_gateway(services: dict[str, Any]) -> list[str]:
    """The REST gateway service: moonpipe-gateway from the triton image, talking to
    triton:8001 once Triton is healthy, its port published, a /health healthcheck."""
    gateway = services.get("gateway")
    if not isinstance(gateway, dict):
        return ["compose: no `gateway` service (the REST gateway)"]
    problems: list[str] = []
    if gateway.get("image") != (services.get("triton") or {}).get("image"):
        problems.append("compose: gateway must run the triton service's image")
    command = " ".join(map(str, [*(gateway.get("entrypoint") or []), *(gateway.get("command") or [])]))
    if "moonpipe-gateway" not in command or "--triton-url triton:8001" not in command:
        problems.append(f"compose: gateway must run moonpipe-gateway --triton-url triton:8001 ({command})")
    port = re.search(r"--port (\d+)", command)
    published = {str(p).split(":")[-1].split("/")[0] for p in gateway.get("ports") or []}
    if port is None or port.group(1) not in published:
        problems.append(f"compose: the gateway's --port is not published ({published})")
    depends = gateway.get("depends_on") or {}
    if not isinstance(depends, dict) or (depends.get("triton") or {}).get("condition") != "service_healthy":
        problems.append("compose: gateway must depend on triton being healthy")
    if "/health" not in " ".join(map(str, (gateway.get("healthcheck") or {}).get("test") or [])):
        problems.append("compose: gateway healthcheck does not probe /health")
    return problems


def _check_prometheus(root: Path, service: dict[str, Any]) -> list[str]:
    config = next((volume_parts(v)[0] for v in service.get("volumes") or []
                   if volume_parts(v)[1:2] == ["/etc/prometheus/prometheus.yml"]), None)
    if config is None or not (root / config).is_file():
        return [f"compose: prometheus config {config} missing"]
    doc = yaml.safe_load((root / config).read_text())
    targets = [t for job in doc.get("scrape_configs") or [] for sc in job.get("static_configs") or []
               for t in sc.get("targets") or []]
    return [] if "triton:8002" in targets else [f"{config}: does not scrape triton:8002 ({targets})"]


def kustomization_resources(k8s_dir: Path) -> list[str]:
    """The ``resources`` of ``k8s_dir/kustomization.yaml``."""
    doc = yaml.safe_load((k8s_dir / "kustomization.yaml").read_text())
    return [str(r) for r in doc.get("resources") or []]


def check_kustomization_listing(k8s_dir: Path) -> list[str]:
    """The kustomization lists exactly the ``*.yaml`` files beside it."""
    listed = set(kustomization_resources(k8s_dir))
    present = {p.name for p in k8s_dir.glob("*.yaml")} - {"kustomization.yaml"}
    problems = [f"kustomization lists missing file {f}" for f in sorted(listed - present)]
    problems += [f"{f} is not listed in kustomization.yaml" for f in sorted(present - listed)]
    return problems


def _probe_path(probe: dict[str, Any]) -> str | None:
    """The health path a probe checks: ``httpGet.path``, or the argument of an exec of
    ``docker/healthcheck.py`` (which checks that path plus the engine gauge)."""
    if "httpGet" in probe:
        return probe["httpGet"].get("path")
    command = [str(c) for c in (probe.get("exec") or {}).get("command") or []]
    if len(command) == 3 and command[1].endswith("/healthcheck.py"):
        return command[2]
    return None


def check_manifest_consistency(root: Path, docs: Sequence[dict[str, Any]]) -> list[str]:
    """Cross-file agreement of the rendered manifests (ports, probes, metrics, CRDs)."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(str(doc.get("kind")), []).append(doc)
    problems: list[str] = []
    deployments = by_kind.get("Deployment", [])
    if len(deployments) != 1:
        return [f"expected one Deployment, found {len(deployments)}"]
    pod = deployments[0]["spec"]["template"]["spec"]
    containers = pod["containers"]
    container = next((c for c in containers if c.get("name") == "triton"), containers[0])
    port_names = {p["name"] for c in containers for p in c.get("ports", [])}
    gpu = (container.get("resources", {}).get("limits") or {}).get("nvidia.com/gpu")
    if str(gpu) != "1":
        problems.append("Deployment: container must limit nvidia.com/gpu to 1")
    probes = {k: _probe_path(container.get(k) or {}) for k in ("livenessProbe", "readinessProbe", "startupProbe")}
    if probes != {"livenessProbe": "/v2/health/live", "readinessProbe": "/v2/health/ready",
                  "startupProbe": "/v2/health/ready"}:
        problems.append(f"Deployment: probe paths {probes}")
    shm = [v for v in pod.get("volumes", []) if (v.get("emptyDir") or {}).get("medium") == "Memory"]
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    if not shm or mounts.get("/dev/shm") != shm[0]["name"]:
        problems.append("Deployment: /dev/shm is not a memory emptyDir")
    else:
        overrides = {k: v for cm in by_kind.get("ConfigMap", []) for k, v in (cm.get("data") or {}).items()}
        problems.extend(check_shm_bound(root, shm[0]["emptyDir"].get("sizeLimit", "unbounded"), overrides,
                                        "Deployment"))
    key = next((e for e in container.get("env", []) if e.get("name") == ADMIN_KEY_ENV), None)
    if key is None or "secretKeyRef" not in (key.get("valueFrom") or {}):
        problems.append(f"Deployment: {ADMIN_KEY_ENV} must come from a Secret (valueFrom.secretKeyRef)")
    if mounts.get(CHECKPOINT_MOUNT) is None:
        problems.append(f"Deployment: nothing mounted at {CHECKPOINT_MOUNT}")
    if not (pod.get("securityContext") or {}).get("runAsNonRoot"):
        problems.append("Deployment: pod securityContext must set runAsNonRoot")
    for svc in by_kind.get("Service", []):
        for port in svc["spec"].get("ports", []):
            if port.get("targetPort") not in port_names:
                problems.append(f"Service {svc['metadata']['name']}: targetPort {port.get('targetPort')} is no container port")
    for cm in by_kind.get("ConfigMap", []):
        problems.extend(_check_param_overrides(cm.get("data") or {}, known_parameters(root), f"ConfigMap {cm['metadata']['name']}"))
    for monitor in by_kind.get("PodMonitor", []) + by_kind.get("ServiceMonitor", []):
        spec = monitor.get("spec") or {}
        endpoints = spec.get("podMetricsEndpoints") or spec.get("endpoints") or []
        if not (spec.get("selector") or {}).get("matchLabels") or not endpoints:
            problems.append(f"{monitor['kind']}: needs spec.selector.matchLabels and endpoints")
        problems.extend(f"{monitor['kind']}: endpoint port {e.get('port')} is no container port"
                        for e in endpoints if monitor["kind"] == "PodMonitor" and e.get("port") not in port_names)
    problems.extend(_check_hpa_metrics(root, by_kind.get("HorizontalPodAutoscaler", [])))
    problems.extend(check_gateway_container(pod, by_kind.get("Service", [])))
    return problems


def check_gateway_container(pod: dict[str, Any], services: Sequence[dict[str, Any]]) -> list[str]:
    """The REST gateway runs beside Triton in the pod: ``moonpipe-gateway`` talking to
    localhost's gRPC port, its port named ``rest`` on a Service, ready on ``/health``
    (Triton's model) and alive on a path that does not need Triton."""
    gateway = next((c for c in pod["containers"] if c.get("name") == "gateway"), None)
    if gateway is None:
        return ["Deployment: no `gateway` container (the REST gateway beside Triton)"]
    problems: list[str] = []
    command = " ".join(map(str, [*(gateway.get("command") or []), *(gateway.get("args") or [])]))
    if "moonpipe-gateway" not in command:
        problems.append(f"Deployment: the gateway container does not run moonpipe-gateway ({command})")
    url = re.search(r"--triton-url[ =](\S+)", command)
    if url is None or url.group(1).split(":")[0] not in ("localhost", "127.0.0.1") or not url.group(1).endswith(":8001"):
        problems.append(f"Deployment: the gateway must talk to Triton at localhost:8001 ({command})")
    ports = {p.get("name"): p.get("containerPort") for p in gateway.get("ports", [])}
    port = re.search(r"--port[ =](\d+)", command)
    if "rest" not in ports or port is None or str(ports["rest"]) != port.group(1):
        problems.append(f"Deployment: gateway port `rest` {ports.get('rest')} is not the --port it listens on")
    ready = (gateway.get("readinessProbe") or {}).get("httpGet") or {}
    live = (gateway.get("livenessProbe") or {}).get("httpGet") or {}
    if ready.get("path") != "/health" or ready.get("port") != "rest":
        problems.append(f"Deployment: gateway readinessProbe must GET /health on port rest ({ready})")
    if not live.get("path") or live.get("path") == "/health":
        problems.append("Deployment: gateway livenessProbe must not depend on Triton (use /metrics)")
    if not any(port.get("targetPort") == "rest" for svc in services for port in svc["spec"].get("ports", [])):
        problems.append("Service: no port targets the gateway's `rest` port")
    return problems


def _check_hpa_metrics(root: Path, hpas: Sequence[dict[str, Any]]) -> list[str]:
    if len(hpas) != 1:
        return [f"expected one HorizontalPodAutoscaler, found {len(hpas)}"]
    adapter = yaml.safe_load((root / "docker/k8s/prometheus-adapter/adapter-config.yaml").read_text())
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    exposed = {r["name"]["as"]: r["seriesQuery"].split("{")[0] for r in rules}
    metrics_py = (root / "model_repository/moondream/1/moondream_metrics.py").read_text()
    problems: list[str] = []
    for metric in hpas[0]["spec"].get("metrics", []):
        if metric.get("type") != "Pods":
            continue
        name = metric["pods"]["metric"]["name"]
        if name not in exposed:
            problems.append(f"HPA metric {name} has no prometheus-adapter rule")
        elif f'"{exposed[name]}"' not in metrics_py:
            problems.append(f"HPA metric {name}: series {exposed[name]} is not exported by moondream_metrics.py")
    if not problems and not any(m.get("type") == "Pods" for m in hpas[0]["spec"].get("metrics", [])):
        problems.append("HPA does not scale on a per-pod custom metric")
    return problems
