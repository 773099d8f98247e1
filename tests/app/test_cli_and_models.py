"""The `rlivs` command, model resolution (tiny, directory, local HF cache), and the torch-free runtime."""

import json
import shutil

import pytest
from tests.helpers.cli import run_cli as _run
from tests.helpers.no_torch import run_without_torch
from rlivs.runtime.models import resolve_model

INGEST = ["--frames-per-clip", "4", "--max-caption-tokens", "8"]


def test_ingest_ask_captions_with_tiny(sample_video, tmp_path, tiny_dir):
    db = tmp_path / "m.db"
    r = _run("ingest", sample_video, "--db", db, "--model", "tiny", *INGEST, "--max-clips", "3")
    assert r.exit_code == 0, r.output
    assert "3 clips" in r.output and "video s per wall s" in r.output
    r = _run("captions", "--db", db, "--json")
    lines = [json.loads(x) for x in r.output.strip().splitlines()]
    assert [x["clip"] for x in lines] == [0, 1, 2] and lines[1]["t_start"] == 4.0
    r = _run("ask", "what moved?", "--db", db, "--json")  # model taken from the memory
    assert r.exit_code == 0, r.output
    a = json.loads(r.output)
    assert a["answer"] and a["captions"] and {c["clip"] for c in a["captions"]} <= {0, 1, 2}
    # resume: the next run continues at clip 3
    r = _run("ingest", sample_video, "--db", db, "--model", "tiny", *INGEST, "--json")
    clips = [json.loads(x)["clip"] for x in r.output.strip().splitlines() if x.startswith("{")]
    assert clips == [3, 4]


def test_ingest_with_a_local_model_directory(sample_video, tmp_path, tiny_dir):
    saved = tmp_path / "my-model"
    shutil.copytree(tiny_dir, saved)
    db = tmp_path / "d.db"
    r = _run("ingest", sample_video, "--db", db, "--model", saved, *INGEST, "--max-clips", "1")
    assert r.exit_code == 0, r.output
    r = _run("ask", "anything?", "--db", db, "--json")
    assert r.exit_code == 0 and json.loads(r.output)["answer"]


@pytest.mark.parametrize("args, message", [
    (["--keep", "5000"], "cannot keep 5000 tokens per clip"),
    (["--fps", "-1"], "fps must be > 0"),
    (["--frames-per-clip", "0"], "frames_per_clip must be >= 1"),
    (["--strategy", "best"], "unknown selection strategy"),
    (["--probe-layers", "1,x"], "comma-separated list"),
    (["--probe-layers", "99"], "not valid for a 8-layer decoder"),
])
def test_ingest_bad_parameters_fail_clearly(sample_video, tmp_path, tiny_dir, args, message):
    r = _run("ingest", sample_video, "--db", tmp_path / "x.db", *args)
    assert r.exit_code == 2 and message in " ".join(r.output.split())


def test_missing_inputs_fail_clearly(tmp_path, tiny_dir, sample_video):
    r = _run("ingest", tmp_path / "nope.mp4", "--db", tmp_path / "x.db")
    assert r.exit_code == 2 and "does not exist" in " ".join(r.output.split())
    r = _run("ask", "q?", "--db", tmp_path / "none.db")
    assert r.exit_code == 2 and "ingest a video first" in " ".join(r.output.split())
    r = _run("ingest", sample_video, "--db", tmp_path / "x.db", "--model", "org/not-cached")
    assert r.exit_code == 2 and "hf download org/not-cached" in " ".join(r.output.split())


def test_hub_id_resolves_from_local_cache_only(tmp_path, tiny_dir, monkeypatch):
    """A hub id found in an HF cache layout resolves to its snapshot; the same code path as real weights."""
    cache = tmp_path / "hub"
    repo = cache / "models--llava-hf--llava-onevision-qwen2-0.5b-ov-hf"
    snap = repo / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_dir, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    path, model_id = resolve_model("llava-hf/llava-onevision-qwen2-0.5b-ov-hf")
    assert path == snap and model_id == "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
    with pytest.raises(ValueError, match="not in the local Hugging Face cache"):
        resolve_model("llava-hf/absent-model")


def test_model_name_errors(tmp_path):
    (tmp_path / "f.bin").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        resolve_model(tmp_path / "f.bin")
    with pytest.raises(ValueError, match="no config.json"):
        resolve_model(tmp_path)
    with pytest.raises(ValueError, match="does not exist as a directory and is not a hub id.*'random-0.5b'"):
        resolve_model("not-a-model")
    with pytest.raises(ValueError, match="does not exist as a directory.*'tiny', 'random-0.5b'"):
        resolve_model("./models/llava")  # a path, even with one slash: not looked up as a hub id


def test_tiny_without_torch_says_what_to_install(tmp_path):
    """Where torch cannot be imported, `tiny` is refused with the install command (every torch-free module importing
    without torch is tests/unit/test_architecture.py's walk)."""
    out = run_without_torch("""
        import rlivs.runtime.models, rlivs.edge_app.cli
        assert TORCH_FREE()
        try:
            rlivs.runtime.models.resolve_model('tiny')
        except ValueError as e:
            print('OK', e)
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout and "torch extra" in out.stdout


def test_the_static_kv_cache_from_the_cli_captions_like_the_reference(sample_video, tmp_path, tiny_dir, bundle):
    """--kv-cache static (the CUDA default, here on CPU without the graph) writes the same memory as the
    reference; a bundle refuses the torch-only cache options."""
    out, answers = [], []
    for name, extra in (("ref", []), ("static", ["--kv-cache", "static", "--max-context", "2048"])):
        db = tmp_path / f"{name}.db"
        r = _run("ingest", sample_video, "--db", db, "--model", "tiny", *INGEST, "--max-clips", "2", *extra)
        assert r.exit_code == 0, r.output
        out.append(_run("captions", "--db", db, "--json").output)
        r = _run("ask", "what moved?", "--db", db, "--max-answer-tokens", "8", "--json", *extra)
        assert r.exit_code == 0, r.output
        answers.append({k: v for k, v in json.loads(r.output).items() if k != "latency_s"})
    assert out[0] == out[1] and len(out[0].splitlines()) == 2
    assert answers[0] == answers[1] and answers[0]["answer"]  # `ask --kv-cache static` answers like the reference
    r = _run("ingest", sample_video, "--db", tmp_path / "b.db", "--bundle", bundle, "--kv-cache", "static")
    assert r.exit_code == 2 and "a bundle's KV cache is set at export" in " ".join(r.output.split())
    r = _run("ingest", sample_video, "--db", tmp_path / "c.db", "--model", "tiny", "--kv-cache", "paged")
    assert r.exit_code == 2 and "unknown KV cache 'paged'" in " ".join(r.output.split())
