"""Peers side by side (issue 27): rlivs' memory and the embedded stores an edge user would pick instead, on the
same captions, vectors, filters and questions.

Data (bench/memory_scale.py's builders, imported): N realistic captions over S cameras (`scale_captions`, 16-s
clips round-robin, wall-clock times), D = 896 random-embedder vectors (mean of unit token vectors), embedded once
per size into a cache folder and loaded into every store from there; the quality set (bench/data) for recall@8.

Stores (`STORES`, one adapter class each with build / open / commit / query / close):
- rlivs: `Memory.import_clips`, `Memory.commit_clip` (no FIFO rows: the same clip as the peers), `Memory.search`
  (hybrid: signature scan + exact re-rank inside the filters, FTS5 BM25 inside the filters, RRF k=60);
- sqlite-vec: apsw's SQLite, one file: a `clips` table, an FTS5 table over the captions and a vec0 table (cosine;
  stream as a partition key, wall_start/wall_end as metadata columns, n_tokens as an auxiliary column); one
  transaction per clip; vec0 KNN with the window in its WHERE, FTS5 bm25 joined to `clips` for the window; RRF;
- lancedb: one table (vector, caption, stream, times); an IVF-PQ vector index (dot; from `LANCE_INDEX_MIN` rows;
  refine) and a native FTS index on the caption, btree indexes on wall_start/wall_end; LanceDB's own hybrid query
  (`query_type="hybrid"`, `RRFReranker`, the window as a prefilter `where`);
- duckdb: one file, `vss` HNSW index (inner product, experimental persistence on) and `fts` (BM25; its index does not
  follow inserts: it is rebuilt by `PRAGMA create_fts_index(..., overwrite=1)`, so a committed clip is not keyword
  findable until then); vector and keyword top-k by SQL with the window in WHERE; RRF in Python;
- tantivy+faiss: tantivy (BM25 with block-max WAND; the window as a range query inside the BooleanQuery; every clip
  stored whole, vector as bytes, committed per clip) + a faiss HNSW (inner product, IDSelector filter) held in memory
  and written at close; on open it catches up the clips committed since from tantivy (ids above its count); RRF.
Every peer's hybrid: vector top-`PEER_K` and keyword top-`PEER_K` (the question's informative words, rlivs' stop
list, OR-ed in the engine's syntax), fused by reciprocal rank (k = 60), the best 64 with their vectors; then, for
every store alike, the MMR rlivs' answer() applies (top 8, 2048 caption tokens, lambda 0.5) picks the clips.

Per store and size: build time (load + indexes), p50/p95 retrieve (shortlist + MMR) without and with a random 6-h
wall-clock window, the open and the cold first question of a fresh process, peak RSS over the same process with the
store's libraries imported, disk (files, WAL checkpointed where the store has one) per camera-hour (225 clips),
commit latency of one clip (caption + vector + metadata, durable for that store), and --crash-trials SIGKILLs of a
child that commits in a loop: afterwards the store must open (else "corrupt") and the last clip the child reported
committed must be in the store's own hybrid shortlist for that clip's caption and vector ("findable"; else
"stored, not found" where the store says its row survived, or "lost").
Quality: recall@8 (as memory_scale.py: a question counts when an answer clip is among the picks) on bench/data,
windows applied and not, and on the 170 questions without a time expression ("plain"). Also: rlivs' `breakdown`
(search in vector-only and keyword-only modes), DuckDB's `hnsw_with_window` (rows its HNSW scan returns with a window
in WHERE vs rows asked for). Prints one JSON object as its last line; a markdown table goes to stderr.
The data cache holds 3.6 GB of vectors per million captions; the tantivy+faiss and DuckDB HNSWs are built in RAM.

Setup (a venv of its own; the peers are pinned in bench/requirements-peers.txt):
    python3 -m venv /work/peers-venv
    /work/peers-venv/bin/pip install -c constraints.txt -e . -r bench/requirements-peers.txt
Run:
    /work/peers-venv/bin/python bench/memory_peers.py --quick                              # 5k, checks the harness
    /work/peers-venv/bin/python bench/memory_peers.py --sizes 20000 --streams 4
    nice /work/peers-venv/bin/python bench/memory_peers.py --sizes 1000000,4000000 --streams 8 --cache /big/disk
    ... --stores rlivs,sqlite-vec                                                         # a subset
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "data")]

from embedders import random_embedder, tokens  # noqa: E402
from make_caption_log import CLIP_S, scale_captions  # noqa: E402
from memory_scale import CLIPS_PER_HOUR, DATA, D, _iso, _jsonl, _pct, _query_texts, _recall  # noqa: E402

SHORTLIST = 64  # what every store hands MMR (rlivs' RetrievalConfig.shortlist)
PEER_K = 256  # vector and keyword candidates each peer fuses (rlivs: 1024 re-ranked vector candidates, 256 keyword)
RRF_K = 60.0
WINDOW_S = 6 * 3600.0
LANCE_INDEX_MIN = 10000  # LanceDB: below this many rows a flat scan (its docs: indexes pay off on larger tables)
CHUNK = 5000


# ---------------------------------------------------------------------------------------------- data

@dataclass
class Batch:
    """Clips as columns."""

    stream: list[str]
    index: np.ndarray  # (n,) int64
    t_start: np.ndarray  # (n,) float64
    wall_start: np.ndarray  # (n,) float64
    wall_end: np.ndarray  # (n,) float64
    caption: list[str]
    n_tokens: np.ndarray  # (n,) int64
    vectors: np.ndarray  # (n, D) float32

    def __len__(self) -> int:
        return len(self.caption)

    def keys(self) -> list[str]:
        return [f"{s}:{int(i)}" for s, i in zip(self.stream, self.index)]

    def row(self, j: int) -> Batch:
        return Batch([self.stream[j]], self.index[j:j + 1], self.t_start[j:j + 1], self.wall_start[j:j + 1],
                     self.wall_end[j:j + 1], [self.caption[j]], self.n_tokens[j:j + 1], self.vectors[j:j + 1])


def make_batch(rows: list[dict], vectors: np.ndarray) -> Batch:
    return Batch([r["stream"] for r in rows], np.array([r["index"] for r in rows], np.int64),
                 np.array([r["t_start"] for r in rows], np.float64),
                 np.array([r["wall_start"] for r in rows], np.float64),
                 np.array([r["wall_end"] for r in rows], np.float64), [r["caption"] for r in rows],
                 np.array([len(tokens(r["caption"])) for r in rows], np.int64), np.asarray(vectors, np.float32))


def dataset(folder: Path, rows) -> Path:
    """Captions (rows.jsonl) and their vectors (vectors.f32, (N, D) float32) in `folder`, embedded once."""
    if (folder / "done").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    emb = random_embedder(D, 0)
    with open(folder / "rows.jsonl", "w") as fr, open(folder / "vectors.f32", "wb") as fv:
        buf: list[dict] = []

        def flush():
            fv.write(emb.batch([r["caption"] for r in buf]).astype("<f4").tobytes())
            fr.writelines(json.dumps(r) + "\n" for r in buf)
            buf.clear()

        for r in rows:
            buf.append({k: r[k] for k in ("stream", "index", "t_start", "wall_start", "wall_end", "caption")})
            if len(buf) >= CHUNK:
                flush()
        if buf:
            flush()
    (folder / "done").write_text("")
    return folder


def batches(folder: Path, chunk: int = CHUNK):
    """The dataset's clips, `chunk` at a time."""
    vecs = np.memmap(folder / "vectors.f32", dtype="<f4", mode="r").reshape(-1, D)
    buf, at = [], 0
    with open(folder / "rows.jsonl") as f:
        for line in f:
            buf.append(json.loads(line))
            if len(buf) >= chunk:
                yield make_batch(buf, vecs[at:at + len(buf)])
                at += len(buf)
                buf = []
    if buf:
        yield make_batch(buf, vecs[at:at + len(buf)])


