"""Indexed retrieval over the memory: filters, a binary-signature vector index, FTS5 keywords, fused.

The vector side's column cache and signatures live in columns.py, the keyword side in keywords.py (both re-exported
here); this module holds the shortlist: candidates from both, fusion, the records read back.

A question never loads the whole memory. Per clip the database keeps, in the clip's own row and transaction:
- `sig`: a binary signature of the retrieval vector, one bit per dimension: sign(vector - center), with `center`
  the mean vector of the memory when it first reached SIG_MIN clips (stored in `meta`; `reindex` recomputes it),
  followed by |vector - center| and (vector - center).center as float32. Captions' mean-of-unit-token vectors share
  a large common direction; removing it makes the bits informative, and the two scalars turn the bits' angle
  estimate into an estimate of the dot product, and (with |center|) of the vector's length, so of the cosine
  (`estimated_scores`).
- the caption in the FTS5 keyword index (triggers, see schema.py).

`ColumnCache` keeps, per process, what filtering and the vector scan need: clip ids (uint32), stream codes,
wall-clock spans (float32 offsets, decided exactly) and signatures (D/8 + 8 bytes a clip: 120 MB for a million
896-d clips). It is read once, then caught up with
the rows committed since (`id > last id`); `forget`/`reindex` bump `meta.generation`, which makes it reload.

`search` (one question):
1. filter: the streams and the wall-clock window select rows of the cache (inside the query: nothing outside
   the filters is scored);
2. vector candidates: within the filter, the `VECTOR_CANDIDATES` best by the signatures' estimate of the cosine
   (|r| cos(pi * Hamming / D), numkong's SIMD Hamming kernel, divided by the clip's |v|: a cache column), re-ranked
   by the exact cosine of their stored vectors; when the filter leaves at most `EXACT_MAX` clips, all of them are
   scored exactly. The cosine, not the dot product: a caption's vector is the mean of unit token vectors, not
   normalised, so its length says how alike its tokens are (short, repetitive captions are longer), not how well it
   matches; the dot product favoured such captions (on the quality set, hybrid recall@8 0.594 -> 0.665 on the plain
   questions with the random embedder; unit vectors, e.g. wordllama's, rank alike either way). No setting: for a
   mean-of-tokens vector the length measures how alike its tokens are, not the match, so no embedder here gains
   from the dot product. MMR (answer.py) still takes the dot product, as before;
3. keyword candidates: FTS5 BM25 over the caption text, with the same filters in the SQL query (keywords.py); query
   terms in more than `COMMON_TERM_FRACTION` of the captions, or in more than `COMMON_TERM_POSTINGS`, are dropped,
   the rest taken rarest first within `LEXICAL_POSTINGS`, and BM25 ranks only the newest `LEXICAL_SCORED` matches
   (BM25 scores every posting it is given: this bounds the work on a big memory; a small one never reaches it);
4. fuse: reciprocal rank fusion (k = 60) of the two rankings ("hybrid"), or the vector ranking alone ("paper",
   the paper's ranking), or the keyword ranking alone ("lexical"); the best `shortlist` go to MMR (answer.py).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

import numpy as np

from rlivs.runtime.errors import UserError

from .columns import SIG_MIN, SIG_TAIL, ColumnCache, estimated_scores, hamming, scan, signature, signature_bits, top_k
from .keywords import LEXICAL_SCORED, filter_sql, fts_query, informative_terms, keyword_matches, lexical
from .records import ClipRecord, from_blob

__all__ = ["SIG_MIN", "SIG_TAIL", "ColumnCache", "estimated_scores", "hamming", "signature", "signature_bits",
           "top_k", "filter_sql", "fts_query", "informative_terms", "keyword_matches", "lexical"]  # re-exported

EXACT_MAX = 4096  # at most this many clips inside the filters: score them all exactly
VECTOR_CANDIDATES = 1024  # else: this many Hamming-nearest, then exact re-rank
LEXICAL_CANDIDATES = 256  # keyword hits taken from FTS5
RRF_K = 60.0
MODES = ("hybrid", "paper", "lexical")


@dataclass
class Shortlist:
    """The best clips for a question, best first, with their vectors (for MMR) and scores."""

    records: list[ClipRecord]
    vectors: np.ndarray  # (S, D) float32
    similarity: np.ndarray  # (S,) mean pairwise token cosine to the question
    relevance: np.ndarray  # (S,) what ranked them: similarity ("paper"), or the fused score on its scale
    considered: int  # clips inside the filters
    lexical_hits: int  # keyword candidates found
    mode: str


# a clip row joined with its arrays (what a ClipRecord holds)
RECORD_SQL = ("SELECT c.id, c.stream, c.idx, c.t_start, c.t_end, c.caption, c.n_tokens, a.vector, a.dim, a.dtype, "
              "c.committed_at, c.wall_start, c.wall_end, a.kept FROM clips c JOIN clip_arrays a ON a.id = c.id")


def record_from_row(r: tuple) -> ClipRecord:
    (_, stream, idx, t0, t1, caption, n_tokens, vec, dim, dtype, committed, w0, w1, kept) = r[:14]
    return ClipRecord(stream, idx, t0, t1, caption, n_tokens, from_blob(vec, dtype, (dim,)), committed, w0, w1,
                      None if kept is None else np.frombuffer(kept, dtype="<i2").astype(np.int16))


def fetch(conn: sqlite3.Connection, ids: list[int]) -> dict[int, ClipRecord]:
    """Records (vectors included) of the given clip ids."""
    if not ids:
        return {}
    rows = conn.execute(f"{RECORD_SQL} WHERE c.id IN (SELECT value FROM json_each(?))",
                        (json.dumps([int(i) for i in ids]),)).fetchall()
    return {r[0]: record_from_row(r) for r in rows}


def fetch_vectors(conn: sqlite3.Connection, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C,) clip ids -> (ids in the order read (C,) int64, their vectors (C, D) float32), without building records."""
    rows = conn.execute("SELECT id, vector, dtype, dim FROM clip_arrays WHERE id IN (SELECT value FROM json_each(?))",
                        (json.dumps(np.asarray(ids).tolist()),)).fetchall()
    if not rows:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    out_ids = np.array([r[0] for r in rows], dtype=np.int64)
    if all(r[2] == "float32" and r[3] == rows[0][3] for r in rows):  # the usual case: one buffer, one view
        return out_ids, np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), -1).astype(
            np.float32)
    return out_ids, np.stack([from_blob(r[1], r[2], (r[3],)).astype(np.float32) for r in rows])


