"""The keyword side of search.py: the question's informative words, their document counts (cached), the posting
budget, the FTS5 BM25 query inside the filters, and the keyword matches that counting questions are answered from."""

from __future__ import annotations

import re
import sqlite3

from .columns import ColumnCache

COMMON_TERM_FRACTION = 0.2  # a query term in more than this fraction of captions is dropped ...
COMMON_TERM_POSTINGS = 20000  # ... or in more than this many
LEXICAL_POSTINGS = 20000  # the kept terms hold at most this many postings together (rarest first): BM25's work
LEXICAL_SCORED = 2048  # BM25 scores at most this many matching captions: the newest (a posting budget)
DF_REFRESH = 0.1  # a cached document frequency is counted again once the memory grew by this fraction

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_STOP = frozenset(
    "a an and are as at be been but by can could did do does doing for from had has have how i in into is it its "
    "me my of on or our so than that the their them then there these they this those to up was we were what when "
    "where which who whom why will with would you your ever last first time times many much often happen happened "
    "see seen show".split())


def document_frequency(conn: sqlite3.Connection, word: str, limit: int, cache: ColumnCache | None = None) -> int:
    """How many captions hold `word` (its stemmed form: the index is asked, fts5vocab only lists stems), counted up
    to limit + 1. Cached in the column cache per generation while the memory grew by less than DF_REFRESH since."""
    n = 0 if cache is None else cache.ids.n
    if cache is not None:
        hit = cache.df.get(word)
        if hit is not None and n <= hit[1] * (1 + DF_REFRESH) and (hit[0] <= hit[2] or hit[2] >= limit):  # exact, or capped at a limit >= this one
            return hit[0]
    df = conn.execute("SELECT COUNT(*) FROM (SELECT rowid FROM clips_fts WHERE clips_fts MATCH ? LIMIT ?)",
                      (f'"{word}"', int(limit) + 1)).fetchone()[0]
    if cache is not None:
        cache.df[word] = (df, n, int(limit))
    return df


def fts_query(conn: sqlite3.Connection, text: str, n_clips: int, cache: ColumnCache | None = None) -> str | None:
    """An FTS5 OR-query of the question's informative words, or None when nothing informative is left. Dropped:
    stop words, terms in more than COMMON_TERM_FRACTION of the captions (or COMMON_TERM_POSTINGS), and past the
    posting budget: the terms are taken rarest first while their postings together stay within LEXICAL_POSTINGS
    (the rarest always), because BM25 scores every posting of every term it is given and a common term adds little
    to a score (its idf is low)."""
    words = informative_terms(text)
    if not words:
        return None
    limit = int(max(50, min(COMMON_TERM_FRACTION * n_clips, COMMON_TERM_POSTINGS)))
    df = {w: document_frequency(conn, w, limit, cache) for w in words}
    chosen, total = set(), 0
    for w in sorted((w for w in words if 0 < df[w] <= limit), key=lambda w: (df[w], w)):
        if chosen and total + df[w] > LEXICAL_POSTINGS:
            break
        chosen.add(w)
        total += df[w]
    return " OR ".join(f'"{w}"' for w in words if w in chosen) or None


def filter_sql(col: str = "", streams: list[str] | None = None, wall_from: float | None = None,
               wall_to: float | None = None, stream_until: float | None = None) -> tuple[list[str], list]:
    """SQL conditions (and their arguments) for the filters every query shares; `col` prefixes the column names
    (e.g. "c."). A clip overlaps the half-open window [wall_from, wall_to) when it starts before its end and ends
    after its start (or starts at it)."""
    where, args = [], []
    if stream_until is not None:
        where.append(f"{col}t_end <= ?")
        args.append(float(stream_until))
    if streams is not None:
        where.append(f"{col}stream IN ({', '.join('?' * len(streams))})")
        args += list(streams)
    if wall_to is not None:
        where.append(f"{col}wall_start < ?")
        args.append(float(wall_to))
    if wall_from is not None:
        where.append(f"({col}wall_end > ? OR {col}wall_start >= ?)")
        args += [float(wall_from), float(wall_from)]
    return where, args


