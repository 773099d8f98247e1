"""The commands with a Qwen2.5-VL model directory (the tiny random-weight one, built locally) on the torch backend:
ingest, ask (the answer is transformers' own greedy generate() on the family's chat template), serve over HTTP on
loopback (its captions and answer equal ingest's and ask's), eval (its captions equal ingest's), the backbone in
`rlivs doctor` and `rlivs memory info`, a memory refusing a model of another family (both ways, before the model
loads), odd --frames-per-clip refused before any model loads, `rlivs export` writing a bundle that ingest runs, and
model families rlivs does not run refused with the fix. Calibration with Qwen: tests/parity/test_qwen_calibration.py."""

import json
import os
import shutil
import signal
import subprocess
import sys

import httpx
import pytest

from tests.app.test_cli_first_hour import memory_db, no_model_load  # noqa: F401 (fixtures)
from tests.helpers.cli import run_cli as _run
from tests.helpers.serve_helpers import free_port, healthy, wait_for

pytest.importorskip("torch")

INGEST = ["--frames-per-clip", "4", "--max-caption-tokens", "6", "--fifo-clips", "2"]
QUESTION = "what moved?"


def _said(r) -> str:
    return " ".join(r.output.split())


def _json_lines(text: str) -> list[dict]:
    return [json.loads(x) for x in text.strip().splitlines() if x.startswith("{")]


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    from rlivs.runtime.backends.torch.tiny import ensure_random_model

    saved = tmp_path_factory.mktemp("models") / "my-qwen"  # an ordinary directory, as a user would pass it
    shutil.copytree(ensure_random_model("tiny-qwen"), saved)
    return saved


@pytest.fixture(scope="module")
def qwen_db(tmp_path_factory, sample_video, qwen_dir):
    """The sample video's first 3 clips ingested with the Qwen model -> (memory, the clips' JSON lines); their
    selection scores in DB.scores.jsonl."""
    db = tmp_path_factory.mktemp("qwen-memory") / "m.db"
    r = _run("ingest", sample_video, "--db", db, "--model", qwen_dir, *INGEST, "--max-clips", "3", "--json",
             "--debug-scores", db.with_suffix(".scores.jsonl"))
    assert r.exit_code == 0, r.output
    return db, _json_lines(r.output)


def test_ingest_and_ask_with_a_qwen_directory(qwen_db):
    import numpy as np

    db, clips = qwen_db
    assert [c["clip"] for c in clips] == [0, 1, 2] and all(c["caption"] for c in clips)
    for x in _json_lines(db.with_suffix(".scores.jsonl").read_text()):  # 4 frames: 2 temporal patches of 4x4
        assert (x["tokens_per_frame"], x["temporal_patch"], x["grid"], len(x["scores"])) == (16, 2, [4, 4], 32)
        top = np.sort(np.argsort(-np.array(x["scores"]), kind="stable")[:2])  # keep 6.25 % of 32 merged tokens
        assert x["kept"] == top.tolist()
    r = _run("ask", QUESTION, "--db", db, "--json")  # the model is taken from the memory
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["answer"]


def test_ask_is_the_qwen_llm_on_its_own_chat_template(qwen_db, qwen_dir):
    """`rlivs ask` = transformers' Qwen2_5_VLForConditionalGeneration.generate() (greedy, fp32) on the prompt that
    the model's own chat template renders (HF's apply_chat_template) from the captions the answer used."""
    import torch
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    from rlivs.runtime.answer import ANSWER_SYSTEM, span_label

    db, _ = qwen_db
    r = _run("ask", QUESTION, "--db", db, "--json", "--max-answer-tokens", "10")
    assert r.exit_code == 0, r.output
    a = json.loads(r.output)
    assert a["captions"] and a["intent"] is None and a["window"] is None
    lines = [f"[{span_label(c['t_start'], c['t_end'], c['wall_start'], c['wall_end'])}] {c['caption']}"
             for c in a["captions"]]
    user = "Descriptions of the video so far:\n" + "\n".join(lines) + f"\n\nQuestion: {QUESTION}"
    tok = AutoTokenizer.from_pretrained(qwen_dir)
    ids = tok.apply_chat_template([{"role": "system", "content": [{"type": "text", "text": ANSWER_SYSTEM}]},
                                   {"role": "user", "content": [{"type": "text", "text": user}]}],
                                  add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system\n" + ANSWER_SYSTEM) and text.endswith("<|im_start|>assistant\n")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(qwen_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False)
    want = tok.decode(out[0, len(ids):], skip_special_tokens=True).strip()
    assert a["answer"] == want


def test_odd_frames_per_clip_is_refused_before_any_model_loads(sample_video, tmp_path, qwen_dir, no_model_load):
    fix = "frames per clip must be even, got 5; use --frames-per-clip 6"
    for args in (["ingest", sample_video, "--db", tmp_path / "m.db"],
                 ["serve", "--source", f"cam={sample_video}", "--no-replay", "--db", tmp_path / "m.db",
                  "--port", free_port()],
                 ["eval", "--annotations", tmp_path / "none.json", "--out", tmp_path / "e"],
                 ["calibrate", "collect", "--video", sample_video, "--out", tmp_path / "c"]):
        r = _run(*args, "--model", qwen_dir, "--frames-per-clip", "5")
        assert r.exit_code == 2, (args[0], r.output)
        assert fix in _said(r), (args[0], r.output)
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "c").exists() and not (tmp_path / "e").exists()


