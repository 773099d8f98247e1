"""Ingest with the activity gate on a scripted video (tiny model): which clips are captioned, the FIFO equal to
captioning the active clips alone, resume in the middle of an idle run, what `rlivs ingest` says, and answers about
a time when nothing changed."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from rlivs.edge_app.sample_scenes import Camera, Event, write_video
from rlivs.runtime.activity import GateConfig
from rlivs.runtime.fifo import TokenFifo
from rlivs.runtime.ingest import StreamIngestor
from rlivs.runtime.memory import Memory
from rlivs.runtime.sources.file import VideoFileSource
from tests.helpers.cli import run_cli
from tests.helpers.serve_helpers import FPS, FRAMES_PER_CLIP, tiny_engine

WALL0 = 1_790_000_000.0
# 2 fps, 4-frame clips (2 s): 12 clips. An object is put down during clip 4 and taken away during clip 8; a person
# walks through inside clip 10. Every other clip shows the still room (with sensor noise and a brightness drift).
CAMERA = Camera(24.0, (160, 120), seed=4, events=[Event("place", 8.25, 16.25, 30, 60, 24, 24),
                                                  Event("walk", 20.25, 21.25, 30, 0, 60, 16)])
ACTIVE = [0, 4, 8, 10]  # clip 0: the first (no reference yet)
IDLE_RUNS = [(1, 3, 0), (5, 7, 4), (9, 9, 8), (11, 11, 10)]  # (first, last, scene clip)
GATE = GateConfig(enabled=True)


@pytest.fixture(scope="module")
def video(tmp_path_factory, tiny_dir):
    return write_video(tmp_path_factory.mktemp("gate") / "room.mp4", CAMERA, int(FPS))


def ingest(db, video, gate=GATE, max_clips=None):
    engine = tiny_engine()
    with Memory(db, model_fingerprint=engine.model_fingerprint) as mem:
        ing = StreamIngestor(engine, mem, "room", str(video), gate=gate)
        source = VideoFileSource(video, fps=FPS, clock_origin=WALL0)  # the clock, given when it is opened
        return ing.run(ing.clips(source), max_clips=max_clips), ing


def stored(db):
    with Memory(db) as mem:
        state = mem.open_stream("room", "x", tiny_engine().backend.info.model_id,
                                tiny_engine().config.ingest_fingerprint())
        spans = [(s.first, s.last, s.scene_idx) for s in mem.idle_spans("room")]
        return [(c.index, c.caption) for c in mem.clips("room")], spans, state


def test_the_gate_captions_the_active_clips_and_the_fifo_is_theirs_alone(video, tmp_path):
    results, ing = ingest(tmp_path / "m.db", video)
    assert len(results) == 12
    assert [r.index for r in results if not r.gated] == ACTIVE
    assert [r.gate.reason for r in results if not r.gated] == ["first", "active", "active", "active"]
    assert (ing.captioned, ing.gated) == (4, 8)
    # the reference: the engine run on the active clips alone, with a FIFO of its own
    engine = tiny_engine()
    source = VideoFileSource(video, fps=FPS)
    from rlivs.runtime.frames import iter_clips

    fifo = TokenFifo(engine.config.fifo, engine.backend.info.hidden_size)
    want = {}
    for clip in iter_clips(source, FRAMES_PER_CLIP, FPS):
        if clip.index in ACTIVE:
            out = engine.caption_clip(clip.frames, fifo.tokens(), clip.index)
            fifo.push(clip.index, out.selection.tokens)
            want[clip.index] = out.caption
    captions, spans, state = stored(tmp_path / "m.db")
    assert captions == sorted(want.items())
    assert spans == IDLE_RUNS
    assert [i for i, _ in state.fifo] == fifo.clip_indices == [i for i, _ in ing.fifo.entries()]
    for (i, got), (j, ref) in zip(state.fifo, fifo.entries()):
        assert np.array_equal(got, ref), i
    assert state.next_index == 12


def test_the_gate_off_captions_every_clip(video, tmp_path):
    results, ing = ingest(tmp_path / "m.db", video, gate=GateConfig(enabled=False), max_clips=3)  # 1, 2: idle
    assert [r.gated for r in results] == [False] * 3 and ing.gate is None
    assert stored(tmp_path / "m.db")[1] == []


def test_serve_counts_captioned_and_gated_clips_per_camera(video, tmp_path):
    """A gated stream in the service: idle clips publish nothing, and /metrics, /v1/streams and the page's stream
    table count captioned and gated clips per camera."""
    from rlivs.edge_app.service.core import EdgeService, ServiceConfig
    from rlivs.edge_app.service.page import PAGE
    from rlivs.edge_app.source_specs import parse_sources
    from tests.helpers.serve_helpers import wait_for

    cfg = ServiceConfig(replay_files=False, gate={"room": GATE}, start_time=WALL0)
    service = EdgeService(tiny_engine(), tmp_path / "m.db", parse_sources([f"room={video}"]), cfg)
    watch = service.add_watch("a room", threshold=-1.0)  # matches every caption: each captioned clip, once
    service.start()
    try:
        wait_for(lambda: service.workers[0].state == "finished", 120, "the file to be ingested")
        # the stream has gaps (gated clips): a clip is looked up by its index, never by its position
        assert [c["clip"] for c in service.captions("room", clip=8)["captions"]] == [8]
        assert service.captions("room", clip=5)["captions"] == []  # gated: no caption
        assert [c["clip"] for c in service.captions("room", offset=2, limit=1)["captions"]] == [8]
        caps = {c["clip"]: c for c in service.captions("room")["captions"]}
        matches = service.matches(watch["id"], limit=50)
        assert sorted(m["clip"] for m in matches) == ACTIVE  # the watch saw each caption once, no idle clip
        for m in matches:  # a match's times are its caption's: the wall clock when the stream has one
            c = caps[m["clip"]]
            assert (m["time"], m["wall_start"], m["wall_end"]) == (c["time"], c["wall_start"], c["wall_end"])
            assert c["wall_start"] is not None and c["time"][:4] == "2026"
        st = service.streams()[0]
        assert (st["clips"], st["clips_gated"], st["clips_this_run"], st["gated_this_run"], st["gate"]) == \
            (4, 8, 4, 8, True)
        assert st["skipped_this_run"] == 0 and st["lag_s"] is not None and st["max_lag_s"] >= st["lag_s"] >= 0
        metrics = service.render_metrics()
        assert 'rlivs_clip_lag_seconds_count{stream="room"} 12' in metrics  # every clip's lag: captioned or gated
        assert 'rlivs_clips_waiting_for_model{stream="room"} 0' in metrics
        assert 'rlivs_clips_total{stream="room"} 4' in metrics
        assert 'rlivs_clips_gated_total{stream="room"} 8' in metrics
        assert [e.data["clip"] for e in service.events.recent("caption")] == ACTIVE  # none for idle clips
        assert service.events.published == 8  # and a watch event for each
        assert service.store.thumbnail("room", 4)[:2] == b"\xff\xd8"
    finally:
        service.stop()
    assert "s.lag_s" in PAGE and "s.skipped_this_run" in PAGE and ">lag</th>" in PAGE and ">skipped</th>" in PAGE
    assert "s.clips_gated" in PAGE and "<th title=\"clips the activity gate left uncaptioned (idle)\">gated</th>" in PAGE


def test_a_restart_inside_an_idle_run_resumes_the_gate_exactly(video, tmp_path):
    ingest(tmp_path / "whole.db", video)
    first, _ = ingest(tmp_path / "cut.db", video, max_clips=6)  # stops after clip 5, inside the run 5-7
    assert [r.index for r in first] == list(range(6))
    rest, ing = ingest(tmp_path / "cut.db", video)
    assert [r.index for r in rest] == list(range(6, 12))
    assert [r.index for r in rest if not r.gated] == [8, 10]  # the reference came back from the memory
    whole, cut = stored(tmp_path / "whole.db"), stored(tmp_path / "cut.db")
    assert whole[:2] == cut[:2]  # captions and idle runs
    assert whole[2] == cut[2]  # FIFO and resume point, bit for bit


def test_ingest_states_the_gate_and_its_counts(video, tmp_path):
    args = ["ingest", video, "--stream", "room", "--fps", "2", "--frames-per-clip", "4", "--max-caption-tokens", "8"]
    r = run_cli(*args, "--db", tmp_path / "on.db", "--gate", "on", "--json")
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert "activity gate: on (threshold 0.005, a caption at least every 600 s): 4 clips captioned, 8 gated" in said
    lines = [json.loads(x) for x in r.output.splitlines() if x.startswith("{")]
    assert [x["clip"] for x in lines if x["caption"] is not None] == ACTIVE
    assert {x["gate"]["reason"] for x in lines if x["caption"] is None} == {"idle"}
    r = run_cli(*args, "--db", tmp_path / "off.db", "--max-clips", "2")
    assert r.exit_code == 0, r.output
    assert "activity gate: off (every clip captioned" in " ".join(r.output.split())
    r = run_cli(*args, "--db", tmp_path / "bad.db", "--gate", "cam=on")
    assert r.exit_code == 2 and "names stream 'cam'" in " ".join(r.output.split())
    assert not (tmp_path / "bad.db").exists()


def test_a_question_about_an_idle_time_is_answered_from_the_scene_it_showed(video, tmp_path):
    from rlivs.runtime.answer import answer

    ingest(tmp_path / "m.db", video)
    with Memory(tmp_path / "m.db", readonly=True) as mem:
        # 12.5 s - 14 s: inside the idle run 5-7 (the object lies there, put down in clip 4)
        a = answer(tiny_engine(), mem, "what is on the floor?", window=(WALL0 + 12.5, WALL0 + 14.0),
                   window_text="then", parse_time=False)
    assert [r.index for r, _ in a.used] == [4]


def test_a_worker_under_overload_records_a_late_forced_caption_idle_and_still_captions_an_active_clip(video, tmp_path):
    """The worker's path (gate, model turn, step, bus) with the real ingestor: a forced caption (the longest idle time
    passed, nothing changed) that has waited past the lag bound is recorded idle and published as skipped ("lag"); an
    active clip that waited as long is captioned. The clips are handed in by the test: no thread, no clock read."""
    from rlivs.edge_app.service.scheduler import ModelTurns
    from rlivs.edge_app.service.workers import IngestSetup, StreamWorker
    from rlivs.edge_app.source_specs import parse_sources
    from rlivs.runtime.frames import iter_clips

    engine = tiny_engine()
    db = tmp_path / "m.db"
    gate = GateConfig(enabled=True, max_idle_s=2.0)  # every still clip after a caption is a forced one
    now = [1000.0]
    published = []
    spec = parse_sources([f"room={video}"])[0]
    worker = StreamWorker(IngestSetup(db, engine, engine.model_fingerprint, gate={"room": gate}), spec,
                          published.append, ModelTurns(max_lag_s=30.0, clock=lambda: now[0]), clock=lambda: now[0])
    clips = list(iter_clips(VideoFileSource(video, fps=FPS), FRAMES_PER_CLIP, FPS))
    with Memory(db, model_fingerprint=engine.model_fingerprint) as mem:
        ing = StreamIngestor(engine, mem, "room", str(video), gate=gate)
        for clip, waited in ((clips[0], 0.0), (clips[1], 31.0), (clips[2], 5.0), (clips[3], 31.0), (clips[4], 31.0)):
            assert worker._one(ing, clip, now[0] - waited)  # ready `waited` seconds ago
    got = [(e.index, e.outcome, e.reason) for e in published]
    assert got == [(0, "captioned", None),  # the first clip
                   (1, "skipped", "lag"),  # forced (max idle), waited 31 s > 30: recorded idle
                   (2, "captioned", None),  # forced, waited 5 s: captioned
                   (3, "skipped", "lag"),
                   (4, "captioned", None)]  # active (the object is put down), waited 31 s: captioned all the same
    assert [e.lag_s for e in published] == [0.0, 31.0, 5.0, 31.0, 31.0]
    assert (worker.clips, worker.gated, worker.skipped) == (3, 0, 2)
    with Memory(db, readonly=True) as mem:
        assert [c.index for c in mem.clips("room")] == [0, 2, 4]
        assert [(s.first, s.last, s.scene_idx) for s in mem.idle_spans("room")] == [(1, 1, 0), (3, 3, 2)]


class CountingEngine:
    """The engine, counting the model calls the service's workers make (`caption_clip` / `caption_clips`);
    `before_batch` runs before each batched call (the test uses it to queue its own turn first)."""

    def __init__(self, engine, before_batch=lambda: None):
        self._engine, self.before_batch = engine, before_batch
        self.calls: list[tuple[str, list[tuple[int, int]]]] = []  # (method, [(FIFO rows, clip index)])

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def caption_clip(self, frames, fifo_tokens, index, **kw):
        self.calls.append(("caption_clip", [(len(fifo_tokens), index)]))
        return self._engine.caption_clip(frames, fifo_tokens, index, **kw)

    def caption_clips(self, clips):
        self.before_batch()
        self.calls.append(("caption_clips", [(len(c.fifo_tokens), c.index) for c in clips]))
        return self._engine.caption_clips(clips)


def camera_clips(video, cam: int, n: int):
    """Camera `cam`'s first n clips: the room video's clips from clip 3 * cam on, as a stream starting at clip 0."""
    import dataclasses

    from rlivs.runtime.frames import iter_clips

    clips = list(iter_clips(VideoFileSource(video, fps=FPS), FRAMES_PER_CLIP, FPS))
    return [dataclasses.replace(clips[k], frames=clips[(3 * cam + k) % len(clips)].frames) for k in range(n)]


def test_three_cameras_ready_are_captioned_in_one_batch_and_commit_what_they_would_alone(video, tmp_path):
    """serve's workers with --batch 4 (ModelTurns(batch=4)) and the real engine and memory: 3 cameras with a clip
    ready while the model is held are captioned by one caption_clips call per round, and each stream's captions and
    FIFO equal those of --batch 1 (one caption_clip per clip)."""
    from rlivs.edge_app.service.scheduler import ModelTurns
    from rlivs.edge_app.service.workers import IngestSetup, StreamWorker
    from rlivs.edge_app.source_specs import parse_sources
    from tests.helpers.serve_helpers import wait_for

    names, rounds = ["cam0", "cam1", "cam2"], 3
    clips = {n: camera_clips(video, i, rounds) for i, n in enumerate(names)}
    specs = parse_sources([f"{n}={video}" for n in names])

    def contents(db):
        with Memory(db) as mem:
            out = {}
            for n in names:
                engine = tiny_engine()
                st = mem.open_stream(n, "x", engine.backend.info.model_id, engine.config.ingest_fingerprint())
                out[n] = ([(c.index, c.caption) for c in mem.clips(n)], [(i, np.asarray(rows)) for i, rows in st.fifo])
        return out

    # --batch 1: each camera's clips one at a time
    one = CountingEngine(tiny_engine())
    turns = ModelTurns(60.0, clock=lambda: 0.0)
    for spec in specs:
        worker = StreamWorker(IngestSetup(tmp_path / "one.db", one, one.model_fingerprint), spec, [].append, turns)
        with Memory(tmp_path / "one.db", model_fingerprint=one.model_fingerprint) as mem:
            ing = StreamIngestor(tiny_engine(), mem, spec.name, str(video))
            for clip in clips[spec.name]:
                assert worker._one(ing, clip, 0.0)
    assert [m for m, _ in one.calls] == ["caption_clip"] * 3 * rounds and turns.batches == {1: 3 * rounds}

    # --batch 4: a thread per camera; the test holds the model until all three clips of a round wait for it
    turns = ModelTurns(60.0, clock=lambda: 0.0, batch=4)
    many = CountingEngine(tiny_engine(), lambda: wait_for(lambda: "test" in turns.waiting, 30, "the test's turn"))
    published, errors = [], []

    def camera(spec):
        try:
            worker = StreamWorker(IngestSetup(tmp_path / "many.db", many, many.model_fingerprint), spec,
                                  published.append, turns)
            with Memory(tmp_path / "many.db", model_fingerprint=many.model_fingerprint) as mem:
                ing = StreamIngestor(tiny_engine(), mem, spec.name, str(video))
                for k, clip in enumerate(clips[spec.name]):
                    assert worker._one(ing, clip, 1.0 + k)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    threads = [threading.Thread(target=camera, args=(s,), daemon=True) for s in specs]
    for r in range(rounds):
        with turns.turn("test", True, 0.0):  # (oldest: it is granted again as soon as each batch ends)
            if r == 0:
                for t in threads:
                    t.start()
            wait_for(lambda: sorted(turns.waiting) == names, 60, "every camera's clip to wait")
        wait_for(lambda: not turns.waiting, 60, "the batch to take the clips")  # before the test queues again
    with turns.turn("test", True, 0.0):
        pass
    for t in threads:
        t.join(60)
    assert not errors, errors
    # one batched call per round, covering the three cameras' clips of that round, each after its own FIFO
    assert [m for m, _ in many.calls] == ["caption_clips"] * rounds and turns.batches == {3: rounds}
    assert [sorted(i for _, i in c) for _, c in many.calls] == [[k] * 3 for k in range(rounds)]
    assert sorted((e.stream, e.index, e.outcome) for e in published) == \
        sorted((n, k, "captioned") for n in names for k in range(rounds))
    a, b = contents(tmp_path / "one.db"), contents(tmp_path / "many.db")
    for n in names:
        assert a[n][0] == b[n][0] and len(a[n][0]) == rounds  # the same captions
        assert [i for i, _ in a[n][1]] == [i for i, _ in b[n][1]] and a[n][1]  # the same FIFO clips ...
        for (_, x), (_, y) in zip(a[n][1], b[n][1]):
            np.testing.assert_array_equal(x, y)  # ... and tokens
    assert len({a[n][0][0][1] for n in names}) > 1  # the cameras saw different things
