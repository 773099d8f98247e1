"""Hostile inputs: each gets a clear error (what, where, what to do), a non-zero exit (CLI) or a 4xx (API), and
nothing already stored is lost.

Videos (zero-length, not a video, truncated, corrupt in the middle), a memory from another model (embedding width,
tokenizer), bundles (files missing, truncated, from another model), a read-only or full disk (simulated in-process
with SQLite's own errors), absurd parameters, and questions that are empty, huge or not UTF-8. The CLI runs in-process
(typer's CliRunner, exceptions not caught: a traceback fails the test) on the tiny model's ONNX bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from rlivs.edge_app.sample_video import make_sample_video
from rlivs.runtime.sources.file import VideoFileSource
from rlivs.runtime.memory import Memory
from tests.helpers.cli import run_cli

FPC = 4  # frames per clip (1 fps): the 20 s sample video is 5 clips
SETTINGS = ["--frames-per-clip", str(FPC), "--max-caption-tokens", "6", "--threads", "1"]


def cli(*args):
    return run_cli(*args)


def said(r) -> str:
    return " ".join(r.output.split())  # the console wraps long lines


def compact(text: str) -> str:
    return "".join(text.split())  # the console may also break a long path: compare without any whitespace


def ingest(video, db, bundle, *extra, stream="cam"):
    return cli("ingest", video, "--db", db, "--bundle", bundle, "--stream", stream, *SETTINGS, "--json", *extra)


def json_lines(r) -> list[dict]:
    return [json.loads(x) for x in r.output.splitlines() if x.startswith("{")]


def digest(db: Path) -> tuple:
    """The memory's bytes, its write-ahead log's, and the other files beside it: a refused run changes none. (A
    read-only SQLite reader of a WAL database leaves an empty NAME-wal and a NAME-shm index behind: no data.)"""
    wal = db.with_name(db.name + "-wal")
    logged = hashlib.sha256(wal.read_bytes()).hexdigest() if wal.exists() and wal.stat().st_size else None
    others = sorted(f.name for f in db.parent.iterdir()
                    if f.is_file() and f.name not in (db.name + "-wal", db.name + "-shm"))
    return hashlib.sha256(db.read_bytes()).hexdigest(), logged, others


def rows(db: Path, stream: str | None = None) -> list[tuple]:
    """Every stored clip of the memory, bit for bit (vector bytes, commit time)."""
    with Memory(db, readonly=True) as m:
        assert m._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return [(r.stream, r.index, r.t_start, r.t_end, r.caption, r.n_tokens, r.vector.tobytes(), r.committed_at)
                for r in m.clips(stream)]


def fifo(db: Path, stream: str) -> list[tuple[int, bytes]]:
    with Memory(db, readonly=True) as m:
        return [(i, t.tobytes()) for i, t in m.open_stream(stream, "", "", m.streams()[0]["config_hash"]).fifo]


def content(rs) -> list[tuple]:
    return [r[1:7] for r in rs]  # index, times, caption, n_tokens, vector: what a run computes


@pytest.fixture(scope="module")
def stored(tmp_path_factory, bundle, sample_video):
    """A memory holding 2 committed clips of stream 'cam', and the 5 clips of an uninterrupted run for comparison."""
    work = tmp_path_factory.mktemp("hostile")
    db = work / "memory.db"
    r = ingest(sample_video, db, bundle, "--max-clips", "2")
    assert r.exit_code == 0, r.output
    full = work / "full.db"
    assert ingest(sample_video, full, bundle).exit_code == 0
    return {"db": db, "rows": rows(db), "full": rows(full), "work": work}


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """36 s at 1 fps in 16-frame clips: two full clips (each FIFO row 25 x 64 float32 = 6400 B, more than a page) and a
    short one."""
    return make_sample_video(tmp_path_factory.mktemp("long") / "long.mp4", seconds=36.0, size=(160, 120))


@pytest.fixture
def db(stored, tmp_path):
    """A private copy of the stored memory."""
    path = tmp_path / "memory.db"
    shutil.copy(stored["db"], path)
    return path


def assert_refused(r, db, before, *messages):
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    for m in messages:
        assert compact(m) in compact(r.output), (m, said(r))
    assert digest(db) == before, "a refused run changed the memory"


# ---------------------------------------------------------------------------------------------------------------------
# Video files
# ---------------------------------------------------------------------------------------------------------------------


def _audio_only(path: Path) -> Path:
    with wave.open(str(path), "wb") as w:  # 2 s of a tone, 16-bit mono: a valid file with no video in it
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes((np.sin(np.arange(16000) / 5) * 3000).astype("<i2").tobytes())
    return path


@pytest.mark.parametrize("kind, make, message", [
    ("zero-length", lambda p, v: p.write_bytes(b""), "is not a readable video: FFmpeg could not open it"),
    ("text", lambda p, v: p.write_text("minutes of the meeting\n" * 200), "is not a readable video"),
    ("random bytes", lambda p, v: p.write_bytes(np.random.default_rng(0).bytes(50_000)), "is not a readable video"),
    ("audio only", lambda p, v: _audio_only(p), "it has no video stream"),
    ("truncated MP4 (index at the end, cut off)", lambda p, v: p.write_bytes(v.read_bytes()[:len(v.read_bytes()) // 2]),
     "is not a readable video"),
])
def test_unreadable_videos_are_refused_before_anything_is_touched(kind, make, message, db, bundle, sample_video,
                                                                 tmp_path):
    bad = tmp_path / "bad.mp4"
    make(bad, sample_video)
    before = digest(db)
    r = ingest(bad, db, bundle, stream="new")
    assert_refused(r, db, before, bad.name, message, "check the file with ffprobe")


def _remux(src: Path, dst: Path, options: dict | None = None) -> Path:
    with av.open(str(src)) as i, av.open(str(dst), "w", options=options or {}) as o:
        s = i.streams.video[0]
        out = o.add_stream_from_template(s)
        for p in i.demux(s):
            if p.dts is not None:
                p.stream = out
                o.mux(p)
    return dst


@pytest.mark.parametrize("container", ["faststart.mp4", "video.mkv"])
def test_truncated_video_stores_what_it_has_says_so_and_resumes_on_the_complete_file(container, db, bundle,
                                                                                     sample_video, stored, tmp_path):
    """A container that can be read up to the cut (MP4 with its index first, Matroska): the clips before the cut are
    stored, the run ends with exit 2 naming where the file ends; the complete file then resumes at the next clip and
    the stream equals an uninterrupted run."""
    complete = _remux(sample_video, tmp_path / container, {"movflags": "faststart"} if "mp4" in container else None)
    data = complete.read_bytes()
    cut = tmp_path / ("cut-" + container)
    cut.write_bytes(data[: int(len(data) * 0.6)])  # ends around 12 s of 20
    r = ingest(cut, db, bundle, stream="cut")
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    msg = compact(r.output)
    assert cut.name in msg and "truncated" in msg and compact("but the file declares 20.0 s of video") in msg
    done = [x["clip"] for x in json_lines(r)]
    assert done and done == list(range(len(done))) and len(done) < 5
    assert compact(f"holds clips 0..{done[-1]}, all committed; a new run resumes at clip {done[-1] + 1}") in msg
    assert rows(db, "cam") == stored["rows"]  # the other stream is untouched
    partial = rows(db, "cut")
    assert content(partial) == content(stored["full"][: len(done)])  # the same clips as the complete file's
    r = ingest(complete, db, bundle, stream="cut")  # the complete file: resume
    assert r.exit_code == 0, r.output
    assert [x["clip"] for x in json_lines(r)] == list(range(len(done), 5))
    assert rows(db, "cut")[: len(done)] == partial  # unchanged, commit times included
    assert content(rows(db, "cut")) == content(stored["full"])


def _corrupt_middle(src: Path, dst: Path) -> Path:
    data = bytearray(src.read_bytes())
    rng = np.random.default_rng(0)
    for off in range(len(data) // 3, 2 * len(data) // 3, len(data) // 12):  # 4 bursts of garbage in the middle
        data[off:off + 3000] = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def test_corrupt_middle_decodes_past_bad_packets_counts_them_and_exits_3(db, bundle, sample_video, stored, tmp_path):
    bad = _corrupt_middle(sample_video, tmp_path / "corrupt.mp4")
    src = VideoFileSource(bad, fps=1.0)
    frames = list(src)
    assert len(frames) == 20 and src.decode_errors >= 3  # every sample time still gets a frame; skips are counted
    assert all(b.t > a.t for a, b in zip(frames, frames[1:]))
    assert 0 < src.decode_error_times[0] < 20
    r = ingest(bad, db, bundle, stream="corrupt")
    assert r.exit_code == 3, r.output
    lines = json_lines(r)
    assert [x["clip"] for x in lines] == [0, 1, 2, 3, 4]  # decoding went on to the end
    assert lines[-1]["decode_errors"] == src.decode_errors and lines[0]["decode_errors"] == 0
    msg = said(r)
    assert f"{src.decode_errors} packets could not be decoded" in msg and "exit status 3" in msg and "ffprobe" in msg
    assert "Traceback" not in msg
    got = rows(db, "corrupt")
    assert content(got[:1]) == content(stored["full"][:1])  # before the damage: the same clip as the intact file
    assert rows(db, "cam") == stored["rows"]


# ---------------------------------------------------------------------------------------------------------------------
# A memory from another model
# ---------------------------------------------------------------------------------------------------------------------


def _set_fingerprint(db: Path, **changes) -> dict:
    conn = sqlite3.connect(db)
    fp = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'model_fingerprint'").fetchone()[0])
    fp.update(changes)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'model_fingerprint'", (json.dumps(fp),))
    conn.commit()
    conn.close()
    return fp


@pytest.mark.parametrize("change", [{"hidden_size": 896}, {"vocab_size": 152000}])
def test_memory_from_a_model_with_other_widths_is_refused(change, db, bundle, sample_video):
    _set_fingerprint(db, **change)  # as if written by the 0.5B
    before = digest(db)
    for r in (ingest(sample_video, db, bundle),
              cli("ask", "what moved?", "--db", db, "--bundle", bundle),
              cli("serve", "--db", db, "--bundle", bundle, "--port", "1")):
        assert_refused(r, db, before, "was written by a model with", str(next(iter(change.values()))),
                       "use a new --db or the same model")


def test_memory_from_a_model_with_another_tokenizer_is_refused(db, bundle, sample_video, tmp_path):
    other = tmp_path / "other-tokenizer"
    shutil.copytree(bundle, other)
    tok = json.loads((other / "tokenizer.json").read_text())
    tok["normalizer"] = {"type": "NFKC"}  # same vocabulary, another tokenizer: it encodes some text differently
    (other / "tokenizer.json").write_text(json.dumps(tok))
    before = digest(db)
    for r in (ingest(sample_video, db, other), cli("ask", "what moved?", "--db", db, "--bundle", other)):
        assert_refused(r, db, before, "was written by a model with", "'tokenizer'", "use a new --db or the same model")


# ---------------------------------------------------------------------------------------------------------------------
# Bundles: missing, truncated, from another model
# ---------------------------------------------------------------------------------------------------------------------


def _damaged(bundle: Path, tmp_path: Path, name: str, how: str) -> Path:
    bad = tmp_path / f"bundle-{how}"
    shutil.copytree(bundle, bad)
    f = bad / name
    if how == "missing":
        f.unlink()
    else:
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])
    return bad


@pytest.mark.parametrize("name, how, message", [
    ("manifest.json", "missing", "is not an rlivs bundle (no manifest.json): create one with rlivs export"),
    ("vision.onnx", "missing", "is missing vision.onnx: copy the whole bundle directory or re-export it"),
    ("decoder.onnx", "missing", "is missing decoder.onnx"),
    ("embeddings.npy", "missing", "is missing embeddings.npy"),
    ("tokenizer.json", "missing", "is missing tokenizer.json"),
    ("preprocessor_config.json", "missing", "is missing preprocessor_config.json"),
    ("manifest.json", "truncated", "manifest.json is not valid JSON"),
    ("vision.onnx", "truncated", "vision.onnx cannot be loaded"),
    ("decoder.onnx", "truncated", "decoder.onnx cannot be loaded"),
    ("embeddings.npy", "truncated", "embeddings.npy cannot be loaded"),
    ("image_newline.npy", "truncated", "image_newline.npy cannot be loaded"),
    ("tokenizer.json", "truncated", "tokenizer.json cannot be read"),
    ("config.json", "truncated", "config.json is not the one this bundle was exported with"),
])
def test_damaged_bundle_is_refused_clearly(name, how, message, db, bundle, sample_video, tmp_path):
    bad = _damaged(bundle, tmp_path, name, how)
    before = digest(db)
    r = ingest(sample_video, db, bad)
    assert_refused(r, db, before, message)
    if how == "truncated" and name != "manifest.json":
        assert "damaged" in said(r)
        assert "copy the whole bundle" in said(r) or "copy the model directory" in said(r)


def _vision_graph_of_width(path: Path, width: int, frame_tokens: int = 25, side: int = 126) -> None:
    """A valid vision.onnx with the bundle's input but another model's output width: (F, 3, s, s) -> (F, P, width)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["frames", 3, side, side])
    y = helper.make_tensor_value_info("visual_tokens", TensorProto.FLOAT, ["frames", frame_tokens, width])
    shape = helper.make_tensor("shape", TensorProto.INT64, [4], [1, frame_tokens, width, 1])
    axes = helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3])
    axes3 = helper.make_tensor("axes3", TensorProto.INT64, [1], [3])
    nodes = [helper.make_node("ReduceMean", ["pixel_values", "axes"], ["m"], keepdims=1),  # (F, 1, 1, 1)
             helper.make_node("Expand", ["m", "shape"], ["e"]),  # (F, P, width, 1)
             helper.make_node("Squeeze", ["e", "axes3"], ["visual_tokens"])]  # (F, P, width)
    graph = helper.make_graph(nodes, "other_vision", [x], [y], initializer=[shape, axes, axes3])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)  # ORT 1.18+ reads 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_bundle_with_files_from_another_model_is_refused(db, bundle, sample_video, tiny_dir, tmp_path):
    before = digest(db)
    # a vision graph exported from a model of another width
    mixed = tmp_path / "bundles" / "mixed-vision"
    shutil.copytree(bundle, mixed)
    _vision_graph_of_width(mixed / "vision.onnx", 32)
    assert_refused(ingest(sample_video, db, mixed), db, before,
                   "vision.onnx visual_tokens has size 32 on axis 2 but the manifest says 64",
                   "from another model", "copy the whole bundle directory from one export or re-export it")
    # an embedding table of another width
    mixed = tmp_path / "bundles" / "mixed-table"
    shutil.copytree(bundle, mixed)
    np.save(mixed / "embeddings.npy", np.zeros((512, 32), np.float32))
    assert_refused(ingest(sample_video, db, mixed), db, before, "embeddings.npy has shape (512, 32)",
                   "re-export it")
    # a config.json from another model
    mixed = tmp_path / "bundles" / "mixed-config"
    shutil.copytree(bundle, mixed)
    cfg = json.loads((tiny_dir / "config.json").read_text())
    cfg["text_config"]["hidden_size"] = 128
    (mixed / "config.json").write_text(json.dumps(cfg))
    assert_refused(ingest(sample_video, db, mixed), db, before, "config.json is not the one",
                   "from another model")
    # a tokenizer from a model with a larger vocabulary
    mixed = tmp_path / "bundles" / "mixed-tokenizer"
    shutil.copytree(bundle, mixed)
    tok = json.loads((mixed / "tokenizer.json").read_text())
    top = max(t["id"] for t in tok["added_tokens"])
    tok["added_tokens"] += [{"id": top + 1 + i, "content": f"<extra_{i}>", "single_word": False, "lstrip": False,
                             "rstrip": False, "normalized": False, "special": True} for i in range(600)]
    (mixed / "tokenizer.json").write_text(json.dumps(tok))
    assert_refused(ingest(sample_video, db, mixed), db, before, "the tokenizer has", "embedding table has 512 rows",
                   "tokenizer.json is from another model")


