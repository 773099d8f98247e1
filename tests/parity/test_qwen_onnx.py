"""Qwen2.5-VL exported to ONNX and run on ONNX Runtime: parity with the torch reference backend, which
tests/parity/test_qwen_backbone.py pins to transformers' Qwen2_5_VLForConditionalGeneration (its generate(), its
M-RoPE ids, its eager attention). fp32, tiny random weights:

- the vision graph (window attention at the bundle's fixed grid, patch flattening in the graph) equals the reference's
  encode, odd frame counts included; the fixed-grid layout is also checked on a grid whose windows do not tile it;
- the decoder takes (3, L) M-RoPE position ids and returns only the probe layers' reduced last row;
- a stream with a FIFO ("original" M-RoPE positions of FIFO tokens, and "sequential"): identical captions and
  selections, scores within SCORE_TOL, identical positions;
- a bundle of a backbone this rlivs does not run is refused by name.

tiny-qwen (4 heads on 4 KV heads, 4x4 grid) runs in the default tier; tiny-qwen-gqa (6 heads on 2 KV heads, untied
lm_head, 6x4 grid) exports a second bundle and is marked slow.
"""

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from rlivs.runtime.backends.bundle import load_manifest  # noqa: E402
from rlivs.runtime.backends.onnxruntime import OrtBackend  # noqa: E402
from rlivs.runtime.backends.torch import TorchBackend  # noqa: E402
from rlivs.runtime.backends.torch.tiny import ensure_random_model  # noqa: E402
from rlivs.runtime.engine import load_engine  # noqa: E402
from rlivs.runtime.errors import UserError  # noqa: E402
from tests.helpers.configs import QWEN_FPS as FPS, qwen_config  # noqa: E402
from tests.helpers.parity import stream_parity, step_parity  # noqa: E402

LOGITS_TOL, ATTN_TOL, VISION_TOL = 1e-4, 1e-5, 1e-4  # as LLaVA-OV's bundle (tests/parity/test_onnx.py)
SCORE_TOL = 1e-5  # summed probe attention over a caption's steps


def export_qwen(tmp_path_factory, size: str, **config):
    from rlivs.export.bundle import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp(size) / size
    export_bundle(size, out, ExportConfig(**config))
    return out


@pytest.fixture(scope="module")
def qwen_bundle(tmp_path_factory):
    return export_qwen(tmp_path_factory, "tiny-qwen")


def check_bundle(bundle, size: str, sample_video, tmp_path):
    """Everything a Qwen2.5-VL bundle must equal: graphs' I/O, vision, decoder steps with M-RoPE ids, a stream."""
    import onnx

    model_dir = ensure_random_model(size)
    ref, be = TorchBackend(model_dir), OrtBackend(bundle)
    m = load_manifest(bundle).to_dict()
    info = ref.info
    assert (m["backbone"], m["grid"], m["temporal_patch"]) == ("qwen2_5_vl", list(info.grid), 2)
    assert be.info == info.__class__(**{**info.__dict__, "model_id": size})  # the manifest restates the model
    dec = {v["name"]: v for v in m["graphs"]["decoder"]["inputs"] + m["graphs"]["decoder"]["outputs"]}
    assert dec["position_ids"]["shape"] == [3, "seq"] and dec["probe_attn"]["shape"] == [1, "past + seq"]
    vis = m["graphs"]["vision"]
    h, w = info.image_size
    assert vis["inputs"][0]["shape"] == ["2*groups", 3, h, w]
    assert vis["outputs"][0]["shape"] == ["groups", info.tokens_per_frame, info.hidden_size]
    check = m["export_check"]
    assert check["vision"] < VISION_TOL and check["logits"] < LOGITS_TOL and check["probe_attn"] < ATTN_TOL
    # only the probe layers' reduced last row leaves the decoder: one Softmax per layer + one per probe layer's row
    ops = [n.op_type for n in onnx.load(str(bundle / "decoder.onnx"), load_external_data=False).graph.node]
    assert ops.count("Softmax") == info.num_layers + len(info.probe_layers)

    rng = np.random.default_rng(0)
    for n_frames in (4, 3):  # 3: the short last group repeats its last frame, as the reference
        pixels = rng.uniform(-1, 1, (n_frames, 3, h, w)).astype(np.float32)
        got, want = be.encode_frames(pixels), ref.encode_frames(pixels)
        assert got.shape == want.shape == (2, info.tokens_per_frame, info.hidden_size)
        np.testing.assert_allclose(got, want, atol=VISION_TOL, rtol=0)
    # a context with M-RoPE ids past a prefill chunk (130 > 128 positions), then decode steps after their maximum
    text = ref.embed_tokens(np.arange(3, 9))
    clip = np.concatenate([want.reshape(-1, info.hidden_size)] * 4)  # 4 "clips" of the same two groups
    ctx = np.concatenate([text, clip, text])
    pos = ref.backbone.positions(6, [], 3, 8, info.grid, 6, fps=FPS, frames_per_clip=4)  # (3, S)
    assert pos.shape == (3, len(ctx)) and len(ctx) > be.prefill_chunk
    run = step_parity(ref, be, ctx, steps=4, logits_atol=LOGITS_TOL, probe_atol=ATTN_TOL, argmax=True, positions=pos)
    assert run.state.rope_delta == run.ref_state.rope_delta == int(pos.max()) + 1 - len(ctx)

    # a stream: FIFO tokens in front of every clip after the first, positioned both ways
    for mode in ("original", "sequential"):
        engines = [load_engine(str(where), qwen_config(mode)) for where in (model_dir, bundle)]
        assert [e.backend.name for e in engines] == ["torch", "onnxruntime"]
        run = stream_parity(*engines, tmp_path, sample_video, max_clips=3, dbs=(f"ref-{mode}.db", f"got-{mode}.db"))
        assert len(run.ref) == 3 and run.ref[2].fifo_tokens > 0 and run.ref[1].context_tokens > run.ref[0].context_tokens
        assert run.captions_equal and all(r.caption for r in run.ref)
        assert run.kept_equal
        for a, b in zip(run.got, run.ref):
            np.testing.assert_allclose(a.scores, b.scores, atol=SCORE_TOL, rtol=0)


