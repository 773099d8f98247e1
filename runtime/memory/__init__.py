"""The memory: streams, captioned clips, FIFO state and the indexes questions are answered from, in one SQLite file.

    store.py        Memory: the one public facade (transactions, info, lifetime), assembled from one mixin per concern:
      opening.py      opening, refusing foreign files, creating, migrating
      streams.py      streams, resume state, clock notes
      commits.py      commit_clip / commit_idle (one transaction per clip), idle runs, the gate's reference
      timeline.py     clips in order, counts, keyword matches, JSONL export
      index.py        search, signatures, generation, reindex
      housekeeping.py import_clips, forget
    checks.py       what every clip entering the memory is checked for
    records.py      ClipRecord, StreamState, arrays as bytes, SQLite errors explained
    schema.py       the tables (version 4) and the in-place migrations from versions 1, 2 and 3
    search.py       one question's shortlist: vector and keyword candidates inside the filters, rank fusion
      columns.py      the per-process column cache, binary signatures, Hamming estimate, top-k
      keywords.py     informative words, cached document counts, the posting budget, FTS5 BM25, keyword matches
      packs.py        the packed copy of the cache's columns (4,096 clips a row), kept in the clips' transactions
"""

from .records import ClipRecord, IdleSpan, StreamState
from .search import Shortlist
from .store import Memory

__all__ = ["ClipRecord", "IdleSpan", "Memory", "Shortlist", "StreamState"]