# ---------------------------------------------------------------------------------------------------------------------
# Read-only and full disk (simulated in-process: SQLite's own SQLITE_READONLY / SQLITE_FULL, no special filesystem)
# ---------------------------------------------------------------------------------------------------------------------


def _fail_storage_at(monkeypatch, clip: int, pragma: str) -> None:
    """From clip `clip` on, the memory's connection refuses to grow (max_page_count = its size: SQLite answers
    SQLITE_FULL, 'database or disk is full') or to write at all (query_only: SQLITE_READONLY)."""
    real = Memory.commit_clip

    def commit(self, record, *a, **kw):
        if record.index >= clip:
            if pragma == "full":
                pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
                self._conn.execute(f"PRAGMA max_page_count = {pages}")
            else:
                self._conn.execute("PRAGMA query_only = ON")
        return real(self, record, *a, **kw)

    monkeypatch.setattr(Memory, "commit_clip", commit)


@pytest.mark.parametrize("pragma, message", [
    ("full", "the disk is full (database or disk is full); nothing of it was written and everything committed "
             "before is intact: free space on the device"),
    ("readonly", "the file or its folder is read-only (attempt to write a readonly database)"),
])
def test_full_or_read_only_disk_mid_stream_loses_nothing_and_resumes(pragma, message, bundle, long_video, tmp_path,
                                                                    monkeypatch):
    args = ["ingest", long_video, "--bundle", bundle, "--stream", "cam", "--max-caption-tokens", "6", "--threads", "1",
            "--json"]  # 16-frame clips: a FIFO row needs new pages, and a new memory has no free ones to reuse
    assert cli(*args, "--db", tmp_path / "reference.db").exit_code == 0
    db = tmp_path / "fresh.db"
    _fail_storage_at(monkeypatch, 1, pragma)
    r = cli(*args, "--db", db)
    assert r.exit_code == 2, r.output
    assert [x["clip"] for x in json_lines(r)] == [0]
    msg = compact(r.output)
    for m in ("cannot store clip 1 of stream 'cam'", message, "the stream resumes at clip 1",
              "holds clips 0..0, all committed", "Traceback"):
        assert (compact(m) in msg) == (m != "Traceback"), (m, said(r))
    before = rows(db)
    assert [x[1] for x in before] == [0]
    monkeypatch.undo()  # space freed / made writable
    r = cli(*args, "--db", db)
    assert r.exit_code == 0, r.output
    assert [x["clip"] for x in json_lines(r)] == [1, 2]  # resumed at the clip that failed
    assert rows(db)[:1] == before  # clip 0 unchanged, commit time included
    assert content(rows(db)) == content(rows(tmp_path / "reference.db"))
    assert fifo(db, "cam") == fifo(tmp_path / "reference.db", "cam")


