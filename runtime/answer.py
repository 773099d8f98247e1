"""Questions answered from the memory's captions: indexed retrieval + MMR, then a text-only greedy answer.

`answer` reads captions through the `CaptionIndex` protocol, which the SQLite `Memory` implements and evaluation's
causal view (the memory as of a question's time) implements too. Time in questions (timeq.py) restricts
retrieval to a wall-clock window, and the question's intent picks how captions are gathered:
- plain questions, "when" / "last" / "first": `retrieve` (index shortlist, then MMR under the token budget); for
  when/last/first the latest (earliest) clip whose caption holds every informative word is added;
- "how many times": the number of such clips in the window goes into the prompt;
- "what happened between A and B" / "summarise the last hour": every caption in the window, in time order; when they
  exceed the prompt budget they are summarised in chunks first (map-reduce), so none is dropped silently.

Clips the activity gate left uncaptioned (runtime/activity.py) are runs of idle clips in the memory, each against the
captioned clip whose scene it still showed. An index that has them (`Memory.idle_spans`, `Memory.clip`) lets the
answer know: a caption followed by such a run is shown with "(no change seen until T: N clips watched, not
captioned)", and a time window that holds only idle clips brings in the caption of the scene they showed. Counts
("how many times") and first/last are read from captions alone, so an unchanged scene is never counted twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from typing import Protocol

import numpy as np

from .config import RetrievalConfig
from .engine import Engine
from .errors import UserError
from .generate import greedy
from .memory import ClipRecord, Shortlist
from .retrieval import mmr
from .timeq import MAX_QUESTION_CHARS  # a longer question is refused (the HTTP API has the same bound)

ANSWER_SYSTEM = (
    "You answer questions about a video using timestamped descriptions of its clips. "
    "Answer briefly; say when something happened if it matters."
)
SUMMARY_SYSTEM = "Summarise these timestamped descriptions of video clips in a few sentences; keep times and names."


class CaptionIndex(Protocol):
    """What `answer` reads: the captions a question may use (the SQLite `Memory`, or a causal view of it)."""

    def search(self, query_vector: np.ndarray, query_text: str | None = None, *, streams: list[str] | None = None,
               wall_from: float | None = None, wall_to: float | None = None, mode: str = "hybrid",
               shortlist: int = 64) -> Shortlist: ...

    def clips(self, stream: str | None = None, *, wall_from: float | None = None, wall_to: float | None = None,
              by_time: bool = False) -> list[ClipRecord]: ...

    def keyword_matches(self, text: str, *, streams: list[str] | None = None, wall_from: float | None = None,
                        wall_to: float | None = None) -> tuple[int, ClipRecord | None, ClipRecord | None]: ...

    def has_clock(self, streams: list[str] | None = None) -> bool: ...


def local_tz() -> tzinfo:
    """The device's time zone."""
    return datetime.now().astimezone().tzinfo