def cosines(vectors: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(C, D) vectors, (D,) q -> (C,) v.q / |v| in the vectors' dtype (ranks like the cosine: |q| is common; a zero
    vector scores 0; a vector holding inf or NaN, which a memory may store bit-exactly, scores NaN or 0, silently)."""
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.linalg.norm(vectors, axis=1)
        sims = vectors @ q
        return np.divide(sims, norms, out=np.zeros_like(sims), where=norms > 0)


def exact_rank(ids: np.ndarray, vectors: np.ndarray, q: np.ndarray, head: int) -> list[int]:
    """(C,) ids of (C, D) float32 vectors, best cosine to q first (ties: lower id first): ranked in float32
    (a 1,024 x 896 product: ~0.3 ms, float64 took ~5), then the best `head` again in float64, so the order the
    shortlist takes from is the exact one."""
    sims = cosines(vectors, q)  # (C,) float32
    order = np.lexsort((ids, -sims))
    top = order[:head]
    exact = cosines(vectors[top].astype(np.float64), q.astype(np.float64))
    order[:head] = top[np.lexsort((ids[top], -exact))]
    return ids[order].tolist()


def rank_fusion(*rankings: list[int], k: float = RRF_K) -> dict[int, float]:
    """Reciprocal rank fusion: id -> sum over rankings of 1 / (k + rank), rank from 1."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for r, i in enumerate(ranking, start=1):
            fused[i] = fused.get(i, 0.0) + 1.0 / (k + r)
    return fused


def search(conn: sqlite3.Connection, cache: ColumnCache, center: np.ndarray | None, query_vector: np.ndarray,
           query_text: str | None, streams: list[str] | None, wall_from: float | None, wall_to: float | None,
           mode: str, shortlist: int, stream_until: float | None = None) -> Shortlist:
    if mode not in MODES:
        raise UserError(f"unknown retrieval mode {mode!r}: use one of {', '.join(MODES)}")
    if shortlist < 1:
        raise UserError(f"shortlist must be >= 1, got {shortlist}")
    q = np.asarray(query_vector, dtype=np.float32)  # (D,)
    # 1. filter
    rows = inside = cache.select(streams, wall_from, wall_to, stream_until, conn)  # (M,) positions, or a slice of all
    considered = cache.ids.n if isinstance(rows, slice) else len(rows)
    # 2. vector candidates: Hamming shortlist, exact re-rank, both by cosine
    vec_rank: list[int] = []
    if mode != "lexical" and considered:
        signed = cache.all_signed or cache.has_sig.view[rows].all()
        if considered > EXACT_MAX and center is not None and signed:  # (slice: start 0)
            est = scan(q, center, cache.sigs.view, cache.norms.view, cache.dots.view, rows,
                       cache.inverse_lengths(center))  # (M,) estimated cosines
            best = top_k(est, VECTOR_CANDIDATES)
            rows = best if isinstance(rows, slice) else rows[best]
        ids, vectors = fetch_vectors(conn, cache.ids.view[rows])  # (C,), (C, D)
        vec_rank = exact_rank(ids, vectors, q, 2 * shortlist)
    # 3. keyword candidates
    lex_rank: list[int] = []
    if mode != "paper" and query_text and considered:
        fq = fts_query(conn, query_text, cache.ids.n, cache)
        if fq is not None:
            id_range = None
            if not isinstance(inside, slice):
                in_ids = cache.ids.view[inside]  # ascending (the cache is in id order)
                id_range = (int(in_ids[0]), int(in_ids[-1]))
            lex_rank = lexical(conn, fq, streams, wall_from, wall_to, LEXICAL_CANDIDATES, stream_until, id_range,
                               LEXICAL_SCORED)
    # 4. fuse and cut
    if mode == "paper":
        order = vec_rank
    elif mode == "lexical":
        order = lex_rank
    else:
        fused = rank_fusion(vec_rank, lex_rank)
        order = sorted(fused, key=lambda i: (-fused[i], i))
    order = order[:shortlist]
    records = fetch(conn, order)  # only the shortlist is read whole
    recs = [records[i] for i in order]
    dim = len(q)
    vectors = np.stack([r.vector for r in recs]).astype(np.float32) if recs else np.zeros((0, dim), np.float32)
    similarity = vectors.astype(np.float64) @ q.astype(np.float64)  # (S,)
    if mode == "paper" or not len(order):
        relevance = similarity
    else:  # the fused rank as a relevance on the similarity's scale, so MMR's lambda trades it off as before
        ranks = np.arange(1, len(order) + 1, dtype=np.float64)
        span = (similarity.max() - similarity.min()) if len(order) > 1 else 0.0
        relevance = similarity.max() - span * (ranks - 1) / max(len(order) - 1, 1)
    return Shortlist(recs, vectors, similarity, relevance, considered, len(lex_rank), mode)