class _FullAtCommit:
    """A connection whose COMMIT fails as on a full disk (SQLite reports SQLITE_FULL when the WAL cannot grow)."""

    def __init__(self, conn):
        self._conn = conn
        self.armed = True

    def execute(self, sql, *args):
        if self.armed and sql.strip().upper() == "COMMIT":
            e = sqlite3.OperationalError("database or disk is full")
            e.sqlite_errorcode, e.sqlite_errorname = 13, "SQLITE_FULL"
            raise e
        return self._conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def test_full_disk_at_commit_leaves_ingestor_and_memory_as_before_and_the_clip_can_be_retried(bundle, sample_video,
                                                                                             stored, tmp_path):
    """The library view: the failing commit rolls back, the in-memory FIFO and position do not move, and the same
    clip goes in once space is back, giving exactly the uninterrupted run's clips."""
    from rlivs.edge_app.options import pipeline_config
    from rlivs.runtime.engine import load_engine
    from rlivs.runtime.config import EngineConfig

    from rlivs.runtime.ingest import StreamIngestor

    cfg = pipeline_config(frames_per_clip=FPC, max_caption_tokens=6)
    engine = load_engine(EngineConfig(model=str(bundle), threads=1), cfg)
    with Memory(tmp_path / "m.db", model_fingerprint=engine.model_fingerprint) as mem:
        ing = StreamIngestor(engine, mem, stream="cam", source=str(sample_video))
        clips = ing.clips_from_file(sample_video)
        ing.step(next(clips))
        clip1 = next(clips)
        fifo_before = [(i, t.tobytes()) for i, t in ing.fifo.entries()]
        proxy = _FullAtCommit(mem._conn)
        mem._conn = proxy
        with pytest.raises(ValueError, match="cannot store clip 1 of stream 'cam' .* the disk is full .*nothing of it "
                                             "was written.*resumes at clip 1"):
            ing.step(clip1)
        assert ing.next_index == 1 and [(i, t.tobytes()) for i, t in ing.fifo.entries()] == fifo_before
        assert not proxy._conn.in_transaction
        assert [r.index for r in mem.clips()] == [0]
        proxy.armed = False  # space is back
        ing.step(clip1)
        ing.run(clips)
        mem._conn = proxy._conn
    assert content(rows(tmp_path / "m.db")) == content(stored["full"])


