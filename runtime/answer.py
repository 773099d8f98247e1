"""Questions answered from the memory's captions: retrieval by similarity + MMR, then a text-only greedy answer.

`answer` reads captions through the `CaptionIndex` protocol, which the SQLite `Memory` implements and evaluation's
causal view (the memory as of a question's time) implements too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from .engine import Engine
from .errors import UserError
from .generate import greedy
from .memory import ClipRecord
from .retrieval import mmr, similarity

ANSWER_SYSTEM = (
    "You answer questions about a video using timestamped descriptions of its clips. "
    "Answer briefly; say when something happened if it matters."
)
MAX_QUESTION_CHARS = 2000  # a longer question is refused (the HTTP API has the same bound)


class CaptionIndex(Protocol):
    """What `answer` reads: the captions (with their vectors) a question may use."""

    def vectors(self, stream: str | None = None) -> tuple[list[ClipRecord], np.ndarray]:
        """-> (records, (N, D) matrix of their retrieval vectors), one row per record."""
        ...


def format_time(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


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
    """The question stripped, or UserError: not text, empty, longer than MAX_QUESTION_CHARS, not valid UTF-8."""
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


def answer(engine: Engine, index: CaptionIndex, question: str, stream: str | None = None,
           on_token: Callable[[str], None] | None = None) -> Answer:
    """Retrieve captions by cosine + MMR, then answer from text only (no visual tokens). `on_token(text)` receives
    the answer as it is generated, piece by piece (joined, the pieces are `Answer.text`)."""
    question = check_question(question)
    t0 = time.perf_counter()
    records, matrix = index.vectors(stream)  # (N, D)
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
    piece = engine.text.stream_decoder() if on_token else None
    gen = greedy(engine.backend, engine.backend.embed_tokens(ids), engine.config.answer.max_new_tokens,
                 engine.text.eos_ids, on_token=(lambda t: (p := piece(t)) and on_token(p)) if on_token else None)
    return Answer(question, engine.text.decode(gen.ids), used, time.perf_counter() - t0, len(ids))
