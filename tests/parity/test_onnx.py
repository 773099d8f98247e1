"""ONNX export and the ONNX Runtime backend: parity with the torch reference, torch-free runs, bad bundles."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from rlivs.runtime.backends import choose_backend, load_backend  # noqa: E402
from rlivs.runtime.backends.onnxruntime import OrtBackend, load_manifest  # noqa: E402
from rlivs.runtime.backends.torch import TorchBackend  # noqa: E402
from rlivs.runtime.config import ProbeConfig  # noqa: E402
from rlivs.runtime.engine import load_engine  # noqa: E402
from tests.helpers.configs import small_config  # noqa: E402
from tests.helpers.parity import step_parity, stream_parity  # noqa: E402

LOGITS_TOL, ATTN_TOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def pair(bundle, tiny_dir):
    return TorchBackend(tiny_dir), OrtBackend(bundle)


def test_manifest_describes_every_graph_io(bundle, pair):
    m = load_manifest(bundle).to_dict()
    torch_be, _ = pair
    assert m["probe_layers"] == list(torch_be.info.probe_layers) and m["opset"] == 20
    assert m["requires"] == {"onnxruntime": "1.20"}  # the default bundle loads on every Jetson build of ORT
    assert {g["opset"] for g in m["graphs"].values()} == {20}
    dec = {v["name"]: v for v in m["graphs"]["decoder"]["inputs"] + m["graphs"]["decoder"]["outputs"]}
    assert dec["inputs_embeds"]["shape"] == [1, "seq", 64] and dec["inputs_embeds"]["dtype"] == "float32"
    assert dec["past_keys"]["shape"] == [8, 2, "past", 16] and dec["position_ids"]["dtype"] == "int64"
    assert dec["probe_attn"]["shape"][0] == 1 and dec["logits"]["shape"] == [1, 512]
    vis = m["graphs"]["vision"]
    assert vis["inputs"][0]["shape"] == ["frames", 3, 126, 126] and vis["outputs"][0]["shape"] == ["frames", 25, 64]
    assert m["tools"]["onnxruntime"] and m["tools"]["torch"] and len(m["config_sha256"]) == 64
    check = m["export_check"]
    assert check["vision"] < 1e-4 and check["logits"] < LOGITS_TOL and check["probe_attn"] < ATTN_TOL


@pytest.mark.parametrize("which", ["bundle", "bundle_opset23"])
def test_probe_attention_only_reduced_rows_leave_the_graph(request, which):
    """Every layer's attention stays inside the graph (opset 20: one Softmax per layer; opset 23: the fused Attention
    op); the probe layers add one Softmax each for their last row, and only its reduction leaves the graph."""
    import onnx

    g = onnx.load(str(request.getfixturevalue(which) / "decoder.onnx"), load_external_data=False).graph
    ops = [n.op_type for n in g.node]
    n_layers, n_probe = 8, 4
    if which == "bundle":
        assert ops.count("Attention") == 0 and ops.count("Softmax") == n_layers + n_probe
    else:
        assert ops.count("Attention") == n_layers and ops.count("Softmax") == n_probe
    assert [o.name for o in g.output] == ["logits", "present_keys", "present_values", "probe_attn"]


@pytest.fixture(scope="module")
def arena_pair(tmp_path_factory, tiny_dir):
    """The ONNX Runtime target at opset 23 (fused Attention) with the in-place KV arena instead of past -> present."""
    from rlivs.export.bundle import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("arena") / "tiny"
    export_bundle("tiny", out, ExportConfig(opset=23, embed_dtype="float32", kv_layout="arena", kv_dtype="float32",
                                            check=False))
    return TorchBackend(tiny_dir), OrtBackend(out)


@pytest.fixture(scope="module")
def pair23(bundle_opset23, tiny_dir):
    return TorchBackend(tiny_dir), OrtBackend(bundle_opset23)


@pytest.mark.parametrize("which, layout", [("pair", "stacked"), ("pair23", "stacked"), ("arena_pair", "arena")])
def test_decoder_and_vision_parity_over_prefill_and_decode(request, which, layout):
    """The default bundle (opset 20), and opset 23's fused ops with both KV layouts."""
    torch_be, ort_be = request.getfixturevalue(which)
    assert ort_be.kv.layout == layout
    rng = np.random.default_rng(0)
    pixels = rng.uniform(-1, 1, (3, 3, 126, 126)).astype(np.float32)
    vt, vo = torch_be.encode_frames(pixels), ort_be.encode_frames(pixels)
    np.testing.assert_allclose(vo, vt, atol=1e-4, rtol=0)
    ctx = np.concatenate([torch_be.embed_tokens(np.arange(5, 12)), rng.standard_normal((30, 64)).astype(np.float32),
                          vt.reshape(-1, 64)])
    np.testing.assert_array_equal(ort_be.embed_tokens(np.arange(5, 12)), torch_be.embed_tokens(np.arange(5, 12)))
    def same_length(i, a, b, x, st, so):
        assert so.length == st.length

    run = step_parity(torch_be, ort_be, ctx, steps=4, logits_atol=LOGITS_TOL, probe_atol=ATTN_TOL,  # prefill + 3 decode
                      on_step=same_length)
    with pytest.raises(ValueError, match="last query row only"):
        ort_be.step(run.next_input, run.state, probe_rows=2)


