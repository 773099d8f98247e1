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
