"""Batched steps (issue 26, item 3): several sequences stepped together give each sequence what it gets alone.

Per sequence: the greedy caption identical, the clip scores within 1e-5, the same selection, on two model shapes
(`tiny`, and `tiny-gqa`: 7 query heads per KV head, untied output layer), through the torch reference and ONNX
Runtime; clips with different FIFO sizes (different context lengths, so the batch pads) and captions that end at
different steps (the batch shrinks)."""

import numpy as np
import pytest

pytest.importorskip("torch")

from rlivs.runtime.engine import ClipInput, load_engine  # noqa: E402
from rlivs.runtime.generate import greedy, greedy_batch  # noqa: E402
from tests.helpers.configs import small_config  # noqa: E402

SCORE_TOL = 1e-5
CAPTION_TOKENS = 10
FIFO_SIZES = (0, 30, 75, 10)  # tokens of FIFO in front of each clip: four context lengths


@pytest.fixture(scope="module")
def gqa_dir():
    from rlivs.runtime.backends.torch.tiny import ensure_random_model

    return ensure_random_model("tiny-gqa")


def _clips(engine, sizes=FIFO_SIZES, seed=0) -> list[ClipInput]:
    rng = np.random.default_rng(seed)
    d = engine.backend.info.hidden_size
    return [ClipInput(rng.integers(0, 256, (4, 48, 64, 3), dtype=np.uint8),
                      (rng.standard_normal((f, d)) * 0.5).astype(np.float32), i) for i, f in enumerate(sizes)]


def _stop_early(engine, clips) -> None:
    """Add an end token that stops the captions at different steps: a token the first clip's caption emits at its
    3rd step (random weights rarely emit the real EOS)."""
    first = engine.caption_clip(clips[0].frames, clips[0].fifo_tokens, 0).caption_ids
    engine.text.eos_ids = frozenset(engine.text.eos_ids) | {first[2]}


def assert_same_clip_outputs(got, alone, same_tokens: bool = True) -> None:
    """Captions, steps, scores (within SCORE_TOL), selections; `same_tokens`: the selected tokens bit for bit too
    (False across backends: their vision towers differ in the last float32 bits)."""
    assert len(got) == len(alone)
    for g, a in zip(got, alone):
        assert g.caption_ids == a.caption_ids and g.caption == a.caption, f"clip {a.index}"
        assert g.steps == a.steps and g.context_tokens == a.context_tokens
        np.testing.assert_allclose(g.scores, a.scores, atol=SCORE_TOL, rtol=0, err_msg=f"clip {a.index}")
        np.testing.assert_array_equal(g.selection.indices, a.selection.indices)
        if same_tokens:
            np.testing.assert_array_equal(g.selection.tokens, a.selection.tokens)


def check_batched_clip_step(engine, batch_prefill=False) -> list[int]:
    clips = _clips(engine)
    _stop_early(engine, clips)
    alone = [engine.caption_clip(c.frames, c.fifo_tokens, c.index) for c in clips]
    got = engine.caption_clips(clips, batch_prefill=batch_prefill)
    assert_same_clip_outputs(got, alone)
    lengths = [len(a.caption_ids) for a in alone]
    assert len(set(lengths)) > 1, f"the captions should end at different steps: {lengths}"
    assert len({a.context_tokens for a in alone}) == len(clips)  # four context lengths: the batch pads
    return lengths


@pytest.mark.parametrize("shape", ["tiny", "tiny-gqa"])
@pytest.mark.parametrize("batch_prefill", [False, True], ids=["prefill-alone", "prefill-batched"])
def test_torch_batched_clip_step_equals_each_clip_alone(request, tiny_dir, shape, batch_prefill):
    model = tiny_dir if shape == "tiny" else request.getfixturevalue("gqa_dir")
    engine = load_engine(model, config=small_config(caption_tokens=CAPTION_TOKENS))
    check_batched_clip_step(engine, batch_prefill)