def test_read_only_memory_refuses_writes_clearly(db):
    before = rows(db)
    with Memory(db, readonly=True) as m:
        with pytest.raises(ValueError, match="opened read-only .* open it without readonly to write"):
            m.open_stream("new", "s", "tiny", "h")
    assert rows(db) == before


def test_service_keeps_answering_when_the_disk_fills_during_ingest(bundle, long_video, tmp_path, monkeypatch):
    """`rlivs serve`: the ingest worker stops with the clear error (shown in /v1/streams and /healthz); questions are
    still answered from what was committed."""
    import httpx

    from rlivs.edge_app.options import pipeline_config
    from rlivs.edge_app.service.app import Server
    from rlivs.edge_app.service.core import EdgeService, ServiceConfig
    from rlivs.runtime.engine import load_engine
    from rlivs.runtime.config import EngineConfig
    from rlivs.edge_app.source_specs import parse_sources
    from tests.helpers.serve_helpers import wait_for

    cfg = pipeline_config(frames_per_clip=16, max_caption_tokens=6, max_answer_tokens=6)
    engine = load_engine(EngineConfig(model=str(bundle), threads=1), cfg)
    _fail_storage_at(monkeypatch, 1, "full")
    service = EdgeService(engine, tmp_path / "m.db", parse_sources([f"cam={long_video}"]),
                          ServiceConfig(replay_files=False))
    server = Server(service, port=0).start()
    try:
        service.start()
        wait_for(lambda: service.workers[0].state == "failed", 60, "the worker to stop on the full disk")
        st = httpx.get(server.url + "/v1/streams", timeout=10).json()["streams"][0]
        assert st["state"] == "failed" and st["clips"] == 1
        assert "cannot store clip 1 of stream 'cam'" in st["error"] and "the disk is full" in st["error"]
        assert httpx.get(server.url + "/healthz", timeout=10).json()["status"] == "degraded"
        r = httpx.post(server.url + "/v1/ask", json={"question": "what moved?"}, timeout=30)
        assert r.status_code == 200 and [c["clip"] for c in r.json()["captions"]] == [0]
    finally:
        server.stop()
        service.stop()
    assert [x[1] for x in rows(tmp_path / "m.db")] == [0]


