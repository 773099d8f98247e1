"""The one-shot GPU run (bench/gpu/run.sh calls this after installing the carried wheels; docs/benchmarks.md).

Stages, each timed and written to OUT/gpu_run.json as soon as it ends (a run cut short still returns what it did):

  env        Python, torch, CUDA device, and which transformers is imported (the carried one, not the image's)
  gpu_tests  the `gpu`-marked tests (tests/gpu), counted from their JUnit XML
  build      the random-weight models, built locally (random-0.5b: the real 0.5B shapes)
  qwen       bench/clip_step.py at the first dtype, torch (dynamic cache: M-RoPE has no static cache yet), LLaVA-OV-0.5B
             next to Qwen2.5-VL-3B (real shapes, random weights built in memory) in one run: encode, prefill, decode
             per token, peak GPU memory, tokens per clip and FIFO size for both (--small: tiny next to tiny-qwen)
  parity     per model: the torch backend on the device against the CPU float32 reference (dynamic cache, TF32 off:
             captions, clip scores, selections), the static cache + CUDA graph in float32, and float16 / bfloat16 on
             the fast path; for random-0.5b also at the paper's context against the float32 reference on the device
  bench      bench/clip_step.py, torch (dynamic) vs torch_fast (static + CUDA graph), per dtype: per-stage latency,
             real-time factor at 1 fps, question -> answer latency, peak GPU memory, whether the graph was used
  cameras    bench/cameras.py at the first dtype: 1 and 8 synthetic cameras (80 % idle) with the activity gate, at
             --batch 1, 4 and 8: clips captioned vs gated, events missed, per-camera lag p50/p95, model calls, and
             how many such cameras the device keeps in real time per batch size (rehearsal: 2 cameras, --batch 1,2)
  batch      bench/batch.py at the first dtype: B clips captioned together (one batched decoder step per token) vs one
             at a time, B = 1, 2, 4, 8: decode tokens/s, clips/s, and every batched caption equal to its clip alone
  cameras_live  bench/cameras.py --service: 8 cameras replayed live at 16x through the service's workers and one
             ModelTurns at --batch 8, --max-lag 5: per-camera lag p50/p95 (first and second half), skipped clips by
             reason, active-first grants, frames dropped, waiting line (rehearsal: 2 cameras, --batch 2; needs PyAV,
             carried by prepare.py)

    python bench/gpu/run.py --out OUT                               # on the GPU (through run.sh)
    python bench/gpu/run.py --out OUT --device cpu --small          # the CPU rehearsal: same code, tiny shapes

Prints one JSON object (the summary) as its last line. A stage that would start past --budget-s is skipped and
named in "skipped".
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# (model, frames per clip, caption tokens, clips) of the CPU-vs-device parity runs; random-0.5b small: the CPU
# float32 reference of a 0.5B clip at full size would take minutes
PARITY_SHAPES = {"tiny": (16, 16, 4), "tiny-gqa": (16, 16, 4), "random-0.5b": (2, 8, 2)}
# the paper's context for the full-size comparison on the device: 16 frames after a full FIFO, 128 caption tokens
FULL = {"frames": 16, "fifo_clips": 16, "caption_tokens": 128}


class Run:
    def __init__(self, args):
        self.args, self.t0 = args, time.perf_counter()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.result = {"device": args.device, "small": args.small, "budget_s": args.budget_s, "stages": {},
                       "skipped": []}

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.t0)

    def stage(self, name: str, fn, need_s: float = 0.0) -> None:
        if self.left() < need_s:
            self.result["skipped"].append(f"{name}: {self.left():.0f} s left of the budget, {need_s:.0f} s needed")
            return
        t = time.perf_counter()
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 - a stage's failure is a result; the next stages still run
            import traceback

            out = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        out["wall_s"] = round(time.perf_counter() - t, 2)
        self.result["stages"][name] = out
        self.save()
        print(f"[{time.perf_counter() - self.t0:6.1f} s] {name}: {json.dumps(out)[:400]}", file=sys.stderr,
              flush=True)

    def save(self) -> None:
        self.result["elapsed_s"] = round(time.perf_counter() - self.t0, 2)
        (self.out / "gpu_run.json").write_text(json.dumps(self.result, indent=1))


def env_stage(args) -> dict:
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": cuda, "gpu": torch.cuda.get_device_name() if cuda else None,
            "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
            "transformers": transformers.__version__, "transformers_from": str(Path(transformers.__file__).parent),
            "cpu_threads": torch.get_num_threads()}


def gpu_tests_stage(args, out: Path, timeout: float) -> dict:
    xml = out / "gpu_tests.xml"
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gpu",
                        f"--junitxml={xml}"], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    counts = {"rc": p.returncode, "tail": p.stdout[-1500:]}
    if xml.exists():
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        counts.update(n, passed=n["tests"] - n["failures"] - n["errors"] - n["skipped"])
    return counts


def build_stage(models: list[str]) -> dict:
    from rlivs.runtime.models import resolve_model

    out = {}
    for m in models:
        t = time.perf_counter()
        resolve_model(m)
        out[m] = round(time.perf_counter() - t, 1)
    return {"built_s": out}


def _engine(model: str, device: str, dtype: str, cache: str, cuda_graph, caption_tokens: int, frames: int,
            fifo_clips: int = 2):
    from rlivs.runtime.backends.torch import TorchBackend
    from rlivs.runtime.config import CaptionConfig, ClipConfig, FifoConfig, PipelineConfig
    from rlivs.runtime.engine import Engine
    from rlivs.runtime.frames import FramePreprocessor
    from rlivs.runtime.models import resolve_model
    from rlivs.runtime.text import TextCodec

    model_dir, model_id = resolve_model(model)
    be = TorchBackend(model_dir, model_id=model_id, device=device, dtype=dtype, cache=cache, cuda_graph=cuda_graph)
    cfg = PipelineConfig(clip=ClipConfig(frames_per_clip=frames), fifo=FifoConfig(capacity_clips=fifo_clips),
                         caption=CaptionConfig(max_new_tokens=caption_tokens))
    return Engine(be, TextCodec(model_dir), FramePreprocessor.from_model_dir(model_dir), cfg)


def compare(ref: list[dict], got: list[dict]) -> dict:
    """rlivs.runtime.selftest's comparison, plus the per-clip seconds of the run under test."""
    from rlivs.runtime.selftest import compare_runs

    return {**compare_runs(ref, got), "clip_s": [round(g["s"], 3) for g in got]}


