"""The engine: a model ready to caption and answer, and the method's clip step.

`Engine.caption_clip` is the one home of the rLiVS clip step: encode -> caption + score -> select. It is pure (no
I/O, no memory, no FIFO state of its own), so ingest, calibration, evaluation and benchmarks call it rather than
copy it. `Engine.caption_clips` is the same step for several clips at once (several cameras, each with its own
FIFO): the same phases (`_encode`, `caption_context`, `_select`), with the captions decoded as one batch
(`generate.greedy_batch`); each clip's output is what `caption_clip` gives for it alone. `StreamIngestor` (ingest.py) adds what a stream needs around it: the FIFO and the per-clip commit.

Shapes: T frames per clip, P tokens per frame, N_V = T*P clip tokens, F FIFO tokens, D LLM width,
A/B prompt ids before/after the video placeholder, S context tokens, N kept tokens.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backbones import Backbone, FifoClip, get_backbone
from .backends import Backend, load_backend
from .config import EngineConfig, PipelineConfig
from .errors import UserError
from .frames import FramePreprocessor
from .generate import greedy, greedy_batch
from .models import check_model_path, resolve_model
from .retrieval import text_vector
from .selection import Selection, get_strategy
from .text import TextCodec


@dataclass
class ClipOutput:
    """What the clip step produced for one clip; nothing has been stored."""

    index: int  # the clip's index in its stream
    caption: str  # decoded greedy caption
    caption_ids: list[int]  # (C,) its token ids, EOS excluded
    vector: np.ndarray  # (D,) retrieval vector of the caption
    visual: np.ndarray  # (T, P, D) the clip's visual tokens
    scores: np.ndarray | None  # (N_V,) probe attention summed over the caption's steps (None: no probe)
    selection: Selection  # (N, D) tokens for the FIFO and their (N,) flat indices
    context_tokens: int  # S: length of the captioning context
    steps: int  # decoder steps run (1 prefill + decode steps): the scored query rows
    timings: dict[str, float] = field(default_factory=dict)  # seconds: encode, prefill, decode, select
    positions: np.ndarray | None = None  # (3, S) M-RoPE ids of the context (None: 1-D, 0..S-1)
    deepstack: np.ndarray | None = None  # (K, N, D) the kept tokens' DeepStack features (Qwen3-VL; else None)


@dataclass
class ClipInput:
    """One clip for `Engine.caption_clips`: what `caption_clip` takes."""

    frames: np.ndarray  # (T, H, W, 3) uint8, or (T, 3, H', W') model pixels when `preprocessed`
    fifo_tokens: np.ndarray  # (F, D) this clip's stream's FIFO (F may differ between clips; 0 rows for a first clip)
    index: int  # the clip's index in its stream
    preprocessed: bool = False
    fifo_clips: list | None = None  # where the FIFO tokens came from (M-RoPE backbones; see caption_clip)


@dataclass
class Engine:
    """A model ready to caption and answer: backend + text codec + frame preprocessing + settings."""

    backend: Backend
    text: TextCodec
    preprocess: FramePreprocessor
    config: PipelineConfig = field(default_factory=PipelineConfig)

    def __post_init__(self):
        prompt = self.text.caption_prompt(self.config.caption.prompt)
        self.caption_prefix = self.backend.embed_tokens(prompt.prefix)  # (A, D)
        self.caption_suffix = self.backend.embed_tokens(prompt.suffix)  # (B, D)
        self.backbone = backbone_of(self.backend)
        self.backbone.check_frames(self.config.clip.frames_per_clip)  # Qwen-VL: whole temporal patches only
        d = self.backend.info.hidden_size
        self.newline = self.backend.image_newline()[None] if self.backbone.newline else np.zeros((0, d), np.float32)
        full_clip = self.backbone.clip_tokens(self.config.clip.frames_per_clip, self.backend.info.tokens_per_frame)
        self.config.selection.validate(full_clip)  # fails early on an impossible --keep
        self.strategy = get_strategy(self.config.selection.strategy)
        n_text = self.text.tokenizer.get_vocab_size(with_added_tokens=True)
        if n_text > self.backend.info.vocab_size:  # a tokenizer.json from another model: its ids overflow the table
            raise UserError(
                f"the tokenizer has {n_text} tokens but the model's embedding table has "
                f"{self.backend.info.vocab_size} rows: tokenizer.json is from another model; copy the model "
                f"directory (or bundle) whole, or re-export it"
            )

    @property
    def model_fingerprint(self) -> dict:
        """What a memory (and a calibration set) records of the model that wrote it: widths, tokenizer, model family."""
        tok = hashlib.sha256(self.text.tokenizer.to_str().encode()).hexdigest()[:16]
        return {**self.backend.info.fingerprint(), "tokenizer": tok, "backbone": self.backbone.name}

    def caption_context(self, fifo_tokens: np.ndarray, clip_tokens: np.ndarray) -> tuple[np.ndarray, slice]:
        """[prompt prefix][FIFO (F, D)][clip (N_V, D)][newline (LLaVA-OV)][prompt suffix] -> (S, D), clip columns."""
        start = len(self.caption_prefix) + len(fifo_tokens)
        ctx = np.concatenate([self.caption_prefix, fifo_tokens, clip_tokens, self.newline, self.caption_suffix])
        return ctx.astype(np.float32, copy=False), slice(start, start + len(clip_tokens))

    def vector(self, ids) -> np.ndarray:
        """(D,) retrieval vector of a token sequence."""
        return text_vector(self.backend.embed_tokens(np.asarray(ids, dtype=np.int64)))

    def caption_layout(self, fifo_tokens: np.ndarray, visual: np.ndarray, index: int,
                       fifo_clips: list[FifoClip] | None, n_frames: int | None = None,
                       deepstack: np.ndarray | None = None):
        """For a backbone with text between its token groups (Qwen3-VL, `Backbone.layout`): -> (context (S, D),
        visual columns (N_V,) int, positions (3, S), deepstack step argument or None). `deepstack`: the clip's
        (K, G, P, D) features; each FIFO clip brings its own (`FifoClip.deepstack`; zeros where it has none)."""
        c, info, d = self.config, self.backend.info, visual.shape[-1]
        fifo_clips = self._fifo_clips(fifo_tokens, fifo_clips)
        segments, positions = self.backbone.layout(
            len(self.caption_prefix), fifo_clips, index, visual.shape[0], info.grid, len(self.caption_suffix),
            fps=c.clip.fps, frames_per_clip=c.clip.frames_per_clip, encode=self.text.encode, mode=c.fifo.positions,
            n_frames=n_frames or visual.shape[0] * self.backbone.temporal_patch)
        clip = visual.reshape(-1, d)
        texts = np.concatenate([np.concatenate([s.before, s.after]) for s in segments] or [np.zeros(0, np.int64)])
        emb = self.backend.embed_tokens(texts.astype(np.int64)) if len(texts) else np.zeros((0, d), np.float32)
        parts, cols, fifo_cols, clip_cols, at, k = [self.caption_prefix], [], [], [], len(self.caption_prefix), 0
        for s in segments:
            a, b = len(s.before), len(s.after)
            tokens = (fifo_tokens if s.source == "fifo" else clip)[s.idx]
            parts += [emb[k:k + a], tokens, emb[k + a:k + a + b]]
            rows = np.arange(at + a, at + a + len(s.idx))
            (fifo_cols if s.source == "fifo" else clip_cols).append((rows, s.idx))
            at, k = at + a + len(s.idx) + b, k + a + b
        parts.append(self.caption_suffix)
        context = np.concatenate(parts).astype(np.float32, copy=False)
        columns = np.concatenate([r for r, _ in clip_cols]) if clip_cols else np.zeros(0, np.int64)
        ds = None
        if deepstack is not None:
            n_k = deepstack.shape[0]
            fifo_ds = np.zeros((n_k, len(fifo_tokens), d), np.float32)
            at = 0
            for f in fifo_clips:
                if f.deepstack is not None and f.deepstack.shape == (n_k, f.n, d):
                    fifo_ds[:, at:at + f.n] = f.deepstack
                at += f.n
            clip_ds = deepstack.reshape(n_k, -1, d)
            rows = [r for r, _ in fifo_cols + clip_cols]
            feats = [fifo_ds[:, i] for _, i in fifo_cols] + [clip_ds[:, i] for _, i in clip_cols]
            ds = (np.concatenate(rows), np.concatenate(feats, axis=1)) if rows else None
        return context, columns, positions, ds

    @staticmethod
    def _fifo_clips(fifo_tokens: np.ndarray, fifo_clips: list[FifoClip] | None) -> list[FifoClip]:
        if fifo_clips is None or sum(f.n for f in fifo_clips) != len(fifo_tokens):
            return [FifoClip(-1, len(fifo_tokens), None)] if len(fifo_tokens) else []
        return fifo_clips

    def caption_positions(self, fifo_tokens: np.ndarray, visual: np.ndarray, index: int,
                          fifo_clips: list[FifoClip] | None) -> np.ndarray | None:
        """(3, S) M-RoPE ids of the caption context, or None for a 1-D backbone. `fifo_clips` (oldest first) say
        where the FIFO tokens came from; without them (or for a FIFO of pooled tokens) they are sequential."""
        if not self.backbone.mrope:
            return None
        if self.backbone.text_in_video:
            return self.caption_layout(fifo_tokens, visual, index, fifo_clips)[2]
        c, info = self.config, self.backend.info
        fifo_clips = self._fifo_clips(fifo_tokens, fifo_clips)
        return self.backbone.positions(len(self.caption_prefix), fifo_clips, index, visual.shape[0],
                                       info.grid, len(self.caption_suffix), fps=c.clip.fps,
                                       frames_per_clip=c.clip.frames_per_clip, mode=c.fifo.positions)

    def caption_clip(self, frames: np.ndarray, fifo_tokens: np.ndarray, index: int, *,
                     preprocessed: bool = False, fifo_clips: list[FifoClip] | None = None) -> ClipOutput:
        """The clip step: (T, H, W, 3) uint8 frames (or (T, 3, H', W') model pixels when `preprocessed`) and the
        (F, D) FIFO in front of them -> caption, scores and the tokens selected for the FIFO. Pure: no I/O.
        `fifo_clips`: where the FIFO tokens came from (M-RoPE backbones position them by it; see backbones)."""
        t = {}
        # 1. encode: frames -> visual tokens in the LLM's input space (and DeepStack features, Qwen3-VL)
        visual, deep = self._encode_video(frames, preprocessed, t)  # (T, P, D), (K, T, P, D) or None
        # 2. caption + score: greedy caption; probe attention to the clip's columns accumulates per step
        ds = None
        if self.backbone.text_in_video:  # Qwen3-VL: timestamps between the token groups
            context, columns, positions, ds = self.caption_layout(fifo_tokens, visual, index, fifo_clips,
                                                                  len(frames), deep)
        else:
            context, columns = self.caption_context(fifo_tokens, visual.reshape(-1, visual.shape[-1]))  # (S, D)
            positions = self.caption_positions(fifo_tokens, visual, index, fifo_clips)  # (3, S) or None (1-D)
        gen = greedy(self.backend, context, self.config.caption.max_new_tokens, self.text.eos_ids, columns,
                     positions=positions, deepstack=ds)
        # 3. select
        out = self._output(index, visual, context, gen, t, positions)
        if deep is not None and out.selection.indices is not None:  # the kept tokens' features go with them
            out.deepstack = np.ascontiguousarray(deep.reshape(deep.shape[0], -1, deep.shape[-1])[:, out.selection.indices])
        return out

    def caption_clips(self, clips: list[ClipInput], *, batch_prefill: bool = False) -> list[ClipOutput]:
        """The clip step for B clips at once (e.g. one per camera, each after its own FIFO): encode each, decode
        the B captions together (one batched decoder step per token for every caption still running), select each.
        -> B ClipOutputs in the clips' order, each what `caption_clip` returns for that clip alone. Pure: no I/O.
        timings["decode"] is the batch's decode time, shared by its clips; `batch_prefill`: see greedy_batch."""
        if self.backbone.mrope:  # 3-D positions per sequence are not batched yet: each clip alone (same outputs)
            return [self.caption_clip(c.frames, c.fifo_tokens, c.index, preprocessed=c.preprocessed,
                                      fifo_clips=c.fifo_clips) for c in clips]
        ts = [{} for _ in clips]
        visuals = [self._encode(c.frames, c.preprocessed, t) for c, t in zip(clips, ts)]  # (T, P, D) each
        ctx = [self.caption_context(c.fifo_tokens, v.reshape(-1, v.shape[-1])) for c, v in zip(clips, visuals)]
        gens = greedy_batch(self.backend, [x for x, _ in ctx], self.config.caption.max_new_tokens, self.text.eos_ids,
                            [cols for _, cols in ctx], batch_prefill=batch_prefill)
        return [self._output(c.index, v, x, g, t) for c, v, (x, _), g, t in zip(clips, visuals, ctx, gens, ts)]

    def _encode(self, frames: np.ndarray, preprocessed: bool, t: dict) -> np.ndarray:
        """Phase 1: frames -> (T, P, D) visual tokens; t["encode"] = seconds."""
        return self._encode_video(frames, preprocessed, t)[0]

    def _encode_video(self, frames: np.ndarray, preprocessed: bool, t: dict) -> tuple[np.ndarray, np.ndarray | None]:
        """Phase 1 with DeepStack: -> ((G, P, D) tokens, (K, G, P, D) features or None)."""
        t0 = time.perf_counter()
        pixels = frames if preprocessed else self.preprocess(frames)
        if self.backbone.deepstack:
            visual, deep = self.backend.encode_video(pixels)
        else:
            visual, deep = self.backend.encode_frames(pixels), None  # (G, P, D)
        t["encode"] = time.perf_counter() - t0
        return visual, deep

    def _output(self, index: int, visual: np.ndarray, context: np.ndarray, gen, t: dict,
                positions: np.ndarray | None = None) -> ClipOutput:
        """Phase 3: select N tokens of the clip in temporal order (the RNG is per clip, so a resumed stream draws
        the same) and assemble the clip's output."""
        c = self.config
        t["prefill"], t["decode"] = gen.prefill_s, gen.decode_s
        t0 = time.perf_counter()
        rng = np.random.default_rng([c.selection.seed, index])
        n_tokens = visual.shape[0] * visual.shape[1]  # N_V
        sel = self.strategy(visual, gen.scores, c.selection.n_keep(n_tokens), rng)  # (N, D)
        t["select"] = time.perf_counter() - t0
        return ClipOutput(index, self.text.decode(gen.ids), list(gen.ids), self.vector(gen.ids), visual, gen.scores,
                          sel, len(context), gen.steps, t, positions)


def backbone_of(backend: Backend) -> Backbone:
    """The backbone a backend runs (wrappers such as SharedBackend hold theirs in `.inner`)."""
    b = backend
    while b is not None:
        if isinstance(getattr(b, "backbone", None), Backbone):
            return b.backbone
        b = getattr(b, "inner", None)
    return get_backbone(backend.info.backbone)


def load_engine(engine: EngineConfig | str | Path = "tiny", config: PipelineConfig | None = None) -> Engine:
    """Resolve the model (tiny | directory | cached hub id | bundle), choose the backend once, build the engine.
    A plain string or path means EngineConfig(model=it) with every other choice at its default."""
    ec = engine if isinstance(engine, EngineConfig) else EngineConfig(model=str(engine))
    config = config or PipelineConfig()
    check_model_path(ec.bundle, "--bundle") if ec.bundle else check_model_path(ec.model)
    model_dir, model_id = resolve_model(ec.source)
    be = load_backend(model_dir, ec, model_id=model_id, probe=config.probe)
    return Engine(be, TextCodec(model_dir), FramePreprocessor.from_model_dir(model_dir), config)
