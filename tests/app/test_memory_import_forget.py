"""`rlivs memory import` all or nothing, `rlivs forget --before` bounded and never in the future by accident, and the
CLI printing of captions without terminal control sequences (issue 23, items 5, 6, 9, 10). Real SQLite files, the
CLI in-process; no model loads: every refusal here happens before one would."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from rlivs.runtime.memory import ClipRecord, Memory
from rlivs.runtime.validate import MAX_CAPTION_CHARS, MAX_ROW_BYTES, check_stream_name, terminal_safe
from tests.helpers.cli import run_cli

D = 8
T0 = datetime(2026, 11, 30, 8, 0, tzinfo=timezone.utc).timestamp()


def rec(i: int, stream: str = "a", caption: str | None = None, clock: bool = True) -> ClipRecord:
    w = (T0 + 16 * i, T0 + 16 * i + 16) if clock else (None, None)
    return ClipRecord(stream, i, 16.0 * i, 16.0 * i + 16, caption or f"clip {i} of {stream}", 4,
                      np.full(D, i + 1, np.float32), 0.0, *w)


def dump(db: Path) -> list[str]:
    """Everything the file holds (the 'memory unchanged' check)."""
    conn = sqlite3.connect(db)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


@pytest.fixture
def db(tmp_path):
    """A memory with stream 'a' (clips 0, 1, with a clock) and 'nc' (clip 0, no clock)."""
    path = tmp_path / "memory.db"
    with Memory(path) as m:
        m.import_clips([rec(0), rec(1), rec(0, "nc", clock=False)])
    return path


def row(i: int, stream: str = "a", **kw) -> dict:
    r = dict(stream=stream, index=i, t_start=16.0 * i, t_end=16.0 * i + 16, wall_start=T0 + 16 * i,
             wall_end=T0 + 16 * i + 16, caption=f"caption {i}", n_tokens=3)
    r.update(kw)
    return r


def write_lines(path: Path, lines: list) -> Path:
    """Each item: a dict (one JSON line), str (the line as is) or bytes (raw)."""
    with open(path, "wb") as f:
        for x in lines:
            if isinstance(x, dict):
                x = json.dumps(x)
            f.write((x.encode("utf-8", "surrogatepass") if isinstance(x, str) else x) + b"\n")
    return path


def refused(db: Path, lines: list, tmp_path: Path, *message: str, line: int | None = None):
    """Import `lines` into `db`: exit 2, the messages, the line number, and the memory exactly as before."""
    before = dump(db) if db.exists() else None
    src = write_lines(tmp_path / "in.jsonl", lines)
    r = run_cli("memory", "import", str(src), "--db", str(db), "--model", "tiny")
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert "internal error" not in text
    for m in message:
        assert m in text, text
    if line is not None:
        assert f"in.jsonl:{line}" in text, text
    assert "nothing was imported" in text, text
    if before is None:
        assert not db.exists()  # nothing created either
    else:
        assert dump(db) == before
    return text


# --------------------------------------------------------------------------- memory import: all or nothing


def test_5001_good_rows_then_a_duplicate_import_nothing(db, tmp_path):
    lines = [row(i, "big") for i in range(5001)] + [row(3, "big")]
    refused(db, lines, tmp_path, "clip 3 of stream 'big' repeats line 4", line=5002)


def test_a_clip_already_in_the_memory_is_refused(db, tmp_path):
    refused(db, [row(2), row(3), row(2)], tmp_path, "clip 2 of stream 'a' repeats line 1", line=3)
    refused(db, [row(1)], tmp_path, "clip 1 of stream 'a' is already in", line=1)
    refused(db, [row(0, "new"), row(5, "new"), row(3, "new")], tmp_path,
            "clip 3 of stream 'new' goes backwards: the stream's clips before it in the file reach clip 5", line=3)
    refused(db, [row(2), row(9), row(9)], tmp_path, "clip 9 of stream 'a' repeats line 2", line=3)


def test_an_export_with_idle_and_forgotten_clips_imports_whole(tmp_path):
    """The activity gate's idle clips and retention's deleted clips leave gaps in a stream's indices: `memory
    export` -> `memory import` brings back every caption at its own index (idle runs are not exported)."""
    src = tmp_path / "src.db"
    with Memory(src) as m:
        m.open_stream("cam", "src", "m", "h")
        for i in range(12):  # clips 0, 4 and 10 captioned, the rest idle (two runs)
            if i in (0, 4, 10):
                m.commit_clip(rec(i, "cam"), None)
            elif i < 11:
                m.commit_idle("cam", i, 16.0 * i, 16.0 * i + 16, (T0 + 16 * i, T0 + 16 * i + 16), 0 if i < 4 else 4)
        m.import_clips([rec(i, "old") for i in range(6)])
        assert m.forget("old", before=T0 + 16 * 3 + 1) == 3  # retention: clips 0-2 of 'old' are gone
        assert m.forget("old", before=T0 + 16 * 3 + 1) == 0  # clip 3 ends after `before`, though it starts before
        assert m.first_clips() == {"cam": 0, "old": 3}
    assert run_cli("memory", "export", str(tmp_path / "out.jsonl"), "--db", str(src)).exit_code == 0
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(r["stream"], r["index"]) for r in rows] == [("cam", 0), ("cam", 4), ("cam", 10), ("old", 3),
                                                           ("old", 4), ("old", 5)]
    new = tmp_path / "new.db"
    r = run_cli("memory", "import", str(tmp_path / "out.jsonl"), "--db", str(new), "--model", "tiny")
    assert r.exit_code == 0 and "6 clips imported" in r.output, r.output
    with Memory(src, readonly=True) as a, Memory(new, readonly=True) as b:
        assert [(c.stream, c.index, c.t_start, c.wall_start, c.caption) for c in b.clips()] == \
            [(c.stream, c.index, c.t_start, c.wall_start, c.caption) for c in a.clips()]
        assert {s["name"]: s["next_idx"] for s in b.streams()} == {"cam": 11, "old": 6}
        assert b.idle_spans() == []  # not exported (docs/memory.md)
    before = dump(new)  # the same file again: every clip is already there, nothing changes
    text = refused(new, [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()], tmp_path,
                   "clip 0 of stream 'cam' is already in", line=1)
    assert dump(new) == before and "increasing order" in text
    with Memory(src) as m:  # every clip of 'old' forgotten: its first clip is its next index (what retention drops)
        assert m.forget("old", before=T0 + 16 * 100) == 3 and m.first_clips() == {"cam": 0, "old": 6}


def test_import_clips_accepts_forward_gaps_and_refuses_going_back(tmp_path):
    with Memory(tmp_path / "m.db") as m:
        assert m.import_clips([rec(2), rec(7), rec(3, "b"), rec(9, "b")]) == 4
        assert [(c.stream, c.index) for c in m.clips()] == [("a", 2), ("a", 7), ("b", 3), ("b", 9)]
        assert m.open_stream("a", "import", "import", "import").next_index == 8
        before = dump(tmp_path / "m.db")
        for bad in ([rec(8), rec(8)], [rec(9), rec(8)], [rec(7)], [rec(20), rec(5, "b")]):
            with pytest.raises(ValueError, match="does not continue it"):
                m.import_clips(bad)
        assert dump(tmp_path / "m.db") == before


BAD_ROWS = [
    ("[1, 2]", "must be a JSON object, got a JSON array"),
    ('"a clip"', "got a JSON string"),
    ("42", "got a JSON number"),
    ("null", "got a JSON null"),
    ("{not json", "is not JSON"),
    (json.dumps(row(2)).replace('"t_start": 32.0', '"t_start": NaN'), "NaN is not a number JSON allows"),
    (json.dumps(row(2)).replace('"t_end": 48.0', '"t_end": Infinity'), "Infinity is not a number JSON allows"),
    (json.dumps(row(2)).replace('"t_end": 48.0', '"t_end": 1e999'), "t_end must be a finite number"),
    (row(2, wall_start="2026-11-30T08:00"), "wall_start must be a number"),
    (row(2, wall_start=[1, 2]), "wall_start must be a number"),
    (row(2, wall_start=None), "give both or neither"),
    (row(2, t_start="0"), "t_start must be a number"),
    (row(2, t_start=-1.0), "t_start -1.0 is out of range"),
    (row(2, t_start=50.0, t_end=49.0), "t_start 50.0 is after t_end 49.0"),
    (row(2, t_end=1e308), "t_end 1e+308 is out of range"),
    (row(2, wall_start=-5.0, wall_end=1.0), "wall_start -5.0 is out of range"),
    (row(2, wall_start=T0 + 100, wall_end=T0), "is after wall_end"),
    (row(2, wall_end=1e308), "wall_end 1e+308 is out of range"),
    (row(2, index=True), "index must be an integer, got boolean"),
    (row(2, index=2.0), "index must be an integer, got number"),
    (row(2, index=-1), "index -1 is out of range"),
    (row(2, index=10**50), "index of 51 digits is out of range"),
    (json.dumps(row(2)).replace('"index": 2', '"index": ' + "9" * 5000), "is not JSON"),
    (row(2, caption=None), "caption must be a string"),
    (row(2, caption=["x"]), "caption must be a string"),
    (row(2, caption="a\x00b"), "control character U+0000 (NUL)"),
    (row(2, caption="red \x1b[31malert\x1b[0m"), "control character U+001B (ESC)"),
    (row(2, caption="csi \x9b2J"), "control character U+009B"),
    (row(2, caption="x" * (MAX_CAPTION_CHARS + 1)), f"at most {MAX_CAPTION_CHARS} are accepted"),
    ('{"stream": "a", "index": 2, "t_start": 0, "t_end": 1, "caption": "bad \\ud800 half"}', "lone surrogate"),
    ({k: v for k, v in row(2).items() if k != "caption"}, "lacks caption"),
    (row(2, stream=""), "stream name '' is not valid"),
    (row(2, stream="a\x00b"), "is not valid"),
    (row(2, stream="../../etc/x"), "stream name '../../etc/x' is not valid"),
    (row(2, stream=".."), "is not valid"),
    (row(2, stream="s" * 10_000), "(10000 characters) is not valid"),
    (row(2, stream="<img src=x onerror=alert(1)>"), "is not valid"),
    (row(2, stream=7), "stream name must be a string"),
    ("[" * 5000 + "]" * 5000, "nests too deeply"),
    (b'{"stream": "a", "index": 2, "t_start": 0, "t_end": 1, "caption": "caf\xe9"}', "is not UTF-8 (byte 0xe9"),
    (b"\xff\xfe{}", "is not UTF-8"),
]


@pytest.mark.parametrize("bad,message", BAD_ROWS, ids=[m for _, m in BAD_ROWS])
def test_a_bad_row_is_refused_with_its_line_and_nothing_is_written(bad, message, db, tmp_path):
    """Line 3 is bad, after two good ones (which continue stream 'a'): exit 2, line 3 and the reason, nothing stored."""
    refused(db, [row(2), row(3), bad, row(4)], tmp_path, message, line=3)


def test_refused_into_a_new_file_creates_nothing(tmp_path):
    refused(tmp_path / "new.db", [row(0), row(1, caption="\x1b]0;title\x07")], tmp_path, "control character", line=2)


def test_a_50_mb_caption_is_refused_without_reading_it_whole(db, tmp_path):
    src = tmp_path / "in.jsonl"
    with open(src, "wb") as f:
        f.write(json.dumps(row(2)).encode() + b"\n")
        f.write(b'{"stream": "a", "index": 3, "t_start": 48, "t_end": 64, "caption": "')
        f.write(b"x" * 50_000_000)
        f.write(b'"}\n')
    before = dump(db)
    r = run_cli("memory", "import", str(src), "--db", str(db), "--model", "tiny")
    assert r.exit_code == 2, r.output
    assert "in.jsonl:2 is longer than" in " ".join(r.output.split()) and dump(db) == before
    assert MAX_ROW_BYTES < 200_000  # what the reader holds of such a line at most


def test_a_million_character_caption_is_refused(db, tmp_path):
    refused(db, [row(2, caption="y" * 1_000_000)], tmp_path, "is longer than", line=1)


def test_import_clips_is_one_transaction(db):
    """The library call too: the 5001st clip refused -> none of the 5000 before it is stored."""
    before = dump(db)
    with Memory(db) as m:
        with pytest.raises(ValueError, match="does not continue it"):
            m.import_clips([rec(i, "big") for i in range(5001)] + [rec(4, "big")])
        with pytest.raises(ValueError, match="control character"):
            m.import_clips([rec(2), rec(3, caption="\x1b[2J")])
        with pytest.raises(ValueError, match="stream name '../x' is not valid"):
            m.import_clips([rec(0, "../x")])
        assert not m._conn.in_transaction
    assert dump(db) == before


def test_stream_names_follow_one_rule_everywhere(tmp_path):
    from rlivs.runtime.sources.spec import parse_source

    for good in ("cam0", "front.door", "a-b_c", "x" * 64):
        assert check_stream_name(good) == good
        assert parse_source(f"{good}=rtsp://10.0.0.2/s").name == good
    for bad in ("", ".", "..", "a/b", "a b", "a\x00b", "x" * 65, "<img>", "ümlaut"):
        with pytest.raises(ValueError, match="is not valid"):
            check_stream_name(bad)
    with Memory(tmp_path / "m.db") as m:  # a new stream in the memory: the same rule
        with pytest.raises(ValueError, match="stream name 'a/b' is not valid"):
            m.open_stream("a/b", "x.mp4", "m", "h")
        assert m.streams() == []


# --------------------------------------------------------------------------- forget --before


def _forget(db: Path, *args: str):
    return run_cli("forget", "--db", str(db), *args)


@pytest.mark.parametrize("value", ["-99999999d", "-99999999999w", "+99999999999w", "0001-01-01T00:00+14:00",
                                   "9999-12-31", "1969-06-01"])
def test_forget_before_an_absurd_time_is_refused_with_exit_2(value, db):
    before = dump(db)
    r = _forget(db, "--before", value, "--yes")
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert "--before:" in text and "out of range" in text and "from 1970 to 2999" in text, text
    assert dump(db) == before


@pytest.mark.parametrize("value", ["2999-01-01", "tomorrow", "+30d", "+1h"])
def test_forget_before_a_future_time_needs_allow_future(value, db):
    before = dump(db)
    r = _forget(db, "--before", value, "--yes")
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert "in the future" in text and "every clip with a clock time" in text and "--allow-future" in text, text
    assert dump(db) == before
    r = _forget(db, "--before", value, "--stream", "a", "--yes")  # one stream: the same
    assert r.exit_code == 2 and "--allow-future" in r.output
    assert dump(db) == before


def test_forget_with_allow_future_deletes_every_clip_with_a_clock(db):
    r = _forget(db, "--before", "+30d", "--allow-future", "--yes")
    assert r.exit_code == 0 and "forgot 2 clips" in r.output, r.output
    with Memory(db, readonly=True) as m:
        assert [(c.stream, c.index) for c in m.clips()] == [("nc", 0)]  # the clip without a clock stays


def test_forget_before_a_past_time_still_works(db):
    r = _forget(db, "--before", datetime.fromtimestamp(T0 + 20, timezone.utc).isoformat(), "--yes")
    assert r.exit_code == 0 and "forgot 1 clips" in r.output, r.output


# --------------------------------------------------------------------------- captions in the terminal

HOSTILE = ["red \x1b[31malert\x1b[0m done", "title \x1b]0;pwned\x07 set", "csi \x9b2J c1", "bidi \u202eevil\u202c",
           "nul \x00 bell \x07 back\x08space", "markup [bold red]loud[/bold red] text", "cr \roverwrite"]


def test_terminal_safe_removes_control_and_escape_characters():
    for text in HOSTILE:
        out = terminal_safe(text)
        assert not any(ord(c) < 32 and c not in "\n\t" or 0x7f <= ord(c) <= 0x9f or c in "\u202e\u202c" for c in out)
    assert terminal_safe("line\nnext\ttab é 漢字") == "line\nnext\ttab é 漢字"
    assert terminal_safe("red \x1b[31malert\x1b[0m") == "red [31malert[0m"


def test_captions_command_prints_no_control_sequences(tmp_path):
    db = tmp_path / "m.db"
    with Memory(db) as m:  # captions as the model may write them (ingest stores the model's text as generated)
        m.open_stream("cam", "x.mp4", "m", "h")
        for i, text in enumerate(HOSTILE):
            m.commit_clip(ClipRecord("cam", i, 2.0 * i, 2.0 * i + 2, text, 3, np.ones(D, np.float32)), None)
    r = run_cli("captions", "--db", str(db), "--limit", "20")
    assert r.exit_code == 0, r.output
    bad = [c for c in r.output if (ord(c) < 32 and c not in "\n") or 0x7f <= ord(c) <= 0x9f or c in "\u202e\u202c"]
    assert not bad, [hex(ord(c)) for c in bad]
    flat = " ".join(r.output.split())
    assert "[bold red]loud[/bold red]" in flat  # shown as written, not read as rich markup
    assert "alert" in flat and "pwned" in flat
    r = run_cli("captions", "--db", str(db), "--json")  # JSON escapes control characters itself
    assert r.exit_code == 0 and "\x1b" not in r.output
    assert [json.loads(line)["caption"] for line in r.stdout.splitlines()] == HOSTILE


def test_ingest_refuses_a_bad_stream_name_before_the_model_loads(tmp_path, sample_video, monkeypatch):
    """The same name rule as import and the service, checked before any model loads or any file is made."""
    import rlivs.runtime.engine as engine_mod

    monkeypatch.setattr(engine_mod, "load_engine", lambda *a, **k: pytest.fail("the model was loaded"))
    r = run_cli("ingest", sample_video, "--db", tmp_path / "m.db", "--stream", "../x", catch_exceptions=True)
    assert r.exit_code == 2 and "--stream '../x' is not valid" in " ".join(r.output.split()), r.output
    assert not (tmp_path / "m.db").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_captions_refuses_a_non_finite_time(tmp_path, value):
    from rlivs.runtime.memory import Memory

    Memory(tmp_path / "m.db").close()
    r = run_cli("captions", "--db", tmp_path / "m.db", "--from", value, catch_exceptions=True)
    assert r.exit_code == 2, r.output
