"""Reading clips back without a question: by stream and index or by time (the timeline), one clip, counts and
spans inside the filters, keyword matches (counting questions), the JSONL export. A mixin of Memory (store.py)."""

from __future__ import annotations

import json
from typing import IO

from rlivs.runtime.errors import UserError

from .records import ClipRecord
from .search import RECORD_SQL, fetch, filter_sql, keyword_matches, record_from_row


class Timeline:
    """Memory's reads of clips in order."""

    def clips(
        self,
        stream: str | None = None,
        t_from: float | None = None,
        t_to: float | None = None,
        limit: int | None = None,
        offset: int = 0,
        *,
        wall_from: float | None = None,
        wall_to: float | None = None,
        by_time: bool = False,
    ) -> list[ClipRecord]:
        """Clips ordered by stream then index (or by wall-clock start with `by_time`), optionally of one stream and
        overlapping [t_from, t_to] in stream time and [wall_from, wall_to) in wall-clock time (UTC unix seconds,
        half-open like every time window; a clip without a clock is outside any wall-clock window).

        A clip covers [t_start, t_end) in stream time: it overlaps the window when it starts inside
        it, or the window starts inside the clip (so a clip ending exactly at t_from is excluded).
        """
        self._live()
        where, args = [], []
        if stream is not None:
            where.append("stream = ?")
            args.append(stream)
        if t_from is not None and t_to is not None and t_from > t_to:
            raise UserError(f"time window [{t_from}, {t_to}] is empty: pass t_from <= t_to")
        if t_to is not None:
            where.append("t_start <= ?")
            args.append(float(t_to))
        if t_from is not None:
            where.append("(t_end > ? OR t_start >= ?)")
            args += [float(t_from), float(t_from)]
        if wall_from is not None and wall_to is not None and wall_from > wall_to:
            raise UserError(f"wall-clock window [{wall_from}, {wall_to}] is empty: pass a start before the end")
        more, more_args = filter_sql("", None, wall_from, wall_to)
        where, args = where + more, args + more_args
        if limit is not None and limit < 0:
            raise UserError(f"limit must be >= 0 or None, got {limit}")
        if offset < 0:
            raise UserError(f"offset must be >= 0, got {offset}")
        # the columns of `where` are the clips table's alone (clip_arrays shares none but id): no prefix needed
        sql = (RECORD_SQL + (" WHERE " + " AND ".join(where) if where else "")
               + (" ORDER BY c.wall_start, c.stream, c.idx" if by_time else " ORDER BY c.stream, c.idx")
               + " LIMIT ? OFFSET ?")
        rows = self._live().execute(sql, (*args, -1 if limit is None else int(limit), int(offset))).fetchall()
        return [record_from_row(r) for r in rows]

    def keyword_matches(self, text: str, *, streams: list[str] | None = None, wall_from: float | None = None,
                        wall_to: float | None = None, stream_until: float | None = None
                        ) -> tuple[int, ClipRecord | None, ClipRecord | None]:
        """Clips inside the filters whose caption holds every informative word of `text`: (count, earliest,
        latest). What "how many times" and "when ... last/first" questions are answered from."""

        def body():
            n, first, last = keyword_matches(self._conn, text, streams, wall_from, wall_to, stream_until)
            recs = fetch(self._conn, [i for i in (first, last) if i is not None])
            return n, recs.get(first), recs.get(last)

        return self._read(body)

    def clip(self, stream: str, index: int) -> ClipRecord | None:
        """One clip (with its kept token indices), or None."""
        row = self._live().execute(RECORD_SQL + " WHERE c.stream = ? AND c.idx = ?", (stream, int(index))).fetchone()
        return None if row is None else record_from_row(row)

    def _scalar(self, expr: str, streams: list[str] | None = None, stream_until: float | None = None,
                also: tuple[str, ...] = ()):
        """One value over the clips inside the filters (filter_sql, plus the conditions in `also`)."""
        where, args = filter_sql("", streams, None, None, stream_until)
        where = [*also, *where]
        sql = f"SELECT {expr} FROM clips" + (" WHERE " + " AND ".join(where) if where else "") + " LIMIT 1"
        row = self._live().execute(sql, args).fetchone()
        return None if row is None else row[0]

    def count_clips(self, stream: str | None = None, stream_until: float | None = None) -> int:
        """How many clips (of `stream`; with a stream-time end at or before `stream_until`)."""
        return self._scalar("COUNT(*)", None if stream is None else [stream], stream_until)

    def latest_end(self, stream: str | None = None, stream_until: float | None = None) -> float | None:
        """The latest stream-time clip end (of `stream`; at or before `stream_until`), or None without clips."""
        return self._scalar("MAX(t_end)", None if stream is None else [stream], stream_until)

    def has_clock(self, streams: list[str] | None = None) -> bool:
        """Whether any clip (of `streams`) has wall-clock times."""
        return self._scalar("1", streams, also=("wall_start IS NOT NULL",)) is not None

    def export_jsonl(self, fp: IO[str], stream: str | None = None) -> int:
        """Write one JSON line per clip (stream, index, stream times, wall-clock times, caption, n_tokens) in stream
        then index order; vectors are not exported (`rlivs memory import` recomputes them). Returns the count."""
        n, offset, page = 0, 0, 10000
        while True:
            rows = self.clips(stream, limit=page, offset=offset)
            for r in rows:
                fp.write(json.dumps(dict(stream=r.stream, index=r.index, t_start=r.t_start, t_end=r.t_end,
                                         wall_start=r.wall_start, wall_end=r.wall_end, caption=r.caption,
                                         n_tokens=r.n_tokens), ensure_ascii=False) + "\n")
            n += len(rows)
            offset += page
            if len(rows) < page:
                return n
