"""Parity of the torch reference backend on Qwen3-VL with transformers' unmodified Qwen3VLForConditionalGeneration, on
two tiny random-weight shapes (tiny-qwen3: 4 heads on 4 KV heads, DeepStack into 2 layers, a square 4x4 grid;
tiny-qwen3-gqa: 6 heads on 2 KV heads, DeepStack into 3 layers, untied lm_head, a 6x4 grid), in fp32:

- the video prompt: the context's ids are what transformers' Qwen3VLProcessor writes for the clip (per temporal patch
  "<t seconds><|vision_start|>[pads]<|vision_end|>" inside the template's own pair), and its patch layout;
- a first clip (no FIFO): the greedy caption equals transformers' own generate() on those ids with
  pixel_values_videos and video_grid_thw (its own vision tower, DeepStack injection and interleaved M-RoPE
  positions); the positions equal its get_rope_index;
- a clip with FIFO tokens in front (their layout, positions and DeepStack features are rlivs' choice, so transformers
  is fed the same embeddings, positions and DeepStack features): the greedy caption equals a direct step-by-step
  forward of the transformers model with eager attention; the probe scores are within SCORE_TOL of the scores
  computed from its output_attentions; the selections are identical;
- the real 2B/4B/8B shapes on the meta device.
"""

from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from transformers import Qwen3VLForConditionalGeneration  # noqa: E402
from transformers.cache_utils import DynamicCache  # noqa: E402

from rlivs.runtime.backbones import FifoClip  # noqa: E402
from rlivs.runtime.backends.torch.backbones import qwen_patches  # noqa: E402
from rlivs.runtime.backends.torch.hf_compat import cache_kwargs  # noqa: E402
from rlivs.runtime.config import SelectionConfig  # noqa: E402
from rlivs.runtime.engine import load_engine  # noqa: E402
from tests.helpers.configs import small_config  # noqa: E402
from tests.helpers.parity import eager_probe, engine_and_eager, random_frames, run_stream  # noqa: E402

SCORE_TOL = 1e-5  # summed probe attention over <= 13 steps, fp32: SDPA + reduced probe rows vs eager probabilities
FPS = 2.0
TOKENS = 12
SHAPES = ("tiny-qwen3", "tiny-qwen3-gqa")


@pytest.fixture(scope="module", params=SHAPES)
def qwen3(request):
    return engine_and_eager(request.param, Qwen3VLForConditionalGeneration, frames=4, tokens=TOKENS, fps=FPS)


_frames = random_frames


def _processor_ids(engine, index: int, n_frames: int, groups: int) -> np.ndarray:
    """The ids transformers' Qwen3VLProcessor writes for a clip of the stream: the chat template rendered, its
    <|video_pad|> replaced by Qwen3VLProcessor.replace_video_token's text (frames numbered on the stream at FPS),
    tokenized. Called on a stand-in `self` (no video processor here: torchvision is not installed)."""
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    info = engine.backend.info
    stub = SimpleNamespace(video_processor=SimpleNamespace(merge_size=2, temporal_patch_size=2),
                           vision_start_token="<|vision_start|>", vision_end_token="<|vision_end|>",
                           video_token="<|video_pad|>")
    stub._calculate_timestamps = lambda idx, fps, m: Qwen3VLProcessor._calculate_timestamps(stub, idx, fps, m)
    first = index * engine.config.clip.frames_per_clip
    meta = SimpleNamespace(fps=FPS, frames_indices=list(range(first, first + n_frames)))
    grid = [groups, info.grid[0] * 2, info.grid[1] * 2]
    video = Qwen3VLProcessor.replace_video_token(stub, {"video_grid_thw": [torch.tensor(grid)],
                                                        "video_metadata": [meta]}, 0)
    text = engine.text.render([{"role": "user", "content": [{"type": "video"},
                                                            {"type": "text", "text": engine.config.caption.prompt}]}])
    return engine.text.encode(text.replace("<|video_pad|>", video, 1))


