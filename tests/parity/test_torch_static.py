"""The torch backend's static KV cache (the CUDA fast path's cache, run here on CPU without the CUDA graph)
against the dynamic-cache reference on the tiny model.

Tolerances (float32, CPU): prefill logits and probe rows come from the same computation over the same keys
(atol 1e-6); a decode step attends over all max_context positions with a mask instead of over the real K keys,
so SDPA sums in another order: probe rows atol 1e-6 (they are probabilities), logits atol 1e-4, argmax equal,
greedy captions identical, caption scores atol 1e-6 per step.
"""

import gc

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from transformers.models.qwen2 import modeling_qwen2  # noqa: E402

from rlivs.runtime.backends.torch import TorchBackend  # noqa: E402
from rlivs.runtime.backends.torch.static import StaticState  # noqa: E402
from rlivs.runtime.config import PipelineConfig  # noqa: E402
from rlivs.runtime.frames import FramePreprocessor  # noqa: E402
from rlivs.runtime.generate import greedy  # noqa: E402
from rlivs.runtime.answer import answer  # noqa: E402
from rlivs.runtime.engine import Engine  # noqa: E402
from rlivs.runtime.text import TextCodec  # noqa: E402
from tests.helpers.configs import small_config  # noqa: E402
from tests.helpers.parity import assert_steps_close, run_steps as _run, stream_parity  # noqa: E402
from tests.helpers.probe_helpers import all_layer_rows, spy_probe_rows  # noqa: E402

PROBE_TOL = 1e-6
LOGIT_TOL = 1e-4
MAX_CONTEXT = 1024  # > the 830-token context of a full tiny clip after a full FIFO, + 16 caption tokens


@pytest.fixture(scope="module")
def ref(tiny_dir):
    return TorchBackend(tiny_dir)


@pytest.fixture(scope="module")
def static(tiny_dir):
    be = TorchBackend(tiny_dir, cache="static", max_context=MAX_CONTEXT)
    assert be.cache == "static" and not be.cuda_graph
    return be


def _engine(tiny_dir, backend, config=None):
    return Engine(backend, TextCodec(tiny_dir), FramePreprocessor.from_model_dir(tiny_dir), config or PipelineConfig())


def _clip_context(engine, seed, fifo_tokens):
    """[prefix][FIFO (F, D)][16-frame clip (400, D)][newline][suffix] -> (S, D), clip columns."""
    rng = np.random.default_rng(seed)
    be = engine.backend
    vis = be.encode_frames(rng.uniform(-1, 1, (16, 3, *be.info.image_size)).astype(np.float32))
    fifo = rng.standard_normal((fifo_tokens, be.info.hidden_size)).astype(np.float32)  # FIFO-like prefix
    return engine.caption_context(fifo, vis.reshape(-1, be.info.hidden_size))


def _assert_same(got, want):
    assert_steps_close(got, want, logits_atol=LOGIT_TOL, probe_atol=PROBE_TOL, argmax=True)


def test_steps_equal_reference_prefill_decode_and_continuation(tiny_dir, ref, static):
    """Prefill after a FIFO-like long prefix (a 830-position context), decode steps with and without the probe, and a
    multi-token continuation on a non-empty state (the masked eager path)."""
    ctx, _ = _clip_context(_engine(tiny_dir, ref), seed=0, fifo_tokens=400)
    assert len(ctx) == 830
    emb = lambda *ids: ref.embed_tokens(np.array(ids))  # noqa: E731
    steps = [(ctx, 5)] + [(emb(t), 1) for t in (21, 22, 23, 24)] + [(emb(25, 26, 27), 2), (emb(28), 0), (emb(29), 1)]
    want, got = _run(ref, steps), _run(static, steps)
    _assert_same(got, want)
    np.testing.assert_allclose(got[0].logits, want[0].logits, atol=1e-6, rtol=0)  # same prefill computation
    assert got[0].probe_attn.shape == (5, 830) and got[-1].probe_attn.shape == (1, 830 + 9)


