"""`rlivs doctor`: the installed packages as importlib sees them, ONNX Runtime's providers, CUDA as torch sees it, and
which backend `auto` picks for a bundle and why (including a bundle with TensorRT engines, with and without an
importable `tensorrt`)."""

import importlib.machinery
import importlib.metadata as md
import json
import shutil
import sys
import types

import pytest

from tests.helpers.cli import run_cli


def _doctor(*args):
    r = run_cli("doctor", *args, "--json")
    return r.exit_code, json.loads(r.output)


def test_doctor_reports_this_machine(bundle):
    onnxruntime = pytest.importorskip("onnxruntime")
    torch = pytest.importorskip("torch")
    code, r = _doctor("--bundle", bundle)
    assert code == 0
    assert r["packages"]["onnxruntime"] == md.version("onnxruntime") and r["packages"]["numpy"] == md.version("numpy")
    assert r["packages"]["onnxruntime-gpu"] is None or r["packages"]["onnxruntime-gpu"] == md.version("onnxruntime-gpu")
    assert r["onnxruntime"]["providers"] == onnxruntime.get_available_providers()
    assert r["cuda"]["available"] == torch.cuda.is_available() and len(r["cuda"]["devices"]) == torch.cuda.device_count()
    assert r["backend"] == {"target": str(bundle), "asked": "auto", "runs": True, "name": "onnxruntime",
                            "why": "an exported bundle runs on ONNX Runtime"}


def test_doctor_says_why_something_cannot_run_and_exits_1(tmp_path, bundle):
    code, r = _doctor("--bundle", tmp_path)
    assert code == 1 and not r["backend"]["runs"] and "is not an rlivs bundle (no manifest.json)" in r["backend"]["error"]
    code, r = _doctor("--bundle", bundle, "--backend", "tensorrt")
    assert code == 1 and "has no TensorRT engines: export with rlivs export --target tensorrt" in r["backend"]["error"]


def test_doctor_picks_tensorrt_only_where_it_imports(bundle, tmp_path, monkeypatch):
    from rlivs.runtime.backends.tensorrt.engine_entry import write_engine_entry

    engines = tmp_path / "with-engines"
    shutil.copytree(bundle, engines)
    write_engine_entry(engines, {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7"})
    code, r = _doctor("--bundle", engines)
    if r["tensorrt"]["importable"]:  # a machine with real TensorRT: the first branch is the one below
        pytest.skip("tensorrt is importable here")
    assert code == 0 and r["backend"]["name"] == "onnxruntime"
    assert r["backend"]["why"] == ("the bundle has TensorRT engines but tensorrt is not importable here, so it runs on "
                                   "ONNX Runtime")
    fake = types.ModuleType("tensorrt")  # importable, as on a Jetson
    fake.__version__ = "10.3.0"
    fake.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    code, r = _doctor("--bundle", engines)
    assert code == 0 and r["tensorrt"] == {"importable": True, "version": "10.3.0"}
    assert r["backend"]["name"] == "tensorrt"
    assert r["backend"]["why"] == "the bundle has TensorRT engines and tensorrt is importable"