def test_torch_step_batch_probe_rows_cover_each_sequence_own_keys(tiny_dir):
    """A padded batched prefill (three contexts, three lengths), then decode steps: each sequence's logits and its
    probe row (1, K_i) equal the same sequence stepped alone; the padding and the other rows' holes never show."""
    be = load_engine(tiny_dir).backend
    rng = np.random.default_rng(3)
    ctxs = [rng.standard_normal((n, be.info.hidden_size)).astype(np.float32) for n in (7, 19, 2)]
    alone = [be.new_state() for _ in ctxs]
    batch = be.batch([be.new_state() for _ in ctxs])
    xs = ctxs
    for step in range(4):
        want = [be.step(x, s) for x, s in zip(xs, alone)]
        got = be.step_batch(xs, batch)
        assert batch.lengths == [s.length for s in alone]
        for g, w in zip(got, want):
            assert g.probe_attn.shape == w.probe_attn.shape  # (1, K_i): no padding columns
            np.testing.assert_allclose(g.logits, w.logits, atol=1e-5, rtol=0)
            np.testing.assert_allclose(g.probe_attn, w.probe_attn, atol=1e-6, rtol=0)
            assert abs(float(g.probe_attn.sum()) - 1.0) < 1e-5  # a distribution over the sequence's own keys
        xs = [be.embed_tokens(np.array([int(np.argmax(w.logits))])) for w in want]
        if step == 1:  # the middle sequence leaves: the other two go on unchanged
            batch.keep([0, 2])
            alone, xs = [alone[0], alone[2]], [xs[0], xs[2]]


def test_backends_without_batching_keep_the_contract(tiny_dir):
    """The base step_batch (sequence after sequence: here the torch static cache) gives the same generations."""
    from rlivs.runtime.backends.torch import TorchBackend

    be = TorchBackend(tiny_dir, cache="static", max_context=512)
    assert type(be.batch([be.new_state()])).__name__ == "BatchState"
    rng = np.random.default_rng(4)
    ctxs = [rng.standard_normal((n, be.info.hidden_size)).astype(np.float32) for n in (9, 4)]
    cols = [slice(1, 5), slice(0, 3)]
    got = greedy_batch(be, ctxs, 6, frozenset(), cols)
    for g, ctx, c in zip(got, ctxs, cols):
        want = greedy(be, ctx, 6, frozenset(), c)
        assert g.ids == want.ids and g.steps == want.steps
        np.testing.assert_allclose(g.scores, want.scores, atol=SCORE_TOL, rtol=0)


# ---- ONNX Runtime: the decoder exported with a dynamic batch axis ------------------------------------------------


def _batched_bundle(tmp_path_factory, model, name):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from rlivs.export.bundle import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp(f"batch-{name}") / name
    export_bundle(str(model), out, ExportConfig(batch=True, check=False))
    return out


@pytest.fixture(scope="module")
def batched_bundles(tmp_path_factory, tiny_dir, request):
    """name -> (model dir, its bundle with the batched decoder), exported on first use (~30 s of CPU each)."""
    made = {}

    def get(name):
        if name not in made:
            model = tiny_dir if name == "tiny" else request.getfixturevalue("gqa_dir")
            made[name] = (model, _batched_bundle(tmp_path_factory, model, name))
        return made[name]

    return get


def test_batched_decoder_graph_has_a_batch_axis_and_reduced_probe_rows_only(batched_bundles):
    """B is a dynamic axis of every decoder input and output; every layer's attention stays inside the graph (one
    Softmax per layer) and the probe layers add one Softmax each for their last row, whose reduction is the only
    attention that leaves the graph: probe_attn (B, K)."""
    import onnx

    from rlivs.runtime.backends.onnxruntime import load_manifest

    bundle = batched_bundles("tiny")[1]
    m = load_manifest(bundle).to_dict()
    assert m["kv_cache"]["batch"] is True
    dec = {v["name"]: v["shape"] for v in m["graphs"]["decoder"]["inputs"] + m["graphs"]["decoder"]["outputs"]}
    assert dec["inputs_embeds"] == ["batch", "seq", 64] and dec["position_ids"] == ["batch", "seq"]
    assert dec["past_keys"] == [8, "batch", 2, "past", 16] and dec["past_valid"] == ["batch", "past"]
    assert dec["new_valid"] == ["batch", "seq"] and dec["logits"] == ["batch", 512]
    assert dec["probe_attn"] == ["batch", "past + seq"] and dec["present_keys"] == [8, "batch", 2, "past + seq", 16]
    ops = [n.op_type for n in onnx.load(str(bundle / "decoder.onnx"), load_external_data=False).graph.node]
    assert ops.count("Softmax") == 8 + 4 and ops.count("Attention") == 0


