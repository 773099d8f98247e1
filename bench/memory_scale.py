"""Memory for months: retrieval latency, RSS, commit cost and disk use at 10k-1M captions; retrieval quality.

Scale (per size N and stream count): a memory of N realistic 20-60-word captions (bench/data/make_caption_log.py's
builders: every 16-s clip captioned, wall-clock times, streams round-robin), D = 896 vectors from the random
embedder (what a random-weight 0.5B LLM gives: mean of unit token embeddings), loaded with `Memory.import_clips`.
Then, each in its own process:
- latency: `rlivs.runtime.answer.retrieve` (everything answer() does before generation: index search inside the
  filters, then MMR under the token budget) for the quality set's questions, p50/p95, without and with a time filter
  (a random 6-hour window inside the memory's span), after one cold question (reads the per-process column cache);
- peak RSS of that process minus the same process over an empty memory;
- commit: `commit_clip` of --commits new clips in a live stream (a 196 x 896 float32 FIFO entry each, the oldest
  evicted past 16), p50/p95;
- disk: the file's bytes (indexes included, WAL checkpointed) per clip and per hour of video (225 clips/h).
Quality (bench/data/caption_log.jsonl + questions.jsonl): recall@8 of the picks of `retrieve` in paper / lexical /
hybrid mode, with the random embedder and with wordllama, with and without the questions' time windows; and the
agreement of the shortlist-based picks (paper mode) with MMR over every caption, for shortlists 16/32/64/128
(identical pick sets, mean overlap of the pick sets, and recall@8 of each; questions without their time windows).

recall@8 = fraction of questions with at least one answer clip among the (at most 8) picks; answer_recall@8 = mean
fraction of a question's answer clips among the picks (of at most 8 of them). Prints one JSON object as its last line.

    python bench/memory_scale.py --quick                              # 2k captions, random embedder only: checks the harness
    python bench/memory_scale.py --sizes 10000,100000 --streams 1,4   # default
    nice python bench/memory_scale.py --sizes 1000000 --streams 1,4 --skip-quality
    nice python bench/memory_scale.py --sizes 4000000 --streams 8 --skip-quality --tmp /work/scale --reuse \
        --build-batch 100000                                          # a season: 8 cameras x 3 months
    python bench/memory_scale.py --sizes 0                            # quality only
    nice python bench/memory_scale.py --profile /work/scale/scale-4000000-8.db --questions 50 --seed 4000000
                                                                      # where one retrieve's time goes, per stage
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "data")]

from embedders import EMBEDDERS, random_embedder, tokens  # noqa: E402
from make_caption_log import CLIP_S, scale_captions  # noqa: E402

DATA = HERE / "data"
D = 896
CLIPS_PER_HOUR = 3600 / CLIP_S  # 225
SHORTLISTS = (16, 32, 64, 128)
TARGETS = {"p50_ms_max": 50.0, "p95_ms_max": 100.0, "rss_mb_over_empty_max": 300.0, "commit_p50_ms_max": 5.0,
           "mb_per_hour_max": 2.0}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _iso(s: str | None) -> float | None:
    return None if s is None else datetime.fromisoformat(s).timestamp()


def _pct(xs: list[float]) -> dict:
    a = np.asarray(xs) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p95_ms": round(float(np.percentile(a, 95)), 2),
            "n": len(xs)}


def _records(rows, emb, chunk: int = 5000):
    """ClipRecords (vectors from `emb`) for caption rows, embedded `chunk` at a time."""
    from rlivs.runtime.memory import ClipRecord

    buf = []

    def flush():
        vecs = emb.batch([r["caption"] for r in buf])  # (n, D)
        out = [ClipRecord(stream=r["stream"], index=r["index"], t_start=r["t_start"], t_end=r["t_end"],
                          caption=r["caption"], n_tokens=len(tokens(r["caption"])), vector=v,
                          wall_start=r["wall_start"], wall_end=r["wall_end"]) for r, v in zip(buf, vecs)]
        buf.clear()
        return out

    for r in rows:
        buf.append(r)
        if len(buf) >= chunk:
            yield from flush()
    if buf:
        yield from flush()


def build_memory(path: Path, rows, emb, batch: int | None = None) -> dict:
    """Load caption rows into a new memory with `Memory.import_clips`: in one transaction, or (`batch`) one
    transaction per `batch` clips, so that a 4M-caption build never holds the whole memory in its WAL or in Python."""
    import itertools

    from rlivs.runtime.memory import Memory

    t0 = time.perf_counter()
    n = 0
    records = _records(rows, emb)
    with Memory(path) as mem:
        if not batch:
            n = mem.import_clips(records)
        else:
            while part := list(itertools.islice(records, batch)):
                n += mem.import_clips(part)
                print(json.dumps({"building": str(path), "clips": n, "s": round(time.perf_counter() - t0, 1)}),
                      file=sys.stderr, flush=True)
    return {"clips": n, "build_s": round(time.perf_counter() - t0, 1)}


def _built(path: Path, n: int) -> bool:
    """Whether `path` already holds a finished scale memory of n clips (--reuse)."""
    from rlivs.runtime.memory import Memory

    if not path.exists():
        return False
    with Memory(path, readonly=True) as mem:
        return mem.count_clips() == n


def disk_bytes(path: Path) -> int:
    return sum(os.path.getsize(p) for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists())


def _query_texts(questions: list[dict]) -> list[str]:
    """The questions as retrieval sees them: the time expression removed (answer() parses it into a window)."""
    out = []
    for q in questions:
        text = q["question"]
        if q["time_expression"]:
            text = text.replace(" " + q["time_expression"], "")
        out.append(text)
    return out


# ---------------------------------------------------------------------------------------------- workers

PROFILE_STAGES = (  # (module, attribute, stage): what a retrieve spends, wrapped by --profile
    ("rlivs.runtime.memory.columns", "ColumnCache.refresh", "cache catch-up (refresh)"),
    ("rlivs.runtime.memory.columns", "ColumnCache.select", "filter (select rows)"),
    ("rlivs.runtime.memory.search", "fts_query", "keywords: terms + document frequencies"),
    ("rlivs.runtime.memory.search", "lexical", "keywords: FTS5 BM25 top 256"),
    ("rlivs.runtime.memory.search", "scan", "vector: signature scan (Hamming estimate)"),
    ("rlivs.runtime.memory.search", "top_k", "vector: top 1,024 of the estimates"),
    ("rlivs.runtime.memory.search", "fetch_vectors", "vector: read 1,024 candidate vectors"),
    ("rlivs.runtime.memory.search", "exact_rank", "vector: exact re-rank"),
    ("rlivs.runtime.memory.search", "fetch", "shortlist: read 64 records"),
    ("rlivs.runtime.answer", "mmr", "MMR + token budget"),
)


class StageProfile:
    """Wall and CPU time (the whole process: the scan's threads count) per retrieve stage, by wrapping the functions
    in PROFILE_STAGES where search() / retrieve() look them up. `question()` starts a question's row."""

    def __init__(self):
        import importlib

        self.rows: list[dict[str, list[float]]] = []
        self.undo = []
        for mod_name, attr, stage in PROFILE_STAGES:
            mod = importlib.import_module(mod_name)
            owner, name = (getattr(mod, attr.split(".")[0]), attr.split(".")[1]) if "." in attr else (mod, attr)
            f = owner.__dict__[name]
            self.undo.append((owner, name, f))
            setattr(owner, name, self._wrap(f, stage))

    def _wrap(self, f, stage: str):
        def timed(*a, **kw):
            w, c = time.perf_counter(), time.process_time()
            try:
                return f(*a, **kw)
            finally:
                got = self.rows[-1].setdefault(stage, [0.0, 0.0])
                got[0] += time.perf_counter() - w
                got[1] += time.process_time() - c
        return timed

    def question(self) -> None:
        self.rows.append({})

    def close(self) -> None:
        for owner, name, f in self.undo:
            setattr(owner, name, f)

    def table(self, totals: list[tuple[float, float]]) -> dict:
        """stage -> wall p50 / mean, CPU mean (ms) over the questions; 'retrieve (total)' and 'other' (the rest)."""
        stages = [s for _, _, s in PROFILE_STAGES]
        wall = {s: np.array([r.get(s, [0.0, 0.0])[0] for r in self.rows]) * 1e3 for s in stages}
        cpu = {s: np.array([r.get(s, [0.0, 0.0])[1] for r in self.rows]) * 1e3 for s in stages}
        tw, tc = np.array([t[0] for t in totals]) * 1e3, np.array([t[1] for t in totals]) * 1e3
        wall["other"], cpu["other"] = tw - sum(wall[s] for s in stages), tc - sum(cpu[s] for s in stages)
        wall["retrieve (total)"], cpu["retrieve (total)"] = tw, tc
        return {s: {"wall_p50_ms": round(float(np.median(wall[s])), 2), "wall_mean_ms": round(float(wall[s].mean()), 2),
                    "cpu_mean_ms": round(float(cpu[s].mean()), 2)} for s in wall}


def worker_latency(db: str, n_questions: int, seed: int, profile: bool = False) -> dict:
    """In its own process: retrieve() latency without / with a time filter, and peak RSS. `profile`: instead of the
    percentiles, wall and CPU time per stage of retrieve() (StageProfile), without and with the 6-h window."""
    if profile:
        return _profile_latency(db, n_questions, seed)
    from rlivs.runtime.answer import retrieve
    from rlivs.runtime.config import RetrievalConfig
    from rlivs.runtime.memory import Memory

    emb = random_embedder(D, 0)
    texts = _query_texts(_jsonl(DATA / "questions.jsonl"))
    rng = random.Random(seed)
    texts = [rng.choice(texts) for _ in range(n_questions)]
    qv = emb.batch(texts)  # (Q, D)
    rc = RetrievalConfig()
    out = {}
    with Memory(db, readonly=True) as mem:
        spans = [(s.get("wall_start"), s.get("wall_end")) for s in mem.info().get("streams", [])]
        lo = min((a for a, _ in spans if a is not None), default=None)
        hi = max((b for _, b in spans if b is not None), default=None)
        t0 = time.perf_counter()
        picks = retrieve(mem, qv[0], texts[0], rc)
        out["cold_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
        out["picks_first"] = len(picks)
        plain, windowed, considered = [], [], []
        for v, text in zip(qv, texts):
            t0 = time.perf_counter()
            retrieve(mem, v, text, rc)
            plain.append(time.perf_counter() - t0)
        if lo is not None and hi is not None and hi - lo > 6 * 3600:
            for v, text in zip(qv, texts):
                w0 = rng.uniform(lo, hi - 6 * 3600)
                t0 = time.perf_counter()
                retrieve(mem, v, text, rc, wall_from=w0, wall_to=w0 + 6 * 3600)
                windowed.append(time.perf_counter() - t0)
        searched = []
        for v, text in zip(qv, texts):
            t0 = time.perf_counter()
            mem.search(v, text, mode=rc.mode, shortlist=rc.shortlist)
            searched.append(time.perf_counter() - t0)
        out["no_filter"] = _pct(plain) if plain else None
        out["search_only_no_filter"] = _pct(searched) if searched else None
        out["time_filter_6h"] = _pct(windowed) if windowed else None
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def _profile_latency(db: str, n_questions: int, seed: int) -> dict:
    from rlivs.runtime import answer
    from rlivs.runtime.config import RetrievalConfig
    from rlivs.runtime.memory import Memory

    texts = _query_texts(_jsonl(DATA / "questions.jsonl"))
    rng = random.Random(seed)
    texts = [rng.choice(texts) for _ in range(n_questions)]
    qv = random_embedder(D, 0).batch(texts)
    rc = RetrievalConfig()
    out = {"load": os.getloadavg()}
    with Memory(db, readonly=True) as mem:
        spans = [(s.get("wall_start"), s.get("wall_end")) for s in mem.info().get("streams", [])]
        lo = min((a for a, _ in spans if a is not None), default=None)
        hi = max((b for _, b in spans if b is not None), default=None)
        prof = StageProfile()  # the cold question (the column cache's first load), a table of its own
        try:
            prof.question()
            w, c = time.perf_counter(), time.process_time()
            answer.retrieve(mem, qv[0], texts[0], rc)
            cold = (time.perf_counter() - w, time.process_time() - c)
        finally:
            prof.close()
        out["cold"] = {"wall_ms": round(cold[0] * 1e3, 1), "cpu_ms": round(cold[1] * 1e3, 1),
                       "stages": {k: {"wall_ms": v["wall_p50_ms"], "cpu_ms": v["cpu_mean_ms"]}
                                  for k, v in prof.table([cold]).items()}}
        windows = [None] + ([(lo, hi)] if lo is not None and hi is not None and hi - lo > 6 * 3600 else [])
        for window in windows:
            prof, totals = StageProfile(), []
            try:
                for v, text in zip(qv, texts):
                    kw = {}
                    if window is not None:
                        w0 = rng.uniform(lo, hi - 6 * 3600)
                        kw = dict(wall_from=w0, wall_to=w0 + 6 * 3600)
                    prof.question()
                    w, c = time.perf_counter(), time.process_time()
                    answer.retrieve(mem, v, text, rc, **kw)
                    totals.append((time.perf_counter() - w, time.process_time() - c))
            finally:
                prof.close()
            out["no_filter" if window is None else "time_filter_6h"] = prof.table(totals)
    out["load_end"] = os.getloadavg()
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def worker_commit(db: str, n: int) -> dict:
    """In its own process: commit_clip cost of n new clips of a live stream after the memory's last clip."""
    from rlivs.runtime.memory import ClipRecord, Memory

    emb = random_embedder(D, 0)
    rows = list(scale_captions(n, 1, seed=99))
    vecs = emb.batch([r["caption"] for r in rows])
    rng = np.random.default_rng(0)
    fifo = rng.standard_normal((196, D)).astype(np.float32)  # one clip's kept tokens (6.25% of 3136)
    times = []
    with Memory(db) as mem:
        info = mem.info()
        t_end = max((s.get("wall_end") or 0.0 for s in info.get("streams", [])), default=0.0) or time.time()
        st = mem.open_stream("bench-live", "bench", "random-0.5b", "bench")
        for j, (r, v) in enumerate(zip(rows, vecs)):
            i = st.next_index + j
            rec = ClipRecord(stream="bench-live", index=i, t_start=i * CLIP_S, t_end=(i + 1) * CLIP_S,
                             caption=r["caption"], n_tokens=len(tokens(r["caption"])), vector=v,
                             wall_start=t_end + i * CLIP_S, wall_end=t_end + (i + 1) * CLIP_S)
            evict = [i - 16] if i >= 16 else []
            t0 = time.perf_counter()
            mem.commit_clip(rec, fifo, evict=evict)
            times.append(time.perf_counter() - t0)
    return _pct(times)


def _in_process(kind: str, **kw) -> dict:
    """Run a worker in a fresh interpreter; its JSON is the last line of its output."""
    args = [sys.executable, __file__, "--worker", kind, "--worker-args", json.dumps(kw)]
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"worker {kind} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- scale

def scale(n: int, streams: int, tmp: Path, args) -> dict:
    from rlivs.runtime.memory import Memory

    db = tmp / f"scale-{n}-{streams}.db"
    out = {"captions": n, "streams": streams}
    if args.reuse and _built(db, n):
        out["reused"] = True
    else:
        for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            p.unlink(missing_ok=True)  # an unfinished build is started again
        out.update(build_memory(db, scale_captions(n, streams), random_embedder(D, 0), args.build_batch))
        with Memory(db):
            pass  # the last close checkpoints the WAL
    if args.build_only:
        print(json.dumps(out), flush=True)
        return out
    size = disk_bytes(db)
    out["disk"] = {"bytes": size, "bytes_per_clip": round(size / n), "mb_per_hour": round(size / n * CLIPS_PER_HOUR
                                                                                          / 1e6, 3)}
    out["latency"] = _in_process("latency", db=str(db), n_questions=args.questions, seed=n)
    out["rss_mb_over_empty"] = round(out["latency"]["peak_rss_mb"] - args.empty_rss_mb, 1)
    out["commit"] = _in_process("commit", db=str(db), n=args.commits)
    if args.agreement_max and n <= args.agreement_max:
        out["agreement_paper"] = agreement(db, _jsonl(DATA / "questions.jsonl")[:args.agreement_questions],
                                           random_embedder(D, 0), with_recall=False)
    if not (args.keep or args.reuse):
        for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            p.unlink(missing_ok=True)
    print(json.dumps(out), flush=True)
    return out


# ---------------------------------------------------------------------------------------------- quality

def _recall(picked_ids: list[set[str]], questions: list[dict]) -> dict:
    hit, frac = [], []
    for got, q in zip(picked_ids, questions):
        ans = set(q["answers"])
        hit.append(bool(got & ans))
        frac.append(len(got & ans) / min(len(ans), 8))
    return {"recall@8": round(float(np.mean(hit)), 3), "answer_recall@8": round(float(np.mean(frac)), 3),
            "n": len(questions)}


def _picks(mem, emb, questions, mode: str, use_window: bool, shortlist: int = 64) -> list[set[str]]:
    from rlivs.runtime.answer import retrieve
    from rlivs.runtime.config import RetrievalConfig

    rc = RetrievalConfig(mode=mode, shortlist=shortlist)
    texts = _query_texts(questions)
    qv = emb.batch(texts)
    out = []
    for q, v, text in zip(questions, qv, texts):
        w = (_iso(q["from"]), _iso(q["to"])) if use_window else (None, None)
        picks = retrieve(mem, v, text, rc, wall_from=w[0], wall_to=w[1])
        out.append({f"{r.stream}:{r.index}" for r, _ in picks})
    return out


def agreement(db: Path, questions: list[dict], emb, with_recall: bool = True) -> dict:
    """Fraction of questions whose shortlist-based picks (paper mode) equal MMR over every caption, the mean
    overlap of the two pick sets, and (`with_recall`: the questions' answers are clips of this memory) recall@8."""
    from rlivs.runtime.config import RetrievalConfig
    from rlivs.runtime.memory import Memory
    from rlivs.runtime.retrieval import mmr

    rc = RetrievalConfig()
    with Memory(db, readonly=True) as mem:
        recs = mem.clips()
        mat = np.stack([r.vector for r in recs]).astype(np.float32)  # (N, D)
        costs = np.array([r.n_tokens for r in recs], dtype=np.float64)
        ids = [f"{r.stream}:{r.index}" for r in recs]
        del recs
        texts = _query_texts(questions)
        qv = emb.batch(texts)
        exhaustive = [{ids[i] for i in mmr(v, mat, rc.top_k, rc.mmr_lambda, costs=costs, budget=rc.token_budget)}
                      for v in qv]
        same, overlap, recall = {}, {}, {"exhaustive": _recall(exhaustive, questions)["recall@8"]}
        for s in SHORTLISTS:
            got = _picks(mem, emb, questions, "paper", False, shortlist=s)
            same[str(s)] = round(float(np.mean([a == b for a, b in zip(got, exhaustive)])), 3)
            overlap[str(s)] = round(float(np.mean([len(a & b) / max(len(b), 1) for a, b in zip(got, exhaustive)])), 3)
            recall[str(s)] = _recall(got, questions)["recall@8"]
    out = {"identical_picks": same, "mean_overlap": overlap, "questions": len(questions), "captions": len(ids)}
    return {**out, "recall@8": recall} if with_recall else out


def time_parser(questions: list[dict]) -> dict:
    """How often runtime.timeq.parse_question (what answer() uses) gives each timed question's window (an open or
    later end read as `now`), and its text without the phrase."""
    from rlivs.runtime.timeq import parse_question

    timed = [q for q in questions if q["from"] is not None]
    same, wrong = 0, []
    for q in timed:
        now = datetime.fromisoformat(q["now"])
        tq = parse_question(q["question"], now, "UTC")
        got = tq.window.as_unix() if tq.window is not None else (None, None)
        end = min(got[1] if got[1] is not None else now.timestamp(), now.timestamp())
        if got[0] == _iso(q["from"]) and end == _iso(q["to"]):
            same += 1
        else:
            wrong.append({"question": q["question"], "expected": [q["from"], q["to"]],
                          "got": [None if x is None else datetime.fromtimestamp(x, now.tzinfo).isoformat()
                                  for x in got]})
    return {"same_window": same, "timed_questions": len(timed), "mismatches": wrong[:10]}


def quality(tmp: Path, embedders: list[str]) -> dict:
    from rlivs.runtime.memory import Memory

    rows = _jsonl(DATA / "caption_log.jsonl")
    questions = _jsonl(DATA / "questions.jsonl")
    timed = [q for q in questions if q["from"] is not None]
    plain = [q for q in questions if q["from"] is None]
    out = {"captions": len(rows), "questions": len(questions), "timed_questions": len(timed),
           "time_parser": time_parser(questions)}
    for name in embedders:
        emb = EMBEDDERS[name]()
        db = tmp / f"quality-{name}.db"
        build_memory(db, rows, emb)
        res = {"dim": emb.dim}
        with Memory(db, readonly=True) as mem:
            for mode in ("paper", "lexical", "hybrid"):
                res[mode] = {
                    "all_windows_applied": _recall(_picks(mem, emb, questions, mode, True), questions),
                    "all_no_filter": _recall(_picks(mem, emb, questions, mode, False), questions),
                    "plain": _recall(_picks(mem, emb, plain, mode, False), plain),
                    "timed_with_filter": _recall(_picks(mem, emb, timed, mode, True), timed),
                    "timed_without_filter": _recall(_picks(mem, emb, timed, mode, False), timed),
                }
        res["agreement_paper"] = agreement(db, questions, emb)
        out[name] = res
        print(json.dumps({"quality": name, **res}), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--sizes", default="10000,100000", help="memory sizes in captions, comma-separated (0: none)")
    ap.add_argument("--streams", default="1,4", help="stream counts, comma-separated")
    ap.add_argument("--questions", type=int, default=200, help="timed questions per latency measurement")
    ap.add_argument("--commits", type=int, default=200, help="clips committed for the commit cost")
    ap.add_argument("--embedders", default="random,wordllama", help="embedders for the quality set")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--agreement-max", type=int, default=10000,
                    help="also measure shortlist agreement on scale memories up to this size (0: never)")
    ap.add_argument("--agreement-questions", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="2k captions, 20 questions, 20 commits, quality with the random embedder: checks the harness")
    ap.add_argument("--tmp", type=Path, default=None, help="folder for the memories (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the scale memories")
    ap.add_argument("--reuse", action="store_true",
                    help="keep the scale memories under --tmp and reuse one already built there (implies --keep)")
    ap.add_argument("--build-only", action="store_true", help="build (or find, with --reuse) the memories only")
    ap.add_argument("--build-batch", type=int, default=None,
                    help="import this many clips per transaction (default: all in one; 4M wants e.g. 100000)")
    ap.add_argument("--profile", type=Path, default=None, metavar="DB",
                    help="per-stage wall and CPU time of retrieve() on the memory DB (opened read-only), --questions "
                         "questions without and with a 6-h window, after one cold question; nothing else runs")
    ap.add_argument("--seed", type=int, default=0, help="question order (and windows) of --profile")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-args", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        kw = json.loads(args.worker_args)
        print(json.dumps({"latency": worker_latency, "commit": worker_commit}[args.worker](**kw)))
        return 0
    if args.profile is not None:
        print(json.dumps(worker_latency(str(args.profile), args.questions, args.seed, profile=True)))
        return 0
    if args.quick:
        args.sizes, args.questions, args.commits, args.agreement_questions = "2000", 20, 20, 20
        args.embedders = "random"
    sizes = [int(s) for s in args.sizes.split(",") if int(s) > 0]
    stream_counts = [int(s) for s in args.streams.split(",")]
    if args.reuse and args.tmp is None:
        ap.error("--reuse needs --tmp (the folder the memories are kept in)")
    if args.reuse:
        args.keep = True
        args.tmp.mkdir(parents=True, exist_ok=True)
    tmp_ctx = tempfile.TemporaryDirectory(prefix="memory_scale-", dir=args.tmp) if not args.keep else None
    tmp = Path(tmp_ctx.name) if tmp_ctx else (args.tmp or Path(tempfile.mkdtemp(prefix="memory_scale-")))
    result = {"d": D, "targets": TARGETS, "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg(),
              "scale": []}
    try:
        if sizes:
            from rlivs.runtime.memory import Memory

            empty = tmp / "empty.db"
            with Memory(empty):
                pass
            base = _in_process("latency", db=str(empty), n_questions=args.questions, seed=0)
            args.empty_rss_mb = base["peak_rss_mb"]
            result["empty_peak_rss_mb"] = base["peak_rss_mb"]
            for n in sizes:
                for s in stream_counts:
                    result["scale"].append(scale(n, s, tmp, args))
        if not args.skip_quality:
            result["quality"] = quality(tmp, [e for e in args.embedders.split(",") if e])
    finally:
        if tmp_ctx:
            tmp_ctx.cleanup()
    result["loadavg_end"] = os.getloadavg()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