def _context_ids(engine, fifo_tokens, visual, index, fifo_clips, n_frames):
    """The engine's context as ids (every visual token as <|video_pad|>)."""
    info, c = engine.backend.info, engine.config
    segments, _ = engine.backbone.layout(
        len(engine.caption_prefix), engine._fifo_clips(fifo_tokens, fifo_clips), index, visual.shape[0], info.grid,
        len(engine.caption_suffix), fps=c.clip.fps, frames_per_clip=c.clip.frames_per_clip, n_frames=n_frames,
        encode=engine.text.encode, mode=c.fifo.positions)
    prompt = engine.text.caption_prompt(c.caption.prompt)
    mid = [np.concatenate([s.before, np.full(len(s.idx), info.video_token_id), s.after]) for s in segments]
    return np.concatenate([prompt.prefix, *mid, prompt.suffix]).astype(np.int64)


@pytest.mark.parametrize("n_frames,index", [(4, 0), (3, 5)])  # a short last clip repeats its last frame
def test_video_prompt_equals_the_qwen3_processor(qwen3, n_frames, index):
    engine, _ = qwen3
    d = engine.backend.info.hidden_size
    visual = np.zeros((2, engine.backend.info.tokens_per_frame, d), np.float32)
    got = _context_ids(engine, np.zeros((0, d), np.float32), visual, index, None, n_frames)
    want = _processor_ids(engine, index, n_frames, 2)
    np.testing.assert_array_equal(got, want)
    text = engine.text.tokenizer.decode(got.tolist(), skip_special_tokens=False)
    first = index * 4 / FPS
    assert f"<{first + 0.25:.1f} seconds><|vision_start|>" in text  # the mean of the block's two frames


def test_patch_layout_equals_the_qwen3_video_processor():
    """qwen_patches equals transformers' Qwen3VLVideoProcessor.patchify (16 px patches, temporal patch 2, 2x2 merge;
    an odd frame count repeats the last frame)."""
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    video = torch.from_numpy(np.random.default_rng(6).standard_normal((3, 3, 192, 128)).astype(np.float32))
    want, gt, gh, gw = Qwen3VLVideoProcessor.patchify(None, video[None].clone(), 16, 2, 2)
    got, grid = qwen_patches(video, 16, 2, 2)
    assert grid == [gt, gh, gw] == [2, 12, 8]
    np.testing.assert_array_equal(got.numpy(), want[0].numpy())


def test_first_clip_caption_equals_transformers_generate(qwen3):
    engine, eager = qwen3
    frames = _frames(1)
    d = engine.backend.info.hidden_size
    out = engine.caption_clip(frames, np.zeros((0, d), np.float32), 0)
    ids = torch.from_numpy(_processor_ids(engine, 0, 4, out.visual.shape[0]))[None]
    vc = eager.config.vision_config
    flat, grid = qwen_patches(torch.from_numpy(engine.preprocess(frames)), vc.patch_size, vc.temporal_patch_size,
                              vc.spatial_merge_size)
    vid = engine.backend.info.video_token_id
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_videos=flat,
                  video_grid_thw=torch.tensor([grid]), mm_token_type_ids=(ids == vid).int() * 2)
    eager.model.rope_deltas = None
    with torch.no_grad():
        pos, _ = eager.model.get_rope_index(ids, inputs["mm_token_type_ids"], video_grid_thw=inputs["video_grid_thw"])
        ref = eager.generate(**inputs, max_new_tokens=TOKENS, do_sample=False)
        feats = eager.model.get_video_features(pixel_values_videos=flat, video_grid_thw=inputs["video_grid_thw"])
    np.testing.assert_array_equal(out.positions, pos[:, 0].numpy())  # the same interleaved M-RoPE ids
    ref_ids = [int(t) for t in ref[0, ids.shape[1]:] if int(t) not in engine.text.eos_ids]
    assert out.caption_ids == ref_ids[:len(out.caption_ids)] and len(out.caption_ids) == len(ref_ids)
    assert len(out.caption_ids) > 3  # a real comparison, not two empty captions
    # the kept tokens' DeepStack features, carried for the FIFO, are the model's own (K maps, kept rows)
    deep = torch.stack([torch.cat(list(f)) for f in feats.deepstack_features]).numpy()  # (K, G*P, D)
    assert out.deepstack.shape == (len(vc.deepstack_visual_indexes), len(out.selection.indices), d)
    np.testing.assert_allclose(out.deepstack, deep[:, out.selection.indices], atol=1e-5, rtol=1e-5)  # eager vs SDPA ViT