# tiny already has grouped-query attention (2 query heads per KV head); tiny-gqa's export adds ~30 s: slow tier
@pytest.mark.parametrize("shape", ["tiny", pytest.param("tiny-gqa", marks=pytest.mark.slow)])
def test_onnxruntime_batched_clip_step_equals_each_clip_alone(batched_bundles, shape):
    """Through ONNX Runtime with the batched decoder: each clip's caption, scores and selection batched equal the
    clip alone (a B = 1 run), which equal the torch reference's; the batched prefill in several chunks too."""
    model, bundle = batched_bundles(shape)
    config = small_config(caption_tokens=CAPTION_TOKENS)
    engine, ref = load_engine(str(bundle), config=config), load_engine(model, config=config)
    assert engine.backend.name == "onnxruntime" and engine.backend.batched
    check_batched_clip_step(engine)
    ref.text.eos_ids = engine.text.eos_ids
    clips = _clips(engine)
    assert_same_clip_outputs([engine.caption_clip(c.frames, c.fifo_tokens, c.index) for c in clips],
                             [ref.caption_clip(c.frames, c.fifo_tokens, c.index) for c in clips], same_tokens=False)
    engine.backend.prefill_chunk = 40  # every context is longer: the padded prefill runs in chunks
    assert max(a.context_tokens for a in engine.caption_clips(clips)) > 2 * 40
    assert_same_clip_outputs(engine.caption_clips(clips, batch_prefill=True), engine.caption_clips(clips))


# ---- TensorRT: the same contract (slot-major batch arena, a batch range in both profiles), emulated on CPU ---------


@pytest.fixture(scope="module")
def trt_batched_bundle(tmp_path_factory, tiny_dir):
    """tiny exported for TensorRT with the batched decoder (float32 cache and table: exact comparisons)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from rlivs.export.bundle import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("trt-batch") / "tiny"
    export_bundle("tiny", out, ExportConfig(target="tensorrt", batch=True, embed_dtype="float32", kv_dtype="float32",
                                            check=False))
    return out


def test_tensorrt_profiles_carry_a_batch_range(trt_batched_bundle):
    """Both decoder profiles accept 1..max_batch sequences (a prefill optimised for one, a decode step for all); the
    slot-major cache's past_kv (S, B, ...) and the masks follow; the export check found every layer's attention
    fusable with the probe rows beside it."""
    from rlivs.export.tensorrt_build import EngineBuildConfig, profile_specs
    from rlivs.runtime.backends.bundle import load_manifest

    m = load_manifest(trt_batched_bundle)
    assert m.extra["tensorrt_check"]["decoder_attention"] == {"fusable": 8, "probe": 4, "other": 0}
    specs = profile_specs(m, EngineBuildConfig(max_batch=4, max_context=1024))
    prefill, decode = specs["decoder"]
    assert specs["max_batch"] == 4 and prefill["dims"]["batch"] == [1, 1, 4] and decode["dims"]["batch"] == [1, 4, 4]
    assert decode["shapes"]["past_kv"]["max"] == [1023, 4, 8, 2, 2, 16]
    assert decode["shapes"]["new_valid"] == {"min": [1, 1], "opt": [4, 1], "max": [4, 1]}
    assert prefill["shapes"]["inputs_embeds"]["max"] == [4, 1024, 64]


def test_tensorrt_backend_batched_steps_with_the_api_emulated(monkeypatch, trt_batched_bundle, tiny_dir):
    """The TensorRT backend's batched path (the batch buffer gathered and compacted by 2-D device copies, the masks
    and shapes bound per profile) gives each clip what it gets alone, and alone what the torch reference gives.
    TensorRT itself is emulated (tests/helpers/trt_emulator.py): engines, kernels and fp16 stay unproven here."""
    from rlivs.runtime.backends.tensorrt.backend import TrtBackend
    from rlivs.runtime.engine import Engine
    from rlivs.runtime.frames import FramePreprocessor
    from rlivs.runtime.text import TextCodec
    from tests.helpers import trt_emulator

    trt_emulator.install(monkeypatch, trt_batched_bundle)
    be = TrtBackend(trt_batched_bundle)
    assert be.batched and be.max_batch == 8
    config = small_config(caption_tokens=CAPTION_TOKENS)
    engine = Engine(be, TextCodec(trt_batched_bundle), FramePreprocessor.from_model_dir(trt_batched_bundle), config)
    check_batched_clip_step(engine)
    shapes = [s for _, s in be.decoder.context.log]
    assert any(s["past_kv"][1] == 4 for s in shapes) and any(s["past_kv"][1] == 1 for s in shapes)
    assert_same_clip_outputs(engine.caption_clips(_clips(engine), batch_prefill=True), engine.caption_clips(_clips(engine)))
    ref = load_engine(tiny_dir, config=config)
    ref.text.eos_ids = engine.text.eos_ids
    clips = _clips(engine)
    assert_same_clip_outputs([engine.caption_clip(c.frames, c.fifo_tokens, c.index) for c in clips],
                             [ref.caption_clip(c.frames, c.fifo_tokens, c.index) for c in clips], same_tokens=False)
