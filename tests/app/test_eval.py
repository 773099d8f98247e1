"""`rlivs eval`: both annotation formats end to end on generated videos with the tiny model, the causal rule, the
pinned judges (a fake OpenAI-compatible server on loopback, and a local model), metrics, resume, ablation flags,
and clear errors for malformed annotations."""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from rlivs.edge_app.eval.annotations import AnnotationConfig, read_annotations
from rlivs.edge_app.eval.judges import (
    JUDGE_PROMPT_SHA256, JUDGE_PROMPT_VERSION, JUDGE_SYSTEM, JUDGE_USER, OpenAIJudge, judge_messages, parse_verdict,
)
from rlivs.edge_app.eval.runner import NO_CONTEXT_ANSWER, CausalView
from rlivs.edge_app.eval.scoring import exact_match, normalize_answer, token_f1
from rlivs.runtime.sources import open_source
from tests.helpers.cli import run_cli
from tests.helpers.eval_sample import SOURCE_AXIS_LIST, STREAMING, VS_QUESTIONS, make_benchmark
from tests.helpers.fake_judge import SERVED_MODEL, FakeJudge

TINY = ["--model", "tiny", "--frames-per-clip", "4", "--max-caption-tokens", "8", "--max-answer-tokens", "8"]
CLIP_S = 4.0  # 4 frames per clip at 1 fps


def _eval(*args):
    return run_cli("eval", *args)


def _said(r) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(r.output.split())


# ---------------------------------------------------------------------------------------------------------------------
# A generated benchmark in both formats
# ---------------------------------------------------------------------------------------------------------------------

# video -> clip ends (s) at 4 frames per clip, 1 fps: ego_a 12 s, ego_b 8 s (mp4); m1 12 frames (folder); m2 8 (.npy)
CLIP_ENDS = {"ego_a": [4, 8, 12], "ego_b": [4, 8], "m1": [4, 8, 12], "m2": [4, 8]}
# judge replies follow the fake server's rule (tests/helpers/fake_judge.py): (pred, score) per question, None = unreadable
JUDGED = {"ego_a#0": ("yes", 5), "ego_a#1": ("no", 1), "ego_a#2": ("no", 2), "ego_a#3": None,
          "ego_b#0": ("no", 1), "ego_b#1": ("yes", 5), "1": ("no", 1), "2": ("no", 1), "3": ("no", 2)}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return make_benchmark(tmp_path_factory.mktemp("bench"))


@pytest.fixture(scope="module")
def judge_server():
    server = FakeJudge()
    yield server
    server.close()


@pytest.fixture(scope="module")
def full_run(bench, judge_server, tiny_dir):
    """Both formats in one run, judged by the fake endpoint."""
    out = bench / "out-full"
    r = _eval("--annotations", bench / "rvs_ego.json", bench / "rvs_movie.json", bench / "test_qa_movie.json",
              "--videos", bench / "videos", "--out", out, *TINY,
              "--judge-url", judge_server.url, "--judge-model", "fake-judge")
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    return out, rows, json.loads((out / "summary.json").read_text())


# ---------------------------------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------------------------------


def test_both_formats_end_to_end(full_run):
    out, rows, summary = full_run
    assert sorted((r["benchmark"], r["qid"]) for r in rows) == sorted(
        [("rvs_ego", f"ego_a#{i}") for i in range(4)] + [("rvs_ego", "ego_b#0"), ("rvs_ego", "ego_b#1")]
        + [("test_qa_movie", q) for q in ("1", "2", "3")])
    assert summary["complete"] is True
    assert {r["format"] for r in rows if r["benchmark"] == "test_qa_movie"} == {"vstream"}
    for r in rows:
        assert r["answer"] and r["reference"] and r["latency_s"] >= 0
        if not r["no_context"]:
            assert r["prompt_tokens"] > 0 and r["captions"] and all(c["caption"] for c in r["captions"])
    # VStream answer types are kept and broken down
    assert {r["qid"]: r["answer_type"] for r in rows if r["benchmark"] == "test_qa_movie"} == {
        "1": "person", "2": "place", "3": "object"}
    assert set(summary["benchmarks"]["test_qa_movie"]["by_answer_type"]) == {"person", "place", "object"}
    md = (out / "results.md").read_text()
    assert "| rvs_ego | 6 | 2 |" in md and "| test_qa_movie | 3 | 0 |" in md
    assert "4 frames per clip" in md and JUDGE_PROMPT_SHA256[:16] in md
    assert "causal audit: 0 answer(s) used video from after their question's end time" in md
    assert summary["all"]["causal_violations"] == 0 and summary["time_axes"]["rvs_ego"]["axis"] == "file"


