"""`rlivs check --bundle B`: the bundle's chosen backend against the same bundle's ONNX graphs on ONNX Runtime CPU, on
a short synthetic stream; PASS / FAIL with the numbers and the tolerance, exit 0 / 1 (2: cannot check). The
emulated TensorRT runtime's check is in tests/parity/test_tensorrt_backend.py, beside its bundle."""

import json

import numpy as np
import pytest

from tests.helpers.cli import run_cli

pytest.importorskip("onnxruntime")


def _check(*args):
    r = run_cli("check", *args)
    return r, (json.loads(r.output) if "--json" in args and r.output.startswith("{") else None)


def test_check_passes_on_the_onnxruntime_bundle(bundle):
    r, out = _check("--bundle", bundle, "--json")
    assert r.exit_code == 0, r.output
    assert (out["backend"], out["reference"], out["precision"]) == ("onnxruntime", "onnxruntime CPUExecutionProvider",
                                                                    "float32")
    c = out["comparison"]
    # the same graphs on the same provider: identical to the last bit, on 2 clips with the FIFO carried
    assert (c["clips"], c["captions_identical"], c["max_score_diff"], c["selection_overlap"]) == (2, 2, 0.0, [1.0, 1.0])
    assert out["tolerance"] == {"precision": "float32", "captions_identical_min": 1.0, "selection_overlap_min": 1.0,
                                "score_atol_per_row": 1e-4}
    assert out["passed"] is True and out["failed"] == [] and all(x["backend"] for x in out["captions"])
    r, _ = _check("--bundle", bundle, "--clips", "1", "--frames", "2", "--caption-tokens", "4")
    said = " ".join(r.output.split())
    assert r.exit_code == 0 and "PASS" in said and "captions identical 1/1 (need >= 100%)" in said
    assert "tolerance for float32" in said


def test_check_fails_with_the_numbers_when_the_backend_drifts(bundle, monkeypatch):
    """A backend whose logits drift (noise on the engine under test only) fails, exit 1, naming what broke."""
    from rlivs.runtime import engine as engine_mod

    real = engine_mod.load_engine

    def drifting(*a, **kw):
        e = real(*a, **kw)
        step, rng = e.backend.step, np.random.default_rng(0)

        def noisy(embeds, state, probe_rows=1):
            out = step(embeds, state, probe_rows)
            out.logits = out.logits + rng.normal(0, 5.0, out.logits.shape).astype(np.float32)
            return out

        e.backend.step = noisy
        return e

    monkeypatch.setattr(engine_mod, "load_engine", drifting)
    r, out = _check("--bundle", bundle, "--json")
    assert r.exit_code == 1 and out["passed"] is False
    assert out["comparison"]["captions_identical"] < 2
    assert any("captions identical, fewer than 100%" in f for f in out["failed"])
    r, _ = _check("--bundle", bundle)
    assert r.exit_code == 1 and "FAIL: " in r.output


def test_check_refuses_what_it_cannot_check(tmp_path):
    r, _ = _check("--bundle", tmp_path)
    assert r.exit_code == 2 and "is not an rlivs bundle (no manifest.json)" in " ".join(r.output.split())