def live_clips(stream: str, n: int, after: float, seed: int = 99) -> Batch:
    """`n` new clips of a live camera `stream`, starting at wall time `after`."""
    rows = list(scale_captions(n, 1, seed=seed))
    for j, r in enumerate(rows):
        r.update(stream=stream, index=j, t_start=j * CLIP_S, wall_start=after + j * CLIP_S,
                 wall_end=after + (j + 1) * CLIP_S)
    return make_batch(rows, random_embedder(D, 0).batch([r["caption"] for r in rows]))


# ---------------------------------------------------------------------------------------------- retrieval

@dataclass
class Shortlist:
    keys: list[str]  # best first
    vectors: np.ndarray  # (S, D) float32
    n_tokens: np.ndarray  # (S,)


def rrf(*rankings: list, k: float = RRF_K) -> list:
    """Reciprocal rank fusion of rankings (best first): ids by the sum of 1 / (k + rank), rank from 1; ties by id."""
    fused: dict = {}
    for ranking in rankings:
        for r, i in enumerate(ranking, start=1):
            fused[i] = fused.get(i, 0.0) + 1.0 / (k + r)
    return sorted(fused, key=lambda i: (-fused[i], i))


def rank_relevance(similarity: np.ndarray) -> np.ndarray:
    """A fused rank as a relevance on the similarity's scale (what rlivs' hybrid search hands MMR)."""
    n = len(similarity)
    if n == 0:
        return similarity
    span = float(similarity.max() - similarity.min()) if n > 1 else 0.0
    return similarity.max() - span * np.arange(n, dtype=np.float64) / max(n - 1, 1)


def picks(store, vector: np.ndarray, text: str, wall_from: float | None = None,
          wall_to: float | None = None) -> list[str]:
    """What answer() would put in the prompt from this store: its hybrid shortlist, then rlivs' MMR."""
    from rlivs.runtime.config import RetrievalConfig
    from rlivs.runtime.retrieval import mmr

    rc = RetrievalConfig()
    sl = store.query(vector, text, wall_from, wall_to, SHORTLIST)
    sim = sl.vectors.astype(np.float64) @ np.asarray(vector, np.float64)  # (S,)
    chosen = mmr(vector, sl.vectors, rc.top_k, rc.mmr_lambda, costs=sl.n_tokens.astype(np.float64),
                 budget=rc.token_budget, relevance=rank_relevance(sim))
    return [sl.keys[i] for i in chosen]


def keyword_terms(text: str) -> list[str]:
    from rlivs.runtime.memory.search import informative_terms

    return informative_terms(text)


# ---------------------------------------------------------------------------------------------- stores

STORES: dict[str, type] = {}


def store(cls):
    STORES[cls.name] = cls
    return cls


class Store:
    """One store in `folder`. build(batches) loads and indexes (then close()); open(); commit(one-clip Batch) is
    durable when it returns; query(...) -> Shortlist; close(). `modules`: what to import before measuring RSS.
    `notes`: what the store can do inside the query / in one transaction, and what its hybrid is."""

    name = ""
    modules: tuple[str, ...] = ()
    notes: dict[str, str] = {}

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def build(self, data) -> dict | None:
        """Load and index the clips; may return facts for the output (e.g. a query plan)."""
        raise NotImplementedError

    def open(self) -> None:
        raise NotImplementedError

    def commit(self, clip: Batch) -> None:
        raise NotImplementedError

    def query(self, vector: np.ndarray, text: str, wall_from: float | None, wall_to: float | None,
              k: int) -> Shortlist:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def stored(self, stream: str, index: int) -> bool | None:
        """Whether the clip's row is in the store at all (a diagnosis for a clip its query does not find); None:
        not asked."""
        return None

    def checkpoint(self) -> None:
        """Leave the files as they would rest (WAL folded in) before measuring disk."""


def _records(b: Batch):
    from rlivs.runtime.memory import ClipRecord

    for j in range(len(b)):
        yield ClipRecord(stream=b.stream[j], index=int(b.index[j]), t_start=float(b.t_start[j]),
                         t_end=float(b.t_start[j]) + CLIP_S, caption=b.caption[j], n_tokens=int(b.n_tokens[j]),
                         vector=b.vectors[j], wall_start=float(b.wall_start[j]), wall_end=float(b.wall_end[j]))


