"""The commands with a Qwen2.5-VL model directory (the tiny random-weight one, built locally): ingest + ask on the
torch backend, the backbone in `rlivs doctor`, `rlivs export` writing a bundle that ingest runs, odd --frames-per-clip and
model families rlivs does not run refused with the fix."""

import json
import shutil

import pytest

from tests.helpers.cli import run_cli as _run

pytest.importorskip("torch")

INGEST = ["--frames-per-clip", "4", "--max-caption-tokens", "6", "--fifo-clips", "2"]


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    from rlivs.runtime.backends.torch.tiny import ensure_random_model

    saved = tmp_path_factory.mktemp("models") / "my-qwen"  # an ordinary directory, as a user would pass it
    shutil.copytree(ensure_random_model("tiny-qwen"), saved)
    return saved


def test_ingest_and_ask_with_a_qwen_directory(sample_video, tmp_path, qwen_dir):
    db = tmp_path / "m.db"
    r = _run("ingest", sample_video, "--db", db, "--model", qwen_dir, *INGEST, "--max-clips", "3", "--json")
    assert r.exit_code == 0, r.output
    clips = [json.loads(x) for x in r.output.strip().splitlines() if x.startswith("{")]
    assert [c["clip"] for c in clips] == [0, 1, 2] and all(c["caption"] for c in clips)
    r = _run("ask", "what moved?", "--db", db, "--json")  # the model is taken from the memory
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["answer"]


def test_odd_frames_per_clip_is_refused_with_the_fix(sample_video, tmp_path, qwen_dir):
    r = _run("ingest", sample_video, "--db", tmp_path / "m.db", "--model", qwen_dir, "--frames-per-clip", "5")
    assert r.exit_code == 2
    assert "frames per clip must be even, got 5; use --frames-per-clip 6" in " ".join(r.output.split())


def test_doctor_names_the_backbone(qwen_dir):
    r = _run("doctor", "--model", qwen_dir, "--json")
    b = json.loads(r.output)["backend"]
    assert r.exit_code == 0 and b["backbone"] == "Qwen2.5-VL" and b["name"] == "torch"


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
    assert "model_type 'idefics3'" in r.output and "Qwen2.5-VL (qwen2_5_vl)" in " ".join(r.output.split())
