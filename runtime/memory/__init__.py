"""The memory: streams, captioned clips, FIFO state and the indexes questions are answered from, in one SQLite file.

    store.py    Memory: opening, migration, one transaction per clip, search, forget, reindex, info, JSONL export
    records.py  ClipRecord, StreamState, arrays as bytes, SQLite errors explained
    schema.py   the tables (version 3) and the in-place migrations from versions 1 and 2
    search.py   filters, binary-signature vector candidates, FTS5 keyword candidates, rank fusion
"""

from .records import ClipRecord, IdleSpan, StreamState
from .search import Shortlist
from .store import Memory

__all__ = ["ClipRecord", "IdleSpan", "Memory", "Shortlist", "StreamState"]
