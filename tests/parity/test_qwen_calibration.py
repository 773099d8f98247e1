"""Probe-layer calibration with Qwen2.5-VL (M-RoPE) on the torch reference: the set stores the contexts' 3-D position
ids as the pipeline built them (FIFO tokens at their original (t, h, w)), the per-layer scores average to exactly
the pipeline's scores, the search keeps to the backbone's `probe_candidates`, and quantization (which would feed the
decoder 1-D positions) refuses a Qwen bundle before anything loads.

One tiny set: the 20 s sample video at 2 fps, 4-frame clips (2 temporal patches of 4x4 merged tokens = 32 tokens,
8 kept), 4 calib + 2 held-out clips, FIFO of 2 clips built from the video's start.
"""

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")

from rlivs.calibration.config import CollectConfig, LayerSearchConfig  # noqa: E402
from rlivs.calibration.dataset import CalibrationSet, collect  # noqa: E402
from rlivs.calibration.layers import calibrate_layers, item_layer_scores, search_layers  # noqa: E402
from rlivs.runtime.config import SelectionConfig  # noqa: E402
from tests.helpers.cli import run_cli  # noqa: E402
from tests.helpers.configs import small_config  # noqa: E402

N_CALIB, N_HELD = 4, 2


@pytest.fixture(scope="module")
def engine():
    from rlivs.runtime.engine import load_engine

    cfg = small_config(caption_tokens=6, fps=2.0, fifo_clips=2, selection=SelectionConfig(keep_ratio=0.25))
    return load_engine("tiny-qwen", config=cfg)


@pytest.fixture(scope="module")
def calib(tmp_path_factory, engine, sample_video):
    out = tmp_path_factory.mktemp("qwen-calib") / "set"
    collect([sample_video], out, engine, CollectConfig(n_calib=N_CALIB, n_heldout=N_HELD, warmup_clips=None))
    return CalibrationSet(out)


def test_collect_stores_the_pipelines_mrope_contexts(calib, engine, sample_video, tmp_path):
    """Each item's FIFO, 3-D positions and caption equal what an ingest of the video builds for that clip."""
    from rlivs.runtime.frames import iter_clips
    from rlivs.runtime.ingest import StreamIngestor
    from rlivs.runtime.memory import Memory
    from rlivs.runtime.sources.file import VideoFileSource

    by_clip = {it.clip: it for it in calib.items}
    assert len(by_clip) == N_CALIB + N_HELD
    clips = list(iter_clips(VideoFileSource(sample_video, fps=2.0), 4, 2.0))
    seen = 0
    with Memory(tmp_path / "m.db", model_fingerprint=engine.model_fingerprint) as mem:
        ing = StreamIngestor(engine, mem, stream="s", source=str(sample_video))
        for clip in clips[: max(by_clip) + 1]:
            inp = ing.caption_input(clip)
            out = engine.caption_clip(inp.frames, inp.fifo_tokens, inp.index, fifo_clips=inp.fifo_clips)
            ing.commit(clip, out)
            it = by_clip.get(clip.index)
            if it is None:
                continue
            np.testing.assert_array_equal(calib.fifo(it), inp.fifo_tokens)
            np.testing.assert_array_equal(calib.positions(it), out.positions)
            assert calib.positions(it).shape == (3, out.context_tokens)
            assert it.caption_ids == out.caption_ids
            seen += 1
    assert seen == N_CALIB + N_HELD
    later = next(it for it in calib.items if len(it.fifo_clips) == 2)
    pos = calib.positions(later)
    assert not np.array_equal(pos[0], pos[1])  # 3-D: the temporal axis differs from the rows' (not 1-D positions)


