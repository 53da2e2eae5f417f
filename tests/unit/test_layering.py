"""The engine package's layers, read from its import statements (no imports executed).

skills, scheduler and runtime meet only in ``moonpipe/step.py`` (and ``config``, ``errors``,
``request``): the scheduler drives a ``StepRunner`` protocol and never imports the
runtime or torch, so it runs and is tested without a model; the runtime never imports
the scheduler or the skills; and no module imports itself through others (no cycles).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "moonpipe"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, at_import: bool = False) -> set[str]:
    """Modules imported in ``path`` except under ``if TYPE_CHECKING:``: anywhere, or
    (``at_import``) only by statements that run when the module is imported (not inside
    functions)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        lazy = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and at_import
        if lazy or (isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)):
            skip.update(id(n) for n in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


GRAPH = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}
GRAPH_AT_IMPORT = {_module_name(p): _imports(p, at_import=True) for p in PACKAGE.rglob("*.py")}


def _internal(module: str) -> set[str]:
    return {m for m in GRAPH[module] if m in GRAPH and m != module}


def test_no_import_cycles() -> None:
    # Tarjan-free check: a module must not reach itself through the import graph.
    for start in GRAPH:
        seen: set[str] = set()
        stack = list(_internal(start))
        while stack:
            m = stack.pop()
            assert m != start, f"import cycle through {start}"
            if m not in seen:
                seen.add(m)
                stack.extend(_internal(m))


def _reach(module: str, graph: dict[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    stack = [module]
    while stack:
        m = stack.pop()
        for dep in graph.get(m, set()):
            if dep not in seen:
                seen.add(dep)
                if dep in GRAPH:
                    stack.append(dep)
    return seen


def test_the_scheduler_needs_neither_the_runtime_nor_torch() -> None:
    for module in (m for m in GRAPH if m.startswith("moonpipe.scheduler")):
        bad = sorted(m for m in _reach(module, GRAPH) if m.startswith(("moonpipe.runtime", "moonpipe.model.moondream")))
        assert not bad, f"{module} reaches {bad}"
        loaded = _reach(module, GRAPH_AT_IMPORT)
        assert "torch" not in loaded, f"importing {module} imports torch"


def test_the_runtime_imports_neither_the_scheduler_nor_the_skills() -> None:
    for module in (m for m in GRAPH if m.startswith("moonpipe.runtime")):
        bad = sorted(m for m in GRAPH[module] if m.startswith(("moonpipe.scheduler", "moonpipe.skills",
                                                                "moonpipe.engine", "moonpipe.output")))
        assert not bad, f"{module} imports {bad}"


def test_the_step_contract_and_the_configuration_import_no_torch() -> None:
    for module in ("moonpipe.step", "moonpipe.config", "moonpipe.scheduler.ports"):
        assert "torch" not in _reach(module, GRAPH_AT_IMPORT), module
