"""The streaming pipeline: clips in, captions + FIFO + memory out; questions answered from memory.

Shapes: T frames per clip, P tokens per frame, N_V = T*P clip tokens, F FIFO tokens, D LLM width,
A/B prompt ids before/after the video placeholder, C caption tokens.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .backends import Backend, load_backend
from .config import PipelineConfig
from .fifo import TokenFifo
from .frames import Clip, FramePreprocessor, iter_clips
from .generate import greedy
from .memory import CaptionIndex, ClipRecord, Memory
from .models import resolve_model
from .retrieval import mmr, similarity, text_vector
from .selection import get_strategy
from .sources import FrameSource, resume_time
from .sources.file import VideoFileSource
from .text import TextCodec
from rlivs.runtime.errors import UserError

log = logging.getLogger("rlivs.pipeline")

ANSWER_SYSTEM = (
    "You answer questions about a video using timestamped descriptions of its clips. "
    "Answer briefly; say when something happened if it matters."
)
MAX_QUESTION_CHARS = 2000  # a longer question is refused (the HTTP API has the same bound)


def format_time(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


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
        self.newline = self.backend.image_newline()[None]  # (1, D)
        full_clip = self.config.clip.frames_per_clip * self.backend.info.tokens_per_frame
        self.config.selection.validate(full_clip)  # fails early on an impossible --keep
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
        """[prompt prefix][FIFO (F, D)][clip (N_V, D)][newline][prompt suffix] -> (S, D), clip columns."""
        start = len(self.caption_prefix) + len(fifo_tokens)
        ctx = np.concatenate([self.caption_prefix, fifo_tokens, clip_tokens, self.newline, self.caption_suffix])
        return ctx.astype(np.float32, copy=False), slice(start, start + len(clip_tokens))

    def vector(self, ids) -> np.ndarray:
        """(D,) retrieval vector of a token sequence."""
        return text_vector(self.backend.embed_tokens(np.asarray(ids, dtype=np.int64)))


def load_engine(model: str | Path = "tiny", *, backend: str = "auto", config: PipelineConfig | None = None,
                device: str = "cpu", dtype: str = "float32", threads: int | None = None, kv_cache: str = "auto",
                max_context: int | None = None) -> Engine:
    """Resolve the model (tiny | directory | cached hub id), choose the backend once, build the engine."""
    config = config or PipelineConfig()
    model_dir, model_id = resolve_model(model)
    be = load_backend(model_dir, name=backend, model_id=model_id, probe=config.probe, device=device, dtype=dtype,
                      threads=threads, kv_cache=kv_cache, max_context=max_context)
    return Engine(be, TextCodec(model_dir), FramePreprocessor.from_model_dir(model_dir), config)


@dataclass
class ClipResult:
    index: int
    t_start: float
    t_end: float
    caption: str
    kept: np.ndarray | None  # (N,) flat indices of the kept clip tokens (None for pooled strategies)
    context_tokens: int  # S: length of the captioning context
    fifo_tokens: int  # F after this clip entered
    timings: dict[str, float]  # seconds: encode, prefill, decode, select, store


class StreamIngestor:
    """Owns one stream's FIFO and position in memory; `step` processes one clip."""

    def __init__(self, engine: Engine, memory: Memory, stream: str = "default", source: str = ""):
        self.engine, self.memory, self.stream = engine, memory, stream
        cfg = engine.config
        self.strategy = get_strategy(cfg.selection.strategy)
        state = memory.open_stream(stream, source, engine.backend.info.model_id, cfg.ingest_fingerprint())
        self.next_index = state.next_index  # the clip the stream resumes at
        self.source: FrameSource | None = None  # the source being read (set by clips): its decode_errors count
        self.fifo = TokenFifo(cfg.fifo, engine.backend.info.hidden_size)
        self.fifo.restore(state.fifo)
        if self.next_index:
            log.info("stream %r resumes at clip %d with %d FIFO clips", stream, self.next_index, len(self.fifo))
            if state.model_id != engine.backend.info.model_id:
                log.warning("stream %r was ingested with model %s; resuming it with %s",
                            stream, state.model_id, engine.backend.info.model_id)
            if source and state.source and source != state.source:
                log.warning("stream %r was ingested from %s; resuming it from %s at clip %d",
                            stream, state.source, source, self.next_index)

    def step(self, clip: Clip) -> ClipResult:
        e, t = self.engine, {}
        if clip.index != self.next_index:
            raise UserError(f"clip {clip.index} given but stream {self.stream!r} is at clip {self.next_index}")
        # 1. encode: frames -> visual tokens in the LLM's input space
        t0 = time.perf_counter()
        visual = e.backend.encode_frames(e.preprocess(clip.frames))  # (T, P, D)
        flat = visual.reshape(-1, visual.shape[-1])  # (N_V, D)
        t["encode"] = time.perf_counter() - t0
        # 2. caption + score: greedy caption; probe attention to the clip's columns accumulates per step
        context, columns = e.caption_context(self.fifo.tokens(), flat)  # (S, D)
        gen = greedy(e.backend, context, e.config.caption.max_new_tokens, e.text.eos_ids, columns)
        t["prefill"], t["decode"] = gen.prefill_s, gen.decode_s
        # 3. select: N tokens of this clip, temporal order
        t0 = time.perf_counter()
        rng = np.random.default_rng([e.config.selection.seed, clip.index])  # per clip: a resume draws the same
        sel = self.strategy(visual, gen.scores, e.config.selection.n_keep(len(flat)), rng)  # (N, D)
        t["select"] = time.perf_counter() - t0
        # 4. remember: caption, its vector and the FIFO change in one transaction, then the in-memory FIFO
        t0 = time.perf_counter()
        caption = e.text.decode(gen.ids)
        record = ClipRecord(self.stream, clip.index, float(clip.t_start), float(clip.t_end), caption,
                            len(gen.ids), e.vector(gen.ids))
        kept = sel.tokens if self.fifo.admits(len(sel.tokens)) else None
        self.memory.commit_clip(record, kept, evict=self.fifo.evictions(len(sel.tokens)))
        self.fifo.push(clip.index, sel.tokens)
        self.next_index = clip.index + 1
        t["store"] = time.perf_counter() - t0
        return ClipResult(clip.index, record.t_start, record.t_end, caption, sel.indices, len(context),
                          self.fifo.n_tokens, t)

    def run(self, clips: Iterable[Clip], on_clip: Callable[[ClipResult], None] | None = None,
            max_clips: int | None = None) -> list[ClipResult]:
        results = []
        for clip in clips:
            if max_clips is not None and len(results) >= max_clips:
                break
            results.append(self.step(clip))
            if on_clip:
                on_clip(results[-1])
        return results

    def clips(self, source: FrameSource) -> Iterator[Clip]:
        """The clips of `source` (sampled at the clip fps) from where this stream left off: it is read from
        resume_time(next_index) without being opened again; `self.source` is the one read."""
        c = self.engine.config.clip
        if source.fps != c.fps:
            raise UserError(f"the source samples {source.fps:g} frames per second but the pipeline's clips are "
                            f"{c.fps:g} fps; open the source with fps={c.fps:g}")
        self.source = source.starting_at(resume_time(self.next_index, c.frames_per_clip, c.fps))
        return iter_clips(self.source, c.frames_per_clip, c.fps, first_index=self.next_index)

    def clips_from_file(self, path: str | Path) -> Iterator[Clip]:
        """The clips of a video file from where this stream left off (the file is opened once)."""
        return self.clips(VideoFileSource(path, fps=self.engine.config.clip.fps))


