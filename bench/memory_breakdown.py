"""Where a backend's memory goes during one clip step at the paper's context, stage by stage.

Each variant runs in its own process. Per stage, the resident set after it (VmRSS) and its own peak (VmHWM, reset
before the stage by writing 5 to /proc/self/clear_refs): load (weights, sessions), encode (the vision tower on
--frames frames), prefill (FIFO + clip + prompt, ~6.3K tokens for random-0.5b), decode (--caption-tokens greedy
steps). Prints one JSON object as its last line.

    python bench/memory_breakdown.py --model random-0.5b --bundle BUNDLE --variants torch,ort,ort_lowmem --threads 2

Variants: torch (the reference backend, dynamic cache), ort (the ONNX Runtime backend as it is configured), and ORT
session-option experiments: ort_no_arena (enable_cpu_mem_arena off), ort_no_prepack (session.disable_prepacking),
ort_lowmem (both).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VARIANTS = ("torch", "ort", "ort_no_arena", "ort_no_prepack", "ort_lowmem")
ORT_OPTIONS = {"ort": {}, "ort_no_arena": {"arena": False}, "ort_no_prepack": {"prepack": False},
               "ort_lowmem": {"arena": False, "prepack": False}}


def _status() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024  # MiB
    return out


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _patch_ort(opts: dict) -> None:
    """Session-option experiments, applied to every session the backend creates."""
    import onnxruntime as ort

    real = ort.SessionOptions

    def make():
        so = real()
        if opts.get("arena") is False:
            so.enable_cpu_mem_arena = False
        if opts.get("prepack") is False:
            so.add_session_config_entry("session.disable_prepacking", "1")
        return so

    ort.SessionOptions = make


def worker(args) -> dict:
    from rlivs.runtime.config import EngineConfig, PipelineConfig
    from rlivs.runtime.engine import load_engine

    stages = {}

    def mark(name, t0):
        s = _status()
        stages[name] = {"rss_mib": round(s["VmRSS"], 1), "peak_mib": round(s["VmHWM"], 1),
                        "s": round(time.perf_counter() - t0, 2)}
        _reset_peak()

    _reset_peak()
    t0 = time.perf_counter()
    if args.variant == "torch":
        ec = EngineConfig(model=args.model, backend="torch", threads=args.threads, kv_cache="dynamic")
    else:
        _patch_ort(ORT_OPTIONS[args.variant])
        ec = EngineConfig(model=str(args.bundle), bundle=str(args.bundle), backend="onnxruntime",
                          threads=args.threads)
    engine = load_engine(ec, PipelineConfig())
    be = engine.backend
    mark("load", t0)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (args.frames, 240, 320, 3), dtype=np.uint8)
    t0 = time.perf_counter()
    vis = be.encode_frames(engine.preprocess(frames))  # (T, P, D)
    mark("encode", t0)
    d = be.info.hidden_size
    fifo = be.encode_frames(engine.preprocess(rng.integers(0, 256, (args.frames, 240, 320, 3), dtype=np.uint8)))
    fifo = fifo.reshape(-1, d)[: args.fifo_tokens]  # (F, D): a full FIFO's worth of visual tokens
    _reset_peak()
    ctx, cols = engine.caption_context(fifo, vis.reshape(-1, d))
    t0 = time.perf_counter()
    state = be.new_state()
    out = be.step(ctx, state, probe_rows=1)
    mark("prefill", t0)
    t0 = time.perf_counter()
    for _ in range(args.caption_tokens - 1):
        out = be.step(be.embed_tokens(np.array([int(np.argmax(out.logits))])), state, probe_rows=1)
    mark("decode", t0)
    return {"variant": args.variant, "context_tokens": len(ctx), "stages": stages,
            "peak_mib": max(s["peak_mib"] for s in stages.values())}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--bundle", type=Path, default=None, help="the model's ONNX Runtime bundle (ort variants)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--fifo-tokens", type=int, default=None, help="default: the tokens of --frames frames (a full FIFO)")
    p.add_argument("--caption-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--variants", default="torch,ort")
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.fifo_tokens is None:
        args.fifo_tokens = 10**9  # all of the --frames frames' tokens
    if args.variant:
        print(json.dumps(worker(args)))
        return
    runs = {}
    for v in args.variants.split(","):
        if v not in VARIANTS:
            sys.exit(f"unknown variant {v!r}: choose from {', '.join(VARIANTS)}")
        cmd = [sys.executable, __file__, "--model", args.model, "--frames", str(args.frames), "--fifo-tokens",
               str(args.fifo_tokens), "--caption-tokens", str(args.caption_tokens), "--variant", v] + \
              (["--bundle", str(args.bundle)] if args.bundle else []) + \
              (["--threads", str(args.threads)] if args.threads else [])
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"{v} failed:\n{r.stderr[-3000:]}")
        runs[v] = json.loads(r.stdout.strip().splitlines()[-1])
        print(v, json.dumps(runs[v]["stages"]), file=sys.stderr, flush=True)
    print(json.dumps({"model": args.model, "frames": args.frames, "caption_tokens": args.caption_tokens,
                      "threads": args.threads, "variants": runs}))


if __name__ == "__main__":
    main()