def _free() -> None:
    """Return the device memory of engines the caller has dropped (the next variant loads its own copy)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def parity_stage(args, model: str) -> dict:
    """The device against the CPU float32 reference (TF32 off for float32 on CUDA), then half precision on the fast
    path against the float32 reference."""
    import torch

    from rlivs.runtime.selftest import SelfTestConfig, caption_clips, synthetic_clips

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    frames, tokens, n = PARITY_SHAPES[model]
    if args.small:
        frames, tokens = min(frames, 4), min(tokens, 8)
    clips = synthetic_clips(SelfTestConfig(clips=n, frames=frames))
    variants = {"cpu_fp32": ("cpu", "float32", "dynamic", False)}
    dev = args.device
    on_cuda = dev.startswith("cuda")
    if on_cuda:
        variants[f"{dev}_fp32_dynamic"] = (dev, "float32", "dynamic", False)
    variants[f"{dev}_fp32_fast"] = (dev, "float32", "static", None)  # static cache (+ CUDA graph on CUDA)
    for dt in args.dtypes:
        variants[f"{dev}_{dt}_fast"] = (dev, dt, "static", None)
    runs, info = {}, {}
    for name, (d, dt, cache, graph) in variants.items():
        e = _engine(model, d, dt, cache, graph, tokens, frames)
        runs[name] = caption_clips(e, clips)
        info[name] = {"cuda_graph": e.backend.cuda_graph, "graph_error": e.backend.graph_error}
        del e
        _free()
    ref = runs.pop("cpu_fp32")
    out = {"shape": {"frames": frames, "caption_tokens": tokens, "clips": n, "context": [r["context"] for r in ref]},
           "cpu_fp32_clip_s": [round(r["s"], 3) for r in ref],
           "vs_cpu_fp32": {k: {**compare(ref, v), **info[k]} for k, v in runs.items()}}
    if model == "random-0.5b" and not args.small:
        out["paper_context"] = full_context_parity(args)
    return out


def full_context_parity(args) -> dict:
    """random-0.5b at the paper's context (16 frames after a full 16-clip FIFO, 128 caption tokens) on the device:
    the float32 dynamic-cache reference against each dtype on the fast path."""
    from rlivs.runtime.selftest import caption_clips

    dev = args.device
    rng = np.random.default_rng(1)
    clip = [rng.integers(0, 256, (FULL["frames"], 240, 320, 3), dtype=np.uint8)]
    ref_e = _engine("random-0.5b", dev, "float32", "dynamic", False, FULL["caption_tokens"], FULL["frames"],
                    FULL["fifo_clips"])
    # a full FIFO: 16 clips x 196 kept tokens = the visual tokens of 16 frames (3136), in the LLM's input space
    fifo = ref_e.backend.encode_frames(ref_e.preprocess(
        rng.integers(0, 256, (FULL["frames"], 240, 320, 3), dtype=np.uint8))).reshape(-1, ref_e.backend.info.hidden_size)
    ref_e.text.eos_ids = frozenset()  # random weights need not stop: exactly 128 caption tokens
    ref = caption_clips(ref_e, clip, fifo)
    del ref_e
    _free()
    out = {"context_tokens": ref[0]["context"], "fp32_dynamic_clip_s": round(ref[0]["s"], 3)}
    for dt in ("float32", *args.dtypes):
        e = _engine("random-0.5b", dev, dt, "static", None, FULL["caption_tokens"], FULL["frames"], FULL["fifo_clips"])
        e.text.eos_ids = frozenset()
        out[f"{dt}_fast"] = {**compare(ref, caption_clips(e, clip, fifo)), "cuda_graph": e.backend.cuda_graph,
                             "graph_error": e.backend.graph_error}
        del e
        _free()
    return out


def bench_stage(args, dtype: str, timeout: float) -> dict:
    model = "tiny" if args.small else "random-0.5b"
    cmd = [sys.executable, str(ROOT / "bench" / "clip_step.py"), "--model", model, "--device", args.device,
           "--dtype", dtype, "--variants", "torch,torch_fast", "--frames", "16",
           "--caption-tokens", "16" if args.small else str(FULL["caption_tokens"]),
           "--answer-tokens", "8" if args.small else "32"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if p.returncode:
        return {"error": f"clip_step.py exited {p.returncode}", "stderr": p.stderr[-3000:], "command": " ".join(cmd)}
    s = json.loads(p.stdout.strip().splitlines()[-1])
    keep = {}
    for v, r in s["variants"].items():
        a = r.get("answer") or {}
        keep[v] = {"stages_s": r["stages_s"], "realtime_x_1fps": r["realtime_x"], "answer_s": a.get("answer_s"),
                   "answer_forced_s": a.get("answer_forced_s"), "peak_gpu_mib": r["peak_gpu_mib"],
                   "peak_rss_mib": r["peak_rss_mib"], "cuda_graph": r["cuda_graph"], "graph_error": r["graph_error"]}
    return {"command": " ".join(cmd[1:]), "context_tokens": s["context_tokens"], "variants": keep,
            "torch_fast_vs_torch": s.get("torch_fast_vs_torch"), "targets": s.get("torch_fast_targets")}


def qwen_stage(args, dtype: str, timeout: float) -> dict:
    """LLaVA-OV-0.5B next to Qwen2.5-VL-3B, one 16-frame clip after a full FIFO (16 clips of the kept fraction),
    64 caption tokens; --small: tiny next to tiny-qwen, 4 frames, 8 tokens."""
    models = "tiny,tiny-qwen" if args.small else "random-0.5b,random-qwen2.5-vl-3b"
    cmd = [sys.executable, str(ROOT / "bench" / "clip_step.py"), "--model", models, "--device", args.device,
           "--dtype", dtype, "--variants", "torch", "--answer-tokens", "0"]
    cmd += ["--frames", "4", "--fifo-clips", "2", "--caption-tokens", "8"] if args.small else \
        ["--frames", "16", "--caption-tokens", "64"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if p.returncode:
        return {"error": f"clip_step.py exited {p.returncode}", "stderr": p.stderr[-3000:], "command": " ".join(cmd)}
    s = json.loads(p.stdout.strip().splitlines()[-1])["models"]
    keep = ("backbone", "frames", "clip_tokens", "clip_tokens_16_frames", "tokens_per_group", "fifo_tokens",
            "context_tokens")
    return {"command": " ".join(cmd[1:]), "dtype": dtype,
            "models": {m: {**{k: r[k] for k in keep}, **{k: r["variants"]["torch"][k] for k in
                                                         ("stages_s", "peak_rss_mib", "peak_gpu_mib")}}
                       for m, r in s.items()}}


# bench/cameras.py's sizes per kit run: (camera counts, batch sizes, stream seconds per camera). On the GPU: 1 and 8
# cameras at --batch 1,4,8 (the batch sizes at the same camera count, same run); the CPU rehearsal runs the same code
# paths (batched captions included) at tiny sizes, within the stage's time (batched bfloat16 on 2 busy cores is slow)
CAMERAS = {"gpu": ("1,8", "1,4,8", "160"), "rehearsal": ("2", "1,2", "64")}
# the live run through the service's path (StreamWorker + ModelTurns, --service): cameras, batch, --speed, --max-lag
# seconds, stream seconds; faster than real time so the device is overloaded within a short run
CAMERAS_LIVE = {"gpu": ("8", "8", "16", "5", "320"), "rehearsal": ("2", "2", "16", "2", "64")}


def _cameras(args, dtype: str, timeout: float, extra: list[str]) -> tuple[dict | None, dict | None, list]:
    """bench/cameras.py at the kit's model and dtype -> (its summary, an error result, the command)."""
    model = "tiny" if args.small else "random-0.5b"
    cmd = [sys.executable, str(ROOT / "bench" / "cameras.py"), "--model", model, "--device", args.device,
           "--dtype", dtype, "--max-caption-tokens", "16" if args.small else "64", *extra]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if p.returncode:
        return None, {"error": f"cameras.py exited {p.returncode}", "stderr": p.stderr[-3000:],
                      "command": " ".join(cmd)}, cmd
    return json.loads(p.stdout.strip().splitlines()[-1]), None, cmd


