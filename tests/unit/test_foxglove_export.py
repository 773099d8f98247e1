"""Captions on the Foxglove timeline (edge_app/foxglove.py): a real memory and service store are written, exported to
MCAP, and read back with the mcap reader and the protobuf decoder: schemas, topics, times and contents."""

import numpy as np
import pytest

pytest.importorskip("mcap_protobuf")
pytest.importorskip("foxglove_schemas_protobuf")

from mcap.reader import make_reader  # noqa: E402
from mcap_protobuf.decoder import DecoderFactory  # noqa: E402

from rlivs.edge_app.foxglove import write_mcap  # noqa: E402
from rlivs.edge_app.service.store import EdgeStore, NewMatch, edge_db_path  # noqa: E402
from rlivs.runtime.errors import UserError  # noqa: E402
from rlivs.runtime.memory import ClipRecord, Memory  # noqa: E402
from tests.helpers.recordings import jpeg  # noqa: E402

CAPTIONS = {"front": ["a red cube moves left", "the cube stops", "a person walks in"], "rear": ["an empty corridor"]}


@pytest.fixture
def memory(tmp_path):
    db = tmp_path / "memory.db"
    with Memory(db, model_fingerprint={"hidden_size": 4}) as m:
        for stream, caps in CAPTIONS.items():
            m.open_stream(stream, f"{stream}.mcap", "tiny", "h")
            for i, c in enumerate(caps):
                m.commit_clip(ClipRecord(stream, i, 8.0 * i, 8.0 * i + 8, c, 4, np.ones(4, np.float32)), None)
        created = {s["name"]: s["created_at"] for s in m.streams()}
    store = EdgeStore(edge_db_path(db))
    w = store.add_watch("a person", 0.4, None, None)
    store.record_clip("front", 2, 16.0, 24.0, CAPTIONS["front"][2], [NewMatch(w.id, 0.71, None)], keep_matches=10)
    store.put_thumbnail("front", 1, jpeg(120, (9, 16)), 16, 9)
    store.close()
    return db, created, w.id


