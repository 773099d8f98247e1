"""bench/cameras.py --service (issue 26, overload measured on the wall clock) runs the service's own ingest path:
StreamWorker threads over live replays sharing one ModelTurns. A short run on the tiny model, checked for what must
hold whatever the timing: every clip accounted for once, the batch sizes add up to the captions, active clips first,
at most one clip per camera waiting, every sample time of each camera either handed out or counted as dropped."""

import importlib.util
from argparse import Namespace
from pathlib import Path

CAMERAS = Path(__file__).resolve().parents[2] / "bench" / "cameras.py"


def _bench():
    spec = importlib.util.spec_from_file_location("rlivs_bench_cameras", CAMERAS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_service_mode_accounts_for_every_clip_through_the_real_workers(tiny_dir):
    from rlivs.runtime.config import CaptionConfig, ClipConfig, EngineConfig, PipelineConfig
    from rlivs.runtime.engine import load_engine

    config = PipelineConfig(clip=ClipConfig(fps=1.0, frames_per_clip=8), caption=CaptionConfig(max_new_tokens=8))
    engine = load_engine(EngineConfig(model="tiny", threads=1, kv_cache="dynamic"), config)
    args = Namespace(seconds=64.0, idle_fraction=0.5, size=(160, 120), seed=0, gate_threshold=0.005,
                     gate_max_idle=16.0, speed=16.0, max_lag=0.5)
    r = _bench().run_service(engine, 2, args, batch=2)
    assert r["workers"] == ["finished", "finished"] and r["errors"] == []
    assert r["clips"] == r["captioned"] + r["gated"] + r["skipped"] == sum(r["clips_per_camera"]) > 0
    assert r["skipped"] == sum(r["skipped_why"].values()) and set(r["skipped_why"]) <= {"lag"}
    sizes = {int(k): v for k, v in r["batch_sizes"].items()}
    assert set(sizes) <= {1, 2} and sum(sizes.values()) == r["model_calls"]
    assert sum(k * v for k, v in sizes.items()) == r["captioned"]  # each caption came from exactly one call
    assert r["forced_granted_while_active_waited"] == 0 and 1 <= r["most_waiting"] <= 2 and r["waiting_at_end"] == 0
    for sampled, dropped in zip(r["frames_sampled"], r["frames_dropped"]):
        assert sampled + dropped <= 64 and sampled >= 8  # the 64 sample times: handed out or dropped, never queued
    assert r["events_seen"] + r["events_between_clips"] == r["events"] > 0
    assert len(r["rss_mib_max_per_quarter"]) == 4
    assert all(p is not None for p in r["lag_p95_s"])
