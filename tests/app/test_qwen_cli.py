"""The commands with a Qwen-VL model directory (the tiny random-weight Qwen2.5-VL and Qwen3-VL ones, built locally) on
the torch backend: ingest, ask (the answer is transformers' own greedy generate() on the family's chat template),
serve over HTTP on loopback (its captions and answer equal ingest's and ask's), eval (its captions equal ingest's),
the backbone in `rlivs doctor` and `rlivs memory info`, a memory refusing a model of another family (both ways, before
the model loads), odd --frames-per-clip refused before any model loads, `rlivs export` writing a bundle that ingest
and ask run, `calibrate quantize` of that bundle (int8, its decoder fed the set's 3-D positions and, Qwen3-VL, the
DeepStack features) and `calibrate report` comparing it, and model families rlivs does not run refused with the fix.
Each test runs with both families where it is cheap; the Qwen3-VL variants that start a server or export a bundle
are marked slow. Probe-layer calibration with Qwen: tests/parity/test_qwen_calibration.py."""

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
# size -> (label, backbone name, transformers class)
FAMILIES = {"tiny-qwen": ("Qwen2.5-VL", "qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration"),
            "tiny-qwen3": ("Qwen3-VL", "qwen3_vl", "Qwen3VLForConditionalGeneration")}
BOTH = list(FAMILIES)
QWEN3_SLOW = ["tiny-qwen", pytest.param("tiny-qwen3", marks=pytest.mark.slow)]  # a server start or a bundle export


def _said(r) -> str:
    return " ".join(r.output.split())


def _json_lines(text: str) -> list[dict]:
    return [json.loads(x) for x in text.strip().splitlines() if x.startswith("{")]


class Qwens:
    """Each family's model as a user passes it (an ordinary directory), the sample video's first 3 clips ingested
    with it (memory, the clips' JSON lines; selection scores in DB.scores.jsonl) and its `rlivs export` bundle,
    each made once per module, when a test first asks."""

    def __init__(self, factory, video):
        self.factory, self.video, self._dirs, self._dbs, self._bundles = factory, video, {}, {}, {}

    def dir(self, size: str):
        if size not in self._dirs:
            from rlivs.runtime.backends.torch.tiny import ensure_random_model

            self._dirs[size] = self.factory.mktemp("models") / f"my-{size}"
            shutil.copytree(ensure_random_model(size), self._dirs[size])
        return self._dirs[size]

    def db(self, size: str):
        if size not in self._dbs:
            db = self.factory.mktemp(f"{size}-memory") / "m.db"
            r = _run("ingest", self.video, "--db", db, "--model", self.dir(size), *INGEST, "--max-clips", "3",
                     "--json", "--debug-scores", db.with_suffix(".scores.jsonl"))
            assert r.exit_code == 0, r.output
            self._dbs[size] = db, _json_lines(r.output)
        return self._dbs[size]

    def bundle(self, size: str):
        """-> (bundle directory, what `rlivs export` said)."""
        if size not in self._bundles:
            out = self.factory.mktemp(f"{size}-bundle") / "b"
            r = _run("export", "--model", self.dir(size), "--out", out)
            assert r.exit_code == 0, r.output
            self._bundles[size] = out, _said(r)
        return self._bundles[size]


@pytest.fixture(scope="module")
def qwens(tmp_path_factory, sample_video):
    return Qwens(tmp_path_factory, sample_video)


@pytest.fixture(scope="module")
def qwen_dir(qwens):
    return qwens.dir("tiny-qwen")


@pytest.fixture(scope="module")
def qwen_db(qwens):
    return qwens.db("tiny-qwen")


@pytest.mark.parametrize("size", BOTH)
def test_ingest_and_ask_with_a_qwen_directory(qwens, size):
    import numpy as np

    db, clips = qwens.db(size)
    assert [c["clip"] for c in clips] == [0, 1, 2] and all(c["caption"] for c in clips)
    for x in _json_lines(db.with_suffix(".scores.jsonl").read_text()):  # 4 frames: 2 temporal patches
        tpf, (h, w) = x["tokens_per_frame"], x["grid"]
        assert (x["temporal_patch"], tpf, len(x["scores"])) == (2, h * w, 2 * tpf)
        assert (h, w) == {"tiny-qwen": (4, 4), "tiny-qwen3": (4, 4)}[size]
        top = np.sort(np.argsort(-np.array(x["scores"]), kind="stable")[:2])  # keep 6.25 % of 32 merged tokens
        assert x["kept"] == top.tolist()
    r = _run("ask", QUESTION, "--db", db, "--json")  # the model is taken from the memory
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["answer"]