def _read(path):
    with open(path, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        summary = reader.get_summary()
        schemas = {ch.topic: summary.schemas[ch.schema_id].name for ch in summary.channels.values()}
        msgs = [(ch.topic, m.log_time, dec) for _, ch, m, dec in reader.iter_decoded_messages()]
    return schemas, msgs


def _secs(ts) -> float:
    return ts.seconds + ts.nanos / 1e9


def test_captions_matches_and_thumbnails_read_back(memory, tmp_path):
    db, created, watch_id = memory
    out = tmp_path / "out" / "captions.mcap"
    rep = write_mcap(db, out, thumbnails=True)
    assert (rep.clips, rep.matches, rep.thumbnails, rep.guessed_times) == (4, 1, 1, 4)
    schemas, msgs = _read(out)
    assert schemas == {
        "/rlivs/front/clips": "foxglove.Event", "/rlivs/front/captions": "foxglove.Log",
        "/rlivs/front/annotations": "foxglove.ImageAnnotations", "/rlivs/front/thumbnail": "foxglove.CompressedImage",
        "/rlivs/rear/clips": "foxglove.Event", "/rlivs/rear/captions": "foxglove.Log",
        "/rlivs/rear/annotations": "foxglove.ImageAnnotations",
        "/rlivs/watches/log": "foxglove.Log", "/rlivs/watches/events": "foxglove.Event"}
    times = [t for _, t, _ in msgs]
    assert times == sorted(times)  # log-time order
    # no recorded clock time here: stream creation time + stream time
    events = [(t, d) for topic, t, d in msgs if topic == "/rlivs/front/clips"]
    assert [_secs(d.start_time) for _, d in events] == pytest.approx([created["front"] + 8.0 * i for i in range(3)])
    assert [_secs(d.end_time) - _secs(d.start_time) for _, d in events] == pytest.approx([8.0] * 3, abs=1e-6)
    assert [t for t, _ in events] == [round((created["front"] + 8.0 * i) * 1e9) for i in range(3)]
    meta = {kv.key: kv.value for kv in events[1][1].metadata}
    assert meta == {"stream": "front", "clip": "1", "t_start": "8.0", "t_end": "16.0", "caption": "the cube stops"}
    logs = [d for topic, _, d in msgs if topic == "/rlivs/front/captions"]
    assert [d.message for d in logs] == CAPTIONS["front"] and {d.name for d in logs} == {"front"}
    assert all(d.level == 2 for d in logs)  # INFO
    [ann] = [d for topic, _, d in msgs if topic == "/rlivs/rear/annotations"]
    assert ann.texts[0].text == "an empty corridor" and _secs(ann.texts[0].timestamp) == pytest.approx(created["rear"])
    [(_, t_img, img)] = [m for m in msgs if m[0] == "/rlivs/front/thumbnail"]
    assert img.format == "jpeg" and img.data[:2] == b"\xff\xd8" and t_img == events[1][0]
    [watch_log] = [d for topic, _, d in msgs if topic == "/rlivs/watches/log"]
    assert watch_log.level == 3 and "'a person' matched front clip 2 (score 0.710)" in watch_log.message
    [watch_ev] = [d for topic, _, d in msgs if topic == "/rlivs/watches/events"]
    assert {kv.key: kv.value for kv in watch_ev.metadata}["watch"] == str(watch_id)
    assert _secs(watch_ev.start_time) == pytest.approx(created["front"] + 16.0)


def test_recorded_clock_times_are_used_and_streams_filter(memory, tmp_path, monkeypatch):
    db, _, _ = memory
    origin = 1_700_000_000.5  # as if the clips carried the robot's clock (ClipRecord.wall_start / wall_end)
    real = Memory.clips

    def with_wall(self, *a, **k):
        rows = real(self, *a, **k)
        for r in rows:
            r.wall_start, r.wall_end = origin + r.t_start, origin + r.t_end
        return rows

    monkeypatch.setattr(Memory, "clips", with_wall)
    rep = write_mcap(db, tmp_path / "rear.mcap", streams=["rear"])
    assert (rep.clips, rep.guessed_times, rep.matches, rep.start, rep.end) == (1, 0, 0, origin, origin + 8.0)
    schemas, msgs = _read(tmp_path / "rear.mcap")
    assert set(schemas) == {"/rlivs/rear/clips", "/rlivs/rear/captions", "/rlivs/rear/annotations"}
    assert {t for _, t, _ in msgs} == {round(origin * 1e9)}
    with pytest.raises(UserError, match="no stream 'side'; its streams are: front, rear"):
        write_mcap(db, tmp_path / "x.mcap", streams=["side"])
    with pytest.raises(UserError, match="does not exist"):
        write_mcap(tmp_path / "none.db", tmp_path / "x.mcap")


def test_the_timeline_follows_the_noted_clock_and_the_file_says_which(memory, tmp_path):
    """A stream noted as a recording whose log time runs 2.5 s after its header stamps (Memory.set_stream_clock, as
    ingest notes it): log time (the default) shifts its messages and their time fields by that; header keeps them;
    a stream that is no recording is placed by its one clock either way. The Metadata record says so."""
    from mcap.reader import make_reader

    db, created, _ = memory
    with Memory(db) as m:
        m.set_stream_clock("front", {"kind": "recording", "basis": "header", "topic": "/front/image",
                                     "log_offset_ns": 2_500_000_000})
    times = {}
    for time in ("log", "header"):
        rep = write_mcap(db, tmp_path / f"{time}.mcap", time=time)
        assert rep.time == time
        _, msgs = _read(tmp_path / f"{time}.mcap")
        times[time] = {topic: [(t, d) for tp, t, d in msgs if tp == topic] for topic in
                       ("/rlivs/front/clips", "/rlivs/rear/clips", "/rlivs/front/captions")}
        with open(tmp_path / f"{time}.mcap", "rb") as f:
            [meta] = list(make_reader(f).iter_metadata())
        assert meta.name == "rlivs.export" and meta.metadata["time"] == time and meta.metadata["clips"] == "4"
        assert meta.metadata["rear.time"].startswith("its clips' clock time (not a robot recording")
        assert meta.metadata["front.log_offset_ns"] == ("2500000000" if time == "log" else "0")
        assert rep.time_notes["front"] == meta.metadata["front.time"]
    log, header = times["log"], times["header"]
    assert [t for t, _ in header["/rlivs/front/clips"]] == [round((created["front"] + 8.0 * i) * 1e9) for i in range(3)]
    assert [t - h for (t, _), (h, _) in zip(log["/rlivs/front/clips"], header["/rlivs/front/clips"])] == \
        pytest.approx([2_500_000_000] * 3, abs=1_000)
    assert [_secs(d.start_time) - _secs(h.start_time) for (_, d), (_, h) in
            zip(log["/rlivs/front/clips"], header["/rlivs/front/clips"])] == pytest.approx([2.5] * 3, abs=1e-6)
    assert [_secs(d.timestamp) for _, d in log["/rlivs/front/captions"]] == \
        pytest.approx([t / 1e9 for t, _ in log["/rlivs/front/captions"]], abs=1e-6)
    assert log["/rlivs/rear/clips"][0][0] == header["/rlivs/rear/clips"][0][0]  # one clock: no shift
    with pytest.raises(UserError, match="time 'wall' is unknown"):
        write_mcap(db, tmp_path / "x.mcap", time="wall")
