"""The retrieval-quality set (bench/data) is what its generator makes, self-consistent, and its questions' answers
are real clips that say what the questions ask; the benchmark's embedders compute what they claim."""

import importlib.util
import json
import re
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from rlivs.runtime.retrieval import text_vector

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


gen = _load("make_caption_log", BENCH / "data" / "make_caption_log.py")
emb = _load("bench_embedders", BENCH / "embedders.py")


def _jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (BENCH / "data" / name).read_text().splitlines()]


@pytest.fixture(scope="module")
def log():
    return _jsonl("caption_log.jsonl")


@pytest.fixture(scope="module")
def questions():
    return _jsonl("questions.jsonl")


def test_committed_files_are_what_the_generator_makes(tmp_path):
    assert gen.main(["--check"]) == 0, "run python bench/data/make_caption_log.py and commit its output"
    assert gen.main(["--out", str(tmp_path)]) == 0
    for name in ("caption_log.jsonl", "questions.jsonl"):
        assert (tmp_path / name).read_text() == (BENCH / "data" / name).read_text()


def test_log_is_a_valid_multi_day_memory(log):
    assert len(log) >= 1500
    assert len({r["id"] for r in log}) == len(log)
    assert {r["stream"] for r in log} == set(gen.STREAMS)
    start, now = gen.START.timestamp(), gen.NOW.timestamp()
    for s in gen.STREAMS:
        rows = sorted((r for r in log if r["stream"] == s), key=lambda r: r["index"])
        assert [r["index"] for r in rows] == list(range(len(rows)))  # contiguous: Memory.import_clips continues
        for a, b in zip(rows, rows[1:]):
            assert a["wall_end"] <= b["wall_start"]  # time order, no overlap
    for r in log:
        assert r["id"] == f"{r['stream']}:{r['index']}"
        assert r["wall_start"] - r["t_start"] == start and r["t_end"] - r["t_start"] == gen.CLIP_S
        assert r["wall_end"] - r["wall_start"] == gen.CLIP_S and start <= r["wall_start"] and r["wall_end"] <= now
        assert datetime.fromisoformat(r["time"]).timestamp() == r["wall_start"]
        assert 20 <= len(r["caption"].split()) <= 60, r["caption"]
    days = {datetime.fromisoformat(r["time"]).date() for r in log}
    assert len(days) == 3


def test_questions_have_real_answers_and_windows_that_parse(log, questions):
    by_id = {r["id"]: r for r in log}
    assert len(questions) >= 200 and len({q["id"] for q in questions}) == len(questions)
    assert len({q["question"] for q in questions}) == len(questions)
    kinds = {q["kind"] for q in questions}
    assert {"paraphrase", "synonym", "name", "colour", "count", "time"} <= kinds
    timed = [q for q in questions if q["time_expression"]]
    assert len(timed) >= 50
    for q in questions:
        assert q["answers"] and all(a in by_id for a in q["answers"]), q
        now = datetime.fromisoformat(q["now"])
        assert now == gen.NOW
        if q["time_expression"] is None:
            assert q["from"] is None and q["to"] is None
            continue
        assert q["time_expression"] in q["question"]
        w0, w1 = datetime.fromisoformat(q["from"]), datetime.fromisoformat(q["to"])
        assert w0.tzinfo is not None and w0 < w1 <= now
        for a in q["answers"]:  # every answer clip starts inside the window
            assert w0.timestamp() <= by_id[a]["wall_start"] < w1.timestamp(), (q, a)


def test_answers_say_what_the_question_names(log, questions):
    """A name or colour in a question is in one of its answer captions (answer sets follow the events)."""
    by_id = {r["id"]: r["caption"] for r in log}
    words = set(gen.PEOPLE) | set(gen.COLOURS)
    checked = 0
    for q in questions:
        named = words & set(re.findall(r"\w+", q["question"]))
        caps = " ".join(by_id[a] for a in q["answers"])
        for w in named:
            assert re.search(rf"\b{w}\b", caps), (q["question"], w, caps)
            checked += 1
    assert checked > 200


def test_time_windows_resolve_against_now():
    wins = {expr: (a, b) for expr, a, b in gen._windows(gen.NOW)}
    assert wins["yesterday afternoon"] == (datetime.fromisoformat("2026-11-24T12:00:00+00:00"),
                                           datetime.fromisoformat("2026-11-24T18:00:00+00:00"))
    assert wins["on Monday"][0].strftime("%A %H:%M") == "Monday 00:00"
    assert wins["this evening"] == (datetime.fromisoformat("2026-11-25T18:00:00+00:00"), gen.NOW)
    assert wins["in the last hour"] == (datetime.fromisoformat("2026-11-25T19:30:00+00:00"), gen.NOW)


def test_scale_captions_cover_streams_in_clip_order():
    rows = list(gen.scale_captions(400, streams=4))
    assert [r["stream"] for r in rows[:4]] == list(gen.STREAMS)
    assert {r["index"] for r in rows if r["stream"] == "hallway"} == set(range(100))
    assert all(20 <= len(r["caption"].split()) <= 60 for r in rows)
    assert rows == list(gen.scale_captions(400, streams=4))  # seeded: the same memory every run


def test_random_embedder_is_the_mean_of_unit_token_vectors():
    e = emb.random_embedder(64, seed=3)
    texts = ["The red door opens.", "Marco puts the keys on the table.", ""]
    got = e.batch(texts)  # (3, 64)
    table = {t: e(t) for t in {t for x in texts for t in emb.tokens(x)}}  # a one-token text is its unit vector
    for text, v in zip(texts, got):
        toks = emb.tokens(text)
        ref = text_vector(np.stack([table[t] for t in toks])) if toks else np.zeros(64, np.float32)
        np.testing.assert_allclose(v, ref, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(table["door"]), 1.0, atol=1e-6)
    np.testing.assert_array_equal(emb.random_embedder(64, seed=3)("door"), e("door"))  # same in every process
    assert abs(float(emb.random_embedder(64, seed=4)("door") @ e("door"))) < 0.5


def test_wordllama_loads_offline_and_ranks_a_paraphrase_first():
    pytest.importorskip("wordllama")
    e = emb.wordllama_embedder()
    caps = ["A courier leaves two parcels on the doorstep.", "Someone closes the front door.",
            "The robot arm stacks three cubes on the tray."]
    m, q = e.batch(caps), e("when did the door close?")
    assert m.shape == (3, 256) and m.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(m, axis=1), 1.0, atol=1e-5)
    assert int(np.argmax(m @ q)) == 1