def cameras_stage(args, dtype: str, timeout: float) -> dict:
    """Round robin over N gated cameras as fast as the device goes, one clip per call and batched (--batch)."""
    cams, batches, seconds = CAMERAS["rehearsal" if args.small else "gpu"]
    s, err, cmd = _cameras(args, dtype, timeout, ["--cameras", cams, "--batch", batches, "--seconds", seconds])
    if err:
        return err
    keys = ("cameras", "batch", "model_calls", "lag_p50_s", "lag_p95_s", "clips", "captioned", "gated", "events",
            "events_missed", "false_triggers", "clips_per_s",
            "stream_s_per_wall_s", "gate_ms_per_clip", "model_s_per_caption", "speedup_vs_gate_off")
    runs = [{k: r.get(k) for k in keys} for r in s["runs"]]
    most = max((r["cameras"] for r in runs), default=None)
    return {"command": " ".join(cmd[1:]), "dtype": dtype, "runs": runs,
            "gate_off_1_camera": {k: s["gate_off_1_camera"].get(k) for k in keys},
            "events_missed": s["events_missed"],
            # round robin over N cameras: stream seconds per wall second = such cameras kept in real time, per batch
            "cameras_in_real_time": {r["batch"]: r["stream_s_per_wall_s"] for r in runs if r["cameras"] == most}}


