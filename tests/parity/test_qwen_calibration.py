"""Probe-layer calibration with the Qwen-VL families (M-RoPE; Qwen3-VL also DeepStack) on the torch reference: the
set stores the contexts as the pipeline built them (3-D position ids, FIFO tokens at their original (t, h, w); the
FIFO's clips, kept indices and, Qwen3-VL, their DeepStack features), the per-layer scores average to exactly the
pipeline's scores (the prefill gets the stored positions and the DeepStack features, as in captioning), and the
search keeps to the backbone's `probe_candidates`. Quantization and the fidelity report of Qwen bundles:
tests/app/test_qwen_cli.py.

One tiny set per family (tiny-qwen, tiny-qwen3): the 20 s sample video at 2 fps, 4-frame clips (2 temporal patches),
keep 25 %, 4 calib + 2 held-out clips, FIFO of 2 clips built from the video's start.
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
BACKBONE = {"tiny-qwen": "qwen2_5_vl", "tiny-qwen3": "qwen3_vl"}


@pytest.fixture(scope="module", params=list(BACKBONE))
def engine(request):
    from rlivs.runtime.engine import load_engine

    cfg = small_config(caption_tokens=6, fps=2.0, fifo_clips=2, selection=SelectionConfig(keep_ratio=0.25))
    return load_engine(request.param, config=cfg)


@pytest.fixture(scope="module")
def calib(tmp_path_factory, engine, sample_video):
    out = tmp_path_factory.mktemp("qwen-calib") / "set"
    collect([sample_video], out, engine, CollectConfig(n_calib=N_CALIB, n_heldout=N_HELD, warmup_clips=None))
    return CalibrationSet(out)


def test_collect_stores_the_pipelines_mrope_contexts(calib, engine, sample_video, tmp_path):
    """Each item's FIFO (its clips, kept indices and DeepStack features), 3-D positions and caption equal what an
    ingest of the video builds for that clip."""
    from rlivs.runtime.frames import iter_clips
    from rlivs.runtime.ingest import StreamIngestor
    from rlivs.runtime.memory import Memory
    from rlivs.runtime.sources.file import VideoFileSource

    by_clip = {it.clip: it for it in calib.items}
    assert len(by_clip) == N_CALIB + N_HELD and len(calib.split("heldout")) == N_HELD
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
            stored = calib.fifo_clips(it)
            assert [(f.index, f.n) for f in stored] == [(f.index, f.n) for f in inp.fifo_clips]
            for a, b in zip(stored, inp.fifo_clips):
                np.testing.assert_array_equal(a.kept, b.kept)
                if engine.backbone.deepstack:  # Qwen3-VL: the FIFO tokens' features, as the ingest's FIFO holds them
                    assert b.deepstack is not None
                    np.testing.assert_array_equal(a.deepstack, b.deepstack)
                else:
                    assert a.deepstack is None
            seen += 1
    assert seen == N_CALIB + N_HELD
    later = next(it for it in calib.items if len(it.fifo_clips) == 2)
    pos = calib.positions(later)
    assert not np.array_equal(pos[0], pos[1])  # 3-D: the temporal axis differs from the rows' (not 1-D positions)


def test_all_layer_scores_are_the_pipelines_scores_with_mrope(engine, calib):
    """The mean of the per-layer scores over the probe layers = the pipeline's greedy scores on the same 3-D
    positions (the prefill's and every caption token's after it) and, Qwen3-VL, the same DeepStack features; the
    teacher-forced caption is the greedy one."""
    from rlivs.runtime.generate import greedy

    be = engine.backend
    it = next(i for i in calib.split("calib") if len(i.fifo_clips) == 2)
    x = item_layer_scores(engine, calib, it)  # (L, C)
    ctx, cols, positions, deep = calib.prefill(engine, it)
    gen = greedy(be, ctx, 6, engine.text.eos_ids, cols, positions=positions, deepstack=deep)
    assert gen.ids == it.caption_ids
    assert x.shape == (be.info.num_layers, len(gen.scores)) and len(cols) == len(gen.scores)
    np.testing.assert_allclose(x[list(be.info.probe_layers)].mean(0), gen.scores, atol=1e-6, rtol=1e-5)
    # with 1-D positions (or, Qwen3-VL, without the DeepStack features) the scores are others: what the layer
    # search scores is what the pipeline scored
    flat = greedy(be, ctx, 6, engine.text.eos_ids, cols, deepstack=deep)
    assert not np.allclose(flat.scores, gen.scores, atol=1e-6, rtol=1e-5)
    if engine.backbone.deepstack:
        assert deep is not None and len(deep[0]) > len(cols)  # the FIFO's rows get their features too
        bare = greedy(be, ctx, 6, engine.text.eos_ids, cols, positions=positions)
        assert not np.allclose(bare.scores, gen.scores, atol=1e-6, rtol=1e-5)


def test_layers_keep_to_the_backbones_probe_candidates(engine, calib, monkeypatch):
    res = calibrate_layers(engine, calib, LayerSearchConfig(num_layers=2))
    n = engine.backend.info.num_layers
    assert res["backbone"] == engine.backbone.name and res["candidates"] == list(range(n))
    assert res["search"]["subsets_evaluated"] == n * (n - 1) // 2 and len(res["chosen"]["layers"]) == 2
    # a family that probes only some layers: the search never leaves them (the reference stays all layers)
    some = (1, n - 2, n - 1)
    monkeypatch.setattr(type(engine.backbone), "probe_candidates", lambda self, n_layers: some)
    res = calibrate_layers(engine, calib, LayerSearchConfig(num_layers=2))
    assert res["candidates"] == list(some) and set(res["chosen"]["layers"]) <= set(some)
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


@pytest.mark.parametrize("size", list(BACKBONE))
def test_cli_collect_and_layers_with_qwen(sample_video, tmp_path, size):
    from rlivs.runtime.backends.torch.tiny import ensure_random_model

    qwen = tmp_path / "qwen"
    shutil.copytree(ensure_random_model(size), qwen)
    cal = tmp_path / "calib"
    r = run_cli("calibrate", "collect", "--video", sample_video, "--out", cal, "--model", qwen, "--fps", 2,
                "--frames-per-clip", 4, "--keep-ratio", 0.25, "--max-caption-tokens", 6, "--clips", 3, "--heldout", 1,
                "--warmup", 2)
    assert r.exit_code == 0, r.output
    cs = CalibrationSet(cal)
    assert len(cs.items) == 4 and all(cs.positions(it) is not None for it in cs.items)
    r = run_cli("calibrate", "layers", "--calib", cal, "--model", qwen, "--num-layers", 3, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert len(res["chosen"]["layers"]) == 3 and res["backbone"] == BACKBONE[size]