def test_causal_rule_no_clip_after_end_time(full_run):
    _, rows, _ = full_run
    for r in rows:
        e = r["stream_end_time"]
        ends = CLIP_ENDS[r["video_id"]]
        visible = [i for i, t in enumerate(ends) if t <= e]
        # every caption used ended by the question's end time ...
        assert all(c["t_end"] <= e for c in r["captions"]), r
        # ... and with top-k 8 and a loose budget all of those (and only those) were retrieved
        assert sorted(c["clip"] for c in r["captions"]) == visible, r
        assert r["visible_clips"] == len(visible)
        # the stream had gone exactly to the last clip ending by E: the straddling clip was not yet ingested
        assert r["stream_t"] == (ends[visible[-1]] if visible else None), r
        assert r["no_context"] == (not visible)
        # the audit: what the answer could see and the latest caption it used, both by E
        assert r["seen_until"] == r["stream_t"] and r["causal"] is True
        assert r["latest_caption_end"] == max((c["t_end"] for c in r["captions"]), default=None)
    by = {r["qid"]: r for r in rows}
    assert by["ego_a#0"]["answer"] == NO_CONTEXT_ANSWER and by["ego_b#1"]["answer"] == NO_CONTEXT_ANSWER
    assert by["ego_a#1"]["stream_t"] == 4.0  # E = 6: clip [4, 8) straddles it, so only clip 0 was seen
    assert by["ego_a#3"]["stream_t"] == 12.0  # E = 30 after the video's end: everything


def test_causal_view_hides_later_clips(full_run):
    out, _, _ = full_run
    from rlivs.runtime.memory import Memory

    with Memory(out / "memory.db", readonly=True) as mem:
        assert [r.t_end for r in mem.clips("rvs_ego.ego_a")] == [4.0, 8.0, 12.0]
        q = mem.clips("rvs_ego.ego_a")[2].vector  # the question most like the latest clip
        for t_max, visible in ((7.99, [0]), (8.0, [0, 1])):
            view = CausalView(mem, t_max)
            assert view.visible("rvs_ego.ego_a") == len(visible)
            assert [r.index for r in view.clips("rvs_ego.ego_a")] == visible
            for mode in ("paper", "hybrid", "lexical"):  # the filter is inside every index query
                found = view.search(q, mem.clips("rvs_ego.ego_a")[2].caption, streams=["rvs_ego.ego_a"], mode=mode)
                assert {r.index for r in found.records} <= set(visible)
            assert sorted(r.index for r in view.search(q, streams=["rvs_ego.ego_a"], mode="paper").records) == visible