def test_a_memory_refuses_a_model_of_another_family_before_it_loads(qwen_db, qwen_dir, memory_db, sample_video,
                                                                    no_model_load):
    db, _ = qwen_db
    for r in (_run("ingest", sample_video, "--db", db, "--model", "tiny", *INGEST),  # a Qwen memory, LLaVA-OV model
              _run("ask", QUESTION, "--db", db, "--model", "tiny"),
              _run("ask", QUESTION, "--db", memory_db, "--model", qwen_dir),  # a LLaVA-OV memory, the Qwen model
              _run("serve", "--db", memory_db, "--model", qwen_dir, "--port", free_port())):
        assert r.exit_code == 2, r.output
        said = _said(r)
        assert "model; this model is" in said and "two model families cannot share a memory" in said
        assert "use a new --db or the same model" in said
    assert "was written by a Qwen2.5-VL model; this model is LLaVA-OneVision" in _said(
        _run("ask", QUESTION, "--db", db, "--model", "tiny"))


def test_the_memory_checks_the_family_when_the_model_loads(tmp_path):
    """The memory's own check (whatever a command checked first): a fingerprint naming another family is refused and
    says which; a memory written before the family was recorded opens with the same widths and tokenizer."""
    from rlivs.runtime.memory import Memory

    llava = {"hidden_size": 64, "vocab_size": 520, "tokenizer": "abc"}
    with Memory(tmp_path / "old.db", model_fingerprint=llava):
        pass
    with Memory(tmp_path / "old.db", model_fingerprint={**llava, "backbone": "llava_onevision"}) as m:
        assert m.model_fingerprint() == llava  # not rewritten
    with Memory(tmp_path / "new.db", model_fingerprint={**llava, "backbone": "llava_onevision"}):
        pass
    with pytest.raises(ValueError, match="written by a LLaVA-OneVision model; this model is Qwen2.5-VL"):
        Memory(tmp_path / "new.db", model_fingerprint={**llava, "backbone": "qwen2_5_vl"})


def test_doctor_and_memory_info_name_the_backbone(qwen_dir, qwen_db, memory_db):
    r = _run("doctor", "--model", qwen_dir, "--json")
    b = json.loads(r.output)["backend"]
    assert r.exit_code == 0 and b["backbone"] == "Qwen2.5-VL" and b["name"] == "torch"
    db, _ = qwen_db
    r = _run("memory", "info", "--db", db, "--json")
    info = json.loads(r.output)
    assert r.exit_code == 0 and info["backbone"] == "Qwen2.5-VL" and info["model"]["backbone"] == "qwen2_5_vl"
    assert "backbone Qwen2.5-VL" in _said(_run("memory", "info", "--db", db))
    assert "backbone LLaVA-OneVision" in _said(_run("memory", "info", "--db", memory_db))


def _serve(video, db, port, qwen_dir):
    cmd = [sys.executable, "-m", "rlivs.edge_app.cli", "serve", "--source", f"cam={video}", "--no-replay",
           "--db", str(db), "--port", str(port), "--model", str(qwen_dir), *INGEST, "--max-answer-tokens", "8"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))


