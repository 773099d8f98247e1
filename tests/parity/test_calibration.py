"""Calibration: sets sampled from footage, probe layers chosen from data, quantized bundles, the fidelity report.

One tiny calibration set (20 s sample video at 2 fps, 4-frame clips: 10 clips of 100 tokens, 25 kept) is collected
once; the tiny model is exported once with the calibrated probe layers; int8 and int4 bundles are made from it.
"""

import json
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from tests.helpers.no_torch import run_without_torch  # noqa: E402
from rlivs.calibration.config import CollectConfig, LayerSearchConfig, QuantizeConfig, ReportConfig  # noqa: E402
from rlivs.calibration.dataset import (  # noqa: E402
    CalibrationSet, Candidate, collect, heldout_positions, stratified_sample,
)
from rlivs.calibration.layers import (  # noqa: E402
    ClipScores, calibrate_layers, evaluate_subsets, item_layer_scores, layer_scores, search_layers,
)
from rlivs.runtime.config import PipelineConfig, ProbeConfig, SelectionConfig  # noqa: E402
from tests.helpers.configs import DEFAULT_FIFO_CLIPS, small_config  # noqa: E402

N_CALIB, N_HELD = 6, 3


def _pc() -> PipelineConfig:
    return small_config(caption_tokens=8, fps=2.0, fifo_clips=DEFAULT_FIFO_CLIPS,
                        selection=SelectionConfig(keep_ratio=0.25))


@pytest.fixture(scope="module")
def engine(tiny_dir):
    from rlivs.runtime.engine import load_engine

    return load_engine("tiny", config=_pc())


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory, engine, sample_video):
    out = tmp_path_factory.mktemp("calib") / "set"
    collect([sample_video], out, engine, CollectConfig(n_calib=N_CALIB, n_heldout=N_HELD))
    return out


@pytest.fixture(scope="module")
def calib(calib_dir):
    return CalibrationSet(calib_dir)


@pytest.fixture(scope="module")
def layers(engine, calib):
    return calibrate_layers(engine, calib)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, layers):
    from rlivs.calibration.layers import export_with_layers
    from rlivs.export.bundle import ExportConfig

    out = tmp_path_factory.mktemp("bundles") / "fp32"
    export_with_layers("tiny", out, layers, ExportConfig(embed_dtype="float32"))
    return out


@pytest.fixture(scope="module")
def int8(bundle, calib):
    from rlivs.calibration.quantize import quantize_bundle

    out = bundle.parent / "int8"
    quantize_bundle(bundle, calib, out, QuantizeConfig(precision="int8"))
    return out


@pytest.fixture(scope="module")
def int4(bundle, calib):
    from rlivs.calibration.quantize import quantize_bundle

    out = bundle.parent / "int4"
    quantize_bundle(bundle, calib, out, QuantizeConfig(precision="int4"))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Calibration sets
# ---------------------------------------------------------------------------------------------------------------------


def _cand(i: int, sig: np.ndarray) -> Candidate:
    return Candidate(0, i, float(i), float(i + 1), sig)


