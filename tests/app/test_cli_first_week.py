"""The first week of a new user (issue 25): one name per setting in every command; a --db whose folder does not exist
is refused by every command that takes it (exit 2, `mkdir -p`), before any model loads and without creating it;
`rlivs forget` without a terminal to answer needs --yes (exit 2, not "Aborted" 1); `rlivs serve` refuses a file
source that does not exist; `rlivs demo` takes the --start-time its clock message mentions and loads the model once;
answers say the time window as it was given, with its clock times, and what they used when no clip held every key
word; help texts read as sentences; log lines are whole lines with no date, out of a terminal."""

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from rlivs.runtime.memory import ClipRecord, Memory
from tests.app.test_cli_first_hour import _said, memory_db, no_model_load  # noqa: F401 (fixtures)
from tests.helpers.cli import run_cli
from tests.helpers.serve_helpers import free_port, tiny_engine


def _options(command) -> dict[str, dict[str, set]]:
    """{option string: {"dest": names, "default": reprs, "commands": paths}} over every command of `rlivs`."""
    found: dict[str, dict[str, set]] = {}

    def walk(c, path):
        for p in c.params:
            if p.param_type_name == "option":
                for opt in p.opts:
                    f = found.setdefault(opt, {"dest": set(), "default": set(), "commands": set()})
                    f["dest"].add(p.name), f["default"].add(repr(p.default)), f["commands"].add(" ".join(path))
        for name, sub in getattr(c, "commands", {}).items():
            walk(sub, path + [name])

    walk(command, [])
    return found


def test_one_name_and_one_default_per_setting_in_every_command():
    from rlivs.edge_app.cli import cli_command

    opts = _options(cli_command())
    assert "--max-new-tokens" not in opts  # the answer length bound has one name: --max-answer-tokens
    assert {"ask", "serve", "eval"} <= opts["--max-answer-tokens"]["commands"]
    assert opts["--max-answer-tokens"]["default"] == {"256"}
    assert "demo" in opts["--start-time"]["commands"]  # the clock message of `rlivs demo` names it
    # the method's knobs and the export's table dtype: one default wherever they appear
    for name in ("--fps", "--frames-per-clip", "--keep", "--keep-ratio", "--strategy", "--fifo-clips", "--fifo-tokens",
                 "--probe-layers", "--num-probe-layers", "--max-caption-tokens", "--top-k", "--token-budget",
                 "--mmr-lambda", "--retrieval", "--start-time", "--db", "--embed-dtype", "--dtype", "--device",
                 "--backend"):
        assert len(opts[name]["default"]) == 1, (name, opts[name])
    # every python name of a setting is reached by one option name only (no --foo in one command, --bar in another)
    names: dict[str, set] = {}
    for opt, f in opts.items():
        if opt.startswith("--"):
            for dest in f["dest"]:
                names.setdefault(dest, set()).add(opt)
    twice = {dest: o for dest, o in names.items() if len(o) > 1}
    assert not twice, twice


@pytest.mark.parametrize("command", ["ingest", "ask", "captions", "serve", "memory info", "memory export",
                                     "memory import", "forget", "reindex"])
def test_a_db_whose_folder_does_not_exist_is_refused_and_not_created(command, tmp_path, sample_video, no_model_load,
                                                                      monkeypatch):
    monkeypatch.delenv("RLIVS_TOKEN", raising=False)
    missing = tmp_path / "no" / "such" / "dir"
    lines = tmp_path / "clips.jsonl"
    lines.write_text("")
    args = {"ingest": [sample_video], "ask": ["what moved?"], "serve": ["--port", free_port()],
            "memory import": [lines], "forget": ["--before", "-1d", "--yes"]}.get(command, [])
    r = run_cli(*command.split(), *args, "--db", missing / "memory.db")
    assert r.exit_code == 2, r.output
    assert f"the folder {missing} does not exist; create it first (mkdir -p {missing})" in _said(r)
    assert not (tmp_path / "no").exists()  # a typo creates nothing


def test_a_db_that_is_a_directory_is_refused(tmp_path, no_model_load):
    r = run_cli("captions", "--db", tmp_path)
    assert r.exit_code == 2 and f"--db {tmp_path} is a directory: give the memory's file name" in _said(r)