def cameras_live_stage(args, dtype: str, timeout: float) -> dict:
    """The service's ingest path (--service): cameras replayed live at --speed, gated, one ModelTurns; per-camera lag
    bounded by --max-lag for forced captions, what was skipped and why."""
    try:
        import av  # noqa: F401  (carried by prepare.py: the image has no PyAV)
    except ImportError as e:
        return {"error": f"PyAV does not import here ({e}): the live replay needs it; rerun bench/gpu/prepare.py "
                         f"(it carries the av wheel)"}
    cams, batch, speed, max_lag, seconds = CAMERAS_LIVE["rehearsal" if args.small else "gpu"]
    s, err, cmd = _cameras(args, dtype, timeout, ["--service", "--cameras", cams, "--batch", batch, "--speed", speed,
                                                  "--max-lag", max_lag, "--seconds", seconds, "--gate-max-idle",
                                                  "64"])
    if err:
        return err
    keys = ("cameras", "batch", "speed", "max_lag_s", "workers", "errors", "clips", "captioned", "gated", "skipped",
            "skipped_why", "model_calls", "batch_sizes", "most_waiting", "forced_granted_while_active_waited",
            "events", "events_seen", "events_missed_by_gate", "frames_dropped", "lag_p50_s", "lag_p95_s",
            "captioned_lag_p95_s", "lag_p95_first_half_s", "lag_p95_second_half_s", "clips_per_s",
            "stream_s_per_wall_s", "rss_mib_start", "rss_mib_end")
    return {"command": " ".join(cmd[1:]), "dtype": dtype, "runs": [{k: r.get(k) for k in keys} for r in s["runs"]]}