@pytest.mark.parametrize("seed, fifo_tokens", [(1, 0), (2, 400), (3, 200)])
def test_greedy_captions_and_scores_equal_reference(tiny_dir, ref, static, seed, fifo_tokens):
    e_ref, e_st = _engine(tiny_dir, ref), _engine(tiny_dir, static)
    ctx, cols = _clip_context(e_ref, seed, fifo_tokens)
    want = greedy(ref, ctx, 16, e_ref.text.eos_ids, cols)
    got = greedy(static, ctx, 16, e_st.text.eos_ids, cols)
    assert got.ids == want.ids
    assert len(want.ids) > 3  # a real comparison, not two empty captions
    np.testing.assert_allclose(got.scores, want.scores, atol=PROBE_TOL * got.steps, rtol=0)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_static_equals_half_precision_reference(tiny_dir, dtype):
    """What the GPU fast path must preserve in half precision, on CPU: the static cache vs the dynamic one in the
    same dtype. Captions identical on at least 2 of 3 clips (measured: 3 of 3), selected tokens (25 of 400) on
    the same caption overlap >= 0.96 (measured: 1.0). Against float32 both differ alike (see test_gpu.py)."""
    ref, static = TorchBackend(tiny_dir, dtype=dtype), TorchBackend(tiny_dir, dtype=dtype, cache="static",
                                                                      max_context=MAX_CONTEXT)
    e = _engine(tiny_dir, ref)
    top = lambda s: set(np.argsort(-s, kind="stable")[:25].tolist())  # noqa: E731
    same, overlaps = 0, []
    for seed, fifo in [(20, 0), (21, 200), (22, 400)]:
        ctx, cols = _clip_context(e, seed, fifo)
        want = greedy(ref, ctx, 12, e.text.eos_ids, cols)
        got = greedy(static, ctx, 12, e.text.eos_ids, cols)
        same += got.ids == want.ids
        fed = want.ids[:-1] if len(want.ids) >= 12 else want.ids  # the reference caption, fed back
        state = static.new_state()
        scores = static.step(ctx, state).probe_attn[0, cols].astype(np.float64)
        for tok in fed:
            scores += static.step(static.embed_tokens(np.array([tok])), state).probe_attn[0, cols]
        overlaps.append(len(top(scores) & top(want.scores)) / 25)
    assert same >= 2, f"identical captions on {same} of 3 clips"
    assert min(overlaps) >= 0.96, overlaps


def test_probe_row_is_a_distribution_over_real_keys_only(static, monkeypatch):
    """Masked positions (past the sequence, stale or zero) get probability exactly 0, and only the probe layers
    compute probabilities in the static path too."""
    calls = spy_probe_rows(monkeypatch)
    state = static.new_state()
    rng = np.random.default_rng(7)
    static.step(rng.standard_normal((40, 64)).astype(np.float32), state, probe_rows=1)
    assert calls == list(static.info.probe_layers)
    with torch.inference_mode():  # arenas are inference tensors
        state.arena.kv.kv[:, :, :, :, 40:].uniform_(-3, 3)  # stale contents past the sequence must not leak in
    calls.clear()
    out = static.step(static.embed_tokens(np.array([5])), state, probe_rows=0)
    assert calls == [] and out.probe_attn is None
    out = static.step(static.embed_tokens(np.array([6])), state, probe_rows=1)
    assert calls == list(static.info.probe_layers)
    assert out.probe_attn.shape == (1, 42)
    np.testing.assert_allclose(out.probe_attn.sum(), 1.0, atol=1e-5)
    summed = state.arena.probe  # (1, M): the in-place sum over probe layers
    assert torch.all(summed[:, 42:] == 0) and torch.all(summed[:, :42] > 0)


def test_foreign_recorders_on_every_layer_see_the_reference_rows(ref, static):
    """Calibration swaps its own recorder into every layer: the static path must feed them the same rows (a
    decode row spans all max_context positions, zero past K), and never through a graph captured without them."""
    x = np.random.default_rng(13).standard_normal((50, 64)).astype(np.float32)
    steps = [x] + [static.embed_tokens(np.array([t])) for t in (60, 61, 62)]
    for got, want in zip(all_layer_rows(static, steps), all_layer_rows(ref, steps)):
        np.testing.assert_allclose(got, want, atol=PROBE_TOL, rtol=0)
    assert static._probe_signature() == static._own_probes  # the backend's own probes are back