def test_metrics_and_pinned_judge(full_run, judge_server):
    out, rows, summary = full_run
    for r in rows:
        want = JUDGED[r["qid"]]
        got = r["judge"]
        if want is None:
            assert got["pred"] is None and got["score"] is None and "no yes/no verdict" in got["error"]
        else:
            assert (got["pred"], got["score"], got["error"]) == (want[0], want[1], None), r
    ego = summary["benchmarks"]["rvs_ego"]
    assert (ego["judge_yes"], ego["judge_no"], ego["judge_errors"], ego["judged"]) == (2, 3, 1, 6)
    assert ego["judge_accuracy"] == pytest.approx(2 / 5)  # yes / (yes + no): the unreadable one is not counted
    assert ego["judge_score"] == pytest.approx((5 + 1 + 2 + 1 + 5) / 5)
    mov = summary["benchmarks"]["test_qa_movie"]
    assert (mov["judge_accuracy"], mov["judge_score"]) == (0.0, pytest.approx(4 / 3))
    # judge-free metrics: the no-context answer equals one reference exactly, and contains "nothing"
    by = {r["qid"]: r for r in rows}
    assert (by["ego_a#0"]["em"], by["ego_a#0"]["f1"]) == (1.0, 1.0)
    assert by["ego_b#1"]["em"] == 0.0 and by["ego_b#1"]["f1"] == pytest.approx(2 / 13)  # P 1/12, R 1
    assert ego["exact_match"] == pytest.approx(np.mean([by[q]["em"] for q in by if not q[0].isdigit()]))
    # identity: judge endpoint, served model, prompt hash; the server got exactly the pinned prompt
    assert summary["judge"] == {"kind": "openai", "url": judge_server.url + "/chat/completions",
                                "model": "fake-judge", "served_model": SERVED_MODEL, "temperature": 0,
                                "max_tokens": 64}
    pinned = "\n\x00\n".join([JUDGE_PROMPT_VERSION, JUDGE_SYSTEM, JUDGE_USER])
    assert summary["judge_prompt_sha256"] == hashlib.sha256(pinned.encode()).hexdigest()
    req = next(b for b in judge_server.requests if "red square" in b["messages"][1]["content"])
    assert req["messages"][0] == {"role": "system", "content": JUDGE_SYSTEM}
    assert req["temperature"] == 0 and req["model"] == "fake-judge"
    assert req["messages"][1]["content"] == judge_messages("what is red?", "red square", by["ego_a#1"]["answer"])[1]


# ---------------------------------------------------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------------------------------------------------


def test_resume_continues_without_redoing(bench, full_run, tiny_dir):
    _, full_rows, _ = full_run
    out = bench / "out-resume"
    args = ["--annotations", bench / "rvs_ego.json", "--videos", bench / "videos", "--out", out, *TINY]
    r = _eval(*args, "--max-questions", "3")
    assert r.exit_code == 0, r.output
    first = (out / "predictions.jsonl").read_text().splitlines()
    assert len(first) == 3 and json.loads((out / "summary.json").read_text())["complete"] is False
    assert "INCOMPLETE" in (out / "results.md").read_text()
    # a crash in the middle of writing the 4th row leaves half a line
    with open(out / "predictions.jsonl", "a") as f:
        f.write('{"benchmark": "rvs_ego", "qid": "ego_a#3", "ans')
    # without --resume the run refuses to overwrite; with other settings --resume refuses too
    r = _eval(*args)
    assert r.exit_code == 2 and "already holds 3 answered questions: pass --resume" in _said(r)
    r = _eval(*args, "--resume", "--fifo-clips", "1")
    assert r.exit_code == 2 and "(differs in: pipeline)" in _said(r)
    r = _eval(*args, "--resume")
    assert r.exit_code == 0, r.output
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert lines[:3] == first  # finished questions were not redone
    rows = [json.loads(x) for x in lines]
    assert sorted(r["qid"] for r in rows) == sorted(r["qid"] for r in full_rows if r["benchmark"] == "rvs_ego")
    # the resumed run answers exactly as the uninterrupted one (same captions, same answers)
    full = {r["qid"]: r for r in full_rows}
    for r in rows:
        assert (r["answer"], r["captions"], r["stream_t"]) == (full[r["qid"]]["answer"], full[r["qid"]]["captions"],
                                                               full[r["qid"]]["stream_t"]), r["qid"]
    assert json.loads((out / "summary.json").read_text())["complete"] is True
    # nothing left: a further resume answers nothing and changes no row
    r = _eval(*args, "--resume")
    assert r.exit_code == 0 and (out / "predictions.jsonl").read_text().splitlines() == lines


def test_rescore_rejudges_existing_answers(bench, full_run, judge_server, tiny_dir):
    out = bench / "out-resume"  # judge-free answers from the resume test (or made here when run alone)
    if not (out / "predictions.jsonl").exists():
        r = _eval("--annotations", bench / "rvs_ego.json", "--videos", bench / "videos", "--out", out, *TINY)
        assert r.exit_code == 0, r.output
    before = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert all(r["judge"] is None for r in before)
    r = _eval("--annotations", bench / "rvs_ego.json", "--videos", bench / "videos", "--out", out, *TINY,
              "--rescore", "--judge-url", judge_server.url, "--judge-model", "fake-judge")
    assert r.exit_code == 0, r.output
    after = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["answer"] for r in after] == [r["answer"] for r in before]
    assert {r["qid"]: r["judge"]["pred"] for r in after} == {q: (v[0] if v else None) for q, v in JUDGED.items()
                                                          if q.startswith("ego")}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["judge"]["kind"] == "openai" and summary["benchmarks"]["rvs_ego"]["judge_accuracy"] == 0.4