def test_stratified_sample_one_per_stretch_and_no_duplicates():
    rng = np.random.default_rng(0)
    static = rng.uniform(size=(4, 16, 16)).astype(np.float32)
    # clips 0-9: one static scene (identical signatures), clips 10-19: all different
    cands = [_cand(i, static) for i in range(10)] + [_cand(i, rng.uniform(size=(4, 16, 16)).astype(np.float32))
                                                     for i in range(10, 20)]
    picked, rejected = stratified_sample(cands, 4, threshold=0.005, seed=3)
    strata = [p // 5 for p in picked]
    assert strata == [0, 2, 3]  # stretch 1 (clips 5-9) holds only duplicates of the clip picked in stretch 0
    assert rejected == 5
    picked_all, rejected_all = stratified_sample(cands, 4, threshold=0.0, seed=3)  # no dedup: one per stretch
    assert [p // 5 for p in picked_all] == [0, 1, 2, 3] and rejected_all == 0
    assert heldout_positions(12, 4) == {1, 4, 7, 10} and heldout_positions(5, 0) == set()


def test_collect_stores_exactly_what_the_pipeline_builds(calib, engine, sample_video, tmp_path):
    """Frames normalise to the pipeline's pixels bit for bit; each FIFO prefix and caption equals an ingest's."""
    from rlivs.runtime.frames import iter_clips
    from rlivs.runtime.sources.file import VideoFileSource
    from rlivs.runtime.memory import Memory
    from rlivs.runtime.ingest import StreamIngestor

    items = calib.items
    assert len(calib.split("calib")) == N_CALIB and len(calib.split("heldout")) == N_HELD
    held_pos = [i for i, it in enumerate(items) if it.split == "heldout"]
    assert held_pos == sorted(heldout_positions(len(items), N_HELD))  # interleaved in time
    assert [it.clip for it in items] == sorted(it.clip for it in items)
    by_clip = {it.clip: it for it in items}
    clips = list(iter_clips(VideoFileSource(sample_video, fps=2.0), 4, 2.0))
    with Memory(tmp_path / "m.db", model_fingerprint=engine.model_fingerprint) as mem:
        ing = StreamIngestor(engine, mem, stream="s", source=str(sample_video))
        for clip in clips[: max(by_clip) + 1]:
            fifo_before = ing.fifo.tokens()  # (F, D)
            result = ing.step(clip)
            it = by_clip.get(clip.index)
            if it is None:
                continue
            np.testing.assert_array_equal(calib.pixels(it), engine.preprocess(clip.frames))
            np.testing.assert_array_equal(calib.fifo(it), fifo_before)
            assert it.fifo_clips == list(range(max(0, clip.index - 16), clip.index))
            assert engine.text.decode(it.caption_ids) == result.caption
            assert it.scored_rows == len(it.caption_ids) + (len(it.caption_ids) < 8)  # + prefill row, last fed unless cut


def test_collect_skips_duplicate_footage_and_set_detects_tampering(tmp_path, engine, sample_video, calib_dir):
    import av

    static = tmp_path / "static.mp4"  # 10 s of one unchanging frame: every clip is a duplicate of the first
    img = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    with av.open(str(static), "w") as c:
        s = c.add_stream("mpeg4", rate=8)
        s.width, s.height, s.pix_fmt = 320, 240, "yuv420p"
        s.time_base = Fraction(1, 8)
        for _ in range(80):
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    m = collect([static, sample_video], tmp_path / "two", engine, CollectConfig(n_calib=8, n_heldout=2, warmup_clips=0))
    from_static = [it for it in m["items"] if it["video"] == 0]
    assert len(from_static) == 1 and m["duplicates_rejected"] >= 2  # 5 static clips: one kept, the rest rejected or untried
    picked = {(it["video"], it["clip"]) for it in m["items"]}
    for it in m["items"]:  # warmup 0: only picked clips run; a FIFO holds the picked clips right before it
        run = [c for c in range(it["clip"]) if all((it["video"], j) in picked for j in range(c, it["clip"]))]
        assert it["fifo_clips"] == run
    # a changed item file is refused
    copy = tmp_path / "copy"
    shutil.copytree(calib_dir, copy)
    f = next((copy / "items").glob("*.npz"))
    with np.load(f) as z:
        frames, fifo = z["frames"].copy(), z["fifo"]
    frames[0, 0, 0, 0] ^= 1
    np.savez(f, frames=frames, fifo=fifo)
    with pytest.raises(ValueError, match="changed since it was collected"):
        CalibrationSet(copy)
    with pytest.raises(ValueError, match="not a calibration set"):
        CalibrationSet(tmp_path)


# ---------------------------------------------------------------------------------------------------------------------
# Probe-layer search
# ---------------------------------------------------------------------------------------------------------------------


def _planted(n_layers: int, signal: tuple[int, int], n_clips: int = 6, c: int = 400, n: int = 25, seed: int = 0):
    """Only layers `signal` carry the ranking (each half of it); the others are small noise."""
    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(n_clips):
        x = rng.uniform(0, 0.05, (n_layers, c))  # noise layers
        x[signal[0]] = rng.exponential(1.0, c)  # u
        x[signal[1]] = rng.exponential(1.0, c)  # v: the reference ranks by about u + v
        clips.append(ClipScores(x, n))
    return clips


@pytest.mark.parametrize("n_layers, signal, max_exhaustive, method", [
    (8, (2, 5), 50_000, "exhaustive"),
    (24, (3, 17), 1, "greedy+swap"),
])
def test_search_finds_the_planted_layers(n_layers, signal, max_exhaustive, method):
    clips = _planted(n_layers, signal)
    res = search_layers(clips, LayerSearchConfig(num_layers=4, max_exhaustive=max_exhaustive))
    assert res.method == method and set(signal) <= set(res.layers) and len(res.layers) == 4
    assert res.overlap > 0.95
    single = evaluate_subsets(clips, np.array([[signal[0]]]))[0][0]  # one signal layer alone: about half of it
    even = ProbeConfig(num_layers=4).resolve(n_layers)  # holds neither signal layer
    assert not set(signal) & set(even)
    assert single < 0.8 and res.overlap > evaluate_subsets(clips, np.array([even]))[0][0] + 0.2


def test_overlap_matches_a_plain_recount():
    rng = np.random.default_rng(1)
    clips = [ClipScores(rng.exponential(1.0, (6, 90)), 9) for _ in range(3)]
    subsets = np.array([[0, 1, 2], [1, 3, 5], [0, 4, 5]])
    ov, rho = evaluate_subsets(clips, subsets)
    for s, o, r in zip(subsets, ov, rho):
        want_o, want_r = [], []
        for c in clips:
            ref = c.layers.mean(0)
            sub = c.layers[s].mean(0)
            want_o.append(len(set(np.argsort(-ref)[:9]) & set(np.argsort(-sub)[:9])) / 9)
            rr, rs = np.argsort(np.argsort(ref)), np.argsort(np.argsort(sub))
            want_r.append(np.corrcoef(rr, rs)[0, 1])
        assert o == pytest.approx(np.mean(want_o)) and r == pytest.approx(np.mean(want_r))


def test_all_layer_scores_are_the_pipelines_scores(engine, calib):
    """The mean of the per-layer scores over the backend's probe layers = what the pipeline's greedy scores."""
    from rlivs.runtime.generate import greedy

    be = engine.backend
    it = calib.split("calib")[1]
    x = item_layer_scores(engine, calib, it)  # (L, C)
    assert x.shape == (8, 100)
    visual = be.encode_frames(calib.pixels(it))
    ctx, cols = calib.context(engine, it, visual)
    gen = greedy(be, ctx, 8, engine.text.eos_ids, cols)
    assert gen.ids == it.caption_ids
    np.testing.assert_allclose(x[list(be.info.probe_layers)].mean(0), gen.scores, atol=1e-6, rtol=1e-5)
    # the backend's own probes are back in place, and only there
    for i, layer in enumerate(be.lm.layers):
        assert getattr(layer.self_attn, "_rlivs_probe", None) is (be.recorder if i in be.info.probe_layers else None)


def test_layers_end_to_end_on_tiny_and_cache_reuse(engine, calib, layers, monkeypatch):
    assert layers["search"]["method"] == "exhaustive" and layers["search"]["subsets_evaluated"] == 70
    chosen, even = layers["chosen"], layers["evenly_spaced"]
    assert even["layers"] == [1, 3, 4, 6] and len(chosen["layers"]) == 4
    assert chosen["calib"]["overlap"] >= even["calib"]["overlap"]
    assert chosen["calib"]["clips"] == N_CALIB and chosen["heldout"]["clips"] == N_HELD
    assert json.loads((calib.path / "layers.json").read_text()) == layers
    # recount the chosen subset's overlap from the cached per-layer scores, plainly
    import rlivs.calibration.layers as L

    monkeypatch.setattr(L, "item_layer_scores", lambda *a: pytest.fail("cache not reused"))
    scores = layer_scores(engine, calib)
    got = []
    for it in calib.split("calib"):
        x = scores[it.id]
        ref_top = set(np.argsort(-x.mean(0), kind="stable")[:25])
        got.append(len(ref_top & set(np.argsort(-x[chosen["layers"]].mean(0))[:25])) / 25)
    assert chosen["calib"]["overlap"] == pytest.approx(np.mean(got))


def test_export_uses_the_chosen_layers(bundle, layers, calib, engine):
    """The bundle probes the chosen layers: its scores equal the mean of those layers' reference scores."""
    from rlivs.runtime.backends.onnxruntime import load_manifest
    from rlivs.runtime.generate import greedy
    from rlivs.runtime.engine import load_engine

    m = load_manifest(bundle).to_dict()
    assert m["probe_layers"] == layers["chosen"]["layers"]
    assert m["calibration"]["probe_layers"]["set_sha256"] == calib.sha256
    ort_engine = load_engine(bundle, config=calib.pipeline_config())
    it = calib.split("heldout")[0]
    x = layer_scores(engine, calib)[it.id]
    visual = ort_engine.backend.encode_frames(calib.pixels(it))
    ctx, cols = calib.context(ort_engine, it, visual)
    gen = greedy(ort_engine.backend, ctx, 8, ort_engine.text.eos_ids, cols)
    assert gen.ids == it.caption_ids
    np.testing.assert_allclose(gen.scores, x[layers["chosen"]["layers"]].mean(0), atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Quantized bundles
# ---------------------------------------------------------------------------------------------------------------------


def _producers(graph) -> dict:
    return {o: n for n in graph.node for o in n.output}


def test_int8_graph_keeps_the_probe_path_float(int8, bundle):
    import onnx

    from rlivs.export.graph import node_module
    from rlivs.runtime.backends.onnxruntime import load_manifest

    m = load_manifest(int8).to_dict()
    assert m["precision"]["decoder"] == "int8" and m["precision"]["format"] == "QDQ"
    g = onnx.load(str(int8 / "decoder.onnx")).graph
    fused = any(n.op_type == "Attention" for n in g.node)  # opset 23's fused op; the default opset 20 has none
    prod = _producers(g)
    probe = set(m["probe_layers"])
    fed_by_dq = lambda n: any(prod.get(i) is not None and prod[i].op_type == "DequantizeLinear" for i in n.input)  # noqa
    q, k_float, others_quantized = 0, 0, 0
    for n in g.node:
        mod = node_module(n) or ""
        layer = int(mod.split(".")[2]) if mod.startswith("lm.layers.") else None
        if n.op_type == "Softmax":  # attention stays float32 (opset 20: a Softmax per layer; opset 23: probes only)
            assert not fed_by_dq(n) and not fed_by_dq(prod[n.input[0]])
            assert layer in probe or not fused
        if n.op_type == "MatMul" and mod.endswith(("q_proj", "k_proj")):
            if layer in probe:
                assert not fed_by_dq(n)
                k_float += 1
            else:
                assert fed_by_dq(n)
                others_quantized += 1
        q += n.op_type == "QuantizeLinear"
    assert k_float == 2 * len(probe) and others_quantized == 2 * (8 - len(probe)) and q > 0
    assert m["precision"]["decoder_bytes"] < m["precision"]["source_decoder_bytes"]
    check = m["precision"]["check"]
    assert check["feeds"] == 4 and 0 < check["logits"] < check["logit_scale"]


def test_int8_bundle_runs_the_pipeline(int8, sample_video, tmp_path, calib):
    from rlivs.runtime.memory import Memory
    from rlivs.runtime.answer import answer

    from rlivs.runtime.engine import load_engine

    from rlivs.runtime.ingest import StreamIngestor

    engine = load_engine(int8, config=calib.pipeline_config())
    assert engine.backend.name == "onnxruntime"
    with Memory(tmp_path / "m.db", model_fingerprint=engine.model_fingerprint) as mem:
        ing = StreamIngestor(engine, mem, stream="s", source=str(sample_video))
        results = ing.run(ing.clips_from_file(sample_video), max_clips=3)
        assert [r.index for r in results] == [0, 1, 2] and all(len(r.kept) == 25 for r in results)
        assert ing.fifo.n_tokens == 75
        a = answer(engine, mem, "what moved?")
        assert a.used


def test_calibration_cache_is_reused(int8, bundle, calib, tmp_path):
    import onnxruntime as ort

    from rlivs.calibration.quantize import DecoderFeeds, quantize_bundle
    from rlivs.runtime.backends.onnxruntime import load_manifest
    from rlivs.runtime.engine import load_engine

    first = load_manifest(int8).precision
    assert not first["calibration_cache_reused"] and Path(first["calibration_cache"]).is_file()
    again = quantize_bundle(bundle, calib, tmp_path / "again", QuantizeConfig(precision="int8")).precision
    assert again["calibration_cache_reused"] and again["calibration_cache"] == first["calibration_cache"]
    feed = DecoderFeeds(load_engine(bundle, config=calib.pipeline_config()), calib).get_first()
    a = ort.InferenceSession(str(int8 / "decoder.onnx")).run(None, feed)
    b = ort.InferenceSession(str(tmp_path / "again" / "decoder.onnx")).run(None, feed)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_int8_qoperator_fuses_every_quantized_matmul(int8, bundle, calib, tmp_path):
    """QOperator int8 (ORT's fast CPU form) reuses the QDQ run's cached ranges; every quantized MatMul is a
    QLinearMatMul and the probe q/k projections stay float MatMuls."""
    import onnx

    from rlivs.calibration.quantize import quantize_bundle
    from rlivs.runtime.engine import load_engine

    m = quantize_bundle(bundle, calib, tmp_path / "qop", QuantizeConfig(precision="int8", format="qoperator")).to_dict()
    assert m["precision"]["calibration_cache_reused"] and m["precision"]["format"].startswith("QOperator")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "qop" / "decoder.onnx")).graph.node]
    probe_qk = 2 * len(m["probe_layers"])
    attention = 0 if "Attention" in ops else 2 * 8  # opset 20: q.k and probs.v per layer, activations only (float)
    assert ops.count("QLinearMatMul") == 7 * 8 - probe_qk
    assert ops.count("MatMul") == probe_qk + len(m["probe_layers"]) + attention
    engine = load_engine(tmp_path / "qop", config=calib.pipeline_config())
    it = calib.split("heldout")[0]
    ctx, _ = calib.context(engine, it, engine.backend.encode_frames(calib.pixels(it)))
    out = engine.backend.step(ctx, engine.backend.new_state())
    assert np.isfinite(out.logits).all() and out.probe_attn.shape == (1, len(ctx))