def test_multi_clip_stream_same_captions_and_selection(bundle, tiny_dir, sample_video, tmp_path):
    cfg = lambda: small_config(caption_tokens=16)  # noqa: E731
    run = stream_parity(load_engine(tiny_dir, config=cfg()), load_engine(bundle, config=cfg()), tmp_path, sample_video)
    ref, got = run.ref, run.got
    assert len(ref) == len(got) == 5
    assert [r.caption for r in got] == [r.caption for r in ref]
    for overlap in run.overlap:
        assert overlap >= 0.99


def test_backend_choice_and_mismatches(bundle, tiny_dir):
    assert choose_backend("auto", bundle)[0] == "onnxruntime"
    assert choose_backend("auto", tiny_dir)[0] == "torch"
    with pytest.raises(ValueError, match="is an exported bundle"):
        choose_backend("torch", bundle)
    with pytest.raises(ValueError, match="rlivs export --model"):
        choose_backend("onnxruntime", tiny_dir)
    with pytest.raises(ValueError, match="exported with probe layers"):
        load_backend(bundle, probe=ProbeConfig(layers=(0, 2)))


def test_broken_bundles_fail_clearly(bundle, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    (bad / "decoder.onnx").unlink()
    with pytest.raises(ValueError, match="missing decoder.onnx"):
        OrtBackend(bad)
    m = json.loads((bundle / "manifest.json").read_text())
    (bad / "manifest.json").write_text(json.dumps({**m, "version": 99}))
    with pytest.raises(ValueError, match="re-export"):
        load_manifest(bad)
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_manifest(bad)


def test_float16_embedding_table(bundle, tmp_path):
    half = tmp_path / "half"
    shutil.copytree(bundle, half)
    table = np.load(bundle / "embeddings.npy")
    np.save(half / "embeddings.npy", table.astype(np.float16))
    be = OrtBackend(half)
    assert be.table.dtype == np.float16 and isinstance(be.table, np.memmap)
    np.testing.assert_allclose(be.embed_tokens(np.arange(50)), table[:50], rtol=1e-3, atol=1e-4)


def test_ingest_and_ask_from_bundle_without_torch(bundle, sample_video, tmp_path):
    """The whole CLI pipeline in a process where importing torch or transformers fails."""
    db = tmp_path / "m.db"
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('torch', 'transformers'):
                    raise ImportError('blocked: ' + name)
        sys.meta_path.insert(0, Block())
        from rlivs.edge_app.cli import app
        for argv in (["ingest", {str(sample_video)!r}, "--db", {str(db)!r}, "--bundle", {str(bundle)!r},
                      "--frames-per-clip", "4", "--max-caption-tokens", "6", "--max-clips", "3", "--json"],
                     ["ask", "what moved?", "--db", {str(db)!r}, "--bundle", {str(bundle)!r}, "--json",
                      "--max-answer-tokens", "6"]):
            try:
                app(argv, prog_name="rlivs")
            except SystemExit as e:
                assert e.code in (0, None), e.code
        assert not any(m.split('.')[0] in ('torch', 'transformers') for m in sys.modules)
        print("TORCH-FREE OK")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    assert [x["clip"] for x in lines if "clip" in x and "answer" not in x] == [0, 1, 2]
    assert "TORCH-FREE OK" in out.stdout and any("answer" in x for x in lines)


@pytest.mark.parametrize("layout", ["stacked", "arena"])
def test_chunked_prefill_and_vision_equal_one_run(request, bundle, layout):
    """The memory bounds (a prefill in chunks through the KV cache, frames a few at a time) give the numbers of one
    whole run: logits, probe row, cache length and the following decode step; with either KV cache."""
    if layout == "arena":
        bundle = request.getfixturevalue("arena_pair")[1].bundle
    whole = OrtBackend(bundle, prefill_chunk=10**6, vision_chunk=10**6)
    chunked = OrtBackend(bundle, prefill_chunk=100, vision_chunk=3)
    assert (OrtBackend(bundle).prefill_chunk, OrtBackend(bundle).vision_chunk) == (128, 2)  # the defaults
    rng = np.random.default_rng(1)
    pixels = rng.uniform(-1, 1, (16, 3, 126, 126)).astype(np.float32)
    vis = whole.encode_frames(pixels)
    np.testing.assert_allclose(chunked.encode_frames(pixels), vis, atol=1e-6, rtol=0)  # 6 runs of <= 3 frames
    ctx = np.concatenate([whole.embed_tokens(np.arange(5, 35)), vis.reshape(-1, 64)])  # (430, D): 5 chunks of 100
    sw, sc = whole.new_state(), chunked.new_state()
    a, b = whole.step(ctx, sw), chunked.step(ctx, sc)
    assert sw.length == sc.length == 430 and b.probe_attn.shape == a.probe_attn.shape == (1, 430)
    np.testing.assert_allclose(b.logits, a.logits, atol=1e-6, rtol=0)
    np.testing.assert_allclose(b.probe_attn, a.probe_attn, atol=1e-7, rtol=0)
    x = whole.embed_tokens(np.array([int(np.argmax(a.logits))]))
    np.testing.assert_allclose(chunked.step(x, sc).logits, whole.step(x, sw).logits, atol=1e-6, rtol=0)