# ---------------------------------------------------------------------------------------------------------------------
# Absurd parameters
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--frames-per-clip", "0"], "frames_per_clip must be >= 1, got 0; use e.g. --frames-per-clip 16"),
    (["--frames-per-clip", "-3"], "frames_per_clip must be >= 1"),
    (["--keep", "5000"], "cannot keep 5000 tokens per clip: a full clip has only 100 visual tokens; lower --keep"),
    (["--keep", "0"], "keep must be >= 1 token per clip"),
    (["--keep-ratio", "0"], "keep_ratio must be in (0, 1]"),
    (["--keep-ratio", "1.5"], "keep_ratio must be in (0, 1]"),
    (["--fps", "-1"], "fps must be > 0 and finite, got -1.0; use e.g. --fps 1"),
    (["--fps", "0"], "fps must be > 0"),
    (["--fps", "inf"], "fps must be > 0 and finite, got inf"),
    (["--fps", "nan"], "fps must be > 0 and finite, got nan"),
    (["--fifo-clips", "-1"], "capacity_clips must be >= 0, got -1; e.g. --fifo-clips 16"),
    (["--max-caption-tokens", "0"], "caption max_new_tokens must be >= 1, got 0; e.g. --max-caption-tokens 128"),
    (["--max-clips", "0"], "--max-clips must be >= 1"),
    (["--max-clips", "-5"], "--max-clips must be >= 1"),
    (["--threads", "0"], "threads must be >= 1, got 0"),
    (["--threads", "-2"], "threads must be >= 1, got -2"),
    (["--probe-layers", "1,3,4,6,99"], "exported with probe layers"),
    (["--strategy", "psychic"], "unknown selection strategy"),
])
def test_absurd_ingest_parameters_are_refused(args, message, db, bundle, sample_video):
    before = digest(db)
    r = cli("ingest", sample_video, "--db", db, "--bundle", bundle, *SETTINGS, *args)
    assert_refused(r, db, before, message)


