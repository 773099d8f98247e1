"""Qwen3-VL exported to ONNX and run on ONNX Runtime: parity with the torch reference backend, which
tests/parity/test_qwen3_backbone.py pins to transformers' Qwen3VLForConditionalGeneration (its generate(), its
interleaved M-RoPE ids, its DeepStack injection, its eager attention). fp32, tiny random weights:

- the vision graph (full attention per temporal patch, the learned position table resampled at the bundle's fixed
  grid) returns the visual tokens and the DeepStack features of the reference's encode_video, odd frame counts and
  several vision runs per clip included;
- the decoder takes (3, L) M-RoPE ids, the visual rows and their (K, n, D) DeepStack features (added after layers
  0..K-1 in the graph, split across prefill chunks by the backend), and returns only the probe layers' reduced
  last row;
- a stream with a FIFO (whose tokens are fed again with their own DeepStack features), "original" and "sequential"
  positions: identical captions and selections, scores within SCORE_TOL, identical FIFO features;
- features given to a decoder without DeepStack inputs are refused, not dropped.
(The TensorRT-target graphs, through the CPU emulator: tests/parity/test_qwen3_tensorrt.py.)

tiny-qwen3 (4 heads on 4 KV heads, DeepStack into 2 layers) runs in the default tier; tiny-qwen3-gqa (6 heads on 2 KV
heads, DeepStack into 3 layers, untied lm_head, a 6x4 grid) exports a second bundle and is marked slow.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from rlivs.export.graph import SCOPE_KEY  # noqa: E402
from rlivs.runtime.backends.bundle import load_manifest  # noqa: E402
from rlivs.runtime.backends.onnxruntime import OrtBackend  # noqa: E402
from rlivs.runtime.backends.torch import TorchBackend  # noqa: E402
from rlivs.runtime.backends.torch.tiny import ensure_random_model  # noqa: E402
from rlivs.runtime.engine import load_engine  # noqa: E402
from rlivs.runtime.errors import UserError  # noqa: E402
from tests.helpers.configs import qwen_config  # noqa: E402
from tests.helpers.parity import stream_parity, step_parity  # noqa: E402
from tests.parity.test_qwen_onnx import ATTN_TOL, LOGITS_TOL, SCORE_TOL, VISION_TOL, export_qwen  # noqa: E402


@pytest.fixture(scope="module")
def qwen3_bundle(tmp_path_factory):
    return export_qwen(tmp_path_factory, "tiny-qwen3")


def check_bundle(bundle, size: str, sample_video, tmp_path):
    """Everything a Qwen3-VL bundle must equal: graphs' I/O, vision + DeepStack, decoder steps with injected
    features across prefill chunks, a stream whose FIFO carries its features."""
    import onnx

    model_dir = ensure_random_model(size)
    ref, be = TorchBackend(model_dir), OrtBackend(bundle)
    info = ref.info
    k = len(ref.model.config.vision_config.deepstack_visual_indexes)
    m = load_manifest(bundle).to_dict()
    assert (m["backbone"], m["grid"], m["temporal_patch"]) == ("qwen3_vl", list(info.grid), 2)
    assert be.info == info.__class__(**{**info.__dict__, "model_id": size})
    vis = {v["name"]: v["shape"] for v in m["graphs"]["vision"]["outputs"]}
    assert vis == {"visual_tokens": ["groups", info.tokens_per_frame, info.hidden_size],
                   "deepstack": [k, "groups", info.tokens_per_frame, info.hidden_size]}
    dec = {v["name"]: v["shape"] for v in m["graphs"]["decoder"]["inputs"] + m["graphs"]["decoder"]["outputs"]}
    assert dec["position_ids"] == [3, "seq"] and dec["probe_attn"] == [1, "past + seq"]
    assert dec["visual_rows"] == ["visual"] and dec["deepstack"] == [k, "visual", info.hidden_size]
    check = m["export_check"]
    assert check["vision"] < VISION_TOL and check["deepstack"] < VISION_TOL
    assert check["logits"] < LOGITS_TOL and check["probe_attn"] < ATTN_TOL
    nodes = onnx.load(str(bundle / "decoder.onnx"), load_external_data=False).graph.node
    assert [n.op_type for n in nodes].count("Softmax") == info.num_layers + len(info.probe_layers)
    scopes = [next(p.value for p in n.metadata_props if p.key == SCOPE_KEY) for n in nodes if n.op_type == "ScatterND"]
    assert sum("index_put" in s for s in scopes) == k  # one injection per DeepStack layer (the rest: interleaved rope)
    assert all("index_put" in s or "lm.rotary_emb" in s for s in scopes)

    # vision: tokens and features; 3 frames (the last group repeats its last frame); one group per run (joined)
    rng = np.random.default_rng(0)
    h, w = info.image_size
    one_group = OrtBackend(bundle, vision_chunk=1)
    for n_frames in (4, 3):
        pixels = rng.uniform(-1, 1, (n_frames, 3, h, w)).astype(np.float32)
        want, want_ds = ref.encode_video(pixels)
        for backend in (be, one_group):
            got, got_ds = backend.encode_video(pixels)
            assert got.shape == want.shape == (2, info.tokens_per_frame, info.hidden_size)
            assert got_ds.shape == want_ds.shape == (k, *want.shape)
            np.testing.assert_allclose(got, want, atol=VISION_TOL, rtol=0)
            np.testing.assert_allclose(got_ds, want_ds, atol=VISION_TOL, rtol=0)
        np.testing.assert_array_equal(be.encode_frames(pixels), got)
    # decoder: text, 4 "clips" of visual rows past a prefill chunk (130 > 128 positions: the rows are split between
    # chunks), text; then decode steps with no features. Synthetic (3, S) ids with three distinct axes.
    d = info.hidden_size
    text = ref.embed_tokens(np.arange(3, 9))
    clip = np.concatenate([want.reshape(-1, d)] * 4)
    ctx = np.concatenate([text, clip, text])
    rows = np.arange(len(text), len(text) + len(clip))
    feats = np.concatenate([want_ds.reshape(k, -1, d)] * 4, axis=1)  # (K, n, D)
    a = np.arange(len(ctx), dtype=np.int64)
    pos = np.stack([a, a + a % 3, a + a % 5])
    assert len(ctx) > be.prefill_chunk and rows[0] < be.prefill_chunk < rows[-1]
    run = step_parity(ref, be, ctx, steps=4, logits_atol=LOGITS_TOL, probe_atol=ATTN_TOL, argmax=True, positions=pos,
                      deepstack=(rows, feats))
    assert run.state.rope_delta == run.ref_state.rope_delta
    bare = be.step(ctx, be.new_state(), positions=pos)  # the same prefill without features: they are in the graph
    fed = be.step(ctx, be.new_state(), positions=pos, deepstack=(rows, feats))
    assert np.abs(bare.logits - fed.logits).max() > 1e-3
    with pytest.raises(UserError, match="must be"):
        be.step(ctx, be.new_state(), positions=pos, deepstack=(rows, feats[:, 1:]))

    # a stream: FIFO tokens (and their features) in front of every clip after the first, positioned both ways
    for mode in ("original", "sequential"):
        engines = [load_engine(str(where), qwen_config(mode)) for where in (model_dir, bundle)]
        assert [e.backend.name for e in engines] == ["torch", "onnxruntime"]
        run = stream_parity(*engines, tmp_path, sample_video, max_clips=3, dbs=(f"ref-{mode}.db", f"got-{mode}.db"),
                            after=lambda e, mem, ing: ing.fifo.clips())
        assert len(run.ref) == 3 and run.ref[2].fifo_tokens > 0
        assert run.captions_equal and all(r.caption for r in run.ref)
        assert run.kept_equal
        for x, y in zip(run.got, run.ref):
            np.testing.assert_allclose(x.scores, y.scores, atol=SCORE_TOL, rtol=0)
        ref_fifo, got_fifo = run.extra
        assert [c.index for c in got_fifo] == [c.index for c in ref_fifo] == [1, 2]
        for x, y in zip(got_fifo, ref_fifo):  # the features the next clip would be fed
            assert x.deepstack.shape == (k, x.n, d)
            np.testing.assert_allclose(x.deepstack, y.deepstack, atol=VISION_TOL, rtol=0)


def test_tiny_qwen3_bundle_equals_the_reference(qwen3_bundle, sample_video, tmp_path):
    check_bundle(qwen3_bundle, "tiny-qwen3", sample_video, tmp_path)


@pytest.mark.slow
def test_tiny_qwen3_gqa_bundle_equals_the_reference(tmp_path_factory, sample_video, tmp_path):
    bundle = export_qwen(tmp_path_factory, "tiny-qwen3-gqa")
    check_bundle(bundle, "tiny-qwen3-gqa", sample_video, tmp_path)


def test_a_decoder_without_deepstack_inputs_refuses_features(qwen3_bundle):
    """Features given to a bundle whose decoder takes none are refused, not dropped (here: a Qwen3-VL bundle with its
    DeepStack inputs removed from the backend's view stands in for one without them)."""
    be = OrtBackend(qwen3_bundle)
    be.deepstack_maps = 0
    d = be.info.hidden_size
    with pytest.raises(UserError, match="takes no DeepStack features"):
        be.step(np.zeros((2, d), np.float32), be.new_state(), positions=np.zeros((3, 2), np.int64),
                deepstack=(np.array([0]), np.zeros((2, 1, d), np.float32)))


def test_vision_graph_at_the_real_2b_shape_on_the_meta_device():
    """Qwen3-VL-2B's vision config (24 blocks, DeepStack after 5/11/17, a 48x48 learned position table), no weights: at
    512 px one temporal patch is 32x32 patches attended together (one window: the batched form, no mask, no
    permutation), resampled positions of 4 taps each; a 16-frame clip gives 8 x 256 merged tokens of the decoder's
    width and 3 DeepStack maps of the same shape."""
    from types import SimpleNamespace

    from transformers import Qwen3VLForConditionalGeneration

    from rlivs.export.qwen_vision import QwenVisionGraph, qwen_vision_layout
    from rlivs.runtime.backends.torch.tiny_qwen import qwen3_real_config

    config, size = qwen3_real_config("2b")
    lay = qwen_vision_layout(config.vision_config, size)
    assert (lay["gh"], lay["gw"]) == (32, 32) and lay["windows"] == [(0, 1024)]
    assert lay["reverse"].tolist() == list(range(256)) and lay["interp"][0].shape == (1024, 4)
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(config)
    graph = QwenVisionGraph(SimpleNamespace(model=model, info=SimpleNamespace(image_size=size)))
    assert graph.window == 1024 and not graph.permuted and graph.deepstack == [5, 11, 17]
    tokens, deep = graph(torch.zeros(16, 3, *size, device="meta"))
    assert tuple(tokens.shape) == (8, 256, 2048) and tuple(deep.shape) == (3, 8, 256, 2048)
