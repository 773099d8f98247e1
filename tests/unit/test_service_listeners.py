"""The clip bus of `rlivs serve` and each of its listeners in isolation (edge_app/service/bus.py, listeners.py,
watches.py): real SQLite files (the memory and the service's store), no model, no HTTP."""

from __future__ import annotations

import time

import numpy as np
import pytest

from rlivs.edge_app.service import telemetry
from rlivs.edge_app.service.bus import ClipBus, ClipEvent, Listener, MatchEvent
from rlivs.edge_app.service.events import EventHub
from rlivs.edge_app.service.listeners import ClipMetrics, Retention, ServerEvents, Thumbnails, Webhooks
from rlivs.edge_app.service.metrics import Metrics
from rlivs.edge_app.service.store import EdgeStore, Match, Watch
from rlivs.edge_app.service.watches import MatcherConfig, WatchMatcher
from rlivs.runtime.answer import span_label, wall_iso
from rlivs.runtime.memory import ClipRecord, Memory

D = 8
WALL0 = 1_790_000_000.0


def unit(i: int) -> np.ndarray:
    v = np.zeros(D, np.float32)
    v[i % D] = 1.0
    return v


def record(i: int, topic: int, wall: bool = True, stream: str = "cam") -> ClipRecord:
    """Clip i of `stream` (2 s each) whose caption is about `topic` (its vector is that axis)."""
    return ClipRecord(stream, i, 2.0 * i, 2.0 * i + 2, f"caption {i} about {topic}", 4, unit(topic),
                      wall_start=WALL0 + 2 * i if wall else None, wall_end=WALL0 + 2 * i + 2 if wall else None)


def memory_with(db, clips: list[ClipRecord], idle: list[int] = ()) -> None:
    """Commit these clips, and record the indices in `idle` as gated (the stream has gaps there)."""
    by_index = {c.index: c for c in clips}
    with Memory(db) as mem:
        mem.open_stream("cam", "test", "m", "h")
        for i in range(max([*by_index, *idle]) + 1):
            if i in by_index:
                mem.commit_clip(by_index[i], None)
            else:
                assert i in idle
                mem.commit_idle("cam", i, 2.0 * i, 2.0 * i + 2, (WALL0 + 2 * i, WALL0 + 2 * i + 2))


def captioned(r: ClipRecord, **kw) -> ClipEvent:
    return ClipEvent(r.stream, r.index, r.t_start, r.t_end, "captioned", r, **kw)


@pytest.fixture
def store(tmp_path):
    s = EdgeStore(tmp_path / "edge.db")
    yield s
    s.close()


def test_the_bus_calls_listeners_in_order_and_a_failing_one_stops_nothing():
    seen = []

    class Broken(Listener):
        name = "broken"

        def on_clip(self, clip):
            seen.append("broken")
            raise RuntimeError("boom")

    class Later(Listener):
        name = "later"

        def on_clip(self, clip):
            seen.append(("later", clip.index))

        def on_match(self, match):
            seen.append(("match", match.payload["id"]))

    bus = ClipBus()
    bus.add(Broken())
    bus.add(Later())
    bus.add(object())  # a listener may implement none of the methods
    ev = bus.publish(ClipEvent("cam", 3, 6.0, 8.0, "gated"))
    bus.publish_match(MatchEvent(None, None, (None, None), {"id": 7}))
    assert ev.index == 3 and seen == ["broken", ("later", 3), ("match", 7)]
    assert bus.failures == {"broken": 1} and bus.clips == {"captioned": 0, "gated": 1, "skipped": 0}
    with pytest.raises(ValueError):
        bus.publish(ClipEvent("cam", 4, 8.0, 10.0, "lost"))


def test_thumbnails_store_a_captioned_clips_middle_frame_only(store):
    t = Thumbnails(store, width=32, quality=70)
    frame = np.full((48, 64, 3), 120, np.uint8)
    ev = captioned(record(0, 1), middle_frame=frame)
    t.on_clip(ev)
    t.on_clip(ClipEvent("cam", 1, 2.0, 4.0, "gated", middle_frame=frame))
    assert ev.thumbnail and store.thumbnail("cam", 0)[:2] == b"\xff\xd8"
    assert store.thumbnail("cam", 1) is None