def test_static_path_never_runs_transformers_mask_creation(ref, static, monkeypatch):
    """Mask creation is data-dependent (not capture-safe); the static path passes its own 4-D masks."""
    calls = []
    real = modeling_qwen2.create_causal_mask

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(modeling_qwen2, "create_causal_mask", counting)
    x = np.random.default_rng(8).standard_normal((30, 64)).astype(np.float32)
    _run(ref, [(x, 1), (x[:1], 1)])
    assert calls, "the reference builds masks: the patch point is live"
    calls.clear()
    _run(static, [(x, 1), (x[:1], 1), (x[:3], 1)])
    assert calls == []


def test_context_longer_than_max_context_is_refused(tiny_dir):
    be = TorchBackend(tiny_dir, cache="static", max_context=64)
    x = np.random.default_rng(9).standard_normal((60, 64)).astype(np.float32)
    state = be.new_state()
    be.step(x, state)
    for tok in range(4):
        be.step(be.embed_tokens(np.array([tok])), state)
    assert state.length == 64
    with pytest.raises(ValueError, match=r"needs 65 cache positions .* max_context=64: raise --max-context"):
        be.step(be.embed_tokens(np.array([4])), state)
    assert state.length == 64  # refused before anything was written
    with pytest.raises(ValueError, match="--max-context to at least 70"):
        be.step(np.zeros((70, 64), np.float32), be.new_state())


def test_two_live_states_do_not_clobber_each_other(tiny_dir, ref, static):
    """A question answered while a clip's caption is in progress: two arenas, interleaved steps."""
    e = _engine(tiny_dir, ref)
    ctx_a, _ = _clip_context(e, seed=10, fifo_tokens=100)
    ctx_b = np.random.default_rng(11).standard_normal((57, 64)).astype(np.float32)
    toks = [(31, 41), (32, 42), (33, 43)]
    want_a = _run(ref, [(ctx_a, 1)] + [(ref.embed_tokens(np.array([a])), 1) for a, _ in toks])
    want_b = _run(ref, [(ctx_b, 0)] + [(ref.embed_tokens(np.array([b])), 0) for _, b in toks])
    before = static._pool.allocated
    sa, sb = static.new_state(), static.new_state()
    got_a, got_b = [static.step(ctx_a, sa, 1)], [static.step(ctx_b, sb, 0)]
    assert sa.arena is not None and sb.arena is not None and sa.arena is not sb.arena
    for a, b in toks:
        got_a.append(static.step(static.embed_tokens(np.array([a])), sa, 1))
        got_b.append(static.step(static.embed_tokens(np.array([b])), sb, 0))
    _assert_same(got_a, want_a)
    _assert_same(got_b, want_b)
    assert static._pool.allocated - before <= 2


def test_released_arena_is_reused_and_stale_contents_do_not_matter(tiny_dir, ref):
    be = TorchBackend(tiny_dir, cache="static", max_context=256)
    state = be.new_state()
    assert state.arena is None and be._pool.allocated == 0  # taken at the first step (under the model's lock)
    x = np.random.default_rng(12).standard_normal((90, 64)).astype(np.float32)
    steps = [(x, 1)] + [(be.embed_tokens(np.array([t])), 1) for t in (50, 51, 52)]
    for s_x, r in steps:
        be.step(s_x, state, probe_rows=r)
    arena = state.arena
    del state
    gc.collect()
    assert be._pool.idle == [arena]
    with torch.inference_mode():  # arenas are inference tensors
        arena.kv.kv.uniform_(-5, 5)  # worse than stale: every position holds finite garbage
        arena.probe.fill_(7.0)
    state = be.new_state()
    got = [be.step(s_x, state, probe_rows=r) for s_x, r in steps[:1] + steps[2:]]
    assert state.arena is arena and arena.uses == 2 and be._pool.allocated == 1  # reused, not reallocated
    want = _run(ref, steps[:1] + steps[2:])
    _assert_same(got, want)
    other = be.new_state()  # the arena is taken: a second live state gets a new one
    be.step(x[:3], other)
    assert other.arena is not arena and be._pool.allocated == 2


