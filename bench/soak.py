"""Soak: a simulated long stream through the edge service, with the tiny model, at accelerated speed.

A generated video (8 fps, 320x240) is replayed in a loop as one continuous stream (stream time keeps going across
loops) and ingested as fast as the model allows, clip after clip, through exactly what a `rlivs serve` ingest worker
does per clip: `StreamIngestor.step` (decode -> encode -> caption -> select -> one SQLite transaction) then
`EdgeService.publish_clip` (thumbnail, metrics, SSE event, watch scoring against two watches, one of which matches
every caption: the worst case for the watch store). Questions go through `EdgeService.ask` (the `/v1/ask` path)
at checkpoints. Measured as it runs:

- resident memory (VmRSS) and the FIFO (clips, tokens) after every clip;
- the memory file (memory.db + its WAL) and the watch/thumbnail file (memory.edge.db) at checkpoints;
- question latency at checkpoints, split into retrieval (read every stored vector + MMR: a linear scan, the "index")
  and the rest (prompt + greedy answer, bounded by top-k captions and the answer length).

Then it fits: database bytes per clip (and how linear), retrieval seconds per stored caption (and how linear), the
trend of the non-retrieval part, and resident memory over the second half.

    python bench/soak.py --hours 24                     # the full day at 1 fps, 16-frame clips: 5400 clips
    python bench/soak.py --hours 0.4 --checkpoint 10     # what CI runs (tests/app/test_soak.py), well under a minute
    python bench/soak.py --hours 5.34 --tracemalloc     # also the Python heap at each checkpoint (about 2x slower)

Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

QUESTIONS = ("What moved across the scene?", "When did the green bar appear?", "Where was the red square?")


def rss_mb() -> float:
    """Resident set size now (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def db_sizes(db: Path) -> dict:
    """The file, its write-ahead log (bounded by SQLite's auto-checkpoint, reused, not a store of its own), and the
    bytes of the pages in use (page_count - freelist_count) x page_size: what the stored data occupies."""
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        pages, free, size = (conn.execute(f"PRAGMA {p}").fetchone()[0]
                             for p in ("page_count", "freelist_count", "page_size"))
    finally:
        conn.close()
    wal = db.with_name(db.name + "-wal")
    return {"file": db.stat().st_size, "wal": wal.stat().st_size if wal.exists() else 0, "used": (pages - free) * size}


def fit(x, y) -> dict:
    """Least squares y = a + b x: slope, intercept, R^2, largest residual."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0:
        return {"slope": None, "intercept": None, "r2": None, "max_residual": None}
    b, a = np.polyfit(x, y, 1)
    res = y - (a + b * x)
    ss = float(((y - y.mean()) ** 2).sum())
    return {"slope": float(b), "intercept": float(a), "r2": 1 - float((res ** 2).sum()) / ss if ss else 1.0,
            "max_residual": float(np.abs(res).max())}


class LoopedVideo:
    """A video file replayed end to end forever as one stream: frames sampled at `fps`, stream time continuing."""

    def __init__(self, path: Path, fps: float):
        from rlivs.runtime.sources.file import VideoFileSource

        self.path, self.fps = path, fps
        probe = VideoFileSource(path, fps=fps)
        self.period = round(probe.duration * fps) / fps  # samples per pass / fps: the stream time one pass covers
        self.passes = 0

    def __iter__(self):
        from rlivs.runtime.frames import Frame
        from rlivs.runtime.sources.file import VideoFileSource

        while True:
            offset = self.passes * self.period
            for f in VideoFileSource(self.path, fps=self.fps):
                yield Frame(f.image, offset + f.t)
            self.passes += 1


def soak(bundle: Path, work: Path, hours: float, checkpoint: int, frames_per_clip: int = 16, fps: float = 1.0,
         caption_tokens: int = 16, answer_tokens: int = 16, log=print, trace_heap: bool = False) -> dict:
    from rlivs.edge_app.service.store import edge_db_path
    from rlivs.edge_app.options import pipeline_config
    from rlivs.edge_app.sample_video import make_sample_video
    from rlivs.edge_app.service.core import EdgeService
    from rlivs.runtime.frames import iter_clips
    from rlivs.runtime.memory import Memory
    from rlivs.runtime.engine import load_engine
    from rlivs.runtime.config import EngineConfig
    from rlivs.runtime.ingest import StreamIngestor
    from rlivs.runtime.answer import retrieve

    work.mkdir(parents=True, exist_ok=True)
    if trace_heap:
        tracemalloc.start()
    cfg = pipeline_config(fps=fps, frames_per_clip=frames_per_clip, max_caption_tokens=caption_tokens,
                          max_answer_tokens=answer_tokens)
    engine = load_engine(EngineConfig(model=str(bundle), threads=1), cfg)
    video = make_sample_video(work / "camera.mp4", seconds=64.0)  # 8 fps, 320x240: 4 clips per pass at 1 fps
    n_clips = int(round(hours * 3600 * fps / frames_per_clip))
    db = work / "memory.db"
    for p in work.glob("memory*.db*"):
        p.unlink()
    service = EdgeService(engine, db)
    service.add_watch("a red square moves to the right")  # the default threshold: matches rarely
    service.add_watch("anything at all", threshold=-1.0)  # matches every caption: a match row per clip
    fifo_cap = cfg.fifo.capacity_clips
    full_clip = frames_per_clip * engine.backend.info.tokens_per_frame
    fifo_token_cap = fifo_cap * cfg.selection.n_keep(full_clip)

    # per-clip samples in preallocated arrays: the harness itself must not grow while it measures growth
    per_clip = {k: np.zeros(n_clips) for k in ("rss_mb", "fifo_clips", "fifo_tokens", "step_s")}
    checkpoints = []
    t_start = time.monotonic()
    source = LoopedVideo(video, fps)
    with Memory(db, model_fingerprint=engine.model_fingerprint) as mem:
        ing = StreamIngestor(service.ingest_engine, mem, stream="camera", source=str(video))
        rss0 = rss_mb()
        for clip in iter_clips(source, frames_per_clip, fps):
            if clip.index >= n_clips:
                break
            t0 = time.perf_counter()
            result = ing.step(clip)
            record = mem.clips("camera", limit=1, offset=result.index)[0]
            service.publish_clip(record, result, middle_frame=clip.frames[len(clip) // 2], behind_live_s=0.0)
            i = clip.index
            per_clip["step_s"][i] = time.perf_counter() - t0
            per_clip["rss_mb"][i] = rss_mb()
            per_clip["fifo_clips"][i] = len(ing.fifo)
            per_clip["fifo_tokens"][i] = ing.fifo.n_tokens
            assert len(ing.fifo) <= fifo_cap and ing.fifo.n_tokens <= fifo_token_cap, "the FIFO outgrew its bound"
            n = clip.index + 1
            if n % checkpoint == 0 or n == n_clips:
                lat, retr = [], []
                with Memory(db, readonly=True) as ro:  # what a question reads: the index shortlist, then MMR
                    for q in QUESTIONS:
                        r0 = time.perf_counter()
                        qv = engine.vector(engine.text.encode(q))
                        picked = retrieve(ro, qv, q, cfg.retrieval)
                        retr.append(time.perf_counter() - r0)
                        a0 = time.perf_counter()
                        answer = service.ask(q)
                        lat.append(time.perf_counter() - a0)
                        assert answer["captions"], "a question found no caption"
                    del picked, answer  # measure what stays, not the last question's working set
                mdb, edb = db_sizes(db), db_sizes(edge_db_path(db))
                checkpoints.append({
                    "clips": n, "stream_hours": round(record.t_end / 3600, 3),
                    "wall_s": round(time.monotonic() - t_start, 1),
                    "rss_mb": round(rss_mb(), 1), "memory_db_used": mdb["used"], "memory_db_file": mdb["file"],
                    "memory_db_wal": mdb["wal"], "edge_db_used": edb["used"], "edge_db_file": edb["file"],
                    "edge_db_wal": edb["wal"],
                    "question_s": round(float(np.median(lat)), 5), "retrieval_s": round(float(np.median(retr)), 5),
                    "rest_s": round(float(np.median(lat)) - float(np.median(retr)), 5),
                    "fifo_clips": len(ing.fifo), "fifo_tokens": ing.fifo.n_tokens})
                if trace_heap:  # Python objects only (native allocations of ONNX Runtime, SQLite, FFmpeg are not seen)
                    checkpoints[-1]["python_heap_mb"] = round(tracemalloc.get_traced_memory()[0] / 1e6, 3)
                log(json.dumps(checkpoints[-1]))
        stored = len(mem.clips("camera"))
    service.stop()
    wall = time.monotonic() - t_start

    cp = checkpoints
    filled = [c for c in cp if c["clips"] > fifo_cap]  # once the FIFO is full, its rows are a constant
    rss = per_clip["rss_mb"][:stored].tolist()
    steps = per_clip["step_s"][:stored].tolist()
    half = len(rss) // 2
    out = {
        "clips": stored, "clips_planned": n_clips, "stream_hours": cp[-1]["stream_hours"] if cp else 0.0,
        "frames_per_clip": frames_per_clip, "fps": fps, "caption_tokens": caption_tokens,
        "answer_tokens": answer_tokens, "wall_s": round(wall, 1),
        "speedup_vs_real_time": round(cp[-1]["stream_hours"] * 3600 / wall, 1) if cp else None,
        "step_s_median": round(float(np.median(steps)), 4),
        "step_s_first_vs_last_tenth": [round(float(np.median(steps[: max(1, len(steps) // 10)])), 4),
                                       round(float(np.median(steps[-max(1, len(steps) // 10):])), 4)],
        "fifo_max_clips": int(per_clip["fifo_clips"].max()), "fifo_max_tokens": int(per_clip["fifo_tokens"].max()),
        "fifo_bound": [fifo_cap, fifo_token_cap],
        "rss_mb": {"before_first_clip": round(rss0, 1), "after_first_clip": round(rss[0], 1),
                   "at_half": round(rss[half], 1), "end": round(rss[-1], 1), "max": round(max(rss), 1),
                   "second_half_slope_mb_per_1000_clips":
                       round(fit(range(half, len(rss)), rss[half:])["slope"] * 1000, 3) if len(rss) - half >= 3 else None},
        "memory_db": {"fit_used_bytes_per_clip": fit([c["clips"] for c in filled],
                                                     [c["memory_db_used"] for c in filled]),
                      "end_used": cp[-1]["memory_db_used"], "end_file": cp[-1]["memory_db_file"],
                      "max_wal": max(c["memory_db_wal"] for c in cp)},
        "edge_db": {"fit_used_bytes_per_clip": fit([c["clips"] for c in filled], [c["edge_db_used"] for c in filled]),
                    "end_used": cp[-1]["edge_db_used"], "end_file": cp[-1]["edge_db_file"],
                    "max_wal": max(c["edge_db_wal"] for c in cp)},
        "retrieval": {"fit_s_per_caption": fit([c["clips"] for c in cp], [c["retrieval_s"] for c in cp])},
        "rest_of_question": {"fit_s_per_caption": fit([c["clips"] for c in cp], [c["rest_s"] for c in cp]),
                             "median_s": round(float(np.median([c["rest_s"] for c in cp])), 5) if cp else None},
        "question_s_first_last": [cp[0]["question_s"], cp[-1]["question_s"]] if cp else None,
        "python_heap_mb_first_last": ([cp[0]["python_heap_mb"], cp[-1]["python_heap_mb"]] if trace_heap and cp
                                      else None),
        "checkpoints": cp,
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hours", type=float, default=24.0, help="stream time to simulate")
    ap.add_argument("--checkpoint", type=int, default=100, help="measure files and questions every N clips")
    ap.add_argument("--frames-per-clip", type=int, default=16)
    ap.add_argument("--fps", type=float, default=1.0)
    ap.add_argument("--caption-tokens", type=int, default=16)
    ap.add_argument("--answer-tokens", type=int, default=16)
    ap.add_argument("--bundle", type=Path, help="an exported tiny bundle (default: export one to the workdir)")
    ap.add_argument("--workdir", type=Path, help="default: a temp dir")
    ap.add_argument("--tracemalloc", action="store_true", help="record the Python heap at checkpoints (slower)")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = a.workdir or Path(tempfile.mkdtemp(prefix="rlivs-soak-"))
    bundle = a.bundle
    if bundle is None:
        from rlivs.export.bundle import ExportConfig, export_bundle

        bundle = work / "bundle"
        if not (bundle / "manifest.json").exists():
            export_bundle("tiny", bundle, ExportConfig(embed_dtype="float32"))
    out = soak(bundle, work, a.hours, a.checkpoint, a.frames_per_clip, a.fps, a.caption_tokens, a.answer_tokens,
               log=lambda s: print(s, file=sys.stderr), trace_heap=a.tracemalloc)
    print(json.dumps({"command": " ".join(["python bench/soak.py", *sys.argv[1:]]), **out}))


if __name__ == "__main__":
    main()
