"""The short version of the soak (bench/soak.py; its full-day figures are in docs/reliability.md): 24 minutes of
stream time at 1 fps in 16-frame clips (90 clips), through the edge service's per-clip path, with questions every 10
clips. Bounds that must hold however long the stream: the FIFO, the database's bytes per clip, resident memory."""

import importlib.util
import json
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"


def _load_soak():
    spec = importlib.util.spec_from_file_location("rlivs_bench_soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def figures(bundle, tmp_path_factory):
    out = _load_soak().soak(bundle, tmp_path_factory.mktemp("soak"), hours=0.4, checkpoint=10, log=lambda s: None)
    print(json.dumps({k: v for k, v in out.items() if k != "checkpoints"}))
    return out


def test_short_soak_stays_bounded_and_linear(figures):
    f = figures
    assert f["clips"] == f["clips_planned"] == 90 and f["stream_hours"] == pytest.approx(0.4)
    # the FIFO never exceeds 16 clips of 25 tokens (checked after every clip inside the run too)
    assert f["fifo_max_clips"] == 16 and f["fifo_max_tokens"] == 400 and f["fifo_bound"] == [16, 400]
    # the memory grows by what a clip row takes (vector 64 x 4 B, a caption of <= 16 tokens, the keys), linearly;
    # the FIFO rows are a constant once the FIFO is full
    fit = f["memory_db"]["fit_used_bytes_per_clip"]
    assert 256 < fit["slope"] < 1500 and fit["r2"] > 0.95, fit
    assert f["memory_db"]["end_used"] < 16 * 6400 * 2 + 90 * 1500
    # the watch/thumbnail store grows by a thumbnail (a 160 px JPEG) and a match row per clip
    efit = f["edge_db"]["fit_used_bytes_per_clip"]
    assert 1000 < efit["slope"] < 20_000 and efit["r2"] > 0.95, efit
    # the WAL stays at SQLite's auto-checkpoint size (1000 pages) plus a transaction, whatever the stream length
    assert f["memory_db"]["max_wal"] < 6_000_000 and f["edge_db"]["max_wal"] < 6_000_000
    # resident memory: what the run adds to this process (ONNX Runtime's arenas, decoders, SQLite caches) is bounded;
    # the full-day run shows the plateau (absolute figures depend on what else the test process has loaded)
    assert f["rss_mb"]["max"] - f["rss_mb"]["before_first_clip"] < 300, f["rss_mb"]
    # questions at every 10th clip, each answered from captions (soak asserts it as it goes). Their latency is a
    # benchmark figure (bench/soak.py, docs/reliability.md), not asserted here: a busy machine once made this 75 s
    assert [c["clips"] for c in f["checkpoints"]] == list(range(10, 91, 10))
