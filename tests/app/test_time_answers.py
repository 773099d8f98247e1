"""Time in questions, end to end (issue 14): windows from the question, --from/--to and the API's from/to; when /
last / first / how many / summaries; clockless memories; wall-clock times from --start-time and a file's creation
time; forget, memory export/import from the CLI. A real SQLite memory, the tiny model, a real HTTP server."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import av
import httpx
import numpy as np
import pytest

from rlivs.edge_app.sample_video import make_sample_video
from rlivs.edge_app.service.app import Server
from rlivs.edge_app.service.core import EdgeService, ServiceConfig
from rlivs.runtime.answer import answer
from rlivs.runtime.memory import ClipRecord, Memory
from tests.helpers.cli import run_cli
from tests.helpers.serve_helpers import tiny_engine

TZ = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 12, 2, 16, 30, tzinfo=TZ)  # Wednesday
DAY0 = datetime(2026, 11, 30, 8, 0, tzinfo=TZ)  # Monday 08:00
GARAGE = {5, 40, 77}  # clips (of 16-s clips every 20 minutes) where the garage door opens


def caption(i: int) -> str:
    if i in GARAGE:
        return f"the garage door opens and a blue car drives in (event {i})"
    return ["a person reads at the kitchen table", "the hallway is empty", "a cat sleeps on the sofa",
            "someone waters the plants by the window"][i % 4]


@pytest.fixture(scope="module")
def memory_db(tmp_path_factory):
    """90 clips, one every 20 minutes from Monday 08:00 (two and a half days), stream 'home'."""
    engine = tiny_engine()
    db = tmp_path_factory.mktemp("time") / "memory.db"
    recs = []
    for i in range(90):
        text = caption(i)
        ids = engine.text.encode(text)
        w0 = (DAY0 + timedelta(minutes=20 * i)).timestamp()
        recs.append(ClipRecord("home", i, 16.0 * i, 16.0 * i + 16, text, len(ids), engine.vector(ids), 0.0, w0,
                               w0 + 16))
    with Memory(db, model_fingerprint=engine.model_fingerprint) as m:
        m.import_clips(recs, model_id=engine.backend.info.model_id)
    return db


def in_window(start: datetime, hours: float, t: datetime) -> bool:
    """A stored clip's wall-clock start (data, not elapsed time) inside [start, start + hours)."""
    return start <= t < start + timedelta(hours=hours)


def wall(r: ClipRecord) -> datetime:
    return datetime.fromtimestamp(r.wall_start, TZ)


def test_a_time_in_the_question_restricts_retrieval_and_is_stated(memory_db):
    engine = tiny_engine()
    with Memory(memory_db, readonly=True) as m:
        a = answer(engine, m, "what did the cat do yesterday afternoon?", now=NOW, tz=TZ)
        assert a.window.startswith("yesterday, Tue 2026-12-01 12:00-18:00")
        assert a.used and all(in_window(datetime(2026, 12, 1, 12, tzinfo=TZ), 6, wall(r)) for r, _ in a.used)
        a = answer(engine, m, "what did the cat do?", window=(DAY0.timestamp(), (DAY0 + timedelta(hours=2)).timestamp()),
                   window_text="Monday morning", now=NOW, tz=TZ)
        assert a.window == "Monday morning" and {r.index for r, _ in a.used} <= set(range(7))


def test_last_first_and_how_many_use_every_matching_clip(memory_db):
    engine = tiny_engine()
    with Memory(memory_db, readonly=True) as m:
        a = answer(engine, m, "when did the garage door last open?", now=NOW, tz=TZ)
        assert a.intent == "last" and a.matches == 3
        assert 77 in {r.index for r, _ in a.used}  # the latest match is always in the prompt
        a = answer(engine, m, "when did the garage door open for the first time?", now=NOW, tz=TZ)
        assert a.intent == "first" and 5 in {r.index for r, _ in a.used}
        a = answer(engine, m, "how many times did the garage door open yesterday?", now=NOW, tz=TZ)
        # yesterday = Tue 2026-12-01: clips 48..119 of Monday 08:00 + 20 min steps; clip 77 only
        assert a.intent == "count" and a.matches == 1 and a.window.startswith("yesterday")


def test_summaries_use_every_caption_in_the_window_in_chunks_when_needed(memory_db, monkeypatch):
    engine = tiny_engine()
    with Memory(memory_db, readonly=True) as m:
        a = answer(engine, m, "summarise Monday morning", now=NOW, tz=TZ)
        expected = [r.index for r in m.clips("home") if DAY0 <= wall(r) < DAY0.replace(hour=12)]
        assert a.intent == "summary" and [r.index for r, _ in a.used] == expected == list(range(12))
        assert not any("summarised" in n for n in a.notes)
        small = type(engine.config.retrieval)(top_k=4, token_budget=40, shortlist=8)  # forces the map step
        monkeypatch.setattr(engine.config, "retrieval", small)
        a = answer(engine, m, "summarise Monday morning", now=NOW, tz=TZ)
        assert [r.index for r, _ in a.used] == expected  # none dropped
        assert any("were summarised in" in n for n in a.notes)