@pytest.mark.parametrize("size", BOTH)
def test_ask_is_the_qwen_llm_on_its_own_chat_template(qwens, size):
    """`rlivs ask` = transformers' Qwen2_5_VLForConditionalGeneration / Qwen3VLForConditionalGeneration .generate()
    (greedy, fp32) on the prompt that the model's own chat template renders (HF's apply_chat_template) from the
    captions the answer used."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    from rlivs.runtime.answer import ANSWER_SYSTEM, span_label

    db, _ = qwens.db(size)
    model_dir = qwens.dir(size)
    r = _run("ask", QUESTION, "--db", db, "--json", "--max-answer-tokens", "10")
    assert r.exit_code == 0, r.output
    a = json.loads(r.output)
    assert a["captions"] and a["intent"] is None and a["window"] is None
    lines = [f"[{span_label(c['t_start'], c['t_end'], c['wall_start'], c['wall_end'])}] {c['caption']}"
             for c in a["captions"]]
    user = "Descriptions of the video so far:\n" + "\n".join(lines) + f"\n\nQuestion: {QUESTION}"
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok.apply_chat_template([{"role": "system", "content": [{"type": "text", "text": ANSWER_SYSTEM}]},
                                   {"role": "user", "content": [{"type": "text", "text": user}]}],
                                  add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system\n" + ANSWER_SYSTEM) and text.endswith("<|im_start|>assistant\n")
    cls = getattr(transformers, FAMILIES[size][2])
    model = cls.from_pretrained(model_dir, dtype=torch.float32).eval()
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


@pytest.mark.parametrize("size", BOTH)
def test_doctor_and_memory_info_name_the_backbone(qwens, size, memory_db):
    label, name, _ = FAMILIES[size]
    r = _run("doctor", "--model", qwens.dir(size), "--json")
    b = json.loads(r.output)["backend"]
    assert r.exit_code == 0 and b["backbone"] == label and b["name"] == "torch"
    db, _ = qwens.db(size)
    r = _run("memory", "info", "--db", db, "--json")
    info = json.loads(r.output)
    assert r.exit_code == 0 and info["backbone"] == label and info["model"]["backbone"] == name
    assert f"backbone {label}" in _said(_run("memory", "info", "--db", db))
    assert "backbone LLaVA-OneVision" in _said(_run("memory", "info", "--db", memory_db))


def _serve(video, db, port, model_dir):
    cmd = [sys.executable, "-m", "rlivs.edge_app.cli", "serve", "--source", f"cam={video}", "--no-replay",
           "--db", str(db), "--port", str(port), "--model", str(model_dir), *INGEST, "--max-answer-tokens", "8"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))


@pytest.mark.parametrize("size", QWEN3_SLOW)
def test_serve_captions_and_answers_with_qwen_over_http(sample_video, tmp_path, qwens, size):
    """`rlivs serve` with the Qwen model, a file source: its captions are ingest's (clip for clip), /v1/kept counts
    Qwen's temporal patches and keeps what ingest kept, and /v1/ask answers as `rlivs ask` does on the same memory."""
    db, port = tmp_path / "serve.db", free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(sample_video, db, port, qwens.dir(size))
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
    ingest_db, ingested = qwens.db(size)
    by_clip = {c["clip"]: c["caption"] for c in got}
    assert [by_clip[c["clip"]] for c in ingested] == [c["caption"] for c in ingested]
    # 4 frames = 2 temporal patches of the grid's merged tokens, as ingest's clip 0 (4x4: keep 6.25 % of 32 = 2)
    x = _json_lines(ingest_db.with_suffix(".scores.jsonl").read_text())[0]
    assert (kept["temporal_patch"], kept["groups"], kept["tokens_per_frame"], kept["grid"]) == (
        2, 2, x["tokens_per_frame"], x["grid"])
    assert kept["kept"] == x["kept"] and len(kept["kept"]) == 2
    assert asked.status_code == 200, asked.text
    r = _run("ask", QUESTION, "--db", db, "--json", "--max-answer-tokens", "8")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["answer"] == asked.json()["answer"]


@pytest.mark.parametrize("size", BOTH)
def test_eval_runs_the_paper_protocol_with_qwen(tmp_path_factory, qwens, size):
    """`rlivs eval` on a generated streaming list with the Qwen model: every question answered causally, and the
    clips it captioned are the ones `rlivs ingest` captions from the same video with the same settings."""
    from rlivs.runtime.memory import Memory
    from tests.helpers.eval_sample import make_benchmark

    bench = make_benchmark(tmp_path_factory.mktemp("bench"))
    out = bench / "out-qwen"
    flags = ["--model", qwens.dir(size), "--frames-per-clip", "4", "--max-caption-tokens", "6", "--fifo-clips", "2"]
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


