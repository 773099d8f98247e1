"""Batching from the command line (issue 26): `rlivs export --batch` asks for the decoder with a dynamic batch axis
(recorded in the manifest), `rlivs build-engines --max-batch N` for the engines' batch range, and `rlivs serve
--batch N` refuses, before any model loads, a bundle that cannot take N clips in one call, naming the fix.

The batched graph itself (exported, run, equal to each clip alone) is tests/parity/test_batch.py's; here the flags and
the manifest, on copies of the session's tiny bundle (the check reads only the manifest)."""

import json
import shutil

import pytest

from rlivs.runtime.errors import UserError
from tests.helpers.cli import run_cli
from tests.helpers.serve_helpers import free_port


def _copy(bundle, tmp_path, name="b", **changes):
    """A copy of the tiny bundle with manifest keys changed: {"kv_cache": {...}} merges into kv_cache."""
    out = tmp_path / name
    shutil.copytree(bundle, out)
    m = json.loads((out / "manifest.json").read_text())
    for k, v in changes.items():
        m[k] = {**m.get(k, {}), **v} if k == "kv_cache" else v
    (out / "manifest.json").write_text(json.dumps(m))
    return out


@pytest.fixture
def model_load(monkeypatch):
    """Loading a model is where these runs stop: it records the call and refuses with a marker (exit 2)."""
    import rlivs.runtime.engine

    calls = []

    def stop(ec, *a, **kw):
        calls.append(ec)
        raise UserError("MODEL-LOAD-REACHED")

    monkeypatch.setattr(rlivs.runtime.engine, "load_engine", stop)
    return calls


def _serve(*args):
    return run_cli("serve", "--port", free_port(), *args, catch_exceptions=True)


def _said(r) -> str:
    return " ".join(r.output.split())


def test_serve_batch_refuses_a_bundle_without_a_batch_axis_before_loading(bundle, model_load, monkeypatch):
    monkeypatch.delenv("RLIVS_TOKEN", raising=False)
    r = _serve("--bundle", bundle, "--batch", "4")
    assert r.exit_code == 2, r.output
    said = _said(r)
    assert "--batch 4: the bundle" in said and "exported without a batch axis" in said
    assert "rlivs export --batch" in said and "--batch 1" in said  # the two fixes
    assert model_load == []
    # --batch 1 with the same bundle passes the check and goes on to load the model
    r = _serve("--bundle", bundle, "--batch", "1")
    assert r.exit_code == 2 and "MODEL-LOAD-REACHED" in r.output and len(model_load) == 1


def test_serve_batch_takes_a_batch_capable_bundle_and_the_torch_reference(bundle, tmp_path, model_load, monkeypatch):
    monkeypatch.delenv("RLIVS_TOKEN", raising=False)
    batched = _copy(bundle, tmp_path, kv_cache={"batch": True})
    r = _serve("--bundle", batched, "--batch", "8")  # ONNX Runtime: any number of sequences per step
    assert r.exit_code == 2 and "MODEL-LOAD-REACHED" in r.output, r.output
    r = _serve("--model", "tiny", "--batch", "8")  # the torch reference batches its dynamic cache
    assert r.exit_code == 2 and "MODEL-LOAD-REACHED" in r.output, r.output
    assert len(model_load) == 2


def test_serve_batch_on_torch_takes_the_dynamic_cache(model_load, monkeypatch):
    """The torch backend batches on its dynamic KV cache: auto becomes dynamic (on cuda auto would be the static
    cache + CUDA graph, one clip at a time); an explicit static cache is refused, naming the fix."""
    monkeypatch.delenv("RLIVS_TOKEN", raising=False)
    r = _serve("--model", "tiny", "--kv-cache", "static", "--batch", "4")
    assert r.exit_code == 2 and "static KV cache steps one clip at a time" in _said(r), r.output
    assert "--kv-cache dynamic" in _said(r) and model_load == []
    r = _serve("--model", "tiny", "--device", "cuda", "--batch", "4")
    assert r.exit_code == 2 and "MODEL-LOAD-REACHED" in r.output, r.output
    r = _serve("--model", "tiny", "--device", "cuda", "--batch", "1")
    assert r.exit_code == 2 and "MODEL-LOAD-REACHED" in r.output, r.output
    assert [ec.kv_cache for ec in model_load] == ["dynamic", "auto"]  # --batch 1 keeps auto's static + graph


