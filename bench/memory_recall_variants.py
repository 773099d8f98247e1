"""Where sqlite-vec's hybrid recall lead over rlivs' comes from (issue 27): recall@8 on the quality set (bench/data,
1,552 captions, 260 questions) with each of the three differences between the two hybrids switched, both ways.

The differences (docs/benchmarks.md, "Peers side by side"):
  cos    the vector side ranks by cosine (sqlite-vec's vec0 has no inner product) instead of the dot product;
  nocut  no common-term cut: every informative query word goes to FTS5 (rlivs drops words in > 20% of captions);
  v256   the vector list is cut at 256 before RRF (rlivs fuses its whole exactly re-ranked list).
rlivs runs its own `Memory.search` with each switched on by monkeypatching this process only (runtime/ unchanged);
sqlite-vec (bench/memory_peers.py's adapter, needs apsw + sqlite_vec) runs with the opposite choices (dot: a scan
of the vec0 rows inside the window, ranked by numpy; cut: rlivs' `fts_query`; all: k = every row). Every variant's
shortlist (64) then goes through the same MMR (memory_peers.picks). A variant is named by the sqlite-vec-like
choices it makes, so "cos+nocut+v256" is sqlite-vec's own hybrid and "-" is rlivs' own, for both stores.

    PYTHONPATH=$PWD nice /work/main/.venv/bin/python bench/memory_recall_variants.py --stores rlivs
    PYTHONPATH=$PWD nice /work/peers-venv/bin/python bench/memory_recall_variants.py --stores rlivs,sqlite-vec
    ... --embedder wordllama   (rlivs only unless the venv has wordllama)
Prints a markdown table to stderr and one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "data")]

import memory_peers as mp  # noqa: E402
from embedders import EMBEDDERS  # noqa: E402
from memory_scale import DATA, _iso, _jsonl, _query_texts, _recall  # noqa: E402

SWITCHES = ("cos", "nocut", "v256")


def variants() -> list[tuple[str, ...]]:
    return [c for r in range(len(SWITCHES) + 1) for c in itertools.combinations(SWITCHES, r)]


def label(v: tuple[str, ...]) -> str:
    return "+".join(v) or "-"


def quality_batch(emb) -> mp.Batch:
    rows = _jsonl(DATA / "caption_log.jsonl")
    return mp.make_batch(rows, emb.batch([r["caption"] for r in rows]))


# ------------------------------------------------------------------------------------------------- rlivs

class Patched:
    """rlivs' search with the sqlite-vec-like choices in `v`, for the life of the `with` (this process only)."""

    def __init__(self, v: tuple[str, ...]):
        self.v = v

    def __enter__(self):
        import rlivs.runtime.memory.keywords as kw
        import rlivs.runtime.memory.search as se

        self.kw, self.se = kw, se
        self.saved = (se.exact_rank, kw.COMMON_TERM_FRACTION, kw.COMMON_TERM_POSTINGS, kw.LEXICAL_POSTINGS)
        base = se.exact_rank
        cos, cut = "cos" in self.v, "v256" in self.v

        def exact_rank(ids, vectors, q, head):
            if cos:
                vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
                q = q / max(float(np.linalg.norm(q)), 1e-12)
            order = base(ids, vectors, q, head)
            return order[:mp.PEER_K] if cut else order

        se.exact_rank = exact_rank
        if "nocut" in self.v:
            kw.COMMON_TERM_FRACTION, kw.COMMON_TERM_POSTINGS, kw.LEXICAL_POSTINGS = 1.0, 10 ** 12, 10 ** 12
        return self

    def __exit__(self, *exc):
        (self.se.exact_rank, self.kw.COMMON_TERM_FRACTION, self.kw.COMMON_TERM_POSTINGS,
         self.kw.LEXICAL_POSTINGS) = self.saved


class RlivsVariant(mp.Rlivs):
    def __init__(self, folder: Path, v: tuple[str, ...]):
        super().__init__(folder)
        self.v = v

    def query(self, vector, text, wall_from, wall_to, k):
        with Patched(self.v):
            return super().query(vector, text, wall_from, wall_to, k)


# -------------------------------------------------------------------------------------------- sqlite-vec