def test_pipeline_on_static_cache_equals_reference(tiny_dir, sample_video, tmp_path):
    """Captions, kept tokens and an answer through StreamIngestor/answer (FIFO recurrence) on both caches."""
    ref_e, st_e = (_engine(tiny_dir, be, small_config(fps=1.0)) for be in (
        TorchBackend(tiny_dir), TorchBackend(tiny_dir, cache="static", max_context=1024)))
    run = stream_parity(ref_e, st_e, tmp_path, sample_video, max_clips=3,  # clip 2 sees a full FIFO
                        after=lambda engine, mem, ing: answer(engine, mem, "what moved left?").text)
    ref_res, st_res, (ref_ans, st_ans) = run.ref, run.got, run.extra
    assert len(ref_res) == 3 and ref_res[2].context_tokens > ref_res[1].context_tokens > ref_res[0].context_tokens
    assert [r.caption for r in st_res] == [r.caption for r in ref_res]
    for a, b in zip(st_res, ref_res):
        np.testing.assert_array_equal(a.kept, b.kept)
    assert st_ans == ref_ans and ref_ans


def test_options_are_checked(tiny_dir, ref):
    with pytest.raises(ValueError, match="cache 'paged' is not a torch backend KV cache"):
        TorchBackend(tiny_dir, cache="paged")
    with pytest.raises(ValueError, match="max_context must be a positive"):
        TorchBackend(tiny_dir, cache="static", max_context=0)
    with pytest.raises(ValueError, match="CUDA graphs replay the static-cache decode step"):
        TorchBackend(tiny_dir, cache="static", cuda_graph=True)  # on CPU
    assert ref.cache == "dynamic" and not ref.cuda_graph  # the CPU default is the reference, unchanged
    static = TorchBackend(tiny_dir, cache="static", max_context=32)
    assert isinstance(static.new_state(), StaticState)
    with pytest.raises(ValueError, match="static KV cache: pass a state from its own new_state"):
        static.step(np.zeros((2, 64), np.float32), ref.new_state())


def test_static_cache_is_a_transformers_cache_and_takes_any_update_arguments():
    """StaticKV is built on transformers' public cache classes (Cache of CacheLayerMixin layers), and its update takes
    whatever extra arguments a transformers release passes along (5.23: none; 5.24: kwargs=...; older: a dict)."""
    from transformers.cache_utils import Cache, CacheLayerMixin

    from rlivs.runtime.backends.torch.static import StaticKV

    kv = StaticKV(n_layers=2, kv_heads=2, head_dim=4, max_context=8, dtype=torch.float32, device=torch.device("cpu"))
    assert isinstance(kv, Cache) and all(isinstance(layer, CacheLayerMixin) for layer in kv.layers)
    k = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4)  # (1, H_kv, L=3, Dh)
    v = -k
    kv.write_at, kv.read_len = torch.tensor([2, 3, 4]), 5
    for call in ({}, {"kwargs": {"position_ids": None}}, {"cache_kwargs": {"sin": None}}):
        keys, values = kv.update(k, v, 1, **call)
        assert keys.shape == (1, 2, 5, 4) and torch.equal(keys[:, :, 2:5], k) and torch.equal(values[:, :, 2:5], v)
    keys, _ = kv.update(k, v, 1, {"positional": "dict"})
    assert keys.shape == (1, 2, 5, 4)
    assert kv.layers[1].get_mask_sizes(3) == (5, 0) and kv.layers[1].get_max_length() == 8
    assert torch.count_nonzero(kv.kv[0]) == 0  # layer 0 untouched: each layer writes its own view of the arena
    kv.write_at, kv.read_len = torch.tensor([5]), None  # decode: every position, at fixed addresses
    keys, _ = kv.update(k[:, :, :1], v[:, :, :1], 0)
    assert keys.shape == (1, 2, 8, 4) and keys.data_ptr() == kv.kv[0, 0].data_ptr()