def _eager_greedy(model, context, positions, deepstack, layers, columns, n):
    """Step-by-step greedy with the unmodified model (eager attention), DeepStack given at the prefill as
    Qwen3VLModel gives it: ids and probe scores over `columns`."""
    cache, ids, scores = DynamicCache(config=model.config.text_config), [], 0.0
    x, pos = torch.from_numpy(context)[None], torch.from_numpy(positions)[:, None]  # (1, S, D), (3, 1, S)
    rows, feats = deepstack
    mask = torch.zeros((1, len(context)), dtype=torch.bool)
    mask[0, torch.from_numpy(rows)] = True
    extra = dict(visual_pos_masks=mask, deepstack_visual_embeds=[torch.from_numpy(f) for f in feats])
    delta = int(positions.max()) + 1 - context.shape[0]
    eos = set(model.generation_config.eos_token_id)
    with torch.no_grad():
        for _ in range(n):
            r = model.model.language_model(inputs_embeds=x, position_ids=pos, **cache_kwargs(cache), use_cache=True,
                                           output_attentions=True, **extra)
            extra = {}
            scores = scores + eager_probe(r.attentions, layers)[-1, columns].astype(np.float64)
            tok = int(model.lm_head(r.last_hidden_state[:, -1]).argmax())
            if tok in eos:
                break
            ids.append(tok)
            k = cache.get_seq_length()
            x = model.model.language_model.embed_tokens(torch.tensor([[tok]]))
            pos = torch.full((3, 1, 1), k + delta)
    return ids, scores


def _fifo_step(engine, seed=2):
    d = engine.backend.info.hidden_size
    first = engine.caption_clip(_frames(seed), np.zeros((0, d), np.float32), 0)
    fifo = first.selection.tokens
    return first, fifo, [FifoClip(0, len(fifo), first.selection.indices, first.deepstack)]


def test_fifo_clip_equals_direct_forward_scores_and_selection(qwen3):
    engine, eager = qwen3
    first, fifo, clips = _fifo_step(engine)
    frames = _frames(3)
    out = engine.caption_clip(frames, fifo, 1, fifo_clips=clips)
    visual, deep = engine.backend.encode_video(engine.preprocess(frames))
    context, columns, positions, ds = engine.caption_layout(fifo, visual, 1, clips, 4, deep)
    np.testing.assert_array_equal(positions, out.positions)
    # the FIFO tokens are fed with their own DeepStack features, in context order before the clip's
    rows, feats = ds
    n = len(fifo)
    assert len(rows) == n + out.visual.shape[0] * out.visual.shape[1] and np.all(np.diff(rows) > 0)
    np.testing.assert_array_equal(feats[:, :n], first.deepstack)
    # "original": each FIFO token sits in a block of its own timestamp at its own (row, col): (s, s + r, s + c)
    info = engine.backend.info
    fifo_rows = rows[:n]
    r, c = np.divmod(first.selection.indices % (info.grid[0] * info.grid[1]), info.grid[1])
    t = positions[0, fifo_rows]
    np.testing.assert_array_equal(positions[1, fifo_rows] - t, r)
    np.testing.assert_array_equal(positions[2, fifo_rows] - t, c)
    ids, scores = _eager_greedy(eager, context, positions, ds, info.probe_layers, columns, TOKENS)
    assert out.caption_ids == ids[:TOKENS] and len(ids) > 3
    np.testing.assert_allclose(out.scores, scores, atol=SCORE_TOL, rtol=0)
    want = engine.strategy(out.visual, scores.astype(np.float32), len(out.selection.indices), None)
    np.testing.assert_array_equal(out.selection.indices, want.indices)


def test_fifo_deepstack_is_fed(qwen3):
    """The same FIFO without its DeepStack features (a FIFO restored from the memory) gives other scores: the
    features are in the computation, not carried for nothing."""
    engine, _ = qwen3
    first, fifo, clips = _fifo_step(engine)
    with_ds = engine.caption_clip(_frames(3), fifo, 1, fifo_clips=clips)
    bare = engine.caption_clip(_frames(3), fifo, 1, fifo_clips=[FifoClip(0, len(fifo), first.selection.indices)])
    np.testing.assert_array_equal(with_ds.positions, bare.positions)  # the same layout and positions
    assert np.abs(with_ds.scores - bare.scores).max() > 1e-4


