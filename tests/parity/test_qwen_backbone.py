"""Parity of the torch reference backend on Qwen2.5-VL with transformers' unmodified Qwen2_5_VLForConditionalGeneration,
on two tiny random-weight shapes (tiny-qwen: 4 heads on 4 KV heads, a square 4x4 grid; tiny-qwen-gqa: 6 heads on 2 KV
heads, untied lm_head, a 6x4 grid), in fp32:

- a first clip (no FIFO): the greedy caption equals transformers' own generate() on input_ids with the video placeholder
  expanded, pixel_values_videos, video_grid_thw and second_per_grid_ts (its own vision tower, placement and M-RoPE
  positions);
- a clip with FIFO tokens in front (their M-RoPE positions are rlivs' choice, so transformers is fed the same
  embeddings and positions): the greedy caption equals a direct step-by-step forward of the transformers model with
  eager attention; the probe scores are within SCORE_TOL of the scores computed from its output_attentions; the
  selections are identical.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: E402
from transformers.cache_utils import DynamicCache  # noqa: E402

from rlivs.runtime.backbones import FifoClip  # noqa: E402
from rlivs.runtime.backends.torch.backbones import qwen_patches  # noqa: E402
from rlivs.runtime.backends.torch.hf_compat import cache_kwargs  # noqa: E402
from rlivs.runtime.config import SelectionConfig  # noqa: E402
from rlivs.runtime.engine import load_engine  # noqa: E402
from rlivs.runtime.errors import UserError  # noqa: E402
from tests.helpers.configs import small_config  # noqa: E402
from tests.helpers.parity import eager_probe, engine_and_eager, random_frames, run_stream  # noqa: E402

SCORE_TOL = 1e-5  # summed probe attention over <= 13 steps, fp32: SDPA + reduced probe rows vs eager probabilities
FPS = 2.0  # second_per_grid = 1 s: temporal ids advance 2 per temporal patch (tokens_per_second = 2)
TOKENS = 12
SHAPES = ("tiny-qwen", "tiny-qwen-gqa")


@pytest.fixture(scope="module", params=SHAPES)
def qwen(request):
    return engine_and_eager(request.param, Qwen2_5_VLForConditionalGeneration, frames=4, tokens=TOKENS, fps=FPS)


_frames = random_frames


def _hf_inputs(engine, pixels, n_visual):
    """What Qwen's processor hands the model for one video: ids with the placeholder expanded, flattened patches."""
    vc = engine.backend.model.config.vision_config
    flat, grid = qwen_patches(torch.from_numpy(pixels), vc.patch_size, vc.temporal_patch_size, vc.spatial_merge_size)
    vid = engine.backend.info.video_token_id
    ids = np.concatenate([engine.text.caption_prompt(engine.config.caption.prompt).prefix, np.full(n_visual, vid),
                          engine.text.caption_prompt(engine.config.caption.prompt).suffix])
    ids = torch.from_numpy(ids)[None]
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_videos=flat,
                video_grid_thw=torch.tensor([grid]), second_per_grid_ts=torch.tensor([vc.temporal_patch_size / FPS]),
                mm_token_type_ids=(ids == vid).int() * 2)


def test_first_clip_caption_equals_transformers_generate(qwen):
    engine, eager = qwen
    frames = _frames(1)
    out = engine.caption_clip(frames, np.zeros((0, engine.backend.info.hidden_size), np.float32), 0)
    inputs = _hf_inputs(engine, engine.preprocess(frames), out.visual.shape[0] * out.visual.shape[1])
    eager.model.rope_deltas = None
    with torch.no_grad():
        pos, _ = eager.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                            video_grid_thw=inputs["video_grid_thw"],
                                            second_per_grid_ts=inputs["second_per_grid_ts"])
        ref = eager.generate(**inputs, max_new_tokens=TOKENS, do_sample=False)
    np.testing.assert_array_equal(out.positions, pos[:, 0].numpy())  # the same M-RoPE ids as transformers'
    ref_ids = [int(t) for t in ref[0, inputs["input_ids"].shape[1]:] if int(t) not in engine.text.eos_ids]
    assert out.caption_ids == ref_ids[:len(out.caption_ids)] and len(out.caption_ids) == len(ref_ids)
    assert len(out.caption_ids) > 3  # a real comparison, not two empty captions


