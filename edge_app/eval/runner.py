"""The causal runner of `rlivs eval` (RVS-Ego / RVS-Movie protocol): each video is ingested once, in time order,
into a per-run memory (one stream per video), and every question is answered at its time. Library code: no argv
here (`rlivs eval` lives in `edge_app/commands/eval.py`).

Protocol (docs/evaluation.md): a clip covers [t_start, t_end). A question with end time E is answered as soon as the
next clip would end after E, i.e. after the last clip with t_end <= E has been committed and before any later clip
is ingested; a clip that straddles E is ingested only after the question was answered, so it is never seen by it.
Answers retrieve only captions with t_end <= E (`CausalView`), which also keeps a resumed run causal.

No torch here: the torch backend is loaded by `load_engine` only when the model needs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from rlivs.edge_app.eval.annotations import AnnotationConfig, Benchmark, Question, VideoTask, read_annotations
from rlivs.edge_app.eval.judges import JUDGE_PROMPT_SHA256, JudgeConfig, NoJudge, judge_engine, make_judge
from rlivs.edge_app.eval.outputs import MEMORY, PREDICTIONS, RUN, read_predictions, write_outputs
from rlivs.edge_app.eval.scoring import exact_match, summarize, token_f1
from rlivs.runtime.config import EngineConfig, PipelineConfig
from rlivs.runtime.errors import UserError
from rlivs.runtime.frames import iter_clips
from rlivs.runtime.answer import CaptionIndex
from rlivs.runtime.memory import ClipRecord, Memory
from rlivs.runtime.sources import open_source, resume_time

# A float tolerance (seconds) for comparing clip ends with question end times.
TIME_EPS = 1e-6
# The answer recorded (and judged) when a question comes before the first clip has ended: nothing was seen yet.
NO_CONTEXT_ANSWER = "No information yet: nothing of the video has been seen before this question."


class CausalView(CaptionIndex):
    """What a question may see: the stream's clips with t_end <= its end time. A `CaptionIndex` (what
    `answer` reads captions through) over a memory, the filter inside every index query; nothing else of a `Memory`."""

    def __init__(self, memory: Memory, t_max: float):
        self.memory, self.t_max = memory, t_max
        self.until = t_max + TIME_EPS  # stream time: the latest clip end a question at t_max may see

    def search(self, query_vector: np.ndarray, query_text: str | None = None, *, streams: list[str] | None = None,
               wall_from: float | None = None, wall_to: float | None = None, mode: str = "hybrid",
               shortlist: int = 64):
        return self.memory.search(query_vector, query_text, streams=streams, wall_from=wall_from, wall_to=wall_to,
                                  mode=mode, shortlist=shortlist, stream_until=self.until)

    def clips(self, stream: str | None = None, *, wall_from: float | None = None, wall_to: float | None = None,
              by_time: bool = False) -> list[ClipRecord]:
        return [r for r in self.memory.clips(stream, wall_from=wall_from, wall_to=wall_to, by_time=by_time)
                if r.t_end <= self.until]

    def keyword_matches(self, text: str, *, streams: list[str] | None = None, wall_from: float | None = None,
                        wall_to: float | None = None):
        return self.memory.keyword_matches(text, streams=streams, wall_from=wall_from, wall_to=wall_to,
                                           stream_until=self.until)

    def has_clock(self, streams: list[str] | None = None) -> bool:
        return self.memory.has_clock(streams)

    def visible(self, stream: str) -> int:
        """How many clips of `stream` the question may see."""
        return self.memory.count_clips(stream, stream_until=self.until)


@dataclass
class EvalConfig:
    annotations: list[Path]  # annotation files (streaming lists, VStream-QA clip + question files)
    out: Path  # results folder: predictions.jsonl, summary.json, results.md, run.json, memory.db
    engine: EngineConfig = field(default_factory=EngineConfig)  # the system under test, and where it runs (a local
    #                                                              judge runs on the same backend, device and dtype)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)  # every method setting (the ablation flags)
    data: AnnotationConfig = field(default_factory=AnnotationConfig)  # how annotations and videos are read
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # the pinned judge
    resume: bool = False  # continue the run in `out` (skip finished questions, resume ingested streams)
    rescore: bool = False  # only re-judge the rows in `out` with `judge` and rewrite the summary
    max_questions: int | None = None  # stop after answering this many questions in this run (resume later)

    def identity(self, model_id: str) -> dict:
        """What must not change between an interrupted run and its resume."""
        e = self.engine
        return {"model": e.source, "model_id": model_id, "backend": e.backend, "device": e.device,
                "dtype": e.dtype, "pipeline": self.pipeline.to_dict(),
                "data": {k: v for k, v in asdict(self.data).items() if k != "videos_dir"},
                "annotations": [{"file": str(Path(a)), "sha256": _sha256(Path(a))} for a in self.annotations]}


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class _Stop(Exception):
    """max_questions reached."""


ProgressFn = Callable[[dict], None]


class Runner:
    """Runs the benchmarks of one EvalConfig into its `out` folder."""

    def __init__(self, cfg: EvalConfig, progress: ProgressFn | None = None):
        self.cfg = cfg
        self.progress = progress or (lambda event: None)
        self.out = Path(cfg.out)
        self.engine = None
        self.judge = NoJudge()

    # -- set-up ----------------------------------------------------------------------------------------------------

    def _load(self) -> None:
        from rlivs.runtime.engine import load_engine

        c = self.cfg
        self.engine = load_engine(c.engine, c.pipeline)
        self.judge = make_judge(c.judge, c, self.engine)

    def _existing_rows(self) -> list[dict]:
        return read_predictions(self.out / PREDICTIONS)

    # -- main ------------------------------------------------------------------------------------------------------

    def run(self) -> dict:
        c = self.cfg
        benches = read_annotations(c.annotations, c.data)  # fails before any model is loaded
        prior = self._existing_rows()
        if c.rescore:
            return self.rescore(benches, prior)
        if prior and not c.resume:
            raise UserError(f"{self.out} already holds {len(prior)} answered questions: pass --resume to continue "
                            f"that run, --rescore to re-judge it, or choose a new --out")
        self.out.mkdir(parents=True, exist_ok=True)
        if not c.resume and (self.out / MEMORY).exists():
            raise UserError(f"{self.out / MEMORY} exists from an earlier run: pass --resume or choose a new --out")
        t0 = time.perf_counter()
        self._load()
        ident = json.loads(json.dumps({**c.identity(self.engine.backend.info.model_id), "judge": self.judge.identity(),
                                       "judge_prompt_sha256": JUDGE_PROMPT_SHA256}))  # tuples -> lists, as stored
        self._check_identity(ident)
        done = {(r["benchmark"], r["qid"]) for r in prior}
        plan = [(b, v, [q for q in v.questions if (b.name, q.qid) not in done]) for b in benches for v in b.videos]
        total_q = sum(len(v.questions) for b in benches for v in b.videos)
        answered, complete = 0, True
        try:
            with Memory(self.out / MEMORY, model_fingerprint=self.engine.model_fingerprint) as memory, \
                    open(self.out / PREDICTIONS, "a", encoding="utf-8") as sink:
                spans = [self._stream_span(memory, v, pending) for _, v, pending in plan if pending]
                self.progress({"kind": "start", "questions": total_q, "done": len(done),
                               "stream_seconds": sum(s for s, _ in spans),
                               "stream_seconds_done": sum(d for _, d in spans)})
                for bench, video, pending in plan:
                    if pending:
                        answered += self._run_video(memory, sink, bench, video, pending, answered)
        except _Stop:
            complete = False
        finally:
            self.judge.close()
        rows = self._existing_rows()
        complete = complete and len(rows) >= total_q
        summary = summarize(rows, benches, ident, wall_s=time.perf_counter() - t0, complete=complete,
                            judge=self.judge.identity())
        write_outputs(self.out, summary)
        self.progress({"kind": "end", "answered": answered, "complete": complete})
        return summary

    def _check_identity(self, ident: dict) -> None:
        path = self.out / RUN
        if path.exists() and self.cfg.resume:
            old = json.loads(path.read_text())
            diff = sorted(k for k in set(old) | set(ident) if k != "judge" and old.get(k) != ident.get(k))
            if old.get("judge", {}).get("kind") != ident["judge"]["kind"] or any(
                    old.get("judge", {}).get(k) != ident["judge"].get(k) for k in ("model", "url", "fingerprint")):
                diff.append("judge")
            if diff:
                raise UserError(f"--resume with other settings than the run in {self.out} (differs in: "
                                f"{', '.join(diff)}); use the same flags, --rescore to change only the judge, "
                                f"or a new --out")
            return
        path.write_text(json.dumps(ident, indent=2, sort_keys=True))

    def _stream_span(self, memory: Memory, video: VideoTask, pending: list[Question]) -> tuple[float, float]:
        """(video seconds this video will be streamed for, seconds of them already ingested): for the progress bar."""
        dur = video.duration
        end = max(q.stream_end_time for q in pending)
        if dur is not None:
            end = min(end, dur)
        if video.end is not None:
            end = min(end, video.end)
        total = max(0.0, end - video.start)
        committed = memory.clips(video.stream)
        done = min(total, max(0.0, committed[-1].t_end - video.start)) if committed else 0.0
        return total, done

    # -- one video -------------------------------------------------------------------------------------------------

    def _run_video(self, memory: Memory, sink, bench: Benchmark, video: VideoTask, pending: list[Question],
                   answered_before: int) -> int:
        from rlivs.runtime.ingest import StreamIngestor

        e = self.engine
        cc = e.config.clip
        ing = StreamIngestor(e, memory, stream=video.stream, source=str(video.path))
        committed = memory.clips(video.stream)
        stream_t = committed[-1].t_end if committed else None  # end of the latest committed clip (file time)
        start = video.start + resume_time(ing.next_index, cc.frames_per_clip, cc.fps)
        frames = open_source(video.path, cc.fps, start, video.end, self.cfg.data.frames_fps)
        queue = deque(sorted(pending, key=lambda q: (q.stream_end_time, q.record, q.qid)))
        n = 0

        def answer_next():
            nonlocal n
            if self.cfg.max_questions is not None and answered_before + n >= self.cfg.max_questions:
                raise _Stop()
            row = self._answer(memory, bench, video, queue.popleft(), stream_t)
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
            sink.flush()
            os.fsync(sink.fileno())
            n += 1
            self.progress({"kind": "answer", "row": row})

        self.progress({"kind": "video", "benchmark": bench.name, "video_id": video.video_id})
        for clip in iter_clips(frames, cc.frames_per_clip, cc.fps, first_index=ing.next_index):
            # every question that this clip would reach past is answered before the clip is ingested
            while queue and clip.t_end > queue[0].stream_end_time + TIME_EPS:
                answer_next()
            if not queue:
                break  # nothing left to ask about this video: stop streaming it
            r = ing.step(clip)
            stream_t = r.t_end
            self.progress({"kind": "clip", "seconds": r.t_end - r.t_start, "video_id": video.video_id})
        while queue:  # the stream ended (or the window closed) before these end times
            answer_next()
        return n

    def _answer(self, memory: Memory, bench: Benchmark, video: VideoTask, q: Question, stream_t: float | None) -> dict:
        from rlivs.runtime.answer import answer

        view = CausalView(memory, q.stream_end_time)
        visible = view.visible(video.stream)
        t0 = time.perf_counter()
        if visible:  # the benchmark's protocol: stream time only, no wall-clock time expressions
            a = answer(self.engine, view, q.question, stream=video.stream, parse_time=False)
            text, used, latency, prompt_tokens = a.text, a.used, a.latency_s, a.prompt_tokens
        else:
            text, used, latency, prompt_tokens = NO_CONTEXT_ANSWER, [], time.perf_counter() - t0, 0
        v = self.judge.judge(q.question, q.reference, text)
        return {
            "benchmark": bench.name, "format": bench.format, "qid": q.qid, "video_id": q.video_id,
            "question": q.question, "reference": q.reference, "answer": text, "answer_type": q.answer_type,
            "start_time": q.start_time, "end_time": q.end_time, "stream_end_time": q.stream_end_time,
            "stream_t": stream_t, "visible_clips": visible, "no_context": not visible,
            "window_applied": video.window_applied,
            "captions": [{"clip": r.index, "t_start": r.t_start, "t_end": r.t_end, "caption": r.caption,
                          "relevance": round(float(s), 6)} for r, s in used],
            "latency_s": latency, "prompt_tokens": prompt_tokens,
            "em": exact_match(text, q.reference), "f1": token_f1(text, q.reference),
            "judge": None if v is None else asdict(v), "answered_at": time.time(),
        }

    # -- re-judging --------------------------------------------------------------------------------------------------

    def rescore(self, benches: list[Benchmark], rows: list[dict]) -> dict:
        if not rows:
            raise UserError(f"{self.out} holds no answered questions to re-judge; run rlivs eval first")
        if self.cfg.judge.kind == "none":
            raise UserError("--rescore needs a judge: pass --judge-url/--judge-model or --judge-local")
        t0 = time.perf_counter()
        engine = None
        if self.cfg.judge.kind == "local":
            from rlivs.runtime.engine import load_engine

            engine = load_engine(judge_engine(self.cfg.judge, self.cfg.engine))
        self.judge = make_judge(self.cfg.judge, self.cfg, engine)
        self.progress({"kind": "start", "questions": len(rows), "done": 0, "stream_seconds": 0.0})
        try:
            for r in rows:
                v = self.judge.judge(r["question"], r["reference"], r["answer"])
                r["judge"] = asdict(v)
                self.progress({"kind": "answer", "row": r})
        finally:
            self.judge.close()
        tmp = self.out / (PREDICTIONS + ".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        os.replace(tmp, self.out / PREDICTIONS)
        run_path = self.out / RUN
        ident = json.loads(run_path.read_text()) if run_path.exists() else {}
        ident["judge"], ident["judge_prompt_sha256"] = self.judge.identity(), JUDGE_PROMPT_SHA256
        run_path.write_text(json.dumps(ident, indent=2, sort_keys=True))
        total_q = sum(len(v.questions) for b in benches for v in b.videos)
        summary = summarize(rows, benches, ident, wall_s=time.perf_counter() - t0, complete=len(rows) >= total_q,
                            judge=self.judge.identity())
        write_outputs(self.out, summary)
        self.progress({"kind": "end", "answered": 0, "complete": summary["complete"]})
        return summary


def run_eval(cfg: EvalConfig, progress: ProgressFn | None = None) -> dict:
    """Run (or resume, or re-judge) an evaluation; returns the summary written to cfg.out/summary.json."""
    return Runner(cfg, progress).run()