# ---------------------------------------------------------------------------------------------------------------------
# Ablation flags, local judge
# ---------------------------------------------------------------------------------------------------------------------


def test_ablation_flags_are_applied_and_recorded(bench, tiny_dir):
    out = bench / "out-ablation"
    r = _eval("--annotations", bench / "rvs_movie.json", bench / "test_qa_movie.json", "--videos", bench / "videos",
              "--out", out, *TINY, "--strategy", "uniform", "--fifo-clips", "0", "--keep", "3",
              "--probe-layers", "1,3", "--top-k", "1", "--token-budget", "100", "--mmr-lambda", "1.0",
              "--fps", "0.5", "--max-videos", "1")
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    p = s["pipeline"]
    assert (p["selection"]["strategy"], p["selection"]["keep"], p["fifo"]["capacity_clips"]) == ("uniform", 3, 0)
    assert (p["probe"]["layers"], p["retrieval"]["top_k"], p["retrieval"]["token_budget"]) == ([1, 3], 1, 100)
    assert (p["retrieval"]["mmr_lambda"], p["clip"]["fps"]) == (1.0, 0.5)
    assert s["judge"] == {"kind": "none"} and s["benchmarks"]["test_qa_movie"]["judge_accuracy"] is None
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["video_id"] for r in rows] == ["m1", "m1"]  # --max-videos 1
    # at 0.5 fps a 4-frame clip spans 8 s ([0, 8), then [8, 12) with 2 frames): E = 4 sees nothing yet, E = 12 sees
    # both clips, and top-k 1 retrieves one of them
    assert [(r["no_context"], r["visible_clips"], r["stream_t"]) for r in rows] == [(True, 0, None), (False, 2, 12.0)]
    assert len(rows[1]["captions"]) == 1 and rows[1]["captions"][0]["t_end"] in (8.0, 12.0)
    md = (out / "results.md").read_text()
    assert "strategy uniform, keep 3, FIFO 0 clips, probe layers 1,3" in md and "at 0.5 fps, top-k 1" in md
    from rlivs.runtime.memory import Memory

    with Memory(out / "memory.db", readonly=True) as mem:  # no recurrence: the FIFO stores nothing
        assert mem._conn.execute("SELECT COUNT(*) FROM fifo").fetchone()[0] == 0


def test_local_judge_noise_is_counted_as_errors(bench, tiny_dir):
    out = bench / "out-local-judge"
    r = _eval("--annotations", bench / "rvs_movie.json", bench / "test_qa_movie.json", "--videos", bench / "videos",
              "--out", out, *TINY, "--max-videos", "1", "--judge-local", "tiny", "--judge-max-tokens", "8")
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    m = s["benchmarks"]["test_qa_movie"]
    assert m["judged"] == len(rows) == 2 and all(r["judge"]["raw"] for r in rows)  # judged, not crashed
    assert m["judge_errors"] == sum(1 for r in rows if r["judge"]["error"]) >= 1  # random weights: unreadable
    assert s["judge"]["kind"] == "local" and s["judge"]["model"] == "tiny" and s["judge"]["fingerprint"]
    assert "judge errors" in (out / "results.md").read_text()


# ---------------------------------------------------------------------------------------------------------------------
# Reading annotations and videos
# ---------------------------------------------------------------------------------------------------------------------