@dataclass
class Answer:
    question: str
    text: str
    used: list[tuple[ClipRecord, float]]  # retrieved captions in time order, with relevance
    latency_s: float
    prompt_tokens: int


def build_answer_prompt(engine: Engine, question: str, records: list[ClipRecord]) -> np.ndarray:
    lines = [f"[{format_time(r.t_start)}-{format_time(r.t_end)}]"
             + (f" ({r.stream})" if len({x.stream for x in records}) > 1 else "") + f" {r.caption}"
             for r in records]
    user = "Descriptions of the video so far:\n" + "\n".join(lines) + f"\n\nQuestion: {question}"
    return engine.text.chat_ids(ANSWER_SYSTEM, user)  # (L,)


def check_question(question: str) -> str:
    """The question stripped, or ValueError: not text, empty, longer than MAX_QUESTION_CHARS, not valid UTF-8."""
    if not isinstance(question, str):
        raise UserError(f"the question must be text, got {type(question).__name__}")
    question = question.strip()
    if not question:
        raise UserError("the question is empty: ask something, e.g. rlivs ask 'what moved left?'")
    if len(question) > MAX_QUESTION_CHARS:
        raise UserError(f"the question is {len(question)} characters long; at most {MAX_QUESTION_CHARS} are "
                        f"accepted: shorten it")
    try:
        question.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates: bytes that were not UTF-8 (argv) or a broken \ud800 escape
        bad = question[e.start:e.end]
        try:
            what = "bytes " + bad.encode("utf-8", "surrogateescape").hex(" ")  # how Python keeps undecodable argv
        except UnicodeEncodeError:
            what = " ".join(f"U+{ord(c):04X}" for c in bad) + " (a lone surrogate)"
        raise UserError(f"the question is not valid UTF-8 text ({what} at character {e.start}): pass the "
                        f"question as UTF-8") from None
    return question


def answer(engine: Engine, memory: CaptionIndex, question: str, stream: str | None = None) -> Answer:
    """Retrieve captions by cosine + MMR, then answer from text only (no visual tokens). `memory` is read only
    through `vectors(stream)` (a `Memory`, or any other `CaptionIndex` such as a time-limited view of one)."""
    question = check_question(question)
    t0 = time.perf_counter()
    records, matrix = memory.vectors(stream)  # (N, D)
    if not records:
        where = f"stream {stream!r}" if stream else "this memory"
        raise UserError(f"{where} holds no captions yet: ingest a video first (rlivs ingest VIDEO --db ...)")
    rc = engine.config.retrieval
    q = engine.vector(engine.text.encode(question))  # (D,)
    costs = np.array([r.n_tokens for r in records], dtype=np.float64)
    picked = mmr(q, matrix, rc.top_k, rc.mmr_lambda, costs=costs, budget=rc.token_budget)
    rel = similarity(q, matrix[picked])  # (K,) mean pairwise token cosine
    used = sorted(zip([records[i] for i in picked], rel.tolist()), key=lambda x: (x[0].t_start, x[0].stream))
    ids = build_answer_prompt(engine, question, [r for r, _ in used])
    gen = greedy(engine.backend, engine.backend.embed_tokens(ids), engine.config.answer.max_new_tokens,
                 engine.text.eos_ids)
    return Answer(question, engine.text.decode(gen.ids), used, time.perf_counter() - t0, len(ids))
