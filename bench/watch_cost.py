"""What watches cost ingest: `EdgeService.publish_clip` (the per-clip path after the commit: events, scoring against
every watch, the matches and the stream's mark in one transaction, pruning) with 0 and with `--watches` watches
that match every caption (the worst case), over `--clips` clips of the tiny model. Prints one JSON line per case,
then one JSON object with both as the last line.

    python bench/watch_cost.py                        # 100 watches (the default --max-watches), 60 clips
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def run(engine, n_watches: int, n_clips: int, keep_matches: int) -> dict:
    from rlivs.edge_app.service.core import EdgeService, ServiceConfig
    from rlivs.runtime.memory import ClipRecord, Memory

    work = Path(tempfile.mkdtemp(prefix="rlivs-watch-cost-"))
    db = work / "memory.db"
    svc = EdgeService(engine, db, config=ServiceConfig(max_watches=max(1, n_watches), keep_matches=keep_matches))
    for i in range(n_watches):
        svc.add_watch(f"watch number {i}", threshold=-1.0)  # every caption matches: the most rows a clip can make
    times = []
    with Memory(db, model_fingerprint=engine.model_fingerprint) as mem:
        mem.open_stream("cam", "bench", engine.backend.info.model_id, "bench")
        for k in range(n_clips):
            text = f"caption {k}: a person walks past the door"
            ids = engine.text.encode(text)
            rec = ClipRecord("cam", k, 2.0 * k, 2.0 * k + 2, text, len(ids), engine.vector(ids))
            mem.commit_clip(rec, None)
            t0 = time.perf_counter()
            svc.publish_clip(rec)
            times.append(time.perf_counter() - t0)
    rows = sum(svc.store.match_counts().values())
    svc.stop()
    svc.store.close()
    edge = sum(p.stat().st_size for p in work.glob("memory.edge.db*"))
    return {"watches": n_watches, "clips": n_clips, "publish_ms_median": round(1000 * statistics.median(times), 3),
            "publish_ms_p95": round(1000 * sorted(times)[int(0.95 * (len(times) - 1))], 3),
            "match_rows": rows, "edge_db_bytes": edge}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--watches", type=int, default=100)
    p.add_argument("--clips", type=int, default=60)
    p.add_argument("--keep-matches", type=int, default=200)
    args = p.parse_args()

    from rlivs.runtime.config import CaptionConfig, ClipConfig, PipelineConfig
    from rlivs.runtime.engine import load_engine

    engine = load_engine("tiny", config=PipelineConfig(clip=ClipConfig(fps=2.0, frames_per_clip=4),
                                                       caption=CaptionConfig(max_new_tokens=8)))
    out = {}
    for n in (0, args.watches):
        out[str(n)] = run(engine, n, args.clips, args.keep_matches)
        print(json.dumps(out[str(n)]))
    print(json.dumps({"keep_matches": args.keep_matches, "cases": out}))


if __name__ == "__main__":
    main()