def _write(path, obj):
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def test_time_conventions(bench, tmp_path):
    cfg = AnnotationConfig(videos_dir=bench / "videos", shot_seconds=2.0)
    (b,) = read_annotations([bench / "rvs_movie.json", bench / "test_qa_movie.json"], cfg)
    assert {q.qid: q.stream_end_time for v in b.videos for q in v.questions} == {"1": 8.0, "2": 24.0, "3": 7.0}
    assert [v.path.name for v in b.videos] == ["m1", "m2.npy"]
    # times on the source video's axis: shifted by the clip's start (shots for m1, seconds for m2)
    qs = _write(tmp_path / "q.json", [dict(VS_QUESTIONS[0], end_time=14), dict(VS_QUESTIONS[2], end_time=107)])
    (b,) = read_annotations([bench / "rvs_movie.json", qs], AnnotationConfig(
        videos_dir=bench / "videos", vstream_times="original"))
    assert [q.stream_end_time for v in b.videos for q in v.questions] == [4.0, 7.0]
    # clip-relative times beyond the clip's length point at the other convention
    with pytest.raises(ValueError, match="--vstream-times original"):
        read_annotations([bench / "rvs_movie.json", qs], AnnotationConfig(videos_dir=bench / "videos",
                                                                          vstream_times="clip"))
    # streaming list: a clip window on an uncut file applies (times from the window's start) unless ignored
    rec = [dict(STREAMING[0], clip_start_time=4, clip_end_time=12)]
    f = _write(tmp_path / "win.json", rec)
    (b,) = read_annotations([f], AnnotationConfig(videos_dir=bench / "videos"))
    v = b.videos[0]
    assert (v.window_applied, v.start, v.end, v.questions[1].stream_end_time) == (True, 4.0, 12.0, 10.0)
    (b,) = read_annotations([f], AnnotationConfig(videos_dir=bench / "videos", clip_window="ignore"))
    assert (b.videos[0].window_applied, b.videos[0].questions[1].stream_end_time) == (False, 6.0)
    # a window the (already cut) file cannot hold is source-video metadata: auto ignores it
    f2 = _write(tmp_path / "cut.json", [dict(STREAMING[0], clip_start_time=2430, clip_end_time=2442)])
    (b,) = read_annotations([f2], AnnotationConfig(videos_dir=bench / "videos"))
    assert b.videos[0].window_applied is False


def test_time_axis_is_decided_from_the_data(bench, caplog):
    """The real RVS-Movie layout: every question inside [clip_start_time, clip_end_time] => the source video's axis.
    On an uncut file that is the file's own axis (ReKV's protocol: stream from the file's start up to end_time); on a
    file already cut to its window the window's start is subtracted. The decision and its reason are logged."""
    cfg = AnnotationConfig(videos_dir=bench / "videos")
    with caplog.at_level("INFO", logger="rlivs.eval"):
        (b,) = read_annotations([bench / "rvs_movie_list.json"], cfg)
    assert (b.time_axis, "all 5 question times lie inside their [clip_start_time, clip_end_time]") == (
        "source", b.axis_reason[:len("all 5 question times lie inside their [clip_start_time, clip_end_time]")])
    assert "rvs_movie_list.json: question times on the source axis: all 5 question times lie inside" in caplog.text
    a, m = b.videos
    assert (a.path.name, a.window_applied, a.start, a.end, a.time_axis) == ("ego_a.mp4", False, 0.0, None, "source")
    assert [q.stream_end_time for q in a.questions] == [6.0, 8.0, 12.0]  # not 10, 12, 16 (counted from the window)
    assert (m.path.name, m.duration) == ("m2.npy", 8.0)  # 8 s: the file is the cut window [100, 108]
    assert [q.stream_end_time for q in m.questions] == [3.0, 8.0]
    assert not any(q.outside for v in b.videos for q in v.questions)
    # forced readings: ignore = ReKV's (keys not read); apply = stream only the window, times still on the source axis
    (b,) = read_annotations([bench / "rvs_movie_list.json"], AnnotationConfig(videos_dir=bench / "videos",
                                                                               clip_window="ignore"))
    assert (b.time_axis, [q.stream_end_time for q in b.videos[0].questions]) == ("file", [6.0, 8.0, 12.0])
    (b,) = read_annotations([bench / "rvs_movie_list.json"], AnnotationConfig(videos_dir=bench / "videos",
                                                                               clip_window="apply"))
    a = b.videos[0]
    assert (a.window_applied, a.start, a.end, [q.stream_end_time for q in a.questions]) == (
        True, 4.0, 12.0, [6.0, 8.0, 12.0])
    # VStream-QA questions on the source axis (inside their clip's span in the source video) => original
    (b,) = read_annotations([bench / "rvs_movie.json", bench / "test_qa_movie_original.json"],
                            AnnotationConfig(videos_dir=bench / "videos", shot_seconds=2.0))
    assert (b.time_axis, [q.stream_end_time for v in b.videos for q in v.questions]) == ("original", [12.0, 7.0])
    (b,) = read_annotations([bench / "rvs_movie.json", bench / "test_qa_movie.json"], cfg)
    assert b.time_axis == "clip" and "3 of 3 questions lie outside their clip's [start, end]" in b.axis_reason