def test_int4_weight_only_bundle_loads_and_runs(int4, calib):
    import onnx

    from rlivs.runtime.backends.onnxruntime import load_manifest
    from rlivs.runtime.generate import greedy
    from rlivs.runtime.engine import load_engine

    m = load_manifest(int4).to_dict()
    ops = [n.op_type for n in onnx.load(str(int4 / "decoder.onnx")).graph.node]
    probe_qk = 2 * len(m["probe_layers"])
    assert ops.count("MatMulNBits") == 7 * 8 - probe_qk  # q, k, v, o, gate, up, down per layer, probe q/k excepted
    assert ops.count("Softmax") == len(m["probe_layers"]) + (0 if "Attention" in ops else 8)  # opset 20: every layer
    engine = load_engine(int4, config=calib.pipeline_config())
    it = calib.split("heldout")[0]
    visual = engine.backend.encode_frames(calib.pixels(it))
    ctx, cols = calib.context(engine, it, visual)
    gen = greedy(engine.backend, ctx, 8, engine.text.eos_ids, cols)
    assert gen.scores.shape == (100,) and np.isfinite(gen.scores).all() and gen.scores.sum() > 0


def test_bad_inputs_fail_with_a_fix(int8, calib, tmp_path, engine):
    from rlivs.calibration.quantize import quantize_bundle

    with pytest.raises(ValueError, match="already quantized"):
        quantize_bundle(int8, calib, tmp_path / "x")
    with pytest.raises(ValueError, match="precision must be one of"):
        QuantizeConfig(precision="int3")
    with pytest.raises(ValueError, match="not a calibration set"):
        CalibrationSet(tmp_path)
    with pytest.raises(ValueError, match="torch reference"):
        from rlivs.runtime.engine import load_engine

        calibrate_layers(load_engine(int8, config=calib.pipeline_config()), calib)