class SqliteVecVariant(mp.SqliteVec):
    """memory_peers' sqlite-vec adapter; the choices not in `v` are rlivs' (dot, common-term cut, whole list)."""

    def __init__(self, folder: Path, v: tuple[str, ...]):
        super().__init__(folder)
        self.v = v

    def query(self, vector, text, wall_from, wall_to, k):
        D = mp.D
        where, args = "", []
        if wall_from is not None:
            where, args = " AND wall_start < ? AND wall_end > ?", [wall_to, wall_from]
        n_all = self.conn.execute("SELECT COUNT(*) FROM clips").fetchall()[0][0]
        limit = mp.PEER_K if "v256" in self.v else n_all
        q = np.asarray(vector, "<f4")
        if "cos" in self.v:
            vec = [r[0] for r in self.conn.execute(
                f"SELECT id FROM clips_vec WHERE embedding MATCH ? AND k = ?{where} ORDER BY distance",
                (q.tobytes(), min(limit, 4096), *args))]
        else:  # the dot product: every row inside the window, ranked here (ties: lower id first)
            rows = list(self.conn.execute(
                f"SELECT v.id, v.embedding FROM clips_vec v JOIN clips c ON c.id = v.id WHERE 1"
                f"{where.replace('wall_', 'c.wall_')}", args))
            vec = []
            if rows:
                ids = np.array([r[0] for r in rows], np.int64)
                sims = np.frombuffer(b"".join(r[1] for r in rows), "<f4").reshape(len(rows), D) @ q
                vec = ids[np.lexsort((ids, -sims))][:limit].tolist()
        if "nocut" in self.v:
            terms = mp.keyword_terms(text)
            match = " OR ".join(f'"{t}"' for t in terms) if terms else None
        else:
            from rlivs.runtime.memory.keywords import fts_query

            match = fts_query(self.conn, text, n_all)
        lex: list[int] = []
        if match:
            w = where.replace("wall_", "c.wall_")
            lex = [r[0] for r in self.conn.execute(
                f"SELECT c.id FROM clips_fts f JOIN clips c ON c.id = f.rowid WHERE clips_fts MATCH ?{w} "
                f"ORDER BY f.rank LIMIT ?", (match, *args, mp.PEER_K))]
        ids = mp.rrf(vec, lex)[:k]
        if not ids:
            return mp.Shortlist([], np.zeros((0, D), np.float32), np.zeros(0, np.int64))
        got = {r[0]: r[1:] for r in self.conn.execute(
            "SELECT c.id, c.stream, c.idx, c.n_tokens, v.embedding FROM clips c JOIN clips_vec v ON v.id = c.id "
            "WHERE c.id IN (SELECT value FROM json_each(?))", (json.dumps(ids),))}
        rows = [got[i] for i in ids]
        return mp.Shortlist([f"{s}:{i}" for s, i, _, _ in rows],
                            np.frombuffer(b"".join(r[3] for r in rows), "<f4").reshape(len(rows), D),
                            np.array([r[2] for r in rows], np.int64))


CLASSES = {"rlivs": RlivsVariant, "sqlite-vec": SqliteVecVariant}


def recall(st, emb, questions: list[dict]) -> dict:
    """recall@8 windows applied (all) / no window (all) / plain (the questions without a time expression)."""
    texts = _query_texts(questions)
    qv = emb.batch(texts)
    out = {}
    for lab, use in (("windows", True), ("none", False)):
        got = [set(mp.picks(st, v, t, *((_iso(q["from"]), _iso(q["to"])) if use else (None, None))))
               for q, v, t in zip(questions, qv, texts)]
        out[lab] = _recall(got, questions)["recall@8"]
        if use:
            plain = [j for j, q in enumerate(questions) if q["from"] is None]
            out["plain"] = _recall([got[j] for j in plain], [questions[j] for j in plain])["recall@8"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stores", default="rlivs,sqlite-vec", help="comma-separated, of: rlivs, sqlite-vec")
    ap.add_argument("--embedder", default="random", choices=sorted(EMBEDDERS))
    ap.add_argument("--variants", default="", help="comma-separated labels (e.g. '-,cos,cos+nocut+v256'); "
                                                   "default: all eight")
    args = ap.parse_args(argv)
    emb = EMBEDDERS[args.embedder]()
    mp.D = emb.dim  # the adapters' vector width
    wanted = [v for v in variants() if not args.variants or label(v) in args.variants.split(",")]
    questions = _jsonl(DATA / "questions.jsonl")
    batch = quality_batch(emb)
    result = {"embedder": args.embedder, "captions": len(batch), "questions": len(questions), "recall@8": {}}
    with tempfile.TemporaryDirectory(prefix="recall_variants-") as tmp:
        for name in [s for s in args.stores.split(",") if s]:
            folder = Path(tmp) / name
            folder.mkdir()
            CLASSES[name](folder, ()).build([batch])
            result["recall@8"][name] = {}
            for v in wanted:
                st = CLASSES[name](folder, v)
                st.open()
                try:
                    r = result["recall@8"][name][label(v)] = recall(st, emb, questions)
                finally:
                    st.close()
                print(json.dumps({"store": name, "variant": label(v), **r}), file=sys.stderr, flush=True)
    print(f"| variant (sqlite-vec-like choices) | {' | '.join(result['recall@8'])} |", file=sys.stderr)
    for v in wanted:
        cells = [result["recall@8"][s].get(label(v)) for s in result["recall@8"]]
        print(f"| {label(v)} | " + " | ".join(f"{c['windows']} / {c['none']} / {c['plain']}" for c in cells) + " |",
              file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
