"""The architecture's rules, checked from the source: dependencies run one way (runtime <- export <- calibration <-
edge_app), runtime imports torch/transformers only inside its torch reference backend, and every torch-free module
really imports in a process where torch cannot be imported (walked, not listed)."""

import ast
from pathlib import Path

import pytest

from tests.helpers.no_torch import run_without_torch

ROOT = Path(__file__).resolve().parents[2]
LAYERS = {"runtime": 0, "export": 1, "calibration": 2, "edge_app": 3}  # a layer imports only layers <= its own
TORCH_HOME = ("runtime", "backends", "torch")


def _modules():
    """(folder, module path parts, file) for every module of the four packages."""
    for folder in LAYERS:
        for f in sorted((ROOT / folder).rglob("*.py")):
            parts = f.relative_to(ROOT).with_suffix("").parts
            yield folder, parts[:-1] if parts[-1] == "__init__" else parts, f


def _imports(parts: tuple, f: Path):
    """Every module an import statement in `f` names (top-level and inside functions), as rlivs-relative parts or
    ('<ext>', top-level name) for third-party packages."""
    pkg = parts if f.name == "__init__.py" else parts[:-1]
    for node in ast.walk(ast.parse(f.read_text(), str(f))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)]
                names = [".".join(base + tuple(node.module.split("."))) if node.module else ".".join(base)]
            else:
                names = [node.module]
        else:
            continue
        for name in names:
            head = name.split(".")
            if head[0] == "rlivs" and len(head) > 1:
                yield node.lineno, tuple(head[1:])
            elif head[0] in LAYERS:
                yield node.lineno, tuple(head)
            else:
                yield node.lineno, ("<ext>", head[0])


def test_dependencies_run_one_way():
    bad = []
    for folder, parts, f in _modules():
        for line, target in _imports(parts, f):
            if target[0] in LAYERS and LAYERS[target[0]] > LAYERS[folder]:
                bad.append(f"{f.relative_to(ROOT)}:{line} imports rlivs.{'.'.join(target)}")
    assert not bad, "runtime <- export <- calibration <- edge_app is broken by:\n" + "\n".join(bad)


def test_runtime_imports_torch_only_in_its_torch_backend():
    bad = []
    for folder, parts, f in _modules():
        if folder != "runtime" or parts[:3] == TORCH_HOME:
            continue
        for line, target in _imports(parts, f):
            if target[0] == "<ext>" and target[1] in ("torch", "transformers"):
                bad.append(f"{f.relative_to(ROOT)}:{line}")
    assert not bad, "runtime/ imports torch or transformers outside runtime/backends/torch:\n" + "\n".join(bad)


def test_the_rules_catch_a_violation(tmp_path):
    """The scanner sees lazy and relative imports (a rule that cannot fail proves nothing)."""
    f = tmp_path / "runtime" / "x.py"
    f.parent.mkdir()
    f.write_text("def g():\n    from ..edge_app import cli\n    import torch\n")
    found = list(_imports(("runtime", "x"), f))
    assert (2, ("edge_app",)) in found and (3, ("<ext>", "torch")) in found


def test_every_torch_free_module_imports_without_torch(tmp_path):
    """Walk rlivs.runtime (but its torch backend) and rlivs.edge_app, importing every module where torch fails."""
    out = run_without_torch("""
        import importlib, pkgutil
        done = []
        for pkg in ("rlivs.runtime", "rlivs.edge_app"):
            mod = importlib.import_module(pkg)
            for m in pkgutil.walk_packages(mod.__path__, pkg + "."):
                if m.name.startswith("rlivs.runtime.backends.torch"):
                    continue
                importlib.import_module(m.name)
                done.append(m.name)
        assert TORCH_FREE(), [m for m in __import__("sys").modules if m.split(".")[0] in ("torch", "transformers")]
        print("IMPORTED", len(done))
    """, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    n = int(out.stdout.split("IMPORTED")[1])
    assert n > 30  # the walk found the packages' modules, not an empty tree


@pytest.mark.parametrize("folder", list(LAYERS))
def test_every_folder_has_modules(folder):
    assert sum(1 for fo, _, _ in _modules() if fo == folder) >= 3


SERVICE = ("edge_app", "service")


def _service_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the modules of edge_app/service (and its api/ package) it imports, any way (top level, inside a
    function, under TYPE_CHECKING, `from . import x`)."""
    folder = root.joinpath(*SERVICE)
    graph: dict[str, set[str]] = {}
    for f in sorted(folder.rglob("*.py")):
        parts = f.relative_to(root).with_suffix("").parts
        mod = ".".join(parts[2:]) if parts[-1] != "__init__" else ".".join(parts[2:-1]) or "__init__"
        pkg = parts[:-1]
        out = set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)]
            elif node.module and node.module.startswith("rlivs."):
                base = ()
            else:
                continue
            head = base + tuple(node.module.split(".")) if node.module else base
            if head[:1] == ("rlivs",):
                head = head[1:]
            if head[:2] != SERVICE:
                continue
            names = [head + (a.name,) for a in node.names] if not node.module or head == SERVICE else [head]
            for n in names:
                target = ".".join(n[2:])
                if target and (folder.joinpath(*n[2:]).with_suffix(".py").exists() or folder.joinpath(*n[2:]).is_dir()):
                    out.add(target)
        graph[mod] = out - {mod}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph`, or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_service_has_no_import_circles_and_only_the_http_layer_sees_the_wiring():
    """core.py wires the service; the workers, the bus and its listeners, telemetry and the scheduler never import it
    (not even for type hints), so there is no circle core <-> telemetry <-> workers."""
    graph = _service_graph()
    assert {"core", "workers", "telemetry", "bus", "listeners", "watches", "scheduler"} <= set(graph)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    wiring_users = sorted(m for m, deps in graph.items() if "core" in deps)
    assert all(m == "app" or m.startswith("api") for m in wiring_users), wiring_users


def test_the_circle_check_sees_a_circle(tmp_path):
    """A rule that cannot fail proves nothing: a planted circle through a type-hint import is found."""
    folder = tmp_path.joinpath(*SERVICE)
    folder.mkdir(parents=True)
    (folder / "core.py").write_text("from .workers import W\n")
    (folder / "workers.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .core import S\n")
    (folder / "telemetry.py").write_text("from rlivs.edge_app.service import workers\n")
    graph = _service_graph(tmp_path)
    assert graph["telemetry"] == {"workers"}
    assert _cycle(graph) in (["core", "workers", "core"], ["workers", "core", "workers"])