@store
class Rlivs(Store):
    name = "rlivs"
    modules = ("rlivs.runtime.memory", "rlivs.runtime.answer")
    notes = {"filter": "inside the query (column cache rows, FTS5 joined)",
             "one_transaction": "yes: clip row, vector, signature, FTS5 (triggers), FIFO",
             "hybrid": "signature scan -> 1024 exact re-rank + FTS5 BM25 (common terms dropped) top 256, RRF"}

    def build(self, data) -> None:
        from rlivs.runtime.memory import Memory

        with Memory(self.folder / "memory.db") as mem:
            mem.import_clips(r for b in data for r in _records(b))

    def open(self) -> None:
        from rlivs.runtime.memory import Memory

        self.mem = Memory(self.folder / "memory.db")
        self.opened: set[str] = set()

    def commit(self, clip: Batch) -> None:
        (rec,) = _records(clip)
        if rec.stream not in self.opened:
            self.mem.open_stream(rec.stream, "bench", "random-0.5b", "bench")
            self.opened.add(rec.stream)
        self.mem.commit_clip(rec, None)

    def query(self, vector, text, wall_from, wall_to, k) -> Shortlist:
        sl = self.mem.search(vector, text, wall_from=wall_from, wall_to=wall_to, mode="hybrid", shortlist=k)
        return Shortlist([f"{r.stream}:{r.index}" for r in sl.records], sl.vectors,
                         np.array([r.n_tokens for r in sl.records], np.int64))

    def stored(self, stream: str, index: int) -> bool | None:
        return self.mem.clip(stream, index) is not None

    def breakdown(self, qv: np.ndarray, texts: list[str]) -> dict:
        """Where a question's time goes: the vector side alone ("paper") and the keyword side alone ("lexical")."""
        out = {}
        for mode in ("paper", "lexical"):
            times = []
            for v, t in zip(qv, texts):
                t0 = time.perf_counter()
                self.mem.search(v, t, mode=mode, shortlist=SHORTLIST)
                times.append(time.perf_counter() - t0)
            out[f"search_{mode}"] = _pct(times)
        return out

    def close(self) -> None:
        if getattr(self, "mem", None) is not None:
            self.mem.close()
            self.mem = None

    def checkpoint(self) -> None:
        from rlivs.runtime.memory import Memory

        with Memory(self.folder / "memory.db"):
            pass


@store
class SqliteVec(Store):
    name = "sqlite-vec"
    modules = ("apsw", "sqlite_vec")
    notes = {"filter": "inside the query (vec0 metadata columns in the KNN's WHERE; FTS5 joined)",
             "one_transaction": "yes: clips row, FTS5 row, vec0 row",
             "hybrid": f"vec0 KNN (cosine, exact scan) top {PEER_K} + FTS5 bm25 top {PEER_K}, RRF in Python"}

    def _connect(self):
        import apsw
        import sqlite_vec

        conn = apsw.Connection(str(self.folder / "store.db"))
        conn.enable_load_extension(True)
        conn.load_extension(sqlite_vec.loadable_path())
        conn.enable_load_extension(False)
        conn.execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL")
        return conn

    def build(self, data) -> None:
        conn = self._connect()
        conn.execute(f"""
            CREATE TABLE clips(id INTEGER PRIMARY KEY, stream TEXT, idx INTEGER, wall_start REAL, wall_end REAL,
                               caption TEXT, n_tokens INTEGER);
            CREATE VIRTUAL TABLE clips_fts USING fts5(caption, content='clips', content_rowid='id',
                                                      tokenize='porter unicode61');
            CREATE VIRTUAL TABLE clips_vec USING vec0(id INTEGER PRIMARY KEY,
                                                      embedding float[{D}] distance_metric=cosine,
                                                      stream TEXT PARTITION KEY, wall_start FLOAT, wall_end FLOAT,
                                                      +n_tokens INTEGER);""")
        with conn:
            for b in data:
                self._insert(conn, b)
        conn.close()

    def _insert(self, conn, b: Batch) -> None:
        for j in range(len(b)):
            conn.execute("INSERT INTO clips(stream, idx, wall_start, wall_end, caption, n_tokens) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (b.stream[j], int(b.index[j]), float(b.wall_start[j]),
                                                       float(b.wall_end[j]), b.caption[j], int(b.n_tokens[j])))
            rid = conn.last_insert_rowid()
            conn.execute("INSERT INTO clips_fts(rowid, caption) VALUES (?, ?)", (rid, b.caption[j]))
            conn.execute("INSERT INTO clips_vec(id, embedding, stream, wall_start, wall_end, n_tokens) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (rid, b.vectors[j].astype("<f4").tobytes(), b.stream[j],
                                                        float(b.wall_start[j]), float(b.wall_end[j]),
                                                        int(b.n_tokens[j])))

    def open(self) -> None:
        self.conn = self._connect()

    def commit(self, clip: Batch) -> None:
        with self.conn:
            self._insert(self.conn, clip)

    def query(self, vector, text, wall_from, wall_to, k) -> Shortlist:
        where, args = "", []
        if wall_from is not None:
            where, args = " AND wall_start < ? AND wall_end > ?", [wall_to, wall_from]
        vec = [r[0] for r in self.conn.execute(
            f"SELECT id FROM clips_vec WHERE embedding MATCH ? AND k = ?{where} ORDER BY distance",
            (np.asarray(vector, "<f4").tobytes(), PEER_K, *args))]
        lex: list[int] = []
        terms = keyword_terms(text)
        if terms:
            match = " OR ".join(f'"{t}"' for t in terms)
            w = where.replace("wall_", "c.wall_")
            lex = [r[0] for r in self.conn.execute(
                f"SELECT c.id FROM clips_fts f JOIN clips c ON c.id = f.rowid WHERE clips_fts MATCH ?{w} "
                f"ORDER BY f.rank LIMIT ?", (match, *args, PEER_K))]
        ids = rrf(vec, lex)[:k]
        if not ids:
            return Shortlist([], np.zeros((0, D), np.float32), np.zeros(0, np.int64))
        got = {r[0]: r[1:] for r in self.conn.execute(
            "SELECT c.id, c.stream, c.idx, c.n_tokens, v.embedding FROM clips c JOIN clips_vec v ON v.id = c.id "
            "WHERE c.id IN (SELECT value FROM json_each(?))", (json.dumps(ids),))}
        rows = [got[i] for i in ids]
        return Shortlist([f"{s}:{i}" for s, i, _, _ in rows],
                         np.frombuffer(b"".join(r[3] for r in rows), "<f4").reshape(len(rows), D),
                         np.array([r[2] for r in rows], np.int64))

    def close(self) -> None:
        if getattr(self, "conn", None) is not None:
            self.conn.close()
            self.conn = None

    def stored(self, stream: str, index: int) -> bool | None:
        return self.conn.execute("SELECT COUNT(*) FROM clips WHERE stream = ? AND idx = ?",
                                 (stream, index)).fetchall()[0][0] > 0

    def checkpoint(self) -> None:
        conn = self._connect()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()


