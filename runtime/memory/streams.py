"""Streams: registering one, its resume state (next index and FIFO tokens), the list of streams, clock notes.
A mixin of Memory (store.py)."""

from __future__ import annotations

import json
import time

import numpy as np

from rlivs.runtime.errors import UserError
from rlivs.runtime.validate import check_stream_name

from .records import StreamState, from_blob


class Streams:
    """Memory's streams and their resume state."""

    def _stream_row(self, stream: str) -> dict | None:
        rows = list(self._db.query("SELECT * FROM streams WHERE name = ?", [stream]))
        return rows[0] if rows else None

    def _next_index(self, stream: str) -> int:
        row = self._conn.execute("SELECT next_idx FROM streams WHERE name = ?", (stream,)).fetchone()
        return 0 if row is None else row[0]

    def _fifo(self, stream: str) -> list[tuple[int, np.ndarray]]:
        rows = self._db.query(
            "SELECT clip_idx, n, dim, dtype, tokens FROM fifo WHERE stream = ? ORDER BY clip_idx", [stream]
        )
        return [(r["clip_idx"], from_blob(r["tokens"], r["dtype"], (r["n"], r["dim"]))) for r in rows]

    def _state(self, row: dict) -> StreamState:
        name = row["name"]
        return StreamState(
            stream=name,
            source=row["source"],
            model_id=row["model_id"],
            config_hash=row["config_hash"],
            next_index=self._next_index(name),
            fifo=self._fifo(name),
        )

    def open_stream(self, stream: str, source: str, model_id: str, config_hash: str) -> StreamState:
        """Register a new stream (next_index 0, empty FIFO) or return an existing one's resume state."""
        if not isinstance(stream, str) or not stream:
            raise UserError(f"stream name must be a non-empty string, got {stream!r}: pass e.g. --stream cam0")
        for name, value in (("source", source), ("model_id", model_id), ("config_hash", config_hash)):
            if not isinstance(value, str):
                raise UserError(f"{name} must be a string, got {type(value).__name__}")

        def body() -> StreamState:
            row = self._stream_row(stream)
            if row is None:
                self._refuse_readonly(f"create stream {stream!r}")
                check_stream_name(stream)  # a new name: the rules of every name that enters (existing ones resume)
                now = time.time()
                row = dict(name=stream, source=source, model_id=model_id, config_hash=config_hash, created_at=now)
                self._conn.execute(
                    "INSERT INTO streams (name, source, model_id, config_hash, created_at) VALUES (?, ?, ?, ?, ?)",
                    tuple(row.values()),
                )
            elif row["config_hash"] != config_hash:
                raise UserError(
                    f"stream {stream!r} in {self.path} was ingested with other settings "
                    f"(config hash {row['config_hash']}, now {config_hash}): use the same settings to resume it "
                    f"or a new stream name"
                )
            return self._state(row)

        self._live()
        return self._read(body) if self.readonly else self._write(body)

    def streams(self) -> list[dict]:
        """Every stream: name, source, model_id, config_hash, n_clips (captioned), n_idle (left uncaptioned by the
        activity gate), t_end (of the last clip watched, captioned or idle), created_at, next_idx."""
        self._live()
        sql = """
            SELECT s.name, s.source, s.model_id, s.config_hash,
                   (SELECT COUNT(*) FROM clips c WHERE c.stream = s.name) AS n_clips,
                   (SELECT COALESCE(SUM(i.last_idx - i.first_idx + 1), 0) FROM idle i WHERE i.stream = s.name)
                       AS n_idle,
                   (SELECT MAX(e) FROM (
                       SELECT (SELECT c.t_end FROM clips c WHERE c.stream = s.name ORDER BY c.idx DESC LIMIT 1) AS e
                       UNION ALL
                       SELECT (SELECT i.t_end FROM idle i WHERE i.stream = s.name ORDER BY i.last_idx DESC LIMIT 1)))
                       AS t_end,
                   s.created_at, s.next_idx
            FROM streams s ORDER BY s.created_at, s.name
        """
        return list(self._db.query(sql))

    def set_stream_clock(self, stream: str, clock: dict) -> None:
        """Note where a stream's clock comes from (a JSON object: for a robot recording, its time basis, topic and
        the log-time offset of its clips), kept until the stream is forgotten; written only when it changed."""
        key, value = f"clock:{stream}", json.dumps(clock, sort_keys=True)
        if self._meta(key) == value:
            return
        self._write(lambda: self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                               (key, value)), what=f"note the clock of stream {stream!r}")

    def stream_clocks(self) -> dict[str, dict]:
        """stream -> what `set_stream_clock` noted (streams without a note are absent)."""
        rows = self._live().execute("SELECT key, value FROM meta WHERE key LIKE 'clock:%'").fetchall()
        return {k.removeprefix("clock:"): json.loads(v) for k, v in rows}

    def first_clips(self) -> dict[str, int]:
        """stream -> index of its first clip still stored (its next index when none is), one lookup in the
        (stream, idx) index per stream: what retention asks after `forget` (info() counts every clip of every
        stream instead)."""
        sql = ("SELECT s.name, COALESCE((SELECT MIN(c.idx) FROM clips c WHERE c.stream = s.name), s.next_idx) "
               "FROM streams s ORDER BY s.name")
        return dict(self._live().execute(sql).fetchall())