def test_all_layer_scores_are_the_pipelines_scores_with_mrope(engine, calib):
    """The mean of the per-layer scores over the probe layers = the pipeline's greedy scores on the same 3-D
    positions (the prefill's and every caption token's after it), and the teacher-forced caption is the greedy one."""
    from rlivs.runtime.generate import greedy

    be = engine.backend
    it = next(i for i in calib.split("calib") if len(i.fifo_clips) == 2)
    x = item_layer_scores(engine, calib, it)  # (L, C)
    assert x.shape == (be.info.num_layers, 32)
    visual = be.encode_frames(calib.pixels(it))
    ctx, cols = calib.context(engine, it, visual)
    gen = greedy(be, ctx, 6, engine.text.eos_ids, cols, positions=calib.positions(it))
    assert gen.ids == it.caption_ids
    np.testing.assert_allclose(x[list(be.info.probe_layers)].mean(0), gen.scores, atol=1e-6, rtol=1e-5)
    # with 1-D positions the scores are others: the stored positions are what the scores were computed on
    flat = greedy(be, ctx, 6, engine.text.eos_ids, cols)
    assert not np.allclose(flat.scores, gen.scores, atol=1e-6, rtol=1e-5)


def test_layers_keep_to_the_backbones_probe_candidates(engine, calib, monkeypatch):
    res = calibrate_layers(engine, calib, LayerSearchConfig(num_layers=2))
    n = engine.backend.info.num_layers
    assert res["backbone"] == "qwen2_5_vl" and res["candidates"] == list(range(n))
    assert res["search"]["subsets_evaluated"] == n * (n - 1) // 2 and len(res["chosen"]["layers"]) == 2
    # a family that probes only some layers: the search never leaves them (the reference stays all layers)
    monkeypatch.setattr(type(engine.backbone), "probe_candidates", lambda self, n_layers: (1, 3, 4))
    res = calibrate_layers(engine, calib, LayerSearchConfig(num_layers=2))
    assert res["candidates"] == [1, 3, 4] and set(res["chosen"]["layers"]) <= {1, 3, 4}
    assert res["search"]["subsets_evaluated"] == 3
    assert len(res["per_layer"]) == n


def test_greedy_search_keeps_to_the_candidates():
    from rlivs.calibration.layers import ClipScores

    rng = np.random.default_rng(0)
    layers = rng.random((10, 200))
    layers[2] += 3 * layers.mean(0)  # layer 2 alone tracks the reference best, but it is not a candidate
    clips = [ClipScores(layers, 20)]
    res = search_layers(clips, LayerSearchConfig(num_layers=3, max_exhaustive=1), candidates=[0, 4, 5, 7, 9])
    assert res.method == "greedy+swap" and set(res.layers) <= {0, 4, 5, 7, 9} and len(res.layers) == 3
    with pytest.raises(ValueError, match="cannot choose 3 probe layers from a 10-layer decoder \\(2 of them"):
        search_layers(clips, LayerSearchConfig(num_layers=3), candidates=[0, 1])


def test_cli_collect_and_layers_with_qwen_and_quantize_refused(sample_video, tmp_path):
    from rlivs.runtime.backends.torch.tiny import ensure_random_model

    qwen = tmp_path / "qwen"
    shutil.copytree(ensure_random_model("tiny-qwen"), qwen)
    cal = tmp_path / "calib"
    r = run_cli("calibrate", "collect", "--video", sample_video, "--out", cal, "--model", qwen, "--fps", 2,
                "--frames-per-clip", 4, "--keep-ratio", 0.25, "--max-caption-tokens", 6, "--clips", 3, "--heldout", 1,
                "--warmup", 2)
    assert r.exit_code == 0, r.output
    cs = CalibrationSet(cal)
    assert len(cs.items) == 4 and all(cs.positions(it) is not None for it in cs.items)
    r = run_cli("calibrate", "layers", "--calib", cal, "--model", qwen, "--num-layers", 3, "--json")
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["chosen"]["layers"]) == 3
    # a bundle of a Qwen model: quantization would feed its decoder 1-D positions; refused before anything loads
    fake = tmp_path / "qwen-bundle"
    fake.mkdir()
    shutil.copy(qwen / "config.json", fake / "config.json")
    r = run_cli("calibrate", "quantize", "--bundle", fake, "--calib", cal, "--out", tmp_path / "q8")
    assert r.exit_code == 2
    said = " ".join(r.output.split())
    assert "rlivs calibrate quantize does not support Qwen2.5-VL bundles yet" in said
    assert "calibrate collect and layers run on Qwen2.5-VL with the torch backend" in said
    assert not (tmp_path / "q8").exists()