def _arrow(b: Batch):
    import pyarrow as pa

    return pa.table({"stream": b.stream, "idx": b.index, "wall_start": b.wall_start, "wall_end": b.wall_end,
                     "caption": b.caption, "n_tokens": b.n_tokens,
                     "vector": pa.FixedSizeListArray.from_arrays(pa.array(b.vectors.reshape(-1), pa.float32()), D)})


@store
class Lance(Store):
    name = "lancedb"
    modules = ("lancedb", "pyarrow")
    notes = {"filter": "prefilter pushed down (`where(..., prefilter=True)`, btree scalar indexes on the times)",
             "one_transaction": "yes: one row (all columns) per `add`; the vector and FTS indexes do not follow it "
                                "(unindexed rows are scanned flat until `optimize`)",
             "hybrid": f"LanceDB hybrid query: IVF-PQ (dot, refine x4; flat below {LANCE_INDEX_MIN} rows) top "
                       f"{PEER_K} + native FTS (BM25) top {PEER_K}, its RRFReranker (k=60)"}

    def build(self, data) -> None:
        import lancedb
        from lancedb.index import FTS, IvfPq

        db = lancedb.connect(str(self.folder))
        tbl, n = None, 0
        for b in data:
            n += len(b)
            if tbl is None:
                tbl = db.create_table("clips", data=_arrow(b))
            else:
                tbl.add(_arrow(b))
        if n >= LANCE_INDEX_MIN:
            tbl.create_index("vector", config=IvfPq(distance_type="dot"))
        tbl.create_index("caption", config=FTS(with_position=False))
        tbl.create_scalar_index("wall_start")
        tbl.create_scalar_index("wall_end")
        self._optimize(tbl)

    @staticmethod
    def _optimize(tbl) -> None:
        from datetime import timedelta

        tbl.optimize(cleanup_older_than=timedelta(0))

    def open(self) -> None:
        import lancedb

        self.tbl = lancedb.connect(str(self.folder)).open_table("clips")

    def commit(self, clip: Batch) -> None:
        self.tbl.add(_arrow(clip))

    def query(self, vector, text, wall_from, wall_to, k) -> Shortlist:
        from lancedb.rerankers import RRFReranker

        terms = keyword_terms(text)
        v = np.asarray(vector, np.float32)
        if terms:
            q = self.tbl.search(query_type="hybrid").vector(v).text(" ".join(terms)).rerank(RRFReranker())
        else:
            q = self.tbl.search(v, query_type="vector").distance_type("dot")
        q = q.limit(PEER_K)
        if hasattr(q, "refine_factor"):
            q = q.refine_factor(4)
        if wall_from is not None:
            q = q.where(f"wall_start < {wall_to!r} AND wall_end > {wall_from!r}", prefilter=True)
        t = q.select(["stream", "idx", "n_tokens", "vector"]).to_arrow().slice(0, k)
        vecs = np.asarray(t.column("vector").combine_chunks().values, np.float32).reshape(len(t), D) if len(t) \
            else np.zeros((0, D), np.float32)
        return Shortlist([f"{s}:{i}" for s, i in zip(t.column("stream").to_pylist(), t.column("idx").to_pylist())],
                         vecs, np.asarray(t.column("n_tokens").to_numpy(), np.int64))

    def stored(self, stream: str, index: int) -> bool | None:
        return self.tbl.count_rows(f"stream = '{stream}' AND idx = {int(index)}") > 0

    def close(self) -> None:
        self.tbl = None

    def checkpoint(self) -> None:
        import lancedb

        self._optimize(lancedb.connect(str(self.folder)).open_table("clips"))


def _duckdb_extensions() -> list[str]:
    import importlib

    out = []
    for ext in ("vss", "fts"):
        pkg = Path(importlib.import_module(f"duckdb_extension_{ext}").__file__).parent
        out += [str(p) for p in sorted(pkg.glob(f"extensions/*/{ext}.duckdb_extension"))[-1:]]
    return out