def test_sequential_fifo_positions(qwen3):
    engine, _ = qwen3
    first, fifo, clips = _fifo_step(engine)
    visual = first.visual
    orig = engine.caption_layout(fifo, visual, 1, clips, 4)
    engine.config.fifo.positions = "sequential"
    try:
        seq = engine.caption_layout(fifo, visual, 1, clips, 4)
    finally:
        engine.config.fifo.positions = "original"
    a, n = len(engine.caption_prefix), len(fifo)
    # a bare run right after the prefix: text-like positions, no timestamps around it
    np.testing.assert_array_equal(seq[2][:, a:a + n], np.broadcast_to(np.arange(a, a + n), (3, n)))
    np.testing.assert_array_equal(seq[0][a:a + n], fifo)
    assert len(orig[0]) > len(seq[0])  # "original" adds each FIFO block's timestamp and markers


def test_stream_ingest_carries_deepstack_in_the_fifo(tmp_path, sample_video):
    engine = load_engine("tiny-qwen3", small_config(4, 6, fps=FPS, selection=SelectionConfig(keep_ratio=0.125)))
    results, fifo = run_stream(engine, tmp_path / "m.db", sample_video, max_clips=3,
                               after=lambda e, mem, ing: ing.fifo.clips())
    assert [r.index for r in results] == [0, 1, 2] and all(r.caption for r in results)
    k, d = len(engine.backend.model.config.vision_config.deepstack_visual_indexes), engine.backend.info.hidden_size
    assert [c.index for c in fifo] == [1, 2]  # --fifo-clips 2: clip 0's features left with its tokens
    for c, r in zip(fifo, results[1:]):
        np.testing.assert_array_equal(c.kept, r.kept)
        assert c.deepstack.shape == (k, c.n, d)  # K maps per kept token: (1 + K) x the FIFO's token memory
    # a resumed stream has the tokens and indices back from the memory, but no DeepStack features (not stored)
    _, resumed = run_stream(engine, tmp_path / "m.db", sample_video, max_clips=1,
                            after=lambda e, mem, ing: ing.fifo.clips())
    assert resumed[0].index == 2 and resumed[0].deepstack is None and resumed[1].deepstack is not None


@pytest.mark.parametrize("size,grid_tokens", [("2b", 256), ("4b", 256), ("8b", 256)])
def test_real_shapes_on_the_meta_device(size, grid_tokens):
    """Qwen3-VL-2B/4B/8B's configs (tiny_qwen.qwen3_real_config) built on the meta device (no weights): 16 frames at
    512 px are 8 temporal patches of 32x32 16-px patches (1536 values each), merged to 16x16 = 256 tokens, 2048 per
    clip (128 kept by default); DeepStack: 3 maps of the decoder's width into layers 0-2."""
    from rlivs.runtime.backbones import backbone_for_config
    from rlivs.runtime.backends.torch.backbones import Qwen3VLTorch
    from rlivs.runtime.backends.torch.tiny_qwen import QWEN3_SHAPES, qwen3_real_config

    config, _ = qwen3_real_config(size)
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(config)
    backbone = backbone_for_config(config.to_dict())
    assert backbone.name == "qwen3_vl"
    assert Qwen3VLTorch(backbone).info_fields(model, None) == dict(
        tokens_per_frame=grid_tokens, image_size=(512, 512), video_token_id=151656, grid=(16, 16), temporal_patch=2)
    flat, grid = qwen_patches(torch.zeros(16, 3, 512, 512, device="meta"), 16, 2, 2)
    assert tuple(flat.shape) == (8 * 32 * 32, 1536) and grid == [8, 32, 32]
    assert backbone.clip_tokens(16, 256) == 2048 and SelectionConfig().n_keep(2048) == 128
    _, (hidden, _, layers, heads, kv), _ = QWEN3_SHAPES[size]
    lm, vis = model.model.language_model, model.model.visual
    assert len(lm.layers) == layers and lm.layers[0].self_attn.num_key_value_groups == heads // kv
    assert len(vis.deepstack_merger_list) == 3 and all(m.linear_fc2.out_features == hidden
                                                      for m in vis.deepstack_merger_list)
    assert model.model.language_model.rotary_emb.mrope_section == [24, 20, 20]
