"""Parity of the torch reference backend with transformers' unmodified LLaVA-OneVision."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from transformers import LlavaOnevisionForConditionalGeneration  # noqa: E402

from rlivs.runtime.backends.torch import TorchBackend  # noqa: E402
from rlivs.runtime.backends.torch.hf_compat import cache_kwargs, output_cache  # noqa: E402
from rlivs.runtime.config import PipelineConfig, ProbeConfig  # noqa: E402
from rlivs.runtime.frames import FramePreprocessor  # noqa: E402
from rlivs.runtime.generate import greedy  # noqa: E402
from rlivs.runtime.engine import Engine  # noqa: E402
from rlivs.runtime.text import TextCodec  # noqa: E402
from tests.helpers.parity import eager_caption_scores, eager_probe, hf_greedy_ids  # noqa: E402
from tests.helpers.probe_helpers import spy_probe_rows  # noqa: E402

ATTN_TOL = 1e-5


@pytest.fixture(scope="module")
def backend(tiny_dir):
    return TorchBackend(tiny_dir)


@pytest.fixture(scope="module")
def eager(tiny_dir):
    return LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_dir, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def sdpa(tiny_dir):
    return LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_dir, attn_implementation="sdpa").eval()


def _context(backend, n_frames=3, seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.uniform(-1, 1, (n_frames, 3, *backend.info.image_size)).astype(np.float32)
    vis = backend.encode_frames(pixels).reshape(-1, backend.info.hidden_size)
    text = backend.embed_tokens(np.arange(10, 17))
    return np.concatenate([text[:4], vis, backend.embed_tokens(np.array([9])), text[4:]])  # (S, D)


def test_probe_layers_default_spread_and_explicit():
    assert ProbeConfig().resolve(24) == (5, 9, 14, 18)
    assert ProbeConfig().resolve(28) == (5, 11, 16, 22)
    assert ProbeConfig(layers=(4, 8, 13, 19)).resolve(28) == (4, 8, 13, 19)
    with pytest.raises(ValueError, match="not valid for a 8-layer decoder"):
        ProbeConfig(layers=(9,)).resolve(8)


def test_probe_attention_equals_eager_at_prefill_and_decode(backend, eager):
    ctx = _context(backend)
    state = backend.new_state()
    rows = 5
    out = backend.step(ctx, state, probe_rows=rows)
    with torch.no_grad():
        ref = eager.model.language_model(inputs_embeds=torch.from_numpy(ctx)[None], output_attentions=True, use_cache=True)
    want = eager_probe(ref.attentions, backend.info.probe_layers)[-rows:]  # (R, K)
    assert out.probe_attn.shape == (rows, len(ctx))
    np.testing.assert_allclose(out.probe_attn, want, atol=ATTN_TOL, rtol=0)
    np.testing.assert_allclose(out.probe_attn.sum(-1), 1.0, atol=1e-5)  # rows are distributions
    assert np.all(out.probe_attn[:-1, -1] == 0)  # causal: an earlier row never sees the last key
    cache = output_cache(ref)
    for tok in (21, 22, 23):  # decode steps: one query row over all keys so far
        emb = backend.embed_tokens(np.array([tok]))
        out = backend.step(emb, state)
        with torch.no_grad():
            ref = eager.model.language_model(inputs_embeds=torch.from_numpy(emb)[None], **cache_kwargs(cache),
                                             output_attentions=True, use_cache=True)
        cache = output_cache(ref)
        assert out.probe_attn.shape == (1, state.length)
        np.testing.assert_allclose(out.probe_attn, eager_probe(ref.attentions, backend.info.probe_layers),
                                   atol=ATTN_TOL, rtol=0)


def test_logits_equal_unmodified_model_with_and_without_cache(backend, sdpa):
    ctx = _context(backend, seed=1)
    state = backend.new_state()
    steps = [backend.step(ctx, state)]
    fed = [ctx]
    for tok in (30, 31):
        emb = backend.embed_tokens(np.array([tok]))
        steps.append(backend.step(emb, state))
        fed.append(emb)
    # the unmodified model, step by step with its own cache: the same computation, so (near) bit-equal
    lm, cache = sdpa.model.language_model, None
    with torch.no_grad():
        for out, x in zip(steps, fed):
            r = lm(inputs_embeds=torch.from_numpy(x)[None], **cache_kwargs(cache), use_cache=True)
            cache = output_cache(r)
            np.testing.assert_allclose(out.logits, sdpa.lm_head(r.last_hidden_state[:, -1])[0].numpy(), atol=1e-6, rtol=0)
        # and one pass without a cache over everything: equal up to fp32 summation order
        full = torch.from_numpy(np.concatenate(fed))[None]  # (1, S+2, D)
        logits = sdpa.lm_head(lm(inputs_embeds=full).last_hidden_state)[0].numpy()
    for k, out in enumerate(steps):
        np.testing.assert_allclose(out.logits, logits[len(ctx) - 1 + k], atol=1e-4, rtol=0)


def test_only_probe_layers_compute_probabilities(backend, monkeypatch):
    calls = spy_probe_rows(monkeypatch)
    state = backend.new_state()
    backend.step(_context(backend), state, probe_rows=1)
    assert calls == list(backend.info.probe_layers)
    calls.clear()
    out = backend.step(backend.embed_tokens(np.array([5])), state, probe_rows=0)
    assert calls == [] and out.probe_attn is None


def test_encode_frames_shape_and_pooling(backend, sdpa):
    pixels = np.random.default_rng(2).uniform(-1, 1, (2, 3, *backend.info.image_size)).astype(np.float32)
    vis = backend.encode_frames(pixels)
    assert vis.shape == (2, backend.info.tokens_per_frame, backend.info.hidden_size)
    assert backend.info.tokens_per_frame == 25  # 126 px / 14 = 9x9 patches, 2x2 pooled with ceil = 5x5
    with torch.no_grad():
        want = sdpa.model.get_video_features(pixel_values_videos=torch.from_numpy(pixels)[None]).pooler_output[0]
    np.testing.assert_allclose(vis.reshape(-1, vis.shape[-1]), want[:-1].numpy(), atol=1e-6)
    np.testing.assert_allclose(backend.image_newline(), want[-1].numpy(), atol=0)


def _engine(tiny_dir, backend):
    return Engine(backend, TextCodec(tiny_dir), FramePreprocessor.from_model_dir(tiny_dir), PipelineConfig())


def test_greedy_caption_equals_hf_generate(tiny_dir, backend, sdpa):
    """First clip (empty FIFO): input_ids with the video placeholder expanded, as the HF processor does."""
    engine = _engine(tiny_dir, backend)
    frames = np.random.default_rng(3).integers(0, 256, (4, 90, 120, 3), dtype=np.uint8)
    ref_ids = hf_greedy_ids(sdpa, engine, 24, frames=frames)
    vis = backend.encode_frames(engine.preprocess(frames)).reshape(-1, backend.info.hidden_size)
    ctx, cols = engine.caption_context(np.zeros((0, backend.info.hidden_size), np.float32), vis)
    gen = greedy(backend, ctx, 24, engine.text.eos_ids, cols)
    assert gen.ids == ref_ids
    assert len(gen.ids) > 3  # a real comparison, not two empty captions


def test_greedy_with_fifo_prefix_equals_hf_generate_on_embeddings(tiny_dir, backend, sdpa):
    engine = _engine(tiny_dir, backend)
    rng = np.random.default_rng(4)
    vis = backend.encode_frames(rng.uniform(-1, 1, (2, 3, *backend.info.image_size)).astype(np.float32))
    fifo = rng.standard_normal((12, backend.info.hidden_size)).astype(np.float32)
    ctx, cols = engine.caption_context(fifo, vis.reshape(-1, vis.shape[-1]))
    assert cols.start == len(engine.caption_prefix) + len(fifo) and cols.stop - cols.start == vis.shape[0] * vis.shape[1]
    assert greedy(backend, ctx, 16, engine.text.eos_ids, cols).ids == hf_greedy_ids(sdpa, engine, 16, embeds=ctx)


def test_caption_scores_equal_eager_attention_summed_over_rows(tiny_dir, backend, eager):
    """Scores = sum over (last prompt token + each fed caption token) of the probe attention to the clip columns."""
    engine = _engine(tiny_dir, backend)
    vis = backend.encode_frames(np.random.default_rng(5).uniform(-1, 1, (2, 3, *backend.info.image_size)).astype(np.float32))
    ctx, cols = engine.caption_context(np.zeros((0, backend.info.hidden_size), np.float32), vis.reshape(-1, vis.shape[-1]))
    gen = greedy(backend, ctx, 6, engine.text.eos_ids, cols)
    want = eager_caption_scores(eager, backend, ctx, cols, gen.ids, 6)  # rows: last prompt token + fed caption tokens
    assert gen.steps == (5 if len(gen.ids) == 6 else len(gen.ids)) + 1  # the final token is never fed back
    np.testing.assert_allclose(gen.scores, want, atol=ATTN_TOL * gen.steps, rtol=0)


def test_bad_dtype_and_device_are_clear(tiny_dir):
    with pytest.raises(ValueError, match="dtype 'int8' is not supported"):
        TorchBackend(tiny_dir, dtype="int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            TorchBackend(tiny_dir, device="cuda")