def test_tiny_qwen_bundle_equals_the_reference(qwen_bundle, sample_video, tmp_path):
    check_bundle(qwen_bundle, "tiny-qwen", sample_video, tmp_path)


@pytest.mark.slow
def test_tiny_qwen_gqa_bundle_equals_the_reference(tmp_path_factory, sample_video, tmp_path):
    bundle = export_qwen(tmp_path_factory, "tiny-qwen-gqa")
    check_bundle(bundle, "tiny-qwen-gqa", sample_video, tmp_path)


@pytest.mark.parametrize("size", ["tiny-qwen", "tiny-qwen-gqa"])
def test_vision_graph_on_a_grid_whose_windows_do_not_tile_it(size):
    """140 px: a 5x5 merged grid in windows of 2x2 merged tokens (uneven at the edges): the graph's masked form equals
    transformers' own forward (cu_seqlens chunks) at that grid. No export: the module the exporter traces."""
    from rlivs.export.qwen_vision import QwenVisionGraph

    be = TorchBackend(ensure_random_model(size))
    graph = QwenVisionGraph(be, (140, 140)).eval()
    assert graph.window is None and len({n for _, n in graph.windows}) > 1
    pixels = torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, (2, 3, 140, 140)).astype(np.float32))
    with torch.no_grad():
        want = be.family.encode(be.model, pixels).numpy()
        np.testing.assert_allclose(graph(pixels).numpy(), want, atol=VISION_TOL, rtol=0)
    assert QwenVisionGraph(be).eval().window == 16  # the bundle's own grid: windows of 2x2 merged = 16 patches


def test_batch_export_is_refused_for_mrope(tmp_path):
    from rlivs.export.bundle import ExportConfig, export_bundle

    with pytest.raises(UserError, match="M-RoPE positions: export it without --batch"):
        export_bundle("tiny-qwen", tmp_path / "b", ExportConfig(batch=True))
    assert not (tmp_path / "b").exists()  # refused before anything was written


def test_a_bundle_of_an_unknown_backbone_is_refused_by_name(qwen_bundle, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(qwen_bundle, out)
    m = json.loads((out / "manifest.json").read_text())
    m["backbone"] = "gemma3_vl"
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="'gemma3_vl' model, a backbone this rlivs does not run.*Qwen2.5-VL"):
        load_manifest(out)
    with pytest.raises(UserError, match="backbone this rlivs does not run"):
        load_engine(str(out), qwen_config())
    del m["backbone"]  # a bundle from before the registry: LLaVA-OneVision's
    (out / "manifest.json").write_text(json.dumps(m))
    assert load_manifest(out).backbone_name() == "llava_onevision"


def test_vision_graph_at_the_real_3b_shape_on_the_meta_device():
    """Qwen2.5-VL-3B's vision config (32 blocks, window 112 px, full attention in blocks 7/15/23/31), no weights: at
    448 px one temporal patch is 32x32 patches in 16 windows of 8x8 (uniform: the batched form, no mask), and a
    16-frame clip gives 8 x 256 merged tokens of the decoder's width."""
    from types import SimpleNamespace

    from transformers import Qwen2_5_VLForConditionalGeneration

    from rlivs.export.qwen_vision import QwenVisionGraph, qwen_vision_layout
    from rlivs.runtime.backends.torch.tiny_qwen import qwen_3b_config

    config, size = qwen_3b_config()
    lay = qwen_vision_layout(config.vision_config, size)
    assert (lay["gh"], lay["gw"]) == (32, 32) and [n for _, n in lay["windows"]] == [64] * 16
    assert sorted(lay["order"].tolist()) == list(range(1024)) and sorted(lay["reverse"].tolist()) == list(range(256))
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    graph = QwenVisionGraph(SimpleNamespace(model=model, info=SimpleNamespace(image_size=size)))
    assert graph.window == 64 and graph.fullatt == {7, 15, 23, 31}
    assert tuple(graph(torch.zeros(16, 3, *size, device="meta")).shape) == (8, 256, 2048)