def batch_stage(args, dtype: str, timeout: float) -> dict:
    cmd = [sys.executable, str(ROOT / "bench" / "batch.py"), "--device", args.device, "--dtype", dtype,
           "--batches", "1,2,4,8"]
    if not args.small:  # a full 16-frame clip after 4 clips of FIFO, 64 caption tokens
        cmd += ["--real-shape", "--frames", "16", "--fifo-tokens", "784", "--caption-tokens", "64"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if p.returncode:
        return {"error": f"batch.py exited {p.returncode}", "stderr": p.stderr[-3000:], "command": " ".join(cmd)}
    s = json.loads(p.stdout.strip().splitlines()[-1])
    return {"command": " ".join(cmd[1:]), "dtype": dtype, "context_tokens": s["context_tokens"], "rows": s["rows"],
            "decode_speedup_at_max": s["decode_speedup_at_max"], "all_same_as_alone": s["all_same_as_alone"]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="where gpu_run.json (and the test XML) go: $OUT")
    p.add_argument("--device", default="cuda", help="cuda (the run) | cpu (the rehearsal)")
    p.add_argument("--small", action="store_true", help="tiny shapes and no random-0.5b (the CPU rehearsal)")
    p.add_argument("--dtypes", default=None, help="half-precision dtypes on the fast path (default: float16,bfloat16 "
                                                  "on CUDA, bfloat16 on CPU)")
    p.add_argument("--budget-s", type=float, default=450.0, help="no stage starts past this many seconds")
    p.add_argument("--skip", default="", help="comma-separated stages to leave out")
    args = p.parse_args()
    args.dtypes = (args.dtypes or ("float16,bfloat16" if args.device.startswith("cuda") else "bfloat16")).split(",")
    skip = set(filter(None, args.skip.split(",")))
    models = ["tiny", "tiny-gqa"] + ([] if args.small else ["random-0.5b"])
    run = Run(args)
    stages = [("env", lambda: env_stage(args), 0),
              ("gpu_tests", lambda: gpu_tests_stage(args, run.out, max(30.0, min(240.0, run.left() - 200))), 60),
              ("build", lambda: build_stage(models), 60)]
    # the most wanted figures first: the small models' parity, then the benchmark per dtype, then the 0.5B parity
    stages += [(f"parity_{m}", (lambda m=m: parity_stage(args, m)), 20) for m in models if m != "random-0.5b"]
    stages += [(f"bench_{dt}", (lambda dt=dt: bench_stage(args, dt, max(30.0, run.left() - 10))), 45)
               for dt in args.dtypes]
    stages += [("cameras", lambda: cameras_stage(args, args.dtypes[0], max(30.0, min(180.0, run.left() - 60))), 60)]
    stages += [("batch", lambda: batch_stage(args, args.dtypes[0], max(30.0, min(150.0, run.left() - 60))), 45)]
    stages += [("cameras_live", lambda: cameras_live_stage(args, args.dtypes[0],
                                                           max(30.0, min(120.0, run.left() - 60))), 45)]
    stages += [("qwen", lambda: qwen_stage(args, args.dtypes[0], max(30.0, min(240.0, run.left() - 60))), 60)]
    stages += [(f"parity_{m}", (lambda m=m: parity_stage(args, m)), 90) for m in models if m == "random-0.5b"]
    for name, fn, need in stages:
        if name.split("_")[0] in skip or name in skip:
            run.result["skipped"].append(f"{name}: --skip")
            continue
        run.stage(name, fn, need)
    run.save()
    print(json.dumps(run.result))


if __name__ == "__main__":
    main()
