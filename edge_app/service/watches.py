"""Standing queries (watches) and their matching: a bus listener that owns the watches, the streams' marks and the
catch-up.

Every committed caption is scored against every watch (the retrieval relevance `retrieval.similarity` between the
watch query's vector and the caption's stored vector; a match when relevance >= the watch's threshold); each match
is stored and published on the bus as a `MatchEvent` (server-sent events, MQTT and webhooks listen), and when its
watch has a webhook a delivery is queued in the same transaction.

Matching is exactly once across crashes: a clip's matches, their webhook deliveries and the stream's "matched up to
clip N" mark are written in one transaction of the service database (`EdgeStore.record_clip`). Clips committed to
the memory but not yet matched (a crash or a failed write in between) are matched from the memory when the service
starts (`catch_up`) and before the stream's next clip. A watch matches the clips of each stream after the mark that
stream had when the watch was created. A stream's clip indices have gaps where the activity gate left clips idle or
retention forgot them: clips are looked up by index, never by position.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from rlivs.runtime.errors import UserError
from rlivs.runtime.retrieval import similarity

from .bus import ClipEvent, Listener, MatchEvent
from .payloads import match_json
from .store import EdgeStore, Match, NewMatch, Watch

log = logging.getLogger("rlivs.serve")


class NotFound(LookupError):
    """Maps to HTTP 404."""


class LimitReached(RuntimeError):
    """Maps to HTTP 409: a configured cap (watches) is reached; the message names the cap and the fix."""


@dataclass
class _WatchEntry:
    watch: Watch
    vector: np.ndarray  # (D,) the query's retrieval vector
    self_score: float  # relevance of the query to itself (what a caption made of exactly its words would score)
    max_score: float = -math.inf  # best relevance seen since the service started (to help choose a threshold)
    last_score: float | None = None  # relevance of the latest caption scored
    starts: dict[str, int] = field(default_factory=dict)  # stream -> last clip index it ignores (none: -1)

    def wants(self, stream: str, clip: int) -> bool:
        return self.watch.stream in (None, stream) and clip > self.starts.get(stream, -1)


@dataclass
class MatcherConfig:
    default_watch_ratio: float = 0.5  # a watch without a threshold matches at this fraction of its self-relevance
    max_watches: int = 100
    keep_matches: int = 200  # newest matches kept per watch


class WatchMatcher(Listener):
    """`read()` opens the memory read-only; `query_vector(text)` makes a query's (D,) vector (on the model);
    `publish(MatchEvent)` hands a match to the bus; `known_streams()` names the configured sources."""

    name = "watches"

    def __init__(self, store: EdgeStore, metrics, config: MatcherConfig, read: Callable, query_vector: Callable,
                 publish: Callable[[MatchEvent], None], known_streams: Callable[[], set] = set):
        self.store, self.metrics, self.config = store, metrics, config
        self._read, self._query_vector, self._publish, self._known = read, query_vector, publish, known_streams
        self._watch_lock = threading.Lock()  # guards _watches
        self._match_lock = threading.Lock()  # one clip matched at a time; guards _marks
        self._watches: dict[int, _WatchEntry] = {}
        starts = store.watch_starts()
        for w in store.watches():
            self._watches[w.id] = replace(self._entry(w), starts=starts.get(w.id, {}))
        if store.upgraded:  # schema 1 kept no marks: its watches matched live up to now, never again
            store.finish_upgrade(self._last_indices())
        self._marks = store.marks()  # stream -> last clip matched against every watch

    def __len__(self) -> int:
        with self._watch_lock:
            return len(self._watches)

    def _last_indices(self) -> dict[str, int]:
        """stream -> its last clip index (captioned or idle; -1: none yet)."""
        with self._read() as mem:
            return {s["name"]: s["next_idx"] - 1 for s in mem.streams()}

    # -- the bus --------------------------------------------------------------------------------------------------

    def on_clip(self, clip: ClipEvent) -> None:
        if clip.outcome != "captioned":
            return
        try:
            clip.matches = self.score(clip.record)
        except (sqlite3.Error, UserError) as e:  # e.g. a full disk: the mark stays; the next clip or a restart
            # catches up (UserError: the memory's own storage errors while reading clips back)
            self.metrics.inc("rlivs_watch_match_errors_total")
            log.warning("matching clip %d of %s against the watches failed (%s): retried with the next clip",
                        clip.index, clip.stream, e)

    def start(self) -> None:
        self.catch_up()

    # -- matching -------------------------------------------------------------------------------------------------

    def score(self, record) -> list[Match]:
        """Match one committed caption against every watch, after any earlier clip of its stream still unmatched;
        store, publish and queue the deliveries of the matches. Returns this caption's matches."""
        with self._match_lock:
            mark = self._marks.get(record.stream, -1)
            if record.index <= mark:
                return []  # matched before
            if record.index > mark + 1:
                self._catch_up_stream(record.stream, record.index - 1)
            return self._match(record)

    def catch_up(self) -> int:
        """Match every committed clip not yet matched, stream by stream. Returns the clips matched."""
        done = 0
        for name, last in self._last_indices().items():
            with self._match_lock:
                done += self._catch_up_stream(name, last)
        return done

    def _catch_up_stream(self, stream: str, up_to: int) -> int:
        """Match the captioned clips (mark, up_to] of `stream` from the memory. Caller holds _match_lock."""
        mark = self._marks.get(stream, -1)
        with self._watch_lock:
            lo = min((e.starts.get(stream, -1) for e in self._watches.values() if e.watch.stream in (None, stream)),
                     default=up_to)
        done = 0
        if lo < up_to:
            with self._read() as mem:
                for index in range(max(mark, lo) + 1, up_to + 1):  # by index: gated or forgotten clips are gaps
                    r = mem.clip(stream, index)
                    if r is not None:
                        self._match(r)
                        done += 1
        if up_to > self._marks.get(stream, -1):  # the gaps (and clips no watch wants) are matched: nothing in them
            self.store.set_marks({stream: up_to})
            self._marks[stream] = up_to
        if done:
            log.info("stream %s: matched %d committed clips the watches had not seen", stream, done)
        return done

    def _match(self, record) -> list[Match]:
        """Score, store (one transaction with the mark) and publish one clip's matches. Caller holds _match_lock."""
        with self._watch_lock:
            entries = [e for e in self._watches.values() if e.wants(record.stream, record.index)]
        new = []
        if entries:
            matrix = np.stack([e.vector for e in entries])  # (W, D)
            scores = similarity(record.vector.astype(np.float32), matrix)  # (W,) mean pairwise token cosine
            for e, score in zip(entries, scores.tolist()):
                e.last_score, e.max_score = score, max(e.max_score, score)
                if score >= e.watch.threshold:
                    new.append((e, NewMatch(e.watch.id, score, e.watch.webhook)))
        stored = self.store.record_clip(record.stream, record.index, record.t_start, record.t_end, record.caption,
                                        [n for _, n in new], self.config.keep_matches)
        self._marks[record.stream] = max(self._marks.get(record.stream, -1), record.index)
        by_id = {e.watch.id: e for e, _ in new}
        wall = (record.wall_start, record.wall_end)
        for match in stored:
            w = by_id[match.watch_id].watch
            self._publish(MatchEvent(match, w, wall, self.match_json(match, w, wall)))
        return stored

    def match_json(self, m: Match, w: Watch | None = None,
                   wall: tuple[float | None, float | None] | None = None) -> dict:
        """A match in the API; `wall` (its clip's wall-clock span) is read from the memory when not given."""
        if wall is None:
            wall = self._walls([m])[(m.stream, m.clip)]
        return match_json(m, w, wall, bool(self.store.thumbnail_clips(m.stream, [m.clip])))

    def _walls(self, matches: list[Match]) -> dict[tuple[str, int], tuple[float | None, float | None]]:
        """(stream, clip) -> the clip's wall-clock span (UTC unix seconds, None without a clock), from the memory."""
        out: dict = {}
        if matches:
            with self._read() as mem:
                for m in matches:
                    if (m.stream, m.clip) not in out:
                        r = mem.clip(m.stream, m.clip)
                        out[(m.stream, m.clip)] = (None, None) if r is None else (r.wall_start, r.wall_end)
        return out

    def watch_of(self, match: Match) -> Watch | None:
        with self._watch_lock:
            e = self._watches.get(match.watch_id)
        return None if e is None else e.watch

    # -- the watches ----------------------------------------------------------------------------------------------

    def _entry(self, w: Watch) -> _WatchEntry:
        v = self._query_vector(w.query)
        return _WatchEntry(w, v, float(similarity(v, v[None])[0]))

    def add(self, query: str, threshold: float | None = None, stream: str | None = None,
            webhook: str | None = None, check_url: Callable[[str], None] | None = None) -> dict:
        query = query.strip()
        if not query:
            raise UserError("the watch query is empty: describe what to watch for, e.g. 'a person at the door'")
        if webhook is not None and check_url is not None:
            check_url(webhook)
        if stream is not None:
            with self._read() as mem:
                known = {s["name"] for s in mem.streams()}
            if stream not in known and stream not in self._known():
                raise NotFound(f"no stream {stream!r}: GET /v1/streams lists them (or leave stream out for all)")
        self._check_cap()
        probe = self._entry(Watch(0, query, 0.0, stream, webhook, 0.0))
        if threshold is None:
            threshold = round(self.config.default_watch_ratio * probe.self_score, 6)
        with self._match_lock:  # no clip is matched meanwhile: the watch starts after each stream's mark
            self._check_cap()
            starts = {name: self._marks.get(name, last) for name, last in self._last_indices().items()}
            w = self.store.add_watch(query, threshold, stream, webhook, starts)
            entry = replace(probe, watch=w, starts=starts)
            with self._watch_lock:
                self._watches[w.id] = entry
        return self._json(entry, 0)

    def _check_cap(self) -> None:
        n = len(self)
        if n >= self.config.max_watches:
            raise LimitReached(f"{n} watches exist, the most this service keeps: delete one (DELETE "
                               f"/v1/watches/ID) or start rlivs serve with a larger --max-watches")

    def _json(self, e: _WatchEntry, n_matches: int) -> dict:
        return {**e.watch.as_dict(), "self_score": e.self_score, "matches": n_matches,
                "max_score": None if e.max_score == -math.inf else e.max_score, "last_score": e.last_score}

    def list(self) -> list[dict]:
        counts = self.store.match_counts()
        with self._watch_lock:
            entries = sorted(self._watches.values(), key=lambda e: e.watch.id)
        return [self._json(e, counts.get(e.watch.id, 0)) for e in entries]

    def get(self, watch_id: int) -> dict:
        with self._watch_lock:
            e = self._watches.get(watch_id)
        if e is None:
            raise NotFound(f"no watch {watch_id}: list them with GET /v1/watches")
        return self._json(e, self.store.match_counts().get(watch_id, 0))

    def delete(self, watch_id: int) -> None:
        with self._watch_lock:
            self._watches.pop(watch_id, None)
        if not self.store.delete_watch(watch_id):
            raise NotFound(f"no watch {watch_id}: list them with GET /v1/watches")

    def matches(self, watch_id: int | None = None, limit: int = 50, before: int | None = None) -> list[dict]:
        if watch_id is not None:
            self.get(watch_id)  # 404 for an unknown watch
        with self._watch_lock:
            by_id = {i: e.watch for i, e in self._watches.items()}
        rows = self.store.matches(watch_id, limit, before)
        walls = self._walls(rows)
        return [self.match_json(m, by_id.get(m.watch_id), walls[(m.stream, m.clip)]) for m in rows]