# ---------------------------------------------------------------------------------------------------------------------
# The fidelity report
# ---------------------------------------------------------------------------------------------------------------------


def test_compare_computes_each_field():
    from rlivs.calibration.report import compare, token_agreement

    assert token_agreement([1, 2, 3], [1, 5, 3, 4]) == 0.5 and token_agreement([], []) == 1.0
    e = np.eye(4, dtype=np.float32)
    row = lambda i, ids, kept, vec, s: {"id": i, "ids": ids, "kept": kept, "vector": vec, "vision_s": s,  # noqa: E731
                                        "prefill_s": 2 * s, "decode_s": 3 * s, "steps": 4, "context": 10}
    ref = {"rows": [row("a", [1, 2], [0, 1, 2, 3], e[0], 0.1), row("b", [3], [4, 5, 6, 7], e[1], 0.1),
                    row("c", [4], [1, 2, 3, 4], e[2], 0.1)],
           "queries": [e[0], e[1]], "load_s": 0.5, "peak_rss_mb": 100.0, "base_rss_mb": 60.0}
    run = {"rows": [row("a", [1, 9], [0, 1, 8, 9], e[0], 0.2), row("b", [3], [4, 5, 6, 7], e[2], 0.2),
                    row("c", [4, 4], [1, 2, 3, 4], e[1], 0.4)],
           "queries": [], "load_s": 0.5, "peak_rss_mb": 90.0, "base_rss_mb": 60.0}
    c = compare(ref, run, retrieval_k=1, mmr_lambda=1.0)
    assert c["selected_overlap"] == pytest.approx((0.5 + 1 + 1) / 3) and c["selected_overlap_min"] == 0.5
    assert c["caption_token_agreement"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert c["caption_identical"] == pytest.approx(1 / 3)
    assert c["retrieval_agreement"] == pytest.approx(0.5)  # query e0 finds clip a in both; e1 finds b vs c
    assert c["vision_ms"] == pytest.approx(200.0) and c["decode_ms_per_token"] == pytest.approx(200.0)
    assert c["peak_rss_delta_mb"] == 30.0


def test_report_on_tiny_precisions(calib, bundle, int8, int4, tmp_path):
    from rlivs.calibration.report import fidelity_report, run_bundle, update_doc, write_report

    rep = fidelity_report(calib, bundle, {"int8": int8, "int4": int4}, ReportConfig(threads=1), command="pytest")
    rows = {r["precision"]: r for r in rep["rows"]}
    assert list(rows) == ["fp32", "int8", "int4"] and rep["heldout_clips"] == N_HELD
    assert rows["fp32"]["selected_overlap"] == 1.0 and rows["fp32"]["caption_identical"] == 1.0
    for r in rows.values():
        assert r["vision_ms"] > 0 and r["prefill_ms"] > 0 and r["peak_rss_mb"] > 50 and r["retrieval_k"] == 2
    assert rows["int4"]["decoder_mb"] < rows["int8"]["decoder_mb"] < rows["fp32"]["decoder_mb"]
    # recompute int8's selected-token overlap in this process from scratch
    ref, run = run_bundle(str(bundle), str(calib.path), 1), run_bundle(str(int8), str(calib.path), 1)
    want = np.mean([len(set(a["kept"]) & set(b["kept"])) / 25 for a, b in zip(ref["rows"], run["rows"])])
    assert rows["int8"]["selected_overlap"] == pytest.approx(want)
    assert [r["ids"] for r in ref["rows"]] == [it.caption_ids for it in calib.split("heldout")]
    md = write_report(rep, tmp_path / "r.json", tmp_path / "r.md", title="tiny")
    assert json.loads((tmp_path / "r.json").read_text())["rows"][1]["precision"] == "int8"
    assert md.count("\n| ") == 4 and "Made by: `pytest`" in md
    doc = tmp_path / "doc.md"
    doc.write_text("# Doc\n\nprose\n")
    update_doc(doc, "tiny", md)
    update_doc(doc, "tiny", md.replace("int8", "INT8"))
    text = doc.read_text()
    assert text.startswith("# Doc\n\nprose\n") and text.count("rlivs-calibration-report:tiny -->") == 2
    assert "INT8" in text and "| int8" not in text


# ---------------------------------------------------------------------------------------------------------------------
# The CLI
# ---------------------------------------------------------------------------------------------------------------------


def test_cli_collect_layers_quantize_report(sample_video, bundle, tmp_path, tiny_dir):
    from tests.helpers.cli import run_cli

    def run(*args):
        r = run_cli(*args)
        assert r.exit_code == 0, r.output
        return r.stdout

    cal = tmp_path / "calib"
    run("calibrate", "collect", "--video", sample_video, "--out", cal, "--fps", 2, "--frames-per-clip", 4,
        "--keep-ratio", 0.25, "--max-caption-tokens", 8, "--clips", 4, "--heldout", 2, "--warmup", 0)
    assert len(CalibrationSet(cal).items) == 6
    out = run("calibrate", "layers", "--calib", cal, "--num-layers", 3, "--json")
    assert len(json.loads(out)["chosen"]["layers"]) == 3
    # the bundle fixture was collected with another set: quantizing it with this one is fine (same model)
    run("calibrate", "quantize", "--bundle", bundle, "--calib", cal, "--out", tmp_path / "q8")
    doc = tmp_path / "doc.md"
    out = run("calibrate", "report", "--calib", cal, "--reference", bundle, "--candidate", f"int8={tmp_path / 'q8'}",
              "--out", tmp_path / "rep.json", "--doc", doc, "--section", "cli", "--no-isolate", "--threads", 1)
    assert "| int8 |" in doc.read_text()
    assert json.loads((tmp_path / "rep.json").read_text())["command"] == (
        f"rlivs calibrate report --calib {cal} --reference {bundle} --candidate int8={tmp_path / 'q8'} --out "
        f"{tmp_path / 'rep.json'} --doc {doc} --section cli --threads 1 --no-isolate")
    r = run_cli("calibrate", "report", "--calib", cal, "--reference", bundle, "--candidate", "oops",
                "--out", tmp_path / "x.json", catch_exceptions=True)
    assert r.exit_code == 2 and "NAME=BUNDLE" in r.output


def test_calibrate_cli_module_imports_without_torch(tmp_path):
    out = run_without_torch("""
        import rlivs.edge_app.commands.calibrate, rlivs.calibration.config, rlivs.calibration.dataset
        import rlivs.calibration.layers, rlivs.calibration.report
        assert TORCH_FREE()
        print('OK')
    """, tmp_path)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr


# ModelOpt patches onnxruntime.quantization process-wide when it quantizes: its tests run last.
@pytest.mark.skipif(not __import__("importlib").util.find_spec("modelopt"), reason="NVIDIA ModelOpt not installed")
@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_modelopt_qdq_runs_on_ort_cpu(bundle, calib, tmp_path, precision):
    """The TensorRT path's quantizer (ModelOpt ONNX PTQ: int8 max, int4 AWQ-lite) gives graphs ORT CPU runs."""
    import onnx

    from rlivs.calibration.quantize import quantize_bundle
    from rlivs.runtime.generate import greedy
    from rlivs.runtime.engine import load_engine

    m = quantize_bundle(bundle, calib, tmp_path / "mo", QuantizeConfig(precision=precision, tool="modelopt")).to_dict()
    assert m["precision"]["tool"].startswith("nvidia-modelopt")
    g = onnx.load(str(tmp_path / "mo" / "decoder.onnx")).graph
    prod = _producers(g)
    assert any(n.op_type == "DequantizeLinear" for n in g.node)
    kept = set(m["precision"]["float_nodes"]["names"])  # probe path + probe q/k: no input through a DQ
    checked = [n for n in g.node if n.name in kept and n.op_type in ("MatMul", "Softmax")]
    assert len(checked) == 4 * len(m["probe_layers"])  # q_proj, k_proj, score MatMul, Softmax per probe layer
    for n in checked:
        assert all(prod.get(i) is None or prod[i].op_type != "DequantizeLinear" for i in n.input), n.name
    engine = load_engine(tmp_path / "mo", config=calib.pipeline_config())
    it = calib.split("heldout")[0]
    ctx, cols = calib.context(engine, it, engine.backend.encode_frames(calib.pixels(it)))
    assert greedy(engine.backend, ctx, 4, engine.text.eos_ids, cols).scores.shape == (100,)