def test_clip_metrics_count_each_outcome_and_the_lag_per_camera():
    m = Metrics()
    telemetry.declare(m)
    lm = ClipMetrics(m)
    lm.on_clip(captioned(record(0, 1), lag_s=3.0))
    lm.on_clip(ClipEvent("cam", 1, 2.0, 4.0, "gated", lag_s=0.5, reason="idle"))
    lm.on_clip(ClipEvent("cam", 2, 4.0, 6.0, "skipped", lag_s=61.0, reason="lag"))
    lm.on_clip(ClipEvent("door", 0, 0.0, 2.0, "skipped", lag_s=70.0, reason="lag"))
    text = m.render()
    assert 'rlivs_clips_total{stream="cam"} 1' in text
    assert 'rlivs_clips_gated_total{stream="cam"} 1' in text
    assert 'rlivs_clips_skipped_total{reason="lag",stream="cam"} 1' in text
    assert 'rlivs_clips_skipped_total{reason="lag",stream="door"} 1' in text
    assert 'rlivs_clip_lag_last_seconds{stream="cam"} 61' in text
    assert 'rlivs_clip_lag_seconds_count{stream="cam"} 3' in text
    assert 'rlivs_clip_lag_seconds_bucket{stream="cam",le="5"} 2' in text  # 3 s and 0.5 s
    assert 'rlivs_clip_lag_seconds_sum{stream="cam"} 64.5' in text
    assert 'rlivs_stream_time_seconds{stream="cam"} 6' in text


def test_server_events_publish_captions_and_matches():
    hub = EventHub()
    se = ServerEvents(hub)
    se.on_clip(captioned(record(0, 1), thumbnail=True))
    se.on_clip(ClipEvent("cam", 1, 2.0, 4.0, "gated"))
    se.on_match(MatchEvent(None, None, (None, None), {"id": 1, "clip": 0}))
    evs = hub.recent()
    assert [e.kind for e in evs] == ["caption", "watch"]
    assert evs[0].data["clip"] == 0 and evs[0].data["thumbnail"] == "/v1/thumbnails/cam/0.jpg"
    assert evs[0].data["time"] == span_label(0.0, 2.0, WALL0, WALL0 + 2)


def test_the_matcher_catches_up_over_gaps_exactly_once_and_a_matchs_time_is_its_captions(tmp_path, store):
    db = tmp_path / "m.db"
    # clips 0..9 of which 2, 3 and 6 were gated: a watch on topic 1 wants 1, 5, 8 (committed while it was down)
    clips = [record(i, 1 if i in (1, 5, 8) else 2) for i in range(10) if i not in (2, 3, 6)]
    memory_with(db, clips[:1], idle=[])  # the stream exists with clip 0 when the watch is made
    published = []
    matcher = WatchMatcher(store, Metrics(), MatcherConfig(), lambda: Memory(db, readonly=True), lambda q: unit(1),
                           published.append)
    w = matcher.add("topic one", threshold=0.5)
    assert w["threshold"] == 0.5 and w["self_score"] == pytest.approx(1.0)
    with Memory(db) as mem:  # what ingest committed meanwhile (the service was down): gaps at 2, 3 and 6
        for i in range(1, 10):
            if i in (2, 3, 6):
                mem.commit_idle("cam", i, 2.0 * i, 2.0 * i + 2, (WALL0 + 2 * i, WALL0 + 2 * i + 2))
            else:
                mem.commit_clip(record(i, 1 if i in (1, 5, 8) else 2), None)
    # a restart: a new matcher on the same files catches up by index, not by position
    published.clear()
    again = WatchMatcher(store, Metrics(), MatcherConfig(), lambda: Memory(db, readonly=True), lambda q: unit(1),
                         published.append)
    assert again.catch_up() == 9 - 3  # clips 1..9 but the three gated ones
    assert [p.match.clip for p in published] == [1, 5, 8]
    assert again.catch_up() == 0 and store.marks() == {"cam": 9}  # exactly once; the mark is past the gaps
    # the next live clip: matched at once, its time the caption rule's
    with Memory(db) as mem:
        mem.commit_clip(record(10, 1), None)
    got = again.score(record(10, 1))
    assert [m.clip for m in got] == [10] and again.score(record(10, 1)) == []
    payload = published[-1].payload
    assert payload["time"] == span_label(20.0, 22.0, WALL0 + 20, WALL0 + 22)
    assert (payload["wall_start"], payload["wall_end"]) == (wall_iso(WALL0 + 20), wall_iso(WALL0 + 22))
    listed = {m["clip"]: m for m in again.matches(w["id"])}  # the API reads the wall clock back from the memory
    assert sorted(listed) == [1, 5, 8, 10] and listed[5]["time"] == span_label(10.0, 12.0, WALL0 + 10, WALL0 + 12)


