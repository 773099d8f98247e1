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
                            "why": "an exported bundle runs on ONNX Runtime", "onnxruntime_needed": "1.20",
                            "backbone": "LLaVA-OneVision"}


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


def _needing(bundle, tmp_path, version: str):
    """A copy of the tiny bundle whose manifest says it needs onnxruntime >= `version`."""
    from rlivs.runtime.backends.bundle import load_manifest

    out = tmp_path / "needs"
    shutil.copytree(bundle, out)
    load_manifest(out).with_(requires={"onnxruntime": version}).save(out)
    return out


def test_a_bundle_newer_than_the_installed_onnxruntime_is_refused_before_loading(bundle, sample_video, tmp_path,
                                                                                  monkeypatch):
    """doctor exits 1 and check/ingest exit 2 with the versions and the fix; no ONNX Runtime session is made."""
    pytest.importorskip("onnxruntime")
    import onnxruntime

    newer = _needing(bundle, tmp_path, "99.1")
    sessions = []
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *a, **k: sessions.append(a))
    code, r = _doctor("--bundle", newer)
    have = md.version("onnxruntime")
    assert code == 1 and r["backend"]["onnxruntime_needed"] == "99.1"
    assert r["backend"]["error"] == (
        f"{newer} needs onnxruntime >= 99.1 (its graphs are ONNX opset 20); you have onnxruntime {have}: re-export it "
        f"with rlivs export --opset 21 (or the default, 20), which loads on onnxruntime 1.20 and later, or install "
        f"onnxruntime>=99.1 (on a Jetson, NVIDIA's onnxruntime-gpu build for your JetPack: docs/jetson.md)")
    for args in (("check", "--bundle", newer), ("ingest", sample_video, "--db", tmp_path / "m.db",
                                                 "--bundle", newer)):
        res = run_cli(*args, catch_exceptions=True)
        assert res.exit_code == 2 and "needs onnxruntime >= 99.1" in " ".join(res.output.split()), res.output
    assert sessions == [] and not (tmp_path / "m.db").exists()


def test_an_older_bundle_without_the_requirement_is_judged_by_its_opset(bundle, tmp_path):
    """Bundles exported before the manifest said what they need: the opset decides (23 -> onnxruntime 1.23)."""
    from rlivs.runtime.backends.bundle import load_manifest, onnxruntime_gap

    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    m = load_manifest(old).with_(requires=None, opset=23)
    m = m.with_(graphs={k: {**g, "opset": 23} for k, g in m.graphs.items()})
    m.save(old)
    m = load_manifest(old)
    assert m.requires is None and m.onnxruntime_needed() == "1.23"
    assert "needs onnxruntime >= 1.23" in onnxruntime_gap(old, m, ("onnxruntime-gpu", "1.22.0+cu126"))
    assert onnxruntime_gap(old, m, ("onnxruntime", "1.23.2")) is None