def test_a_memory_without_clock_says_so_and_ignores_question_times(tmp_path):
    engine = tiny_engine()
    with Memory(tmp_path / "m.db", model_fingerprint=engine.model_fingerprint) as m:
        texts = ["a dog runs in the park", "a dog drinks water"]
        m.import_clips([ClipRecord("cam", i, 16.0 * i, 16.0 * i + 16, t, 6, engine.vector(engine.text.encode(t)))
                        for i, t in enumerate(texts)])
        a = answer(engine, m, "what did the dog do yesterday?", now=NOW, tz=TZ)
        assert a.window is None and len(a.used) == 2
        assert any("not applied" in n for n in a.notes) and any("stream-relative" in n for n in a.notes)


ABSURD_TIMES = ["-99999999999w", "-99999999d", "+99999999999w", "0001-01-01T00:00+14:00", "9999-12-31"]
ABSURD_QUESTIONS = ["what happened on 9999-12-31?", "what happened 99999999999 days ago?",
                    "what moved in the last 9999999999999999999999 seconds?"]


def test_absurd_times_are_refused_or_not_applied_and_said_so(memory_db):
    engine = tiny_engine()
    with Memory(memory_db, readonly=True) as m:
        for question in ABSURD_QUESTIONS:
            a = answer(engine, m, question, now=NOW, tz=TZ)
            assert a.window is None and a.used, question
            assert any("was not applied" in n and "1970 to 2999" in n for n in a.notes), a.notes
    for value in ABSURD_TIMES:
        for flag in ("--from", "--to"):
            r = run_cli("ask", "what happened?", "--db", str(memory_db), flag, value)
            assert r.exit_code == 2 and f"{flag}:" in r.output and "internal error" not in r.output, r.output
            r = run_cli("captions", "--db", str(memory_db), flag, value)
            assert r.exit_code == 2 and f"{flag}:" in r.output, r.output