@pytest.mark.parametrize("args, message", [
    (["--top-k", "0"], "top_k must be >= 1"),
    (["--token-budget", "0"], "token_budget must be >= 1"),
    (["--token-budget", "-100"], "token_budget must be >= 1"),
    (["--max-answer-tokens", "0"], "the answer length bound must be >= 1 token"),
    (["--mmr-lambda", "2"], "mmr_lambda must be in [0, 1]"),
    (["--threads", "-1"], "threads must be >= 1"),
])
def test_absurd_ask_parameters_are_refused(args, message, db, bundle):
    before = digest(db)
    assert_refused(cli("ask", "what moved?", "--db", db, "--bundle", bundle, *args), db, before, message)


@pytest.mark.parametrize("args, message", [
    (["--fps", "0"], "fps must be"),
    (["--frames-per-clip", "0"], "frames_per_clip must be >= 1"),
    (["--replay-speed", "0"], "replay_speed must be > 0"),
    (["--replay-speed", "-2"], "replay_speed must be > 0"),
    (["--read-timeout", "-1"], "timeouts must be > 0 seconds"),
    (["--max-answer-tokens", "0"], "the answer length bound must be >= 1 token"),
    (["--port", "0"], "--port 0 is not a TCP port"),
])
def test_absurd_serve_parameters_are_refused(args, message, db, bundle, sample_video):
    before = digest(db)
    r = cli("serve", "--source", f"cam={sample_video}", "--db", db, "--bundle", bundle, *args)
    assert_refused(r, db, before, message)