@store
class DuckDB(Store):
    name = "duckdb"
    modules = ("duckdb", "pyarrow")
    notes = {"filter": "in the SQL WHERE, applied to the HNSW scan's candidates: a narrow window can leave the "
                       "vector side short (hnsw_with_window in the output: rows asked for vs returned)",
             "one_transaction": "the row and its HNSW entry yes; the fts index no (a snapshot: rebuilt by "
                                "`PRAGMA create_fts_index(..., overwrite=1)`, here only at build)",
             "hybrid": f"vss HNSW (inner product) ORDER BY ... LIMIT {PEER_K} + fts match_bm25 top {PEER_K}, "
                       f"RRF in Python"}

    def _connect(self):
        import duckdb

        conn = duckdb.connect(str(self.folder / "store.duckdb"))
        for path in _duckdb_extensions():
            conn.execute(f"LOAD '{path}'")
        conn.execute("SET hnsw_enable_experimental_persistence = true")
        return conn

    def build(self, data) -> None:
        conn = self._connect()
        conn.execute(f"CREATE TABLE clips(stream VARCHAR, idx BIGINT, wall_start DOUBLE, wall_end DOUBLE, "
                     f"caption VARCHAR, n_tokens INTEGER, vector FLOAT[{D}], key VARCHAR)")
        for b in data:
            t = _arrow(b)  # noqa: F841  (read by name in the SQL)
            conn.execute("INSERT INTO clips SELECT *, stream || ':' || idx FROM t")
        conn.execute("CREATE INDEX clips_hnsw ON clips USING HNSW (vector) WITH (metric = 'ip')")
        conn.execute("PRAGMA create_fts_index('clips', 'key', 'caption', stemmer = 'porter', "
                     "stopwords = 'english', overwrite = 1)")
        conn.execute("CHECKPOINT")
        # the HNSW scan with a window in WHERE: how many of the rows asked for come back
        lo, hi = conn.execute("SELECT min(wall_start), max(wall_end) FROM clips").fetchall()[0]
        facts = {}
        for label, width in (("6h", WINDOW_S), ("1h", 3600.0)):
            w0 = (lo + hi - width) / 2
            inside = conn.execute("SELECT count(*) FROM clips WHERE wall_start < ? AND wall_end > ?",
                                  [w0 + width, w0]).fetchall()[0][0]
            got = conn.execute(f"SELECT count(*) FROM (SELECT key FROM clips WHERE wall_start < ? AND wall_end > ? "
                               f"ORDER BY array_negative_inner_product(vector, (SELECT vector FROM clips LIMIT 1)) "
                               f"LIMIT {PEER_K})", [w0 + width, w0]).fetchall()[0][0]
            facts[label] = {"rows_in_window": inside, "asked": min(PEER_K, inside), "returned": got}
        conn.close()
        return {"hnsw_with_window": facts}

    def open(self) -> None:
        self.conn = self._connect()

    def commit(self, clip: Batch) -> None:
        t = _arrow(clip)  # noqa: F841
        self.conn.execute("INSERT INTO clips SELECT *, stream || ':' || idx FROM t")

    def query(self, vector, text, wall_from, wall_to, k) -> Shortlist:
        where, args = "", []
        if wall_from is not None:
            where, args = "WHERE wall_start < ? AND wall_end > ?", [wall_to, wall_from]
        v = np.asarray(vector, np.float32).tolist()
        vec = [r[0] for r in self.conn.execute(
            f"SELECT key FROM clips {where} ORDER BY array_negative_inner_product(vector, ?::FLOAT[{D}]) "
            f"LIMIT {PEER_K}", [*args, v]).fetchall()]
        lex: list[str] = []
        terms = keyword_terms(text)
        if terms:
            lex = [r[0] for r in self.conn.execute(
                f"SELECT key FROM (SELECT key, fts_main_clips.match_bm25(key, ?) AS score FROM clips {where}) "
                f"WHERE score IS NOT NULL ORDER BY score DESC LIMIT {PEER_K}", [" ".join(terms), *args]).fetchall()]
        keys = rrf(vec, lex)[:k]
        if not keys:
            return Shortlist([], np.zeros((0, D), np.float32), np.zeros(0, np.int64))
        got = {r[0]: r[1:] for r in self.conn.execute(
            "SELECT key, n_tokens, vector FROM clips WHERE key IN (SELECT unnest(?::VARCHAR[]))", [keys]).fetchall()}
        rows = [got[key] for key in keys]
        return Shortlist(keys, np.array([r[1] for r in rows], np.float32).reshape(len(rows), D),
                         np.array([r[0] for r in rows], np.int64))

    def close(self) -> None:
        if getattr(self, "conn", None) is not None:
            self.conn.close()
            self.conn = None

    def stored(self, stream: str, index: int) -> bool | None:
        return self.conn.execute("SELECT COUNT(*) FROM clips WHERE key = ?", [f"{stream}:{index}"]).fetchall()[0][0] > 0

    def checkpoint(self) -> None:
        conn = self._connect()
        conn.execute("CHECKPOINT")
        conn.close()