def format_time(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def format_wall(unix: float, tz: tzinfo | None = None, date: bool = True) -> str:
    """UTC unix seconds as local wall-clock text: '2026-12-01 15:04:05' (or just the time)."""
    t = datetime.fromtimestamp(unix, tz or local_tz())
    return t.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S")


def wall_iso(unix: float | None, tz: tzinfo | None = None) -> str | None:
    """UTC unix seconds as ISO 8601 with the device's UTC offset ('2026-12-01T15:04:05+01:00'), None stays None."""
    return None if unix is None else datetime.fromtimestamp(unix, tz or local_tz()).isoformat(timespec="seconds")


def clip_json(r: ClipRecord, tz: tzinfo | None = None) -> dict:
    """A clip as the CLI's --json and the HTTP API show it: stream and wall-clock times (null without a clock)."""
    return {"stream": r.stream, "clip": r.index, "t_start": r.t_start, "t_end": r.t_end,
            "wall_start": wall_iso(r.wall_start, tz), "wall_end": wall_iso(r.wall_end, tz), "caption": r.caption}


def span_label(t_start: float, t_end: float, wall_start: float | str | None = None,
               wall_end: float | str | None = None, tz: tzinfo | None = None) -> str:
    """A clip's time span as people (and the model) read it, the one rule for captions, watch matches, MQTT and the
    page: local wall-clock '2026-12-01 15:04:05-15:04:21' when the stream has a clock, else stream time
    '00:01:04-00:01:20'. Wall times are UTC unix seconds (shown in `tz`, default the device's) or ISO 8601 text
    (shown in its own offset, which the API writes as the device's)."""
    if wall_start is None or wall_end is None or wall_start == "" or wall_end == "":
        return f"{format_time(t_start)}-{format_time(t_end)}"

    def at(w):
        return datetime.fromisoformat(w) if isinstance(w, str) else datetime.fromtimestamp(w, tz or local_tz())

    return f"{at(wall_start):%Y-%m-%d %H:%M:%S}-{at(wall_end):%H:%M:%S}"


def clip_label(r: ClipRecord, tz: tzinfo | None = None) -> str:
    """A clip's time span as shown to people and to the model (`span_label`)."""
    return span_label(r.t_start, r.t_end, r.wall_start, r.wall_end, tz)


@dataclass
class Answer:
    question: str
    text: str
    used: list[tuple[ClipRecord, float]]  # captions in the prompt, in time order, with relevance
    latency_s: float
    prompt_tokens: int
    window: str | None = None  # the time window the answer was restricted to, in words (None: all of the memory)
    intent: str | None = None  # when | first | last | count | summary | None
    notes: list[str] = field(default_factory=list)  # what the answer should tell (no clock, chunked summary, ...)
    matches: int | None = None  # "how many times": clips whose caption holds every informative word


def answer_json(a: Answer, tz: tzinfo | None = None) -> dict:
    """An answer as `rlivs ask --json` and the HTTP API return it."""
    return {"question": a.question, "answer": a.text, "latency_s": a.latency_s, "window": a.window,
            "intent": a.intent, "matches": a.matches, "notes": a.notes,
            "captions": [{**clip_json(r, tz), "relevance": s} for r, s in a.used]}


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


def retrieve(index: CaptionIndex, query_vector: np.ndarray, question_text: str | None, rc: RetrievalConfig, *,
             streams: list[str] | None = None, wall_from: float | None = None, wall_to: float | None = None,
             mode: str | None = None) -> list[tuple[ClipRecord, float]]:
    """Everything `answer` does before generating, for one question: the index's shortlist inside the filters,
    then MMR (lambda, top_k, token budget) over it. -> picks in time order with their similarity."""
    sl = index.search(query_vector, question_text, streams=streams, wall_from=wall_from, wall_to=wall_to,
                      mode=mode or rc.mode, shortlist=rc.shortlist)
    costs = np.array([r.n_tokens for r in sl.records], dtype=np.float64)
    picked = mmr(query_vector, sl.vectors, rc.top_k, rc.mmr_lambda, costs=costs, budget=rc.token_budget,
                 relevance=sl.relevance)
    return sorted(((sl.records[i], float(sl.similarity[i])) for i in picked), key=lambda x: _when(x[0]))


def _when(r: ClipRecord) -> tuple:
    return (r.wall_start if r.wall_start is not None else float("-inf"), r.t_start, r.stream)


def _lines(records: list[ClipRecord], tz: tzinfo | None, idle: dict | None = None) -> list[str]:
    multi = len({r.stream for r in records}) > 1
    idle = idle or {}
    return [f"[{clip_label(r, tz)}]" + (f" ({r.stream})" if multi else "") + f" {r.caption}"
            + (f" ({idle[(r.stream, r.index)]})" if (r.stream, r.index) in idle else "") for r in records]


def idle_notes(index, records: list[ClipRecord], tz: tzinfo | None = None) -> dict[tuple[str, int], str]:
    """(stream, clip) -> "no change seen until T: N clips watched, not captioned" for each record that idle clips
    followed (the activity gate); empty for an index without idle clips."""
    spans_of = getattr(index, "idle_spans", None)
    out = {}
    for r in records if spans_of is not None else ():
        spans = spans_of(r.stream, scene_idx=r.index) or []
        if not spans:
            continue
        last = max(spans, key=lambda sp: sp.last)
        n = sum(sp.clips for sp in spans)
        until = (format_wall(last.wall_end, tz) if last.wall_end is not None and r.wall_start is not None
                 else format_time(last.t_end))
        out[(r.stream, r.index)] = f"no change seen until {until}: {n} clip{'s' if n != 1 else ''} watched, not captioned"
    return out


def with_idle_scenes(index, used: list[tuple[ClipRecord, float]], streams: list[str] | None,
                     wall_from: float | None, wall_to: float | None) -> list[tuple[ClipRecord, float]]:
    """`used` plus, for the idle runs inside the wall-clock window, the captioned clips whose scene they showed (what
    the scene was while nothing changed), in time order."""
    spans_of, clip_of = getattr(index, "idle_spans", None), getattr(index, "clip", None)
    if spans_of is None or clip_of is None:
        return used
    have = {(r.stream, r.index) for r, _ in used}
    for sp in spans_of(streams=streams, wall_from=wall_from, wall_to=wall_to) or []:
        if sp.scene_idx is None or (sp.stream, sp.scene_idx) in have:
            continue
        rec = clip_of(sp.stream, sp.scene_idx)
        if rec is not None:
            used = used + [(rec, 1.0)]
            have.add((sp.stream, sp.scene_idx))
    return sorted(used, key=lambda x: _when(x[0]))


def build_answer_prompt(engine: Engine, question: str, records: list[ClipRecord], header: list[str] = (),
                        tz: tzinfo | None = None, idle: dict | None = None) -> np.ndarray:
    lines = _lines(records, tz, idle)
    head = "".join(f"{h}\n" for h in header)
    user = head + "Descriptions of the video so far:\n" + "\n".join(lines) + f"\n\nQuestion: {question}"
    return engine.text.chat_ids(ANSWER_SYSTEM, user)  # (L,)


def _generate(engine: Engine, ids: np.ndarray, on_token: Callable[[str], None] | None = None) -> str:
    """Greedy text for prompt `ids`; `on_token(text)` receives it piece by piece as it is generated (joined, the
    pieces are the returned text)."""
    piece = engine.text.stream_decoder() if on_token else None
    gen = greedy(engine.backend, engine.backend.embed_tokens(ids), engine.config.answer.max_new_tokens,
                 engine.text.eos_ids, on_token=(lambda t: (p := piece(t)) and on_token(p)) if on_token else None)
    return engine.text.decode(gen.ids)


def _summarise(engine: Engine, records: list[ClipRecord], tz: tzinfo | None, notes: list[str],
               idle: dict | None = None) -> list[str]:
    """Caption lines for the prompt: all of them when they fit the token budget, else chunk summaries (map step),
    each chunk within the budget, so no caption is left out."""
    budget = engine.config.retrieval.token_budget
    if sum(r.n_tokens for r in records) <= budget:
        return _lines(records, tz, idle)
    chunks, cur, spent = [], [], 0
    for r in records:
        if cur and spent + r.n_tokens > budget:
            chunks.append(cur)
            cur, spent = [], 0
        cur.append(r)
        spent += r.n_tokens
    chunks.append(cur)
    out = []
    for chunk in chunks:
        ids = engine.text.chat_ids(SUMMARY_SYSTEM, "\n".join(_lines(chunk, tz, idle)))
        span = f"{clip_label(chunk[0], tz).split('-')[0]} to {clip_label(chunk[-1], tz)}"
        out.append(f"[summary of {len(chunk)} clips, {span}] {_generate(engine, ids)}")
    notes.append(f"{len(records)} captions were summarised in {len(chunks)} parts first (they exceed the "
                 f"{budget}-token prompt budget)")
    return out


def answer(engine: Engine, index: CaptionIndex, question: str, stream: str | None = None, *,
           window: tuple[float | None, float | None] | None = None, window_text: str | None = None,
           parse_time: bool = True, now: datetime | None = None, tz: tzinfo | None = None,
           on_token: Callable[[str], None] | None = None) -> Answer:
    """Answer `question` from the captions of `stream` (all streams when None).

    `window`: an explicit wall-clock window (UTC unix seconds, either end open), described by `window_text`; else,
    when `parse_time`, a time expression in the question sets it ("yesterday afternoon", "in the last 10 minutes").
    """
    question = check_question(question)
    t0 = time.perf_counter()
    tz = tz or local_tz()
    now = now or datetime.now(timezone.utc)
    notes: list[str] = []
    # 1. time and intent
    intent, text, window_from_question, phrase = None, question, False, None
    if parse_time:
        from .timeq import parse_question

        tq = parse_question(question, now, tz)
        intent, text = tq.intent, (tq.text or question)
        if tq.ignored and window is None:  # e.g. "on 9999-12-31": answered from all of the memory, and says so
            notes.append(tq.ignored)
        if window is None and tq.window is not None:
            window, window_text = tq.window.as_unix(), tq.window.describe(tz, now)
            window_from_question, phrase = True, tq.phrase
    streams = None if stream is None else [stream]
    wall_from, wall_to = window if window is not None else (None, None)
    if window is not None and window_from_question and not index.has_clock(streams):
        notes.append(f"the time expression ({window_text}) was not applied: no clip here has a clock time")
        window = wall_from = wall_to = window_text = None
    # 2. gather captions
    rc = engine.config.retrieval
    q = engine.vector(engine.text.encode(text))  # (D,)
    matches = None
    if intent == "summary" and window is not None:
        records = index.clips(stream, wall_from=wall_from, wall_to=wall_to, by_time=True)
        used = [(r, 1.0) for r in records]
    else:
        used = retrieve(index, q, text, rc, streams=streams, wall_from=wall_from, wall_to=wall_to)
        if intent in ("when", "last", "first", "count"):
            n, first, last = index.keyword_matches(text, streams=streams, wall_from=wall_from, wall_to=wall_to)
            matches = n
            extra = {"first": first, "last": last, "when": last}.get(intent)
            have = {(r.stream, r.index) for r, _ in used}
            if extra is not None and (extra.stream, extra.index) not in have:
                used = sorted(used + [(extra, 1.0)], key=lambda x: _when(x[0]))
    if window is not None:  # idle clips in the window: the caption of the scene they showed
        used = with_idle_scenes(index, used, streams, wall_from, wall_to)
    if not used:
        where = f"stream {stream!r}" if stream else "this memory"
        if window is not None and phrase:  # the time as the question gave it, then its clock times
            raise UserError(f"{where} holds no captions {phrase}, that is {window_text}: ask about a wider time, or "
                            f"without one")
        if window is not None:
            raise UserError(f"{where} holds no captions in the time window {window_text or 'asked for'}: widen the "
                            f"window (--from/--to) or ask without a time")
        raise UserError(f"{where} holds no captions yet: ingest a video first (rlivs ingest VIDEO --db ...)")
    if matches == 0:
        notes.append(f"no clip's caption holds every key word of the question: the answer used the {len(used)} "
                     f"captions closest to it instead")
    records = [r for r, _ in used]
    idle = idle_notes(index, records, tz)
    if any(r.wall_start is None for r in records):
        notes.append("times are stream-relative (hh:mm:ss from the start of the recording): no clock time was "
                     "recorded for these clips (pass --start-time when ingesting a file)")
    # 3. prompt and answer
    header = []
    if window_text:
        header.append(f"Time window of the question: {window_text}.")
    if matches is not None:
        header.append(f"Clips whose descriptions mention all of the question's key words"
                      f"{' in that window' if window_text else ''}: {matches}.")
    if intent == "summary" and window is not None:
        lines = _summarise(engine, records, tz, notes, idle)
        user = "".join(f"{h}\n" for h in header) + "Descriptions of the video:\n" + "\n".join(lines) + \
            f"\n\nQuestion: {question}"
        ids = engine.text.chat_ids(ANSWER_SYSTEM, user)
    else:
        ids = build_answer_prompt(engine, question, records, header, tz, idle)
    text_out = _generate(engine, ids, on_token)
    return Answer(question, text_out, used, time.perf_counter() - t0, len(ids), window_text, intent, notes, matches)