def _eager_greedy(model, context, positions, layers, columns, n):
    """Step-by-step greedy with the unmodified model (eager attention): ids and probe scores over `columns`."""
    cache, ids, scores = DynamicCache(config=model.config.text_config), [], 0.0
    x, pos = torch.from_numpy(context)[None], torch.from_numpy(positions)[:, None]  # (1, S, D), (3, 1, S)
    delta = int(positions.max()) + 1 - context.shape[0]
    eos = set(model.generation_config.eos_token_id)
    with torch.no_grad():
        for _ in range(n):
            r = model.model.language_model(inputs_embeds=x, position_ids=pos, **cache_kwargs(cache), use_cache=True,
                                           output_attentions=True)
            scores = scores + eager_probe(r.attentions, layers)[-1, columns].astype(np.float64)
            tok = int(model.lm_head(r.last_hidden_state[:, -1]).argmax())
            if tok in eos:
                break
            ids.append(tok)
            k = cache.get_seq_length()
            x = model.model.language_model.embed_tokens(torch.tensor([[tok]]))
            pos = torch.full((3, 1, 1), k + delta)
    return ids, scores


def test_fifo_clip_equals_direct_forward_scores_and_selection(qwen):
    engine, eager = qwen
    d = engine.backend.info.hidden_size
    first = engine.caption_clip(_frames(2), np.zeros((0, d), np.float32), 0)
    fifo = first.selection.tokens
    clips = [FifoClip(0, len(fifo), first.selection.indices)]
    out = engine.caption_clip(_frames(3), fifo, 1, fifo_clips=clips)
    context, columns = engine.caption_context(fifo, out.visual.reshape(-1, d))
    # FIFO tokens kept their own clip's (t, h, w): exactly the ids they had in clip 0's context
    a = len(engine.caption_prefix)
    np.testing.assert_array_equal(out.positions[:, a:a + len(fifo)], first.positions[:, a + first.selection.indices])
    ids, scores = _eager_greedy(eager, context, out.positions, engine.backend.info.probe_layers, columns, TOKENS)
    assert out.caption_ids == ids[:TOKENS] and len(ids) > 3
    np.testing.assert_allclose(out.scores, scores, atol=SCORE_TOL, rtol=0)
    want = engine.strategy(out.visual, scores.astype(np.float32), len(out.selection.indices), None)
    np.testing.assert_array_equal(out.selection.indices, want.indices)


def test_sequential_fifo_positions_run_and_differ(qwen):
    engine, _ = qwen
    d = engine.backend.info.hidden_size
    first = engine.caption_clip(_frames(2), np.zeros((0, d), np.float32), 0)
    clips = [FifoClip(0, len(first.selection.tokens), first.selection.indices)]
    orig = engine.caption_positions(first.selection.tokens, first.visual, 1, clips)
    engine.config.fifo.positions = "sequential"
    try:
        seq = engine.caption_positions(first.selection.tokens, first.visual, 1, clips)
    finally:
        engine.config.fifo.positions = "original"
    a, n = len(engine.caption_prefix), len(first.selection.tokens)
    np.testing.assert_array_equal(seq[:, a:a + n], np.broadcast_to(np.arange(a, a + n), (3, n)))  # text-like
    assert not np.array_equal(orig, seq)


def test_odd_frames_per_clip_refused_with_the_fix():
    with pytest.raises(UserError, match="must be even, got 5; use --frames-per-clip 6"):
        load_engine("tiny-qwen", small_config(5, TOKENS))


def test_keep_fraction_applies_to_merged_tokens(qwen):
    engine, _ = qwen
    info = engine.backend.info
    merged = 2 * info.grid[0] * info.grid[1]  # 4 frames = 2 temporal patches of rows x cols merged tokens
    out = engine.caption_clip(_frames(4), np.zeros((0, info.hidden_size), np.float32), 0)
    assert out.visual.shape == (2, info.tokens_per_frame, info.hidden_size)
    assert len(out.selection.indices) == round(engine.config.selection.keep_ratio * merged)
    with pytest.raises(UserError, match=f"a full clip has only {merged} visual tokens"):
        engine.config.selection.__class__(keep=merged + 1).validate(
            engine.backbone.clip_tokens(4, info.tokens_per_frame))


def test_short_last_clip_repeats_its_last_frame(qwen):
    engine, _ = qwen
    frames = _frames(5, n=3)
    odd = engine.backend.encode_frames(engine.preprocess(frames))
    padded = engine.backend.encode_frames(engine.preprocess(np.concatenate([frames, frames[-1:]])))
    assert odd.shape[0] == 2
    np.testing.assert_allclose(odd, padded, atol=0)