def test_webhooks_wake_the_sender_and_drop_the_oldest_over_the_queue(store):
    class Sender:
        woken = 0

        def wake(self):
            Sender.woken += 1

    m = Metrics()
    telemetry.declare(m)
    wid = store.add_watch("q", 0.1, None, "http://127.0.0.1:9/hook", {}).id
    store.add_watch("no hook", 0.1, None, None, {})
    from rlivs.edge_app.service.store import NewMatch

    for i in range(5):  # five deliveries queued by the matcher's transactions
        store.record_clip("cam", i, 0.0, 1.0, "c", [NewMatch(wid, 0.9, "http://127.0.0.1:9/hook")], 100)
    hooks = Webhooks(store, m, Sender(), queue=3)
    hooked = Watch(wid, "q", 0.1, None, "http://127.0.0.1:9/hook", 0.0)
    plain = Watch(wid + 1, "no hook", 0.1, None, None, 0.0)
    hooks.on_match(MatchEvent(Match(1, wid + 1, "cam", 0, 0.0, 1.0, "c", 0.9, 0.0), plain, (None, None), {}))
    assert Sender.woken == 0 and store.pending_deliveries() == 5
    hooks.on_match(MatchEvent(Match(1, wid, "cam", 4, 0.0, 1.0, "c", 0.9, 0.0), hooked, (None, None), {}))
    assert Sender.woken == 1 and store.pending_deliveries() == 3
    assert m.value("rlivs_webhook_deliveries_total", outcome="dropped") == 2


def test_retention_forgets_old_clips_and_their_thumbnails_at_most_once_per_period(tmp_path, store):
    db = tmp_path / "m.db"
    memory_with(db, [record(i, 1) for i in range(6)])
    for i in range(6):
        store.put_thumbnail("cam", i, b"\xff\xd8x", 4, 4)
    now = [WALL0 + 7.0 + 86400.0]  # a day after WALL0 + 7 s: clips 0, 1, 2 ended before (at 2, 4, 6 s), 3 after
    m = Metrics()
    telemetry.declare(m)
    r = Retention(store, m, days=1.0, every_s=600.0, open_memory=lambda: Memory(db), clock=lambda: now[0])
    r.on_clip(ClipEvent("cam", 6, 12.0, 14.0, "gated"))
    with Memory(db, readonly=True) as mem:
        assert [c.index for c in mem.clips("cam")] == [3, 4, 5]
    assert store.thumbnail("cam", 2) is None and store.thumbnail("cam", 3) is not None
    now[0] += 300.0  # within the period: not run again
    assert not r.due(now[0]) and r.run(Memory(db), now[0]) == 0
    assert m.value("rlivs_clips_forgotten_total") == 3
    off = Retention(store, m, days=None, every_s=600.0, open_memory=lambda: pytest.fail("opened"))
    off.on_clip(ClipEvent("cam", 6, 12.0, 14.0, "gated"))  # no --retain-days: never opens the memory


def test_time_labels_are_one_rule():
    assert span_label(64.0, 80.0) == "00:01:04-00:01:20"
    iso = span_label(0.0, 2.0, wall_iso(WALL0), wall_iso(WALL0 + 2))
    assert iso == span_label(0.0, 2.0, WALL0, WALL0 + 2)  # ISO text and unix seconds read the same
    assert time.strftime("%H:%M:%S", time.localtime(WALL0 + 2)) == iso[-8:]


def test_mqtt_publishes_captioned_clips_and_matches_only():
    """MqttPublisher as a bus listener, never started (no broker): what it would send is buffered, in order."""
    import json

    pytest.importorskip("paho.mqtt")
    from rlivs.edge_app.service.mqtt import MqttConfig, MqttPublisher

    pub = MqttPublisher(MqttConfig("127.0.0.1", 1883, client_id="t"), Metrics(),
                        thumbnails=lambda stream, clip: b"jpeg%d" % clip)
    pub.on_clip(captioned(record(0, 1), thumbnail=True))
    pub.on_clip(ClipEvent("cam", 1, 2.0, 4.0, "gated", reason="idle"))  # gated and skipped clips say nothing
    pub.on_clip(ClipEvent("cam", 2, 4.0, 6.0, "skipped", reason="lag"))
    pub.on_clip(captioned(record(3, 2, stream="door")))  # no thumbnail stored: no thumbnail topic
    pub.on_match(MatchEvent(None, None, (None, None), {"id": 5, "watch_id": 2, "stream": "cam", "clip": 0,
                                                        "t_start": 0.0, "t_end": 2.0, "caption": "caption 0 about 1",
                                                        "score": 0.9, "query": "q", "threshold": 0.5,
                                                        "thumbnail": None, "wall_start": None, "wall_end": None,
                                                        "matched_at": WALL0, "time": "t"}))
    sent = list(pub._buffer)
    assert [(t, r) for t, _, r in sent] == [("rlivs/cam/caption", True), ("rlivs/cam/thumbnail", True),
                                            ("rlivs/door/caption", True), ("rlivs/cam/watch/2", False)]
    assert json.loads(sent[0][1])["clip"] == 0 and sent[1][1] == b"jpeg0"
    assert json.loads(sent[2][1])["stream"] == "door" and json.loads(sent[3][1])["score"] == 0.9