@store
class TantivyFaiss(Store):
    name = "tantivy+faiss"
    modules = ("tantivy", "faiss")
    notes = {"filter": "inside both queries (tantivy range queries in the BooleanQuery; faiss IDSelectorBatch of "
                       "the rows inside the window, from in-memory time columns)",
             "one_transaction": "tantivy's commit holds the whole clip (vector as bytes); the faiss HNSW is in "
                                "memory, written at close, caught up from tantivy by position on open",
             "hybrid": f"faiss HNSW32 (inner product, efSearch {PEER_K}) top {PEER_K} + tantivy BM25 (block-max "
                       f"WAND) top {PEER_K}, RRF in Python"}

    def _schema(self):
        import tantivy

        sb = tantivy.SchemaBuilder()
        sb.add_integer_field("pos", stored=True, indexed=True, fast=True)
        sb.add_text_field("stream", stored=True, tokenizer_name="raw")
        sb.add_integer_field("idx", stored=True)
        sb.add_float_field("wall_start", stored=True, indexed=True, fast=True)
        sb.add_float_field("wall_end", stored=True, indexed=True, fast=True)
        sb.add_text_field("caption", stored=True, tokenizer_name="en_stem", index_option="freq")
        sb.add_integer_field("n_tokens", stored=True)
        sb.add_bytes_field("vector", stored=True)
        return sb.build()

    def _add_docs(self, writer, b: Batch, first: int) -> None:
        import tantivy

        for j in range(len(b)):
            writer.add_document(tantivy.Document(
                pos=first + j, stream=b.stream[j], idx=int(b.index[j]), wall_start=float(b.wall_start[j]),
                wall_end=float(b.wall_end[j]), caption=b.caption[j], n_tokens=int(b.n_tokens[j]),
                vector=b.vectors[j].astype("<f4").tobytes()))

    def _new_columns(self) -> None:
        self.streams: list[str] = []
        self.cols = {"stream": [], "idx": [], "wall_start": [], "wall_end": [], "n_tokens": []}

    def _append(self, b: Batch) -> None:
        for s in b.stream:
            if s not in self.streams:
                self.streams.append(s)
        self.cols["stream"].append(np.array([self.streams.index(s) for s in b.stream], np.int32))
        for c, a in (("idx", b.index), ("wall_start", b.wall_start), ("wall_end", b.wall_end),
                     ("n_tokens", b.n_tokens)):
            self.cols[c].append(np.asarray(a))
        self.hnsw.add(np.ascontiguousarray(b.vectors, np.float32))

    def _col(self, c: str) -> np.ndarray:
        if len(self.cols[c]) > 1:
            self.cols[c] = [np.concatenate(self.cols[c])]
        return self.cols[c][0]

    def build(self, data) -> None:
        import faiss
        import tantivy

        index = tantivy.Index(self._schema(), path=str(self.folder))
        writer = index.writer(heap_size=64_000_000, num_threads=1)
        self.hnsw = faiss.IndexHNSWFlat(D, 32, faiss.METRIC_INNER_PRODUCT)
        self._new_columns()
        n = 0
        for b in data:
            self._add_docs(writer, b, n)
            self._append(b)
            n += len(b)
        writer.commit()
        writer.wait_merging_threads()
        self._save()

    def _save(self) -> None:
        import faiss

        faiss.write_index(self.hnsw, str(self.folder / "vectors.hnsw"))
        np.savez(self.folder / "columns.npz", **{c: self._col(c) for c in self.cols},
                 streams=np.array(self.streams, dtype=object).astype(str))

    def open(self) -> None:
        import faiss
        import tantivy

        self.index = tantivy.Index.open(str(self.folder))
        self.hnsw = faiss.read_index(str(self.folder / "vectors.hnsw"))
        self.hnsw.hnsw.efSearch = PEER_K
        z = np.load(self.folder / "columns.npz")
        self.streams = [str(s) for s in z["streams"]]
        self.cols = {c: [z[c]] for c in ("stream", "idx", "wall_start", "wall_end", "n_tokens")}
        # catch up: clips committed to tantivy after the HNSW was last written
        searcher = self.index.searcher()
        q = tantivy.Query.range_query(self.index.schema, "pos", tantivy.FieldType.Integer, self.hnsw.ntotal, None)
        hits = searcher.search(q, max(searcher.num_docs, 1)).hits
        docs = sorted((searcher.doc(a) for _, a in hits), key=lambda d: d["pos"][0])
        if docs:
            self._append(Batch([d["stream"][0] for d in docs], np.array([d["idx"][0] for d in docs]),
                               np.zeros(len(docs)), np.array([d["wall_start"][0] for d in docs]),
                               np.array([d["wall_end"][0] for d in docs]), [d["caption"][0] for d in docs],
                               np.array([d["n_tokens"][0] for d in docs]),
                               np.stack([np.frombuffer(d["vector"][0], "<f4") for d in docs])))
        self.writer = None

    def commit(self, clip: Batch) -> None:
        if self.writer is None:
            self.writer = self.index.writer(heap_size=15_000_000, num_threads=1)
        self._add_docs(self.writer, clip, self.hnsw.ntotal)
        self.writer.commit()
        self._append(clip)

    def query(self, vector, text, wall_from, wall_to, k) -> Shortlist:
        import faiss
        import tantivy

        q = np.asarray(vector, np.float32)[None, :]
        params, filt = faiss.SearchParametersHNSW(), []
        params.efSearch = PEER_K
        if wall_from is not None:
            inside = np.flatnonzero((self._col("wall_start") < wall_to) & (self._col("wall_end") > wall_from))
            sel = faiss.IDSelectorBatch(inside.astype(np.int64))
            params.sel = sel
            schema = self.index.schema
            filt = [(tantivy.Occur.Must, tantivy.Query.range_query(schema, "wall_start", tantivy.FieldType.Float,
                                                                    None, float(wall_to), include_upper=False)),
                    (tantivy.Occur.Must, tantivy.Query.range_query(schema, "wall_end", tantivy.FieldType.Float,
                                                                    float(wall_from), None, include_lower=False))]
        _, found = self.hnsw.search(q, PEER_K, params=params)
        vec = [int(i) for i in found[0] if i >= 0]
        lex: list[int] = []
        terms = keyword_terms(text)
        if terms:
            self.index.reload()
            searcher = self.index.searcher()
            words = self.index.parse_query(" ".join(terms), ["caption"])
            query = tantivy.Query.boolean_query([(tantivy.Occur.Must, words), *filt]) if filt else words
            hits = searcher.search(query, PEER_K).hits
            if hits:
                lex = [int(p) for p in searcher.fast_field_values("pos", [a for _, a in hits])]
        pos = np.array(rrf(vec, lex)[:k], np.int64)
        streams, idx = self._col("stream"), self._col("idx")
        vecs = self.hnsw.reconstruct_batch(pos) if len(pos) else np.zeros((0, D), np.float32)
        return Shortlist([f"{self.streams[streams[p]]}:{int(idx[p])}" for p in pos], vecs,
                         self._col("n_tokens")[pos].astype(np.int64))

    def close(self) -> None:
        if getattr(self, "hnsw", None) is not None and getattr(self, "index", None) is not None:
            if self.writer is not None:
                self.writer.wait_merging_threads()
                self.writer = None
            self._save()
        self.hnsw = None


# ---------------------------------------------------------------------------------------------- measurement

def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker_build(name: str, folder: str, data: str) -> dict:
    st = STORES[name](Path(folder))
    shutil.rmtree(folder, ignore_errors=True)
    Path(folder).mkdir(parents=True)
    t0 = time.perf_counter()
    facts = st.build(batches(Path(data)))
    build_s = time.perf_counter() - t0
    st.checkpoint()
    return {"build_s": round(build_s, 2), "disk_bytes": folder_bytes(Path(folder)), **(facts or {})}


