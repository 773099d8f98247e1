"""The installed package is complete: every module imports, every declared requirement is installed at a version
its range allows, and the ranges agree with constraints.txt (the versions CI last passed with)."""

import importlib
import importlib.metadata as md
import pkgutil
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import rlivs

ROOT = Path(__file__).resolve().parents[2]
# Modules that need what no CPU machine of ours has (TensorRT comes with JetPack). Each still imports without it:
# tensorrt is imported inside functions only. The list is here so that a new exception is a visible decision.
NEEDS_DEVICE: set[str] = set()


def _modules():
    names = []
    for pkg in ("rlivs.runtime", "rlivs.export", "rlivs.calibration", "rlivs.edge_app"):
        mod = importlib.import_module(pkg)
        names += [pkg] + [m.name for m in pkgutil.walk_packages(mod.__path__, pkg + ".")]
    return sorted(set(names) - NEEDS_DEVICE)


@pytest.mark.parametrize("name", _modules())
def test_every_module_imports(name):
    importlib.import_module(name)  # a package the project forgot to declare fails here in CI's fresh venv


def _declared(extra_closure=("all", "torch", "ort", "export", "tensorrt", "robotics", "embed", "dev")):
    reqs = []
    for line in md.requires("rlivs") or []:
        r = Requirement(line)
        if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in extra_closure):
            if canonicalize_name(r.name) != "rlivs":
                reqs.append(r)
    return reqs


def test_every_declared_requirement_is_installed_in_range():
    bad = []
    for r in _declared():
        try:
            have = md.version(r.name)
        except md.PackageNotFoundError:
            bad.append(f"{r} is not installed")
            continue
        if not r.specifier.contains(have, prereleases=True):
            bad.append(f"{r.name} {have} is outside {r.specifier}")
    assert not bad, "; ".join(bad) + ": install with pip install -c constraints.txt -e '.[all]'"


def test_constraints_pin_every_declared_requirement_inside_its_range():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line.strip())
        if m:
            pins[canonicalize_name(m[1])] = m[2]
    missing = [r.name for r in _declared() if canonicalize_name(r.name) not in pins]
    outside = [f"{r.name}=={pins[canonicalize_name(r.name)]} not in {r.specifier}" for r in _declared()
               if canonicalize_name(r.name) in pins
               and not r.specifier.contains(pins[canonicalize_name(r.name)], prereleases=True)]
    assert not missing and not outside, (missing, outside)


def test_fast_moving_apis_are_bounded_above():
    for r in _declared():
        if canonicalize_name(r.name) in ("torch", "transformers", "onnx", "onnxscript", "onnxruntime"):
            assert any(s.operator in ("<=", "<", "==") for s in r.specifier), f"{r} has no upper bound"


def test_package_version_is_importable():
    assert md.version("rlivs") and rlivs.__name__ == "rlivs"


def test_the_package_tree_is_real_on_disk():
    """rlivs/<sub> are symlinks to the top-level folders, so static tools see the package as files (no import hook)."""
    for sub in ("runtime", "export", "edge_app", "calibration"):
        link = ROOT / "rlivs" / sub
        assert link.is_symlink() and link.resolve() == (ROOT / sub).resolve(), sub
        assert (link / "__init__.py").is_file()