def lexical(conn: sqlite3.Connection, query: str, streams: list[str] | None, wall_from: float | None,
            wall_to: float | None, limit: int, stream_until: float | None = None,
            id_range: tuple[int, int] | None = None, scored: int | None = None) -> list[int]:
    """Clip ids matching the FTS5 query inside the filters, best BM25 first. `id_range` (the lowest and highest id
    inside the filters, from the column cache) lets FTS5 skip the postings outside it before any is scored;
    `scored` bounds BM25's work: only the newest `scored` matches (by id, inside the range) are ranked — finding
    where they start walks the matches' ids without scoring them (well under a millisecond at 1M captions)."""
    where, args = filter_sql("c.", streams, wall_from, wall_to, stream_until)
    lo, hi = id_range if id_range is not None else (None, None)
    if scored is not None:
        bound = ["clips_fts MATCH ?"] + (["rowid >= ?", "rowid <= ?"] if id_range is not None else [])
        row = conn.execute(f"SELECT rowid FROM clips_fts WHERE {' AND '.join(bound)} ORDER BY rowid DESC "
                           f"LIMIT 1 OFFSET ?", (query, *([lo, hi] if id_range is not None else []),
                                                 int(scored) - 1)).fetchone()
        if row is not None:  # more than `scored` matches: rank the newest
            lo = row[0]
    rng, rng_args = [], []
    if lo is not None:
        rng, rng_args = ["clips_fts.rowid >= ?"], [int(lo)]
    if hi is not None:
        rng, rng_args = [*rng, "clips_fts.rowid <= ?"], [*rng_args, int(hi)]
    if not where:  # no filter: the keyword index alone, no lookup of each match in the clips table
        sql = (f"SELECT rowid FROM clips_fts WHERE {' AND '.join(['clips_fts MATCH ?', *rng])} "
               f"ORDER BY bm25(clips_fts) LIMIT ?")
        return [r[0] for r in conn.execute(sql, (query, *rng_args, limit))]
    where, args = ["clips_fts MATCH ?", *rng, *where], [query, *rng_args, *args]
    sql = (f"SELECT c.id FROM clips_fts JOIN clips c ON c.id = clips_fts.rowid WHERE {' AND '.join(where)} "
           f"ORDER BY bm25(clips_fts) LIMIT ?")
    return [r[0] for r in conn.execute(sql, (*args, limit))]


def informative_terms(text: str) -> list[str]:
    """The question's words that can match a caption: lower-cased, stop words and single letters dropped."""
    words: list[str] = []
    for w in _WORD.findall(text.lower()):
        if w not in _STOP and len(w) > 1 and w not in words:
            words.append(w)
    return words


def keyword_matches(conn: sqlite3.Connection, text: str, streams: list[str] | None, wall_from: float | None,
                    wall_to: float | None, stream_until: float | None = None) -> tuple[int, int | None, int | None]:
    """Clips inside the filters whose caption holds every informative word of `text` (stemmed):
    (how many, id of the earliest, id of the latest) by wall-clock time, then stream time."""
    terms = informative_terms(text)
    if not terms:
        return 0, None, None
    where, args = filter_sql("c.", streams, wall_from, wall_to, stream_until)
    where, args = ["clips_fts MATCH ?", *where], [" AND ".join(f'"{w}"' for w in terms), *args]
    base = f"FROM clips_fts JOIN clips c ON c.id = clips_fts.rowid WHERE {' AND '.join(where)}"
    n = conn.execute(f"SELECT COUNT(*) {base}", args).fetchone()[0]
    if not n:
        return 0, None, None
    first = conn.execute(f"SELECT c.id {base} ORDER BY c.wall_start, c.t_start LIMIT 1", args).fetchone()[0]
    last = conn.execute(f"SELECT c.id {base} ORDER BY c.wall_start DESC, c.t_start DESC LIMIT 1", args).fetchone()[0]
    return n, first, last