def test_stream_ingest_keeps_fifo_indices(tmp_path, sample_video):
    engine = load_engine("tiny-qwen", small_config(4, 6, fps=FPS, selection=SelectionConfig(keep_ratio=0.125)))
    results, fifo = run_stream(engine, tmp_path / "m.db", sample_video, max_clips=3,
                               after=lambda e, mem, ing: ing.fifo.clips())
    assert [r.index for r in results] == [0, 1, 2] and all(r.caption for r in results)
    assert [c.index for c in fifo] == [1, 2]  # --fifo-clips 2
    for c, r in zip(fifo, results[1:]):
        np.testing.assert_array_equal(c.kept, r.kept)
    # a resumed stream reads the FIFO clips' token indices back from the memory
    more, resumed = run_stream(engine, tmp_path / "m.db", sample_video, max_clips=1,
                               after=lambda e, mem, ing: ing.fifo.clips())
    assert [r.index for r in more] == [3] and [c.index for c in resumed] == [2, 3]
    np.testing.assert_array_equal(resumed[0].kept, results[2].kept)
    np.testing.assert_array_equal(resumed[1].kept, more[0].kept)


def test_real_3b_shapes_on_the_meta_device():
    """Qwen2.5-VL-3B's config (tiny_qwen.qwen_3b_config), built on the meta device (no weights, no memory): the
    shapes rlivs derives from it. 16 frames at 448 px: 8 temporal patches of 32x32 patches (1176 values each, as
    Qwen's processor emits), merged to 16x16 = 256 tokens each, 2048 per clip, of which the default ratio keeps 128."""
    from rlivs.runtime.backbones import backbone_for_config
    from rlivs.runtime.backends.torch.backbones import Qwen25VLTorch
    from rlivs.runtime.backends.torch.tiny_qwen import qwen_3b_config

    config, _ = qwen_3b_config()
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    backbone = backbone_for_config(config.to_dict())
    assert Qwen25VLTorch(backbone).info_fields(model, None) == dict(
        tokens_per_frame=256, image_size=(448, 448), video_token_id=151656, grid=(16, 16), temporal_patch=2)
    flat, grid = qwen_patches(torch.zeros(16, 3, 448, 448, device="meta"), 14, 2, 2)
    assert tuple(flat.shape) == (8 * 32 * 32, 1176) and grid == [8, 32, 32]
    assert backbone.clip_tokens(16, 256) == 2048 and SelectionConfig().n_keep(2048) == 128
    lm = model.model.language_model
    assert len(lm.layers) == 36 and lm.layers[0].self_attn.num_key_value_groups == 8  # 16 heads on 2 KV heads


def test_patch_layout_equals_the_qwen_image_processor():
    """qwen_patches on a still frame (the frame twice: one temporal patch) equals transformers' Qwen2-VL PIL image
    processor's patchify (which repeats a still image over the temporal patch): same patch order, same values."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    img = np.random.default_rng(6).standard_normal((3, 168, 112)).astype(np.float32)  # (C, H, W) model pixels
    want, gh, gw = Qwen2VLImageProcessorPil().patchify(img, patch_size=14, merge_size=2, temporal_patch_size=2)
    got, grid = qwen_patches(torch.from_numpy(np.stack([img, img])), 14, 2, 2)
    assert grid == [1, gh, gw] == [1, 12, 8]
    np.testing.assert_array_equal(got.numpy(), want)


def test_caption_clips_on_mrope_equals_each_clip_alone(qwen):
    """Engine.caption_clips (the batched clip step) on an M-RoPE backbone: each clip's output is what caption_clip
    gives it alone, FIFO positions included (3-D positions step one sequence at a time)."""
    from rlivs.runtime.engine import ClipInput

    engine, _ = qwen
    d = engine.backend.info.hidden_size
    first = engine.caption_clip(_frames(2), np.zeros((0, d), np.float32), 0)
    fifo, where = first.selection.tokens, [FifoClip(0, len(first.selection.tokens), first.selection.indices)]
    clips = [ClipInput(_frames(4), np.zeros((0, d), np.float32), 0), ClipInput(_frames(5), fifo, 1, fifo_clips=where)]
    got = engine.caption_clips(clips)
    alone = [engine.caption_clip(_frames(4), np.zeros((0, d), np.float32), 0),
             engine.caption_clip(_frames(5), fifo, 1, fifo_clips=where)]
    for g, a in zip(got, alone):
        assert g.caption_ids == a.caption_ids
        np.testing.assert_array_equal(g.positions, a.positions)
        np.testing.assert_allclose(g.scores, a.scores, atol=SCORE_TOL, rtol=0)
        np.testing.assert_array_equal(g.selection.indices, a.selection.indices)