# ---------------------------------------------------------------------------------------------------------------------
# Questions: empty, huge, not UTF-8
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("question, message", [
    ("", "the question is empty"),
    ("  \t\n ", "the question is empty"),
    ("why? " * 1000, "the question is 4999 characters long; at most 2000 are accepted: shorten it"),
    ("where are the \udcff\udcfe keys?", "the question is not valid UTF-8 text (bytes ff fe at character 14)"),
])
def test_bad_questions_on_the_command_line(question, message, db, bundle):
    before = digest(db)
    assert_refused(cli("ask", question, "--db", db, "--bundle", bundle), db, before, message)


def test_question_bytes_that_are_not_utf8_in_a_real_process(db, bundle):
    """argv bytes as a shell passes them: Python keeps undecodable bytes as surrogates; the CLI says what is wrong."""
    before = digest(db)
    r = subprocess.run([sys.executable, "-m", "rlivs.edge_app.cli", "ask", b"keys \xff\xfe?", "--db", str(db),
                        "--bundle", str(bundle)], capture_output=True, timeout=120,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    err = " ".join(r.stderr.decode("utf-8", "replace").split())
    assert r.returncode == 2, err
    assert "the question is not valid UTF-8 text (bytes ff fe at character 5): pass the question as UTF-8" in err
    assert "Traceback" not in err
    assert digest(db) == before


def test_bad_questions_over_the_api_are_4xx_and_the_service_keeps_answering(bundle, db, stored):
    import httpx

    from rlivs.edge_app.options import pipeline_config
    from rlivs.edge_app.service.app import Server
    from rlivs.edge_app.service.core import EdgeService
    from rlivs.runtime.engine import load_engine
    from rlivs.runtime.config import EngineConfig

    engine = load_engine(EngineConfig(model=str(bundle), threads=1), pipeline_config(frames_per_clip=FPC, max_caption_tokens=6,
                                                        max_answer_tokens=6))
    service = EdgeService(engine, db)
    server = Server(service, port=0).start()

    def post(body):
        if isinstance(body, bytes):  # sent as is
            return httpx.post(server.url + "/v1/ask", content=body, headers={"Content-Type": "application/json"},
                              timeout=30)
        return httpx.post(server.url + "/v1/ask", json=body, timeout=30)

    try:
        cases = [
            ({"question": ""}, 422, "question: String should have at least 1 character"),
            ({"question": " \n "}, 422, "question: String should have at least 1 character"),
            ({"question": "x" * 2001}, 422, "question: String should have at most 2000 characters"),
            ({"question": "x" * 70_000}, 413, "request body too large"),
            (b'{"question": "keys \xff\xfe?"}', 400, "the body could not be parsed: send JSON encoded as UTF-8"),
            (b'{"question": "keys \\ud800?"}', 422, "question: not valid Unicode text (a lone surrogate"),
            (b'{"question": ', 422, "the body is not valid JSON"),
            ({"question": ["a list"]}, 422, "question: Input should be a valid string"),
        ]
        for body, status, message in cases:
            r = post(body)
            assert r.status_code == status, (body[:40], r.status_code, r.text)
            assert message in r.json()["detail"], r.json()["detail"]
        ok = post({"question": "what moved?"})
        assert ok.status_code == 200 and {c["clip"] for c in ok.json()["captions"]} <= {0, 1}
    finally:
        server.stop()
        service.stop()
    assert rows(db) == stored["rows"]
