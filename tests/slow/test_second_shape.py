"""Parity on a model shape the other tests never build: `tiny-gqa` (7 query heads per KV head, an untied output layer,
a vocabulary padded past the tokenizer's, 112 px frames with an even patch grid and another vision width). The torch
backend against transformers itself, and the *default* ONNX Runtime bundle against the torch backend.

Slow (about a minute on 2 cores: the ONNX export alone takes ~30 s), so it lives here; the default tier proves the
default bundle's parity on `tiny` (tests/conftest.py's `bundle` is exported with the default ExportConfig)."""

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from transformers import LlavaOnevisionForConditionalGeneration  # noqa: E402

from rlivs.runtime.engine import load_engine  # noqa: E402
from rlivs.runtime.fifo import TokenFifo  # noqa: E402
from tests.helpers.configs import small_config  # noqa: E402
from tests.helpers.parity import eager_caption_scores, hf_greedy_ids, step_parity, stream_parity  # noqa: E402

CAPTION_TOKENS = 24
SCORE_TOL = 1e-5  # probe scores vs eager attention, per scored row (summed over rows: tolerance x rows)
LOGITS_TOL, PROBE_TOL = 1e-4, 1e-5  # ONNX Runtime vs torch, per step


def _config():
    return small_config(caption_tokens=CAPTION_TOKENS)  # 4 frames per clip, FIFO of 2 clips


@pytest.fixture(scope="module")
def gqa_dir():
    from rlivs.runtime.backends.torch.tiny import ensure_random_model

    return ensure_random_model("tiny-gqa")


@pytest.fixture(scope="module")
def engine(gqa_dir):
    return load_engine(gqa_dir, config=_config())


def test_the_shape_differs_from_tiny_where_it_matters(engine, tiny_dir):
    cfg, tiny = engine.backend.model.config, load_engine(tiny_dir).backend.model.config
    ratio = lambda c: c.text_config.num_attention_heads // c.text_config.num_key_value_heads  # noqa: E731
    assert (ratio(cfg), ratio(tiny)) == (7, 2)
    assert (cfg.text_config.tie_word_embeddings, tiny.text_config.tie_word_embeddings) == (False, True)
    n_tok = engine.text.tokenizer.get_vocab_size(with_added_tokens=True)
    assert engine.backend.info.vocab_size == 640 > n_tok and tiny.text_config.vocab_size == n_tok
    assert (cfg.vision_config.image_size, cfg.vision_config.hidden_size, engine.backend.info.tokens_per_frame) == (
        112, 48, 16)
    lm = engine.backend.model
    assert lm.lm_head.weight.data_ptr() != lm.get_input_embeddings().weight.data_ptr()  # untied


def test_torch_backend_equals_transformers_over_three_clips(engine, gqa_dir):
    """Three clips with the FIFO in front: greedy captions token for token equal to transformers' `generate` (the
    first clip end to end from pixels), probe scores equal to eager `output_attentions`, the same selections."""
    sdpa = LlavaOnevisionForConditionalGeneration.from_pretrained(gqa_dir, attn_implementation="sdpa").eval()
    eager = LlavaOnevisionForConditionalGeneration.from_pretrained(gqa_dir, attn_implementation="eager").eval()
    be, d = engine.backend, engine.backend.info.hidden_size
    fifo = TokenFifo(engine.config.fifo, d)
    rng = np.random.default_rng(7)
    worst = 0.0
    for i in range(3):
        frames = rng.integers(0, 256, (4, 90, 120, 3), dtype=np.uint8)
        out = engine.caption_clip(frames, fifo.tokens(), i)
        ctx, cols = engine.caption_context(fifo.tokens(), out.visual.reshape(-1, d))
        ref = hf_greedy_ids(sdpa, engine, CAPTION_TOKENS, frames=frames) if i == 0 else \
            hf_greedy_ids(sdpa, engine, CAPTION_TOKENS, embeds=ctx)
        assert out.caption_ids == ref, f"clip {i}"
        assert len(ref) > 3
        want = eager_caption_scores(eager, be, ctx, cols, out.caption_ids, CAPTION_TOKENS)
        worst = max(worst, float(np.abs(out.scores - want).max()))
        np.testing.assert_allclose(out.scores, want, atol=SCORE_TOL * out.steps, rtol=0)
        ref_sel = engine.strategy(out.visual, want.astype(np.float32), len(out.selection.tokens),
                                  np.random.default_rng([engine.config.selection.seed, i]))
        np.testing.assert_array_equal(out.selection.indices, ref_sel.indices)
        fifo.push(i, out.selection.tokens)
    print(f"\ntiny-gqa torch vs transformers: 3/3 captions identical, max |score - eager| {worst:.2e}, "
          f"selections identical")


@pytest.fixture(scope="module")
def default_bundle(gqa_dir, tmp_path_factory):
    pytest.importorskip("onnxscript")
    from rlivs.export.bundle import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("gqa") / "bundle"
    manifest = export_bundle(gqa_dir, out, ExportConfig())  # the default, as `rlivs export` makes it
    assert manifest.embeddings["dtype"] == "float32"
    return out


def test_default_bundle_equals_torch(engine, gqa_dir, default_bundle, sample_video, tmp_path):
    """The default bundle keeps the reference's results on this shape: identical greedy captions and selections over
    a 5-clip stream with the FIFO, logits and probe rows within tolerance step by step."""
    from rlivs.runtime.backends.onnxruntime import OrtBackend

    bundle_engine = load_engine(default_bundle, config=_config())
    run = stream_parity(engine, bundle_engine, tmp_path, sample_video)
    assert len(run.ref) == 5 and run.captions_equal and run.kept_equal
    ort = bundle_engine.backend
    assert isinstance(ort, OrtBackend)
    np.testing.assert_array_equal(ort.embed_tokens(np.arange(600)), engine.backend.embed_tokens(np.arange(600)))
    rng = np.random.default_rng(0)
    pixels = rng.uniform(-1, 1, (4, 3, 112, 112)).astype(np.float32)
    vt = engine.backend.encode_frames(pixels)
    np.testing.assert_allclose(ort.encode_frames(pixels), vt, atol=1e-4, rtol=0)
    ctx, _ = engine.caption_context(np.zeros((0, 112), np.float32), vt.reshape(-1, 112))
    p = step_parity(engine.backend, ort, ctx, steps=6, logits_atol=LOGITS_TOL, probe_atol=PROBE_TOL, argmax=True)
    print(f"\ntiny-gqa default bundle vs torch: 5/5 captions and selections identical; max |logits| diff "
          f"{p.worst['logits']:.2e} (scale {p.worst['logit_scale']:.1f}), max |probe| diff {p.worst['probe_attn']:.2e}")


def test_float16_table_is_measured(engine, default_bundle, sample_video, tmp_path):
    """What the float16 table (the TensorRT default) does on this shape, measured and printed for docs/export.md:
    its rounding is bounded by float16's half-ulp, and the stream is reported, not assumed, equal."""
    half = tmp_path / "half"
    shutil.copytree(default_bundle, half)
    table = np.load(default_bundle / "embeddings.npy")
    np.save(half / "embeddings.npy", table.astype(np.float16))
    run = stream_parity(engine, load_engine(half, config=_config()), tmp_path, sample_video)
    rel = float(np.abs(table.astype(np.float16).astype(np.float32) - table).max() / np.abs(table).max())
    assert rel <= 2.0 ** -11  # float16's relative rounding
    print(f"\ntiny-gqa float16 table: {run.same_captions}/5 captions identical, selection overlap "
          f"{min(run.overlap):.2f} (min over clips), table rounding {rel:.1e} relative")
