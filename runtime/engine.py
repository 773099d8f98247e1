"""The engine: a model ready to caption and answer, and the method's clip step.

`Engine.caption_clip` is the one home of the rLiVS clip step: encode -> caption + score -> select. It is pure (no
I/O, no memory, no FIFO state of its own), so ingest, calibration, evaluation and benchmarks call it rather than
copy it. `StreamIngestor` (ingest.py) adds what a stream needs around it: the FIFO and the per-clip commit.

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
from .generate import greedy
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
        tok = hashlib.sha256(self.text.tokenizer.to_str().encode()).hexdigest()[:16]
        return {**self.backend.info.fingerprint(), "tokenizer": tok}

    def caption_context(self, fifo_tokens: np.ndarray, clip_tokens: np.ndarray) -> tuple[np.ndarray, slice]:
        """[prompt prefix][FIFO (F, D)][clip (N_V, D)][newline (LLaVA-OV)][prompt suffix] -> (S, D), clip columns."""
        start = len(self.caption_prefix) + len(fifo_tokens)
        ctx = np.concatenate([self.caption_prefix, fifo_tokens, clip_tokens, self.newline, self.caption_suffix])
        return ctx.astype(np.float32, copy=False), slice(start, start + len(clip_tokens))

    def vector(self, ids) -> np.ndarray:
        """(D,) retrieval vector of a token sequence."""
        return text_vector(self.backend.embed_tokens(np.asarray(ids, dtype=np.int64)))

    def caption_positions(self, fifo_tokens: np.ndarray, visual: np.ndarray, index: int,
                          fifo_clips: list[FifoClip] | None) -> np.ndarray | None:
        """(3, S) M-RoPE ids of the caption context, or None for a 1-D backbone. `fifo_clips` (oldest first) say
        where the FIFO tokens came from; without them (or for a FIFO of pooled tokens) they are sequential."""
        if not self.backbone.mrope:
            return None
        c, info = self.config, self.backend.info
        if fifo_clips is None or sum(f.n for f in fifo_clips) != len(fifo_tokens):
            fifo_clips = [FifoClip(-1, len(fifo_tokens), None)] if len(fifo_tokens) else []
        return self.backbone.positions(len(self.caption_prefix), fifo_clips, index, visual.shape[0],
                                       info.grid, len(self.caption_suffix), fps=c.clip.fps,
                                       frames_per_clip=c.clip.frames_per_clip, mode=c.fifo.positions)

    def caption_clip(self, frames: np.ndarray, fifo_tokens: np.ndarray, index: int, *,
                     preprocessed: bool = False, fifo_clips: list[FifoClip] | None = None) -> ClipOutput:
        """The clip step: (T, H, W, 3) uint8 frames (or (T, 3, H', W') model pixels when `preprocessed`) and the
        (F, D) FIFO in front of them -> caption, scores and the tokens selected for the FIFO. Pure: no I/O.
        `fifo_clips`: where the FIFO tokens came from (M-RoPE backbones position them by it; see backbones)."""
        c, t = self.config, {}
        # 1. encode: frames -> visual tokens in the LLM's input space
        t0 = time.perf_counter()
        visual = self.backend.encode_frames(frames if preprocessed else self.preprocess(frames))  # (G, P, D)
        flat = visual.reshape(-1, visual.shape[-1])  # (N_V, D)
        t["encode"] = time.perf_counter() - t0
        # 2. caption + score: greedy caption; probe attention to the clip's columns accumulates per step
        context, columns = self.caption_context(fifo_tokens, flat)  # (S, D), N_V columns
        positions = self.caption_positions(fifo_tokens, visual, index, fifo_clips)  # (3, S) or None
        gen = greedy(self.backend, context, c.caption.max_new_tokens, self.text.eos_ids, columns, positions=positions)
        t["prefill"], t["decode"] = gen.prefill_s, gen.decode_s
        # 3. select: N tokens of this clip in temporal order; the RNG is per clip, so a resumed stream draws the same
        t0 = time.perf_counter()
        rng = np.random.default_rng([c.selection.seed, index])
        sel = self.strategy(visual, gen.scores, c.selection.n_keep(len(flat)), rng)  # (N, D)
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