def test_forget_without_a_terminal_needs_yes_and_deletes_nothing(memory_db):
    r = run_cli("forget", "--db", memory_db, "--stream", "cam")  # the runner's stdin is not a terminal
    assert r.exit_code == 2, r.output
    assert "there is no terminal to answer: pass --yes to forget stream 'cam'" in _said(r)
    assert "Aborted" not in r.output
    with Memory(memory_db, readonly=True) as mem:
        assert mem.count_clips() == 2
    r = run_cli("forget", "--db", memory_db, "--stream", "cam", "--yes")
    assert r.exit_code == 0 and "forgot 2 clips" in _said(r)


def test_forget_on_a_terminal_asks_and_a_no_deletes_nothing(memory_db, monkeypatch):
    from types import SimpleNamespace

    import rlivs.edge_app.commands.memory as memory_cmd

    monkeypatch.setattr(memory_cmd, "sys", SimpleNamespace(stdin=SimpleNamespace(isatty=lambda: True)))
    r = run_cli("forget", "--db", memory_db, "--stream", "cam", input="n\n")
    assert r.exit_code == 0 and f"forget stream 'cam' (all of it, FIFO included) in {memory_db}?" in _said(r)
    assert "nothing forgotten: you answered no" in _said(r)
    with Memory(memory_db, readonly=True) as mem:
        assert mem.count_clips() == 2
    r = run_cli("forget", "--db", memory_db, "--stream", "cam", input="y\n")
    assert r.exit_code == 0 and "forgot 2 clips" in _said(r)


def test_serve_refuses_a_file_source_that_does_not_exist(tmp_path, no_model_load, monkeypatch):
    monkeypatch.delenv("RLIVS_TOKEN", raising=False)
    missing = tmp_path / "cam.mp4"
    r = run_cli("serve", "--source", f"cam={missing}", "--db", tmp_path / "m.db", "--port", free_port())
    assert r.exit_code == 2, r.output
    assert f"{missing} does not exist: check the path of --source cam=" in _said(r)
    assert "cameras and network streams are retried" in _said(r)
    assert list(tmp_path.iterdir()) == []


def test_demo_takes_start_time_and_loads_the_model_once(tmp_path, tiny_dir, caplog):
    with caplog.at_level("INFO", logger="rlivs"):
        r = run_cli("demo", "--workdir", tmp_path / "demo", "--seconds", "16", "--start-time", "2026-12-01T15:00")
    assert r.exit_code == 0, r.output
    said = _said(r)
    assert "clock: 2026-12-01 15:00:00 local at 0 s (--start-time)" in said and "pass --start-time" not in said
    assert "Q: What moved across the scene?" in said
    backend_lines = [x.getMessage() for x in caplog.records if x.getMessage().startswith("backend: ")]
    assert len(backend_lines) == 1, backend_lines  # ingest and the question share one load
    r = run_cli("demo", "--workdir", tmp_path / "demo2", "--start-time", "yesterday-ish")
    assert r.exit_code == 2 and "--start-time" in _said(r)
    assert not (tmp_path / "demo2").exists()  # refused before anything is made


@pytest.fixture
def clocked_db(tmp_path, tiny_dir):
    """A memory whose two clips have wall-clock times: 2026-12-01 12:00-12:04 UTC."""
    engine = tiny_engine()
    db = tmp_path / "clocked.db"
    t0 = datetime(2026, 12, 1, 12, tzinfo=timezone.utc).timestamp()
    with Memory(db, model_fingerprint=engine.model_fingerprint) as mem:
        mem.open_stream("cam", "cam.mp4", "tiny", engine.config.ingest_fingerprint())
        for i, text in enumerate(["a red box moves left", "a blue ball rolls"]):
            ids = engine.text.encode(text)
            mem.commit_clip(ClipRecord("cam", i, 2.0 * i, 2.0 * i + 2, text, len(ids), engine.vector(ids), 0.0,
                                       t0 + 2 * i, t0 + 2 * i + 2), None)
    return db