def worker_latency(name: str, folder: str, questions: int, seed: int) -> dict:
    """In a fresh process: open, the cold first question, then p50/p95 without and with a 6-h window; RSS."""
    import importlib

    for m in STORES[name].modules:
        importlib.import_module(m)
    from rlivs.runtime.retrieval import mmr  # noqa: F401  (what picks() imports)

    emb = random_embedder(D, 0)
    texts = _query_texts(_jsonl(DATA / "questions.jsonl"))
    rng = random.Random(seed)
    texts = [rng.choice(texts) for _ in range(questions)]
    qv = emb.batch(texts)
    lo, hi = json.loads((Path(folder) / "span.json").read_text())
    base = _rss_mb("VmRSS")
    st = STORES[name](Path(folder))
    t0 = time.perf_counter()
    st.open()
    out = {"open_ms": round((time.perf_counter() - t0) * 1e3, 1)}
    t0 = time.perf_counter()
    picks(st, qv[0], texts[0])
    out["cold_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
    plain, windowed = [], []
    for v, text in zip(qv, texts):
        t0 = time.perf_counter()
        picks(st, v, text)
        plain.append(time.perf_counter() - t0)
    windows = [rng.uniform(lo, hi - WINDOW_S) if hi - lo > WINDOW_S else lo for _ in texts]
    for v, text, w0 in zip(qv, texts, windows):
        t0 = time.perf_counter()
        picks(st, v, text, w0, w0 + WINDOW_S)
        windowed.append(time.perf_counter() - t0)
    # how full a windowed shortlist is (a store that filters after its index search can come back short)
    out["window_shortlist_mean"] = round(float(np.mean([len(st.query(v, t, w0, w0 + WINDOW_S, SHORTLIST).keys)
                                                        for v, t, w0 in zip(qv, texts, windows)])), 1)
    if hasattr(st, "breakdown"):
        out["breakdown"] = st.breakdown(qv, texts)
    st.close()
    out.update(no_filter=_pct(plain), window_6h=_pct(windowed),
               rss_mb_over_empty=round(_rss_mb("VmHWM") - base, 1), rss_base_mb=round(base, 1))
    return out


def worker_commit(name: str, folder: str, n: int, after: float) -> dict:
    clips = live_clips("bench-live", n, after)
    st = STORES[name](Path(folder))
    st.open()
    times = []
    for j in range(n):
        c = clips.row(j)
        t0 = time.perf_counter()
        st.commit(c)
        times.append(time.perf_counter() - t0)
    st.close()
    return _pct(times)


def worker_crash_child(name: str, folder: str, stream: str, after: float) -> None:
    """Commit clips of `stream` in a loop, printing each one's index once its commit returned (until killed)."""
    clips = live_clips(stream, 400, after, seed=zlib.crc32(stream.encode()) % 1000)
    st = STORES[name](Path(folder))
    st.open()
    print("open", flush=True)
    for j in range(len(clips)):
        st.commit(clips.row(j))
        print(j, flush=True)
    st.close()


def worker_find(name: str, folder: str, stream: str, index: int, after: float) -> dict:
    """In a fresh process: open the store after a kill, look the clip up through the store's hybrid query."""
    clips = live_clips(stream, index + 1, after, seed=zlib.crc32(stream.encode()) % 1000)
    c = clips.row(index)
    st = STORES[name](Path(folder))
    try:
        st.open()
        sl = st.query(c.vectors[0], c.caption[0], None, None, SHORTLIST)
        if f"{stream}:{index}" in sl.keys:
            return {"state": "findable"}
        # not in the shortlist: the row may still be there (an index that does not hold it, a rank below the cut)
        return {"state": "stored, not found" if st.stored(stream, index) else "lost"}
    except Exception as e:  # a store that cannot open or answer after the kill
        return {"state": "corrupt", "error": f"{type(e).__name__}: {e}"[:300]}
    finally:
        try:
            st.close()
        except Exception:
            pass


WORKERS = {"build": worker_build, "latency": worker_latency, "commit": worker_commit, "find": worker_find}


def _worker_cmd(kind: str, **kw) -> list[str]:
    return [sys.executable, __file__, "--worker", kind, "--worker-args", json.dumps(kw)]


def in_process(kind: str, **kw) -> dict:
    r = subprocess.run(_worker_cmd(kind, **kw), capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"worker {kind} {kw.get('name')} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def crash_trials(name: str, folder: Path, trials: int, after: float, seed: int) -> dict:
    """SIGKILL a committing child `trials` times at random moments; what each kill left."""
    rng = random.Random(seed)
    states = []
    for t in range(trials):
        stream = f"crash{t}"
        child = subprocess.Popen(_worker_cmd("crash_child", name=name, folder=str(folder), stream=stream,
                                             after=after), stdout=subprocess.PIPE, text=True)
        want, last = rng.randint(2, 12), None
        for line in child.stdout:
            if line.strip() == "open":
                continue
            last = int(line)
            if last + 1 >= want:
                break
        time.sleep(rng.uniform(0, 0.02))  # the kill lands inside a later commit, or between two
        child.send_signal(signal.SIGKILL)
        child.wait()
        for line in child.stdout:  # commits the child reported before the kill that were not read yet
            last = int(line)
        child.stdout.close()
        if last is None:
            states.append({"state": "no commit before the kill"})
            continue
        states.append({"acked": last, **in_process("find", name=name, folder=str(folder), stream=stream,
                                                    index=last, after=after)})
    counts: dict[str, int] = {}
    for s in states:
        counts[s["state"]] = counts.get(s["state"], 0) + 1
    return {"counts": counts, "trials": states}


def quality(name: str, tmp: Path, data: Path) -> dict:
    """recall@8 on bench/data's questions (random embedder), windows applied and not."""
    folder = tmp / f"quality-{name}"
    in_process("build", name=name, folder=str(folder), data=str(data))
    questions = _jsonl(DATA / "questions.jsonl")
    texts = _query_texts(questions)
    qv = random_embedder(D, 0).batch(texts)
    st = STORES[name](folder)
    st.open()
    try:
        out = {}
        for label, use in (("windows_applied", True), ("no_filter", False)):
            got = [set(picks(st, v, t, *((_iso(q["from"]), _iso(q["to"])) if use else (None, None))))
                   for q, v, t in zip(questions, qv, texts)]
            out[label] = _recall(got, questions)
            if use:  # the 170 questions without a time expression (memory_scale.py's "plain")
                plain = [j for j, q in enumerate(questions) if q["from"] is None]
                out["plain"] = _recall([got[j] for j in plain], [questions[j] for j in plain])
    finally:
        st.close()
    return out


def run_size(name: str, n: int, streams: int, data: Path, tmp: Path, args) -> dict:
    folder = tmp / f"{name}-{n}-{streams}"
    out = {"store": name, "captions": n, "streams": streams}
    out.update(in_process("build", name=name, folder=str(folder), data=str(data)))
    out["mb_per_camera_hour"] = round(out["disk_bytes"] / n * CLIPS_PER_HOUR / 1e6, 3)
    span = json.loads((data / "span.json").read_text())
    (folder / "span.json").write_text(json.dumps(span))
    out["latency"] = in_process("latency", name=name, folder=str(folder), questions=args.questions, seed=n)
    out["commit"] = in_process("commit", name=name, folder=str(folder), n=args.commits, after=span[1])
    if args.crash_trials:
        out["crash"] = crash_trials(name, folder, args.crash_trials, span[1] + 1e6, seed=n)
        out["crash"].pop("trials") if not args.verbose else None
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(out), flush=True)
    return out


def scale_data(n: int, streams: int, cache: Path) -> Path:
    folder = dataset(cache / f"data-{n}-{streams}", scale_captions(n, streams))
    if not (folder / "span.json").exists():
        ws = np.array([json.loads(line)["wall_start"] for line in open(folder / "rows.jsonl")])
        (folder / "span.json").write_text(json.dumps([float(ws.min()), float(ws.max()) + CLIP_S]))
    return folder


def table(result: dict) -> str:
    """The results as a markdown table (one row per store and size)."""
    head = ("| store | captions | build s | p50 / p95 ms | 6-h window p50 / p95 ms (shortlist) | "
            "open + cold first ms | RSS over empty MB | MB / camera-hour | commit p50 / p95 ms | SIGKILL | "
            "recall@8 (windows / none / plain) |")
    lines = [head, "|" + "---|" * 11]
    q = result.get("quality", {})
    for r in result.get("scale", []):
        lat, c = r["latency"], r["commit"]
        crash = ", ".join(f"{k} {v}" for k, v in r.get("crash", {}).get("counts", {}).items()) or "-"
        rq = q.get(r["store"], {})
        rec = (f"{rq['windows_applied']['recall@8']} / {rq['no_filter']['recall@8']} / {rq['plain']['recall@8']}"
               if "windows_applied" in rq else "-")
        lines.append(f"| {r['store']} | {r['captions']:,} | {r['build_s']} | {lat['no_filter']['p50_ms']} / "
                     f"{lat['no_filter']['p95_ms']} | {lat['window_6h']['p50_ms']} / {lat['window_6h']['p95_ms']} "
                     f"({lat['window_shortlist_mean']}) | "
                     f"{lat['open_ms']} + {lat['cold_ms']} | {lat['rss_mb_over_empty']} | {r['mb_per_camera_hour']} | "
                     f"{c['p50_ms']} / {c['p95_ms']} | {crash} | {rec} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--sizes", default="20000", help="memory sizes in captions, comma-separated (0: none)")
    ap.add_argument("--streams", type=int, default=4, help="cameras the captions are spread over")
    ap.add_argument("--stores", default=",".join(STORES), help=f"comma-separated, of: {', '.join(STORES)}")
    ap.add_argument("--questions", type=int, default=200, help="questions per latency measurement")
    ap.add_argument("--commits", type=int, default=100, help="clips committed one by one for the commit latency")
    ap.add_argument("--crash-trials", type=int, default=4, help="SIGKILLs of a committing child per store and size")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--quick", action="store_true", help="5k captions, 20 questions, 10 commits, 2 kills")
    ap.add_argument("--cache", type=Path, default=None, help="folder for the embedded data sets (kept; default: tmp)")
    ap.add_argument("--tmp", type=Path, default=None, help="folder for the stores (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the stores")
    ap.add_argument("--verbose", action="store_true", help="every crash trial in the output")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-args", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        kw = json.loads(args.worker_args)
        if args.worker == "crash_child":
            worker_crash_child(**kw)
            return 0
        print(json.dumps(WORKERS[args.worker](**kw)))
        return 0
    if args.quick:
        args.sizes, args.questions, args.commits, args.crash_trials = "5000", 20, 10, 2
    names = [s for s in args.stores.split(",") if s]
    unknown = [s for s in names if s not in STORES]
    if unknown:
        ap.error(f"unknown store(s) {', '.join(unknown)}: use some of {', '.join(STORES)}")
    sizes = [int(s) for s in args.sizes.split(",") if int(s) > 0]
    tmp_ctx = tempfile.TemporaryDirectory(prefix="memory_peers-", dir=args.tmp) if not args.keep else None
    tmp = Path(tmp_ctx.name) if tmp_ctx else (args.tmp or Path(tempfile.mkdtemp(prefix="memory_peers-")))
    cache = args.cache or tmp / "data"
    result = {"d": D, "shortlist": SHORTLIST, "peer_k": PEER_K, "cpu_count": os.cpu_count(),
              "loadavg_start": os.getloadavg(), "versions": versions(names),
              "notes": {n: STORES[n].notes for n in names}, "scale": []}
    try:
        if not args.skip_quality:
            qdata = dataset(cache / "quality", _jsonl(DATA / "caption_log.jsonl"))
            result["quality"] = {}
            for name in names:
                result["quality"][name] = quality(name, tmp, qdata)
                print(json.dumps({"quality": name, **result["quality"][name]}), flush=True)
        for n in sizes:
            data = scale_data(n, args.streams, cache)
            for name in names:
                result["scale"].append(run_size(name, n, args.streams, data, tmp, args))
    finally:
        if tmp_ctx:
            tmp_ctx.cleanup()
    result["loadavg_end"] = os.getloadavg()
    print(table(result), file=sys.stderr)
    print(json.dumps(result))
    return 0


def versions(names: list[str]) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("numpy", "apsw", "sqlite-vec", "lancedb", "pylance", "pyarrow", "duckdb", "duckdb-extension-vss",
                 "duckdb-extension-fts", "tantivy", "faiss-cpu"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


if __name__ == "__main__":
    sys.exit(main())