def test_cli_ask_window_forget_export_import(memory_db, tmp_path):
    db = tmp_path / "copy.db"
    db.write_bytes(memory_db.read_bytes())
    r = run_cli("ask", "what happened?", "--db", str(db), "--from", "2026-11-30T08:00+01:00", "--to",
                "2026-11-30T10:00+01:00", "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["window"] and got["captions"]
    assert all(in_window(DAY0, 2, datetime.fromisoformat(c["wall_start"])) for c in got["captions"])
    bad = run_cli("ask", "what happened?", "--db", str(db), "--from", "last blue moon")
    assert bad.exit_code == 2 and "--from" in bad.output
    r = run_cli("memory", "export", str(tmp_path / "out.jsonl"), "--db", str(db))
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 90 and rows[5]["caption"] == caption(5)
    r = run_cli("memory", "export", str(tmp_path / "out.mcap"), "--db", str(db), "--format", "mcap")
    assert r.exit_code == 0 and "90 clips written" in r.output, r.output
    from mcap.reader import make_reader

    with open(tmp_path / "out.mcap", "rb") as f:  # read back: one log message per clip, at the clip's clock time
        logs = [m for _, ch, m in make_reader(f).iter_messages() if ch.topic == "/rlivs/home/captions"]
    assert len(logs) == 90 and min(m.log_time for m in logs) == int(DAY0.timestamp() * 1e9)
    r = run_cli("forget", "--db", str(db), "--before", "2026-12-01T00:00+01:00", "--yes")
    assert r.exit_code == 0 and "forgot 48 clips" in r.output, r.output
    with Memory(db, readonly=True) as m:
        assert m.count_clips() == 42 and m.clips()[0].index == 48
    r = run_cli("memory", "import", str(tmp_path / "out.jsonl"), "--db", str(tmp_path / "new.db"), "--model", "tiny")
    assert r.exit_code == 0 and "90 clips imported" in r.output, r.output
    r = run_cli("memory", "info", "--db", str(tmp_path / "new.db"), "--json")
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["clips"] == 90 and info["streams"][0]["model_id"] == "tiny"
    assert info["streams"][0]["wall_start"].startswith("2026-11-30T")


def test_ingest_clock_from_start_time_or_the_files_creation_time(tmp_path):
    video = make_sample_video(tmp_path / "v.mp4", seconds=8.0)
    r = run_cli("ingest", str(video), "--db", str(tmp_path / "a.db"), "--model", "tiny", "--frames-per-clip", "4",
                "--max-caption-tokens", "4", "--start-time", "2026-12-01T15:00:00+00:00")
    assert r.exit_code == 0, r.output
    with Memory(tmp_path / "a.db", readonly=True) as m:
        clips = m.clips()
    start = datetime(2026, 12, 1, 15, tzinfo=ZoneInfo("UTC")).timestamp()
    assert [c.wall_start - start for c in clips] == [c.t_start for c in clips]
    # a file that carries its creation time: the clock comes from it
    tagged = tmp_path / "tagged.mp4"
    with av.open(str(video)) as src, av.open(str(tagged), "w") as dst:
        dst.metadata["creation_time"] = "2026-11-20T08:30:00.000000Z"
        ins = src.streams.video[0]
        outs = dst.add_stream_from_template(ins)
        for packet in src.demux(ins):
            if packet.dts is not None:
                packet.stream = outs
                dst.mux(packet)
    r = run_cli("ingest", str(tagged), "--db", str(tmp_path / "b.db"), "--model", "tiny", "--frames-per-clip", "4",
                "--max-caption-tokens", "4")
    assert r.exit_code == 0 and "container creation time" in r.output, r.output
    with Memory(tmp_path / "b.db", readonly=True) as m:
        first = m.clips()[0]
    assert first.wall_start == datetime(2026, 11, 20, 8, 30, tzinfo=ZoneInfo("UTC")).timestamp() + first.t_start


def test_api_ask_from_to_and_wall_clock_fields(memory_db, tmp_path):
    db = tmp_path / "api.db"
    db.write_bytes(memory_db.read_bytes())
    service = EdgeService(tiny_engine(), db, [], ServiceConfig())
    server = Server(service, port=0).start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=60) as c:
            r = c.post("/v1/ask", json={"question": "what happened?", "from": "2026-11-30T08:00:00+01:00",
                                        "to": "2026-11-30T09:00:00+01:00"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["window"] and {x["clip"] for x in body["captions"]} <= {0, 1, 2}
            # the window as it was sent, then its clock times
            assert body["window"].startswith("from=2026-11-30T08:00:00+01:00 to=2026-11-30T09:00:00+01:00: "), body
            assert "2026-11-30" in body["window"].split(": ", 1)[1], body
            for x in body["captions"]:  # ISO 8601 with an offset: an unambiguous instant inside the window
                assert datetime.fromisoformat(x["wall_start"]).utcoffset() is not None
                assert in_window(DAY0, 1, datetime.fromisoformat(x["wall_start"]))
            r = c.post("/v1/ask", json={"question": "what happened?", "from": "whenever"})
            assert r.status_code == 400 and "from" in r.text
            for value in ABSURD_TIMES:  # issue 23: 400 with the reason, never a 500
                for key in ("from", "to"):
                    r = c.post("/v1/ask", json={"question": "what happened?", key: value})
                    assert r.status_code == 400, (key, value, r.status_code, r.text)
                    assert r.json()["detail"].startswith(f"{key}: ") and "1970 to 2999" in r.text, r.text
            for question in ABSURD_QUESTIONS:  # a phrase out of range: answered from the whole memory, and said so
                r = c.post("/v1/ask", json={"question": question})
                assert r.status_code == 200, (question, r.text)
                assert r.json()["window"] is None and any("was not applied" in n for n in r.json()["notes"]), r.text
            cap = c.get("/v1/captions", params={"limit": 1}).json()["captions"][0]
            assert datetime.fromisoformat(cap["wall_start"]).timestamp() == DAY0.timestamp()
    finally:
        server.stop()
        service.stop()


def test_serve_retention_forgets_old_clips_and_their_thumbnails(memory_db, tmp_path):
    db = tmp_path / "retain.db"
    db.write_bytes(memory_db.read_bytes())
    service = EdgeService(tiny_engine(), db, [], ServiceConfig(retain_days=1.0))
    try:
        for i in (0, 60, 89):
            service.store.put_thumbnail("home", i, b"\xff\xd8jpeg", 4, 4)
        with Memory(db, model_fingerprint=tiny_engine().model_fingerprint) as mem:
            # wed_noon = Wednesday 12:00 (a fixed instant, not the clock): one day back is Tuesday 12:00 = Monday 08:00 + 28 h = clip 84's start; clips
            # 0..83 ended before it
            wed_noon = datetime(2026, 12, 2, 12, 0, tzinfo=TZ).timestamp()
            assert service.retain(mem, now=wed_noon) == 84
            assert service.retain(mem, now=wed_noon + 60) == 0  # within retain_every_s of the last run: not run
            left = mem.clips("home")
            assert [r.index for r in left] == list(range(84, 90))
            assert all(r.wall_end >= wed_noon - 86400 for r in left)
            assert service.store.thumbnail("home", 0) is None and service.store.thumbnail("home", 60) is None
            assert service.store.thumbnail("home", 89) is not None
            assert service.retain(mem, now=wed_noon + 86400) == 6  # a day later the rest is a day old too
            assert service.store.thumbnail("home", 89) is None
    finally:
        service.stop()
    with pytest.raises(ValueError, match="--retain-days must be > 0"):
        ServiceConfig(retain_days=0)