def test_check_validates_annotations_without_videos(bench, tmp_path):
    """`rlivs eval --check`: no model, no videos (the files are copied where no video exists)."""
    names = ["rvs_ego.json", "rvs_movie_list.json", "rvs_movie.json", "test_qa_movie_original.json"]
    for n in names:
        (tmp_path / n).write_text((bench / n).read_text())
    r = _eval("--check", *[tmp_path / n for n in names])
    assert r.exit_code == 0, r.output
    said = _said(r)
    rows = {line.split("│")[1].strip().split("/")[-1]: [c.strip() for c in line.split("│")[2:-1]]
            for line in r.output.splitlines() if line.count("│") == 7}
    # file -> format, videos, questions, time axis, outside their video
    assert rows["rvs_ego.json"] == ["streaming", "2", "6", "file", "1"]  # ego_a#3 ends at 30 s in a 12 s video
    assert rows["rvs_movie_list.json"] == ["streaming", "2", "5", "source", "0"]
    assert rows["rvs_movie.json"] == ["vstream-clips", "2", "0", "–", "0"]
    assert rows["test_qa_movie_original.json"] == ["vstream", "2", "2", "original", "0"]
    assert "rvs_ego.json: outside their video: ego_a#3" in said and "ok: 4 file(s), 13 questions valid" in said
    assert "rvs_movie_list.json: time axis source: all 5 question times lie inside" in said
    # a question outside every reading of its window is counted, not hidden
    bad = [dict(SOURCE_AXIS_LIST[0], conversations=SOURCE_AXIS_LIST[0]["conversations"] + [
        {"question": "later?", "answer": "x", "start_time": 11, "end_time": 40}])]
    r = _eval("--check", _write(tmp_path / "late.json", bad))
    assert r.exit_code == 0 and "late.json: outside their video: mv_a#3" in _said(r)
    # an invalid record fails with its file and record named, exit 2
    r = _eval("--check", _write(tmp_path / "broken.json", [{"video_id": "v", "video_path": "v.mp4",
                                                             "conversations": [{"question": "q", "answer": "a"}]}]))
    assert r.exit_code == 2 and "broken.json: record 0 (video_id 'v') conversation 0 is missing" in _said(r)


