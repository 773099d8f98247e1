"""The first hour of a new user with the `rlivs` command: every bad flag, file, path, stream and port is refused with
exit 2 before any model loads (load_engine is replaced by a function that fails the test); `--version`; the exit-code
table in `--help` and the README; a complete ingest says so without loading the model; answers stream; the library
logs are hidden unless -v."""

import json
import logging
import re
import socket
from importlib.metadata import version
from pathlib import Path

import pytest

from rlivs.edge_app.options import EXIT_CODES
from rlivs.runtime.memory import ClipRecord, Memory
from tests.helpers.cli import run_cli
from tests.helpers.serve_helpers import free_port, tiny_engine

INGEST = ["--frames-per-clip", "4", "--max-caption-tokens", "8"]
README = Path(__file__).resolve().parents[2] / "README.md"


def _said(r) -> str:
    return " ".join(r.output.split())


@pytest.fixture
def no_model_load(monkeypatch):
    """Any model load fails the test: what is checked here must be refused before it."""
    import rlivs.runtime.engine

    def refuse(*a, **kw):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(rlivs.runtime.engine, "load_engine", refuse)


@pytest.fixture
def memory_db(tmp_path, tiny_dir):
    """A real memory with stream 'cam' (2 clips, captioned by hand with the tiny model's vectors)."""
    engine = tiny_engine()
    db = tmp_path / "memory.db"
    with Memory(db, model_fingerprint=engine.model_fingerprint) as mem:
        mem.open_stream("cam", "cam.mp4", "tiny", engine.config.ingest_fingerprint())
        for i, text in enumerate(["a red box moves left", "a blue ball rolls"]):
            ids = engine.text.encode(text)
            mem.commit_clip(ClipRecord("cam", i, 2.0 * i, 2.0 * i + 2, text, len(ids), engine.vector(ids)), None)
    return db


@pytest.mark.parametrize("case, message", [
    ("strategy", "unknown selection strategy 'best': choose one of attention, uniform"),
    ("not-a-video", "is not a readable video"),
    ("directory", "is a directory: pass a video file"),
    ("bundle-typo", "--bundle {tmp}/bundles/tinyy does not exist; {tmp}/bundles holds: tiny"),
    ("bundle-file", "is a file; pass the bundle directory"),
    ("model-missing", "--model ./no-models/llava does not exist"),
    ("backend", "unknown backend 'fast'"),
    ("threads", "threads must be >= 1, got 0"),
    ("kv-cache", "unknown KV cache 'paged'"),
])
def test_ingest_refuses_bad_input_before_any_model_loads(case, message, sample_video, tmp_path, no_model_load):
    (tmp_path / "bundles" / "tiny").mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("not a video")
    args = {"strategy": [sample_video, "--strategy", "best"], "not-a-video": [tmp_path / "notes.txt"],
            "directory": [tmp_path / "bundles"], "bundle-typo": [sample_video, "--bundle", tmp_path / "bundles/tinyy"],
            "bundle-file": [sample_video, "--bundle", tmp_path / "notes.txt"],
            "model-missing": [sample_video, "--model", "./no-models/llava"],
            "backend": [sample_video, "--backend", "fast"], "threads": [sample_video, "--threads", "0"],
            "kv-cache": [sample_video, "--kv-cache", "paged"]}[case]
    r = run_cli("ingest", *args, "--db", tmp_path / "m.db", *INGEST)
    assert r.exit_code == 2, r.output
    assert message.format(tmp=tmp_path) in _said(r)
    assert not (tmp_path / "m.db").exists()  # refused before the memory was created, too
    if case == "model-missing":  # what --model takes, with the random-weight names
        assert "'tiny', 'random-0.5b'" in _said(r)
    if case == "bundle-typo":  # not mistaken for a hub id
        assert "Hugging Face" not in r.output and "download" not in r.output


def test_ask_and_captions_refuse_an_unknown_stream_naming_the_streams(memory_db, no_model_load):
    for args in (["ask", "what moved?"], ["captions"]):
        r = run_cli(*args, "--db", memory_db, "--stream", "nope")
        assert r.exit_code == 2, r.output
        assert "has no stream 'nope'; its streams: cam (2 clips)" in _said(r)
    r = run_cli("ask", "what moved?", "--db", memory_db, "--model", "./no-models/llava")
    assert r.exit_code == 2 and "does not exist" in _said(r)


def test_serve_refuses_a_busy_port_before_loading_and_leaves_no_files(tmp_path, no_model_load, monkeypatch):
    monkeypatch.delenv("RLIVS_TOKEN", raising=False)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = run_cli("serve", "--db", tmp_path / "memory.db", "--port", port)
    assert r.exit_code == 2, r.output
    assert f"port {port} on 127.0.0.1 is already in use" in _said(r) and f"--port {port + 1}" in _said(r)
    assert list(tmp_path.iterdir()) == []  # no memory.db, no memory.edge.db


