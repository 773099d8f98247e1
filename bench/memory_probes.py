"""Probes behind issue 27's memory figures (docs/benchmarks.md, "Packed search columns"), JSON last line each:

  candidates DB [--questions Q]   fraction of the exact top 10 (a scan of every stored vector) inside the candidates
                                  of the full signature and of narrower first stages (a 256-bit prefix)
  synthetic N                     a file of N clips' packs only (random signatures): the column cache's first load,
                                  its RSS, and the signature scan + top-k with one thread and split
  paired Q TREE=DB TREE=DB        two source trees as live processes, the same questions to each in turn (who goes
                                  first alternating): search latency under the same load

Run from the repository root with PYTHONPATH set to the tree measured (paired runs this file in one process per tree,
with PYTHONPATH set to that tree).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent / "data")]
from embedders import random_embedder  # noqa: E402
from memory_scale import DATA, _jsonl, _query_texts  # noqa: E402


def _questions(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    texts = _query_texts(_jsonl(DATA / "questions.jsonl"))
    rng = random.Random(seed)
    texts = [rng.choice(texts) for _ in range(n)]
    return texts, random_embedder(896, 0).batch(texts).astype(np.float32)


def candidates(db: str, n_questions: int, k: int = 10) -> dict:
    from rlivs.runtime.memory import Memory
    from rlivs.runtime.memory import columns as C

    texts, qv = _questions(n_questions, 7)
    m = Memory(db, readonly=True)
    m.search(qv[0], None, mode="paper")
    cache, center = m._cache, m._signature_center()
    ids_all, sigs, norms, dots = cache.ids.view, cache.sigs.view, cache.norms.view, cache.dots.view
    best_s, best_i = np.full((len(qv), k), -np.inf), np.zeros((len(qv), k), np.int64)
    t0 = time.perf_counter()
    cur = m._conn.execute("SELECT id, vector FROM clip_arrays ORDER BY id")
    while rows := cur.fetchmany(50000):  # the exact top k of every question, one pass over every vector
        ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        s = np.concatenate([best_s, qv @ np.frombuffer(b"".join(r[1] for r in rows), "<f4").reshape(len(rows), -1).T], 1)
        i = np.concatenate([best_i, np.broadcast_to(ids, (len(qv), len(ids)))], 1)
        top = np.argpartition(-s, k, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    out: dict = {"exact_scan_s": round(time.perf_counter() - t0, 1), "clips": int(cache.ids.n)}
    prefix = np.ascontiguousarray(sigs[:, :32])
    found: dict[str, list[float]] = {}

    def add(name: str, positions: np.ndarray, q: int) -> None:
        found.setdefault(name, []).append(len(set(ids_all[positions].tolist()) & set(best_i[q].tolist())) / k)

    for q, v in enumerate(qv):
        full = C.estimated_scores(v, center, sigs, norms, dots)
        for n in (1024, 2048):
            add(f"full_top{n}", C.top_k(full, n), q)
        rq = v.astype(np.float64) - center
        h = C.hamming(C.signature_bits(v, center)[:32], prefix).astype(np.float32) * np.float32(np.pi / 256)
        pre = np.cos(h) * norms * np.float32(np.linalg.norm(rq)) + dots
        for n in (1024, 2048, 4096):
            add(f"prefix256_top{n}", C.top_k(pre, n), q)
        for n in (8192, 16384):
            first = C.top_k(pre, n)
            again = C.estimated_scores(v, center, sigs[first], norms[first], dots[first])
            add(f"prefix256_top{n}_then_full_top1024", first[C.top_k(again, 1024)], q)
    return out | {name: round(float(np.mean(v)), 3) for name, v in found.items()}


def synthetic(n: int, width: int = 112) -> dict:
    from rlivs.runtime.memory import columns as C
    from rlivs.runtime.memory import packs

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "packs.db"
        c = sqlite3.connect(path, isolation_level=None)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("CREATE TABLE clips (id INTEGER PRIMARY KEY, stream TEXT, wall_start REAL, wall_end REAL, "
                  "t_end REAL, sig BLOB)")
        c.execute(packs.TABLE)
        c.execute("BEGIN")
        for first in range(1, n + 1, packs.PACK_ROWS):
            ids = np.arange(first, min(first + packs.PACK_ROWS, n + 1), dtype=np.int64)
            tails = np.column_stack([rng.random(len(ids), dtype=np.float32) + 1, rng.random(len(ids), dtype=np.float32)])
            sig = np.concatenate([rng.integers(0, 256, (len(ids), width), dtype=np.uint8), tails.view(np.uint8)], 1)
            packs._write(c, dict(ids=ids, names=[f"cam{i}" for i in range(8)],
                                 codes=rng.integers(0, 8, len(ids)).astype(np.uint16),
                                 wall=np.column_stack([ids * 16.0 + 1.7e9, ids * 16.0 + 1.7e9 + 16]), t_end=ids * 16.0,
                                 sigs=np.ascontiguousarray(sig).tobytes()))
        c.execute("COMMIT")
        c.close()
        r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        conn = sqlite3.connect(path, isolation_level=None)
        cache = C.ColumnCache()
        out: dict = {"clips": n, "load": os.getloadavg()}
        t0, c0 = time.perf_counter(), time.process_time()
        conn.execute("BEGIN")
        cache.refresh(conn, "1", width + C.SIG_TAIL)
        conn.execute("ROLLBACK")
        out |= {"first_load_s": round(time.perf_counter() - t0, 2), "first_load_cpu_s": round(time.process_time() - c0, 2),
                "rss_ids_signatures_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - r0)}
        t0 = time.perf_counter()
        conn.execute("BEGIN")
        cache.refresh(conn, "1", width + C.SIG_TAIL, ("wall",))
        conn.execute("ROLLBACK")
        out |= {"wall_columns_s": round(time.perf_counter() - t0, 2),
                "rss_with_wall_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - r0)}
        conn.close()
    center = rng.standard_normal(width * 8).astype(np.float32)
    q = center + rng.standard_normal(width * 8).astype(np.float32)
    rows, threads = slice(0, cache.ids.n), C.SCAN_THREADS
    for label, t in (("one_thread", 1), (f"{threads}_threads", threads)):
        C.SCAN_THREADS = t
        ws, cs = [], []
        for _ in range(9):
            a, b = time.perf_counter(), time.process_time()
            C.top_k(C.scan(q, center, cache.sigs.view, cache.norms.view, cache.dots.view, rows), 1024)
            ws.append((time.perf_counter() - a) * 1e3)
            cs.append((time.process_time() - b) * 1e3)
        out[f"scan_top1024_{label}"] = {"p50_ms": round(float(np.median(ws)), 1), "cpu_p50_ms": round(float(np.median(cs)), 1)}
    C.SCAN_THREADS = threads
    out["rss_peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - r0)
    return out


def paired_worker(db: str, n_questions: int) -> None:
    from rlivs.runtime.memory import Memory

    texts, qv = _questions(n_questions, 1000000)
    m = Memory(db, readonly=True)
    for i in range(6):  # the cold question, then a few warm ones
        m.search(qv[i], texts[i])
    print("ready", flush=True)
    for line in sys.stdin:
        i = int(line)
        t0, c0 = time.perf_counter(), time.process_time()
        m.search(qv[i], texts[i])
        print(json.dumps([(time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3]), flush=True)


def paired(n_questions: int, trees: list[str]) -> dict:
    procs = {}
    for spec in trees:
        tree, db = spec.split("=", 1)
        procs[spec] = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "paired-worker", db, str(n_questions)],  # (this file: an
            # older tree may not have it; PYTHONPATH picks the tree whose memory code runs)
            cwd=tree, env={**os.environ, "PYTHONPATH": tree}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    for p in procs.values():
        assert p.stdout.readline().strip() == "ready"
    got: dict[str, list] = {k: [] for k in procs}
    load0, names = os.getloadavg(), list(procs)
    for i in range(n_questions):
        for name in (names if i % 2 else names[::-1]):
            p = procs[name]
            p.stdin.write(f"{i}\n")
            p.stdin.flush()
            got[name].append(json.loads(p.stdout.readline()))
    for p in procs.values():
        p.stdin.close()
        p.wait()
    return {k: {"p50_ms": round(float(np.median([a for a, _ in v])), 1),
                "p95_ms": round(float(np.percentile([a for a, _ in v], 95)), 1),
                "cpu_p50_ms": round(float(np.median([b for _, b in v])), 1)} for k, v in got.items()} | {
        "load": [load0, os.getloadavg()]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="probe", required=True)
    p = sub.add_parser("candidates")
    p.add_argument("db")
    p.add_argument("--questions", type=int, default=100)
    p = sub.add_parser("synthetic")
    p.add_argument("clips", type=int)
    p = sub.add_parser("paired")
    p.add_argument("questions", type=int)
    p.add_argument("trees", nargs="+", help="TREE=DB, e.g. /tmp/base=/work/scale/scale-1000000-8.db")
    p = sub.add_parser("paired-worker")
    p.add_argument("db")
    p.add_argument("questions", type=int)
    a = ap.parse_args(argv)
    if a.probe == "paired-worker":
        paired_worker(a.db, a.questions)
        return 0
    out = (candidates(a.db, a.questions) if a.probe == "candidates" else synthetic(a.clips) if a.probe == "synthetic"
           else paired(a.questions, a.trees))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