def test_an_empty_time_window_is_said_as_it_was_given_with_its_clock_times(clocked_db):
    from rlivs.runtime.answer import answer
    from rlivs.runtime.errors import UserError

    engine = tiny_engine()
    now = datetime(2026, 12, 6, 17, 52, tzinfo=timezone.utc)
    with Memory(clocked_db, readonly=True) as mem:
        with pytest.raises(UserError) as e:
            answer(engine, mem, "what moved in the last 5 minutes?", now=now, tz=timezone.utc)
    assert str(e.value) == ("this memory holds no captions in the last 5 minutes, that is since today, Sun 2026-12-06 "
                            "17:47 (UTC): ask about a wider time, or without one")
    r = run_cli("ask", "what moved?", "--db", clocked_db, "--from", "-2h")
    assert r.exit_code == 2, r.output
    assert "holds no captions in the time window --from -2h: since today, " in _said(r) or \
        "holds no captions in the time window --from -2h: since yesterday, " in _said(r)  # just after midnight
    assert " in since " not in _said(r)


def test_no_clip_with_every_key_word_says_what_the_answer_used_instead(memory_db):
    r = run_cli("ask", "when did the giraffe dance?", "--db", memory_db, "--max-answer-tokens", "4")
    assert r.exit_code == 0, r.output
    said = _said(r)
    assert "matching clips: 0" in said
    assert "no clip's caption holds every key word of the question: the answer used the 2 captions closest to it " \
           "instead" in said
    r = run_cli("ask", "when did the giraffe dance?", "--db", memory_db, "--max-answer-tokens", "4", "--json")
    notes = json.loads(r.output)["notes"]
    assert any("no clip's caption holds every key word" in n for n in notes), notes


def test_help_texts_read_as_sentences():
    """Square brackets in a help text are read as markup by rich and vanish (leaving "memory ."): none is left."""
    from rlivs.edge_app.cli import cli_command

    def walk(c, path):
        yield path, c
        for name, sub in getattr(c, "commands", {}).items():
            yield from walk(sub, path + [name])

    bad = []
    for path, c in walk(cli_command(), []):
        r = run_cli(*path, "--help")
        assert r.exit_code == 0, (path, r.output)
        bad += [(path, line.strip()) for line in r.output.splitlines() if re.search(r"[^\s.] \.(\s|$)", line)]
    assert not bad, bad


def test_log_lines_are_whole_lines_without_a_date_out_of_a_terminal(tmp_path):
    code = ("import logging\n"
            "from rlivs.edge_app import cli\n"
            "from rlivs.edge_app.options import console\n"
            "cli._setup(verbose=False, debug=False, _version=False)\n"
            "logging.getLogger('rlivs.test').info(' '.join(['word'] * 40))\n"
            "console.print(' '.join(['note'] * 40))\n")
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}  # no width given: rich would assume 80
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == ["INFO  " + " ".join(["word"] * 40), " ".join(["note"] * 40)], r.stderr


def test_debug_scores_shows_each_clips_selection_scores_and_what_they_kept(sample_video, tmp_path, tiny_dir):
    import numpy as np

    out = tmp_path / "scores.jsonl"
    r = run_cli("ingest", sample_video, "--db", tmp_path / "m.db", "--frames-per-clip", "4", "--max-caption-tokens",
                "8", "--debug-scores", out)
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["clip"] for x in lines] == [0, 1, 2, 3, 4] and {x["stream"] for x in lines} == {"default"}
    for x in lines:
        scores = np.array(x["scores"])
        assert x["tokens_per_frame"] == 25 and scores.shape == (4 * 25,)  # 4 frames of 5x5 pooled tokens
        n = round(0.0625 * scores.size)
        top = np.sort(np.argsort(-scores, kind="stable")[:n])  # the attention strategy: top-n, earlier on ties
        assert x["kept"] == top.tolist(), x["clip"]
    r = run_cli("ingest", sample_video, "--db", tmp_path / "m2.db", "--debug-scores", tmp_path / "no" / "s.jsonl")
    assert r.exit_code == 2 and f"mkdir -p {tmp_path / 'no'}" in _said(r)
