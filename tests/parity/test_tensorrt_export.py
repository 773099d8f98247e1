"""The TensorRT-ready export: every op in TensorRT's parser table, attention in the pattern TensorRT fuses,
and the same parity with the reference as the ONNX Runtime bundle (proved on ORT CPU; TensorRT itself
cannot run here)."""

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from rlivs.export.bundle import ExportConfig, export_bundle  # noqa: E402
from rlivs.export.tensorrt_ops import TENSORRT_SUPPORTED_OPS, attention_patterns, check_tensorrt_graph  # noqa: E402
from rlivs.runtime.backends.onnxruntime import OrtBackend, load_manifest  # noqa: E402
from rlivs.runtime.backends.torch import TorchBackend  # noqa: E402
from rlivs.runtime.engine import load_engine  # noqa: E402
from tests.helpers.configs import small_config  # noqa: E402
from tests.helpers.parity import step_parity, stream_parity  # noqa: E402


@pytest.fixture(scope="module")
def trt_bundle(tmp_path_factory, tiny_dir):
    out = tmp_path_factory.mktemp("trt") / "tiny"
    export_bundle("tiny", out, ExportConfig(target="tensorrt", embed_dtype="float32", kv_dtype="float32"))
    return out


@pytest.fixture(scope="module")
def trt_bundle_fp16(tmp_path_factory, tiny_dir):
    """The default TensorRT-target bundle: float16 KV arena (what an FP16 engine stores)."""
    out = tmp_path_factory.mktemp("trt16") / "tiny"
    export_bundle("tiny", out, ExportConfig(target="tensorrt", embed_dtype="float32", check=False))
    return out


def test_every_op_is_in_the_tensorrt_parser_table(trt_bundle):
    import onnx

    m = load_manifest(trt_bundle).to_dict()
    assert m["target"] == "tensorrt" and m["opset"] == 20
    assert m["tensorrt_check"]["problems"] == []
    for name in ("vision.onnx", "decoder.onnx"):
        model = onnx.load(str(trt_bundle / name), load_external_data=False)
        assert all(o.version <= 20 for o in model.opset_import if o.domain in ("", "ai.onnx"))
        assert {n.domain for n in model.graph.node} <= {""}  # no onnxruntime contrib ops
        assert {n.op_type for n in model.graph.node} <= TENSORRT_SUPPORTED_OPS
        assert check_tensorrt_graph(trt_bundle / name) == []


def test_attention_is_fusable_except_the_probe_rows(trt_bundle):
    assert attention_patterns(trt_bundle / "decoder.onnx") == {"fusable": 8, "probe": 4, "other": 0}


def test_the_opset23_bundle_is_refused_by_the_check(bundle_opset23):
    """Negative control: the opset-23 graphs use ops TensorRT 10 cannot parse, and the check says so."""
    problems = " ".join(check_tensorrt_graph(bundle_opset23 / "decoder.onnx"))
    assert "opset 23" in problems and "RMSNormalization" in problems and "RotaryEmbedding" in problems
    with pytest.raises(ValueError, match="reads opsets up to 20"):
        ExportConfig(target="tensorrt", opset=23)


def test_tensorrt_graphs_match_the_reference_on_ort_cpu(trt_bundle, tiny_dir, sample_video, tmp_path):
    torch_be, ort_be = TorchBackend(tiny_dir), OrtBackend(trt_bundle)
    rng = np.random.default_rng(0)
    ctx = np.concatenate([torch_be.embed_tokens(np.arange(3, 9)), rng.standard_normal((50, 64)).astype(np.float32)])
    step_parity(torch_be, ort_be, ctx, steps=4, logits_atol=1e-4, probe_atol=1e-5)
    run = _stream(tiny_dir, trt_bundle, tmp_path, sample_video)
    assert run.captions_equal
    assert run.kept_equal


def _stream(ref, got, tmp_path, sample_video):
    return stream_parity(load_engine(ref, config=small_config()), load_engine(got, config=small_config()), tmp_path,
                         sample_video)


def test_the_arena_cache_is_appended_in_place(trt_bundle, tiny_dir):
    """past_kv is bound to the arena's first K rows and new_kv to the rows after them: after a prefill and
    decode steps the arena holds exactly the reference's keys and values, in the same buffer throughout."""
    m = load_manifest(trt_bundle).to_dict()
    assert m["kv_cache"]["layout"] == "arena" and m["kv_cache"]["max_context"] == 8192
    graphs = {v["name"]: v for v in m["graphs"]["decoder"]["inputs"] + m["graphs"]["decoder"]["outputs"]}
    assert graphs["past_kv"]["shape"][1:] == [8, 2, 2, 16] and graphs["new_kv"]["shape"][1:] == [8, 2, 2, 16]
    torch_be, ort_be = TorchBackend(tiny_dir), OrtBackend(trt_bundle)
    rng = np.random.default_rng(1)
    st, so = torch_be.new_state(), ort_be.new_state()
    buffer = so.arena.handle
    x = rng.standard_normal((37, 64)).astype(np.float32)
    for _ in range(4):
        torch_be.step(x, st), ort_be.step(x, so)
        x = rng.standard_normal((1, 64)).astype(np.float32)
    assert so.arena.handle is buffer and so.length == 40
    rows = ort_be.arena_rows(so)  # (K, N, 2, H_kv, Dh)
    for layer in range(8):
        keys, values = st.cache.layers[layer].keys[0].numpy(), st.cache.layers[layer].values[0].numpy()  # (H_kv, K, Dh)
        np.testing.assert_allclose(rows[:, layer, 0], keys.transpose(1, 0, 2), atol=5e-5, rtol=0)
        np.testing.assert_allclose(rows[:, layer, 1], values.transpose(1, 0, 2), atol=5e-5, rtol=0)
    del so
    again = ort_be.new_state()  # the released arena goes to the next sequence
    assert again.arena.handle is buffer and ort_be.pool.allocated == 1 and again.arena.uses == 2


def test_a_context_beyond_the_arena_is_refused_before_running(trt_bundle):
    import dataclasses

    be = OrtBackend(trt_bundle)
    be.kv = dataclasses.replace(be.kv, max_context=64)
    state = be.new_state()
    be.step(np.zeros((60, 64), np.float32), state)
    with pytest.raises(ValueError, match="needs 65 cache positions but the bundle's KV cache holds 64.*--max-context"):
        be.step(np.zeros((5, 64), np.float32), state)
    assert state.length == 60


def test_the_float16_arena_keeps_the_selection(trt_bundle_fp16, tiny_dir, sample_video, tmp_path):
    """fp16 cache tolerance: selected-token overlap >= 0.95 per clip; captions compared and counted."""
    assert load_manifest(trt_bundle_fp16).kv_cache["dtype"] == "float16"
    run = _stream(tiny_dir, trt_bundle_fp16, tmp_path, sample_video)
    ref, same, overlap = run.ref, run.same_captions, run.overlap
    print(f"fp16 arena: {same}/{len(ref)} captions identical, selection overlap {overlap}")
    assert min(overlap) >= 0.95 and same >= len(ref) / 2