@pytest.mark.parametrize("size", QWEN3_SLOW)
def test_export_writes_a_qwen_bundle_that_ingest_and_ask_run(sample_video, tmp_path, qwens, size):
    """`rlivs export --model <qwen dir>`: the bundle names its backbone; ingest and ask run it on ONNX Runtime (its
    parity with the torch reference: tests/parity/test_qwen_onnx.py, test_qwen3_onnx.py)."""
    label, name, _ = FAMILIES[size]
    bundle, said = qwens.bundle(size)
    assert f"backbone: {label} ({name})" in said and "ONNX Runtime vs torch" in said
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["backbone"] == name and manifest["temporal_patch"] == 2
    r = _run("ingest", sample_video, "--db", tmp_path / "m.db", "--bundle", bundle, *INGEST, "--max-clips", "2",
             "--json")
    assert r.exit_code == 0, r.output
    clips = _json_lines(r.output)
    assert [c["clip"] for c in clips] == [0, 1] and all(c["caption"] for c in clips)
    r = _run("ask", QUESTION, "--db", tmp_path / "m.db", "--json", "--max-answer-tokens", "6")  # the memory's bundle
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["answer"]


@pytest.mark.parametrize("size", QWEN3_SLOW)
def test_quantize_and_report_a_qwen_bundle(sample_video, tmp_path, qwens, size):
    """`calibrate quantize` of a Qwen bundle: int8 decoder calibrated on feeds with the set's (3, L) M-RoPE ids (and,
    Qwen3-VL, the visual rows' DeepStack features); the quantized bundle runs ingest; `calibrate report` runs both
    bundles on the held-out clips as the pipeline does (the float32 bundle's captions are the set's torch ones)."""
    from rlivs.calibration.dataset import CalibrationSet
    from rlivs.calibration.report import run_bundle

    bundle, _ = qwens.bundle(size)
    cal, q8 = tmp_path / "calib", tmp_path / "q8"

    def run(*args):
        r = _run(*args)
        assert r.exit_code == 0, r.output
        return r.stdout

    run("calibrate", "collect", "--video", sample_video, "--out", cal, "--model", qwens.dir(size), "--fps", 2,
        "--frames-per-clip", 4, "--keep-ratio", 0.25, "--max-caption-tokens", 6, "--clips", 2, "--heldout", 1,
        "--warmup", 2)
    run("calibrate", "quantize", "--bundle", bundle, "--calib", cal, "--out", q8)
    m = json.loads((q8 / "manifest.json").read_text())
    check = m["precision"]["check"]
    assert m["backbone"] == FAMILIES[size][1] and m["precision"]["decoder"] == "int8"
    assert check["feeds"] == 4 and 0 < check["logits"] < check["logit_scale"]
    r = _run("ingest", sample_video, "--db", tmp_path / "q.db", "--bundle", q8, *INGEST, "--max-clips", "2", "--json")
    assert r.exit_code == 0, r.output
    assert [c["clip"] for c in _json_lines(r.output)] == [0, 1]
    run("calibrate", "report", "--calib", cal, "--reference", bundle, "--candidate", f"int8={q8}",
        "--out", tmp_path / "rep.json", "--no-isolate", "--threads", 1)
    rows = {x["precision"]: x for x in json.loads((tmp_path / "rep.json").read_text())["rows"]}
    assert list(rows) == ["fp32", "int8"] and rows["fp32"]["caption_identical"] == 1.0
    assert rows["int8"]["decoder_mb"] < rows["fp32"]["decoder_mb"] and 0 <= rows["int8"]["selected_overlap"] <= 1
    # the report's run of the float32 bundle is the pipeline's: the held-out captions are the set's (torch) ones
    calib = CalibrationSet(cal)
    ref = run_bundle(str(bundle), str(cal), 1)
    assert [x["ids"] for x in ref["rows"]] == [it.caption_ids for it in calib.split("heldout")]


def test_a_model_family_rlivs_does_not_run_is_refused(sample_video, tmp_path, qwen_dir):
    other = tmp_path / "other"
    shutil.copytree(qwen_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "model_type": "idefics3", "architectures": ["X"]}))
    r = _run("ingest", sample_video, "--db", tmp_path / "m.db", "--model", other, *INGEST)
    assert r.exit_code == 2
    assert "model_type 'idefics3'" in r.output and "Qwen2.5-VL (qwen2_5_vl)" in _said(r)