def test_version_and_one_exit_code_table_in_help_and_readme():
    r = run_cli("--version")
    assert r.exit_code == 0 and r.output.strip() == f"rlivs {version('rlivs')}"
    r = run_cli("--help")
    said, readme = _said(r), " ".join(README.read_text().split())
    for code, what in EXIT_CODES:
        assert f"{code} {' '.join(what.split())}" in said  # the table rlivs --help shows ...
        assert f"| {code} | {' '.join(what.split())} |" in readme  # ... is the README's


def test_a_complete_ingest_says_so_without_loading_the_model(sample_video, tmp_path, tiny_dir, monkeypatch):
    db = tmp_path / "m.db"
    r = run_cli("ingest", sample_video, "--db", db, *INGEST)  # 20 s at 1 fps in 4-frame clips: clips 0..4
    assert r.exit_code == 0, r.output
    assert "5 clips (20 s of video)" in _said(r)
    import rlivs.runtime.engine

    monkeypatch.setattr(rlivs.runtime.engine, "load_engine", lambda *a, **k: pytest.fail("a model was loaded"))
    r = run_cli("ingest", sample_video, "--db", db, *INGEST)
    assert r.exit_code == 0, r.output
    assert f"already ingested up to clip 4: stream 'default' in {db} holds all 5 clips" in _said(r)
    assert "0 clips" not in r.output


def test_answers_stream_piece_by_piece_and_the_pieces_are_the_answer(memory_db):
    """`answer(..., on_token=)` hands the text over as it is generated: each piece arrives after one more decoder
    step than the one before, and joined they are the final answer, which the CLI prints as it comes."""
    from rlivs.runtime.answer import answer
    from rlivs.runtime.validate import terminal_safe

    engine = tiny_engine()
    steps, pieces = [0], []
    real_step = engine.backend.step

    def counting_step(*a, **kw):
        steps[0] += 1
        return real_step(*a, **kw)

    engine.backend.step = counting_step
    try:
        with Memory(memory_db, readonly=True) as mem:
            a = answer(engine, mem, "what moved?", on_token=lambda p: pieces.append((steps[0], p)))
    finally:
        del engine.backend.step
    assert len(pieces) >= 2 and "".join(p for _, p in pieces) == a.text
    at = [s for s, _ in pieces]
    assert at == sorted(at) and at[0] < at[-1]  # progressively, not all at the end
    # the command line: the streamed answer is the one --json reports
    shown = run_cli("ask", "what moved?", "--db", memory_db, "--max-answer-tokens", "8")
    r = run_cli("ask", "what moved?", "--db", memory_db, "--max-answer-tokens", "8", "--json")
    as_json = json.loads(r.output)
    assert shown.exit_code == 0, shown.output
    assert f"A: {terminal_safe(as_json['answer'])}" in shown.output  # printed without the model's control bytes


def test_library_logs_are_hidden_unless_verbose(memory_db):
    run_cli("captions", "--db", memory_db)
    assert logging.getLogger("onnxscript").getEffectiveLevel() == logging.ERROR
    assert logging.getLogger("rlivs.export").getEffectiveLevel() == logging.INFO  # one line per stage stays
    run_cli("-v", "captions", "--db", memory_db)
    assert logging.getLogger("onnxscript").getEffectiveLevel() == logging.DEBUG
    run_cli("captions", "--db", memory_db)  # quiet again for the tests after this one


def test_the_parity_line_reads_as_differences_next_to_the_logit_size():
    from rlivs.export.bundle import parity_summary

    line = parity_summary({"vision": 5.7e-06, "logits": 1.3e-05, "probe_attn": 1.8e-07, "logit_scale": 5.4})
    assert line == ("vision tokens max |diff| 5.7e-06; logits max |diff| 1.3e-05 (the logits reach 5.40: relative "
                    "2.4e-06); probe attention max |diff| 1.8e-07")


def test_default_threads_are_the_usable_physical_cores():
    import os

    from rlivs.runtime.backends import default_threads

    n = default_threads()
    logical = len(os.sched_getaffinity(0))
    siblings = {Path(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list").read_text().strip()
                for c in os.sched_getaffinity(0)}  # one entry per physical core
    assert 1 <= n <= logical and n <= len(siblings)


def test_the_stream_decoder_joins_to_decode_across_split_characters(tiny_dir):
    """Token by token, multi-byte characters split across byte-level tokens come out whole, once."""
    from rlivs.runtime.text import TextCodec

    codec = TextCodec(tiny_dir)
    text = "  Zwei Männer öffnen 日本の 箱 — then leave.  "
    ids = codec.encode(text)
    step = codec.stream_decoder()
    pieces = [step(i) for i in ids]
    assert "".join(pieces) == codec.decode(ids) == text.strip()
    assert "" in pieces and len([p for p in pieces if p]) > 5  # some ids complete no character; most do


def test_help_shows_flags_without_a_bool_value_and_positionals_by_name():
    """What `rlivs` (the console script, main()) shows: `--json` alone, not `--json <bool>`; QUESTION, not {question}."""
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "rlivs.edge_app.cli", "ask", "--help"], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "200"}, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "<bool>" not in r.stdout and "QUESTION" in r.stdout and "{question}" not in r.stdout
    assert re.search(r"--json\s+Print the answer as JSON", r.stdout)