def test_source_axis_window_is_evaluated_causally(bench, tiny_dir):
    out = bench / "out-source-axis"
    r = _eval("--annotations", bench / "rvs_movie_list.json", "--videos", bench / "videos", "--out", out, *TINY)
    assert r.exit_code == 0, r.output
    rows = {r["qid"]: r for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    # E on the file's axis, the stream from the file's start; each answer saw clips ending by E only
    assert {q: (r["stream_end_time"], r["seen_until"], r["time_axis"]) for q, r in rows.items()} == {
        "mv_a#0": (6.0, 4.0, "source"), "mv_a#1": (8.0, 8.0, "source"), "mv_a#2": (12.0, 12.0, "source"),
        "mv_b#0": (3.0, None, "source"), "mv_b#1": (8.0, 8.0, "source")}
    assert all(r["causal"] and (r["latest_caption_end"] or 0) <= r["stream_end_time"] for r in rows.values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["all"]["causal_violations"] == 0
    assert summary["time_axes"]["rvs_movie_list"]["axis"] == "source"


def test_a_leak_is_counted_and_fails_the_run(bench, tiny_dir, monkeypatch):
    """The audit does not trust the view: resumed over a memory that already holds the whole video, with a view
    that lets every clip through, the answers that saw later clips are counted and the run fails (exit 1)."""
    from rlivs.edge_app.eval import runner

    out = bench / "out-leak"
    args = ["--annotations", bench / "rvs_ego.json", "--videos", bench / "videos", "--out", out, *TINY,
            "--max-videos", "1"]
    assert _eval(*args).exit_code == 0  # ego_a streamed to its end (its last question ends at 30 s)
    (out / "predictions.jsonl").unlink()  # every question pending again, the memory holding clips up to 12 s

    def leaky_view(self, memory, t_max):  # the view's filter gone: every clip passes every index query
        self.memory, self.t_max, self.until = memory, t_max, float("inf")

    monkeypatch.setattr(runner.CausalView, "__init__", leaky_view)
    r = _eval(*args, "--resume")
    assert r.exit_code == 1, r.output
    rows = {r["qid"]: r for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    assert {q: (r["seen_until"], r["causal"]) for q, r in rows.items()} == {
        "ego_a#0": (12.0, False), "ego_a#1": (12.0, False), "ego_a#2": (12.0, False), "ego_a#3": (12.0, True)}
    assert all(r["latest_caption_end"] <= r["seen_until"] for r in rows.values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["all"]["causal_violations"] == 3
    assert summary["causal_violation_qids"] == ["rvs_ego/ego_a#0", "rvs_ego/ego_a#1", "rvs_ego/ego_a#2"]
    assert "causality violation: 3 answer(s) used video from after their question's end time" in _said(r)
    assert "causal audit: 3 answer(s)" in (out / "results.md").read_text()


def test_frame_sources_sample_like_video_files(tmp_path, bench):
    arr = np.arange(6, dtype=np.uint8)[:, None, None, None] * np.ones((6, 2, 2, 3), np.uint8)  # frame i has value i
    np.save(tmp_path / "a.npy", arr)
    frames = list(open_source(tmp_path / "a.npy", fps=2.0))  # faster than the array's 1 fps: frames repeat
    assert [(int(f.image[0, 0, 0]), f.t) for f in frames] == [(0, 0.0), (1, 1.0), (1, 1.0), (2, 2.0), (2, 2.0),
                                                              (3, 3.0), (3, 3.0), (4, 4.0), (4, 4.0), (5, 5.0),
                                                              (5, 5.0)]
    frames = list(open_source(tmp_path / "a.npy", fps=0.5, start_time=1.0, end_time=5.0))
    assert [int(f.image[0, 0, 0]) for f in frames] == [1, 3]
    folder = list(open_source(bench / "videos" / "m1", fps=1.0))
    first = np.asarray(Image.open(bench / "videos" / "m1" / "frame_2.png").convert("RGB"))
    assert len(folder) == 12 and np.array_equal(folder[1].image, first)  # natural order: frame_2 before frame_10
    video = list(open_source(bench / "videos" / "ego_a.mp4", fps=1.0, start_time=4.0, end_time=8.0))
    assert [f.t for f in video] == [4.0, 5.0, 6.0, 7.0]


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON"),
    ({"video_id": "a"}, "expected a JSON list"),
    ([], "holds no records"),
    ([{"foo": 1}], "cannot tell the format"),
    ([{"video_id": "ego_a", "video_path": "ego_a.mp4", "conversations": [{"question": "q?", "answer": "a"}]}],
     r"record 0 \(video_id 'ego_a'\) conversation 0 is missing required key\(s\) 'end_time'"),
    ([{"video_id": "ego_a", "video_path": "ego_a.mp4", "conversations": []}, {"video_id": "x"}],
     r"record 0 \(video_id 'ego_a'\) has 'conversations' = list"),
    ([{"video_id": "ego_a", "video_path": "ego_a.mp4", "conversations": [{"question": "q", "answer": "a",
                                                                          "start_time": 5, "end_time": 2}]}],
     "end_time 2.0 < start_time 5.0"),
    ([{"video_id": "ego_a", "video_path": "ego_a.mp4", "conversations": [{"question": "q", "answer": "a",
                                                                          "end_time": "soon"}]}],
     "end_time='soon', which is not a number"),
    ([{"video_id": "nope", "video_path": "nope.mp4", "conversations": [{"question": "q", "answer": "a",
                                                                        "end_time": 1}]}],
     r"video 'nope' not found"),
    ([{"id": 7, "video_id": "m2", "question": "q", "end_time": 3}], r"record 0 \(id '7'\) is missing .*'answer'"),
    ([{"id": 7, "video_id": "m2", "question": "q", "answer": "a", "end_time": 3},
      {"id": 7, "video_id": "m2", "question": "q", "answer": "a", "end_time": 4}], "repeats id '7'"),
    ([{"id": 7, "video_id": "m2", "question": "  ", "answer": "a", "end_time": 3}], "empty or non-text 'question'"),
])
def test_malformed_annotations_fail_clearly(tmp_path, bench, content, message):
    f = _write(tmp_path / "bad.json", content)
    with pytest.raises(ValueError, match=message):
        read_annotations([f], AnnotationConfig(videos_dir=bench / "videos"))


def test_cli_reports_annotation_errors(tmp_path, bench):
    f = _write(tmp_path / "rvs.json", [{"video_id": "v", "conversations": []}])
    r = _eval("--annotations", f, "--videos", bench / "videos", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "record 0 (video_id 'v') is missing required key(s) 'video_path'" in _said(r)
    r = _eval("--annotations", bench / "rvs_movie.json", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "add the question file" in _said(r)
    bad = tmp_path / "vids"
    bad.mkdir()
    np.save(bad / "m2.npy", np.zeros((4, 8, 8), np.uint8))  # not (N, H, W, 3)
    q = _write(tmp_path / "q.json", [VS_QUESTIONS[2]])
    r = _eval("--annotations", q, "--videos", bad, "--out", tmp_path / "o2", *TINY)
    assert r.exit_code == 2 and "expected (N, H, W, 3) uint8" in _said(r)
    assert not (tmp_path / "o2").exists()  # failed while reading the annotations, before anything was written


# ---------------------------------------------------------------------------------------------------------------------
# Metrics and judge output parsing
# ---------------------------------------------------------------------------------------------------------------------


def test_judge_free_metrics():
    assert normalize_answer("The Red  square!") == "red square"
    assert exact_match("The red square.", "red square") == 1.0 and exact_match("a red box", "red square") == 0.0
    assert token_f1("red square moved", "the red square") == pytest.approx(0.8)  # P 2/3, R 1
    assert token_f1("blue", "red square") == 0.0 and token_f1("", "") == 1.0


@pytest.mark.parametrize("text, pred, score", [
    ('{"pred": "yes", "score": 4}', "yes", 4.0),
    ("Sure.\n```json\n{'pred': 'no', 'score': 1}\n```", "no", 1.0),
    ('{"correct": true, "rating": "5"}', "yes", 5.0),
    ("Verdict: no. Score: 2", "no", 2.0),
    ("yes, 3", "yes", 3.0),
    ("YES", "yes", None),  # no score
    ('{"pred": "yes", "score": 7}', "yes", None),  # out of range
    ("yes or no? 1 or 2", None, None),  # ambiguous: never guessed
    ("the prediction is fine", None, None),
])
def test_parse_verdict(text, pred, score):
    v = parse_verdict(text)
    assert (v.pred, v.score, v.raw) == (pred, score, text)
    assert (v.error is None) == (pred is not None and score is not None)


def test_endpoint_judge_client(judge_server):
    j = OpenAIJudge(judge_server.url + "/", "fake-judge")
    assert j.url == judge_server.url + "/chat/completions"
    assert (j.judge("what?", "red square", "A red square moved.").pred, j.served_model) == ("yes", SERVED_MODEL)
    v = j.judge("what?", "flaky answer", "something else")  # HTTP 500 once, then the retry succeeds
    assert (v.pred, v.score, v.error) == ("no", 1.0, None)
    j.close()
    with pytest.raises(ValueError, match="did not answer"):
        dead = OpenAIJudge("http://127.0.0.1:9/v1", "m", timeout_s=2)  # port 9 (discard): nothing listens
        dead.check()
    with pytest.raises(ValueError, match="not an http"):
        OpenAIJudge("127.0.0.1:8000", "m")


def test_eval_help_lists_every_ablation_flag():
    r = run_cli("eval", "--help", catch_exceptions=True, env={"COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"})
    assert r.exit_code == 0
    for flag in ("--strategy", "--fifo-clips", "--keep", "--keep-ratio", "--probe-layers", "--top-k",
                 "--token-budget", "--mmr-lambda", "--frames-per-clip", "--fps", "--resume", "--judge-url",
                 "--judge-local", "--rescore"):
        assert flag in r.output, flag