def test_serve_captions_and_answers_with_qwen_over_http(sample_video, tmp_path, qwen_dir, qwen_db):
    """`rlivs serve` with the Qwen model, a file source: its captions are ingest's (clip for clip), /v1/kept counts
    Qwen's temporal patches, and /v1/ask answers as `rlivs ask` does on the same memory."""
    db, port = tmp_path / "serve.db", free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(sample_video, db, port, qwen_dir)
    try:
        wait_for(lambda: proc.poll() is not None or healthy(url), 120, "rlivs serve to listen")
        assert proc.poll() is None, proc.stdout.read()
        caps = lambda: httpx.get(url + "/v1/captions", params={"stream": "cam"}).json()["captions"]  # noqa: E731
        got = wait_for(lambda: (c := caps()) and len(c) >= 5 and c, 120, "the video's 5 captions")  # 20 s / 4 s
        kept = httpx.get(url + "/v1/kept/cam/0").json()
        asked = httpx.post(url + "/v1/ask", json={"question": QUESTION}, timeout=60)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    _, ingested = qwen_db
    by_clip = {c["clip"]: c["caption"] for c in got}
    assert [by_clip[c["clip"]] for c in ingested] == [c["caption"] for c in ingested]
    # 4 frames = 2 temporal patches of 4x4 merged tokens; keep 6.25 % of 32 = 2
    assert (kept["temporal_patch"], kept["groups"], kept["tokens_per_frame"], kept["grid"]) == (2, 2, 16, [4, 4])
    assert len(kept["kept"]) == 2 and all(0 <= i < 32 for i in kept["kept"])
    assert asked.status_code == 200, asked.text
    r = _run("ask", QUESTION, "--db", db, "--json", "--max-answer-tokens", "8")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["answer"] == asked.json()["answer"]


def test_eval_runs_the_paper_protocol_with_qwen(tmp_path_factory, qwen_dir):
    """`rlivs eval` on a generated streaming list with the Qwen model: every question answered causally, and the
    clips it captioned are the ones `rlivs ingest` captions from the same video with the same settings."""
    from rlivs.runtime.memory import Memory
    from tests.helpers.eval_sample import make_benchmark

    bench = make_benchmark(tmp_path_factory.mktemp("bench"))
    out = bench / "out-qwen"
    flags = ["--model", qwen_dir, "--frames-per-clip", "4", "--max-caption-tokens", "6", "--fifo-clips", "2"]
    r = _run("eval", "--annotations", bench / "rvs_ego.json", "--videos", bench / "videos", "--out", out,
             "--max-videos", "1", "--max-answer-tokens", "6", "--fifo-positions", "sequential", *flags)
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert summary["complete"] and [x["qid"] for x in rows] == [f"ego_a#{i}" for i in range(4)]
    assert summary["pipeline"]["fifo"]["positions"] == "sequential" and summary["all"]["causal_violations"] == 0
    assert all(x["answer"] for x in rows)
    with Memory(out / "memory.db", readonly=True) as mem:
        evaluated = [c.caption for c in mem.clips()]
    db = tmp_path_factory.mktemp("ingest") / "m.db"
    r = _run("ingest", bench / "videos" / "ego_a.mp4", "--db", db, *flags, "--fifo-positions", "sequential", "--json")
    assert r.exit_code == 0, r.output
    assert evaluated == [c["caption"] for c in _json_lines(r.output)] and len(evaluated) == 3  # 12 s / 4 s


def test_export_writes_a_qwen_bundle_that_ingest_runs(sample_video, tmp_path, qwen_dir):
    """`rlivs export --model <qwen dir>`: the bundle names its backbone; ingest runs it on ONNX Runtime (its parity
    with the torch reference: tests/parity/test_qwen_onnx.py)."""
    r = _run("export", "--model", qwen_dir, "--out", tmp_path / "b")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "backbone: Qwen2.5-VL (qwen2_5_vl)" in text and "ONNX Runtime vs torch" in text
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["backbone"] == "qwen2_5_vl" and manifest["temporal_patch"] == 2
    r = _run("ingest", sample_video, "--db", tmp_path / "m.db", "--bundle", tmp_path / "b", *INGEST, "--max-clips",
             "2", "--json")
    assert r.exit_code == 0, r.output
    clips = [json.loads(x) for x in r.output.strip().splitlines() if x.startswith("{")]
    assert [c["clip"] for c in clips] == [0, 1] and all(c["caption"] for c in clips)


def test_a_model_family_rlivs_does_not_run_is_refused(sample_video, tmp_path, qwen_dir):
    other = tmp_path / "other"
    shutil.copytree(qwen_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "model_type": "idefics3", "architectures": ["X"]}))
    r = _run("ingest", sample_video, "--db", tmp_path / "m.db", "--model", other, *INGEST)
    assert r.exit_code == 2
    assert "model_type 'idefics3'" in r.output and "Qwen2.5-VL (qwen2_5_vl)" in _said(r)