@pytest.mark.parametrize("built, batch, ok", [(4, 8, False), (8, 8, True), (8, 2, True)])
def test_serve_batch_against_the_tensorrt_engines_batch_range(bundle, tmp_path, model_load, monkeypatch,
                                                              built, batch, ok):
    monkeypatch.delenv("RLIVS_TOKEN", raising=False)
    b = _copy(bundle, tmp_path, kv_cache={"batch": True}, tensorrt_engines={"max_batch": built})
    r = _serve("--bundle", b, "--backend", "tensorrt", "--batch", str(batch))
    assert r.exit_code == 2, r.output
    if ok:
        assert "MODEL-LOAD-REACHED" in r.output
    else:
        said = _said(r)
        assert f"batch range reaches {built} sequences" in said
        assert f"rlivs build-engines --bundle {b} --max-batch {batch}" in said
        assert model_load == []


def test_export_batch_flag_reaches_the_export_and_says_so(bundle, tmp_path, monkeypatch):
    """--batch -> ExportConfig(batch=True), and the output says what the bundle is; without it, one sequence."""
    import rlivs.export.bundle
    from rlivs.runtime.backends.bundle import load_manifest

    seen = []

    def export(model, out, config):
        seen.append(config.batch)
        m = load_manifest(bundle)
        return m.with_(kv_cache={**m.kv_cache, "batch": True} if config.batch else m.kv_cache)

    monkeypatch.setattr(rlivs.export.bundle, "export_bundle", export)
    r = run_cli("export", "--model", "tiny", "--out", tmp_path / "b", "--batch", "--no-check")
    assert r.exit_code == 0, r.output
    assert "decoder: batched (a dynamic batch axis)" in _said(r)
    r = run_cli("export", "--model", "tiny", "--out", tmp_path / "c", "--no-check")
    assert r.exit_code == 0, r.output
    assert "decoder: one sequence per step" in _said(r) and "exported with --batch" in _said(r)
    assert seen == [True, False]


def test_manifest_batch_capacity(bundle, tmp_path):
    from rlivs.runtime.backends.bundle import load_manifest

    plain = load_manifest(bundle)
    assert not plain.batched and plain.max_batch("onnxruntime") == 1 and plain.max_batch("tensorrt") == 1
    m = load_manifest(_copy(bundle, tmp_path, kv_cache={"batch": True}))
    assert m.batched and m.max_batch("onnxruntime") is None and m.max_batch("tensorrt") == 0  # no engines yet
    assert m.with_(tensorrt_engines={"max_batch": 6}).max_batch("tensorrt") == 6


def test_build_engines_max_batch_refused_for_a_bundle_without_a_batch_axis(bundle, tmp_path):
    """Before TensorRT is imported (this machine has none): the flag needs a batch axis, and the message says how."""
    b = _copy(bundle, tmp_path, target="tensorrt", kv_cache={"layout": "arena", "max_context": 1024})
    r = run_cli("build-engines", "--bundle", b, "--max-batch", "4", catch_exceptions=True)
    assert r.exit_code == 2, r.output
    said = _said(r)
    assert "--max-batch 4: this bundle's decoder has no batch axis" in said
    assert "rlivs export --target tensorrt --batch" in said
    r = run_cli("build-engines", "--bundle", b, "--max-batch", "0", catch_exceptions=True)
    assert r.exit_code == 2 and "max_batch must be 1..256" in _said(r), r.output
