"""Batched vs one-at-a-time clip steps (issue 26, item 3), in the same run: decode tokens per second and whole-clip
throughput at batch 1, 2, 4, 8.

B clips (each its own random frames and its own FIFO, as B cameras would give) are captioned, per batch size
back to back (the same machine load for both):
  alone     one after another through `Engine.caption_clip`
  batched   together through `Engine.caption_clips` (each clip encoded and prefilled on its own, the B captions
            decoded as one batch, `runtime/generate.greedy_batch`)
Captions are fixed-length (EOS off: random weights need not stop). With --repeat N the pair runs N times and the
best time of each mode counts. Per batch size: decode tokens/s (decode steps /
decode seconds: the steps after the prefill, one token each per sequence), clips/s over the whole clip step (encode
+ prefill + decode + select), the speedups, and whether every batched caption and selection equals its clip alone.
`--decode-only`: no frames and no Engine, the decode measurement alone: B random contexts of --context-tokens
embeddings through `greedy` one after another vs `greedy_batch` (the clip step's decode, without its vision tower
and selection: what a short CPU run at the real 0.5B shape can afford). Prints one JSON object as its last line.

    python bench/batch.py                                   # tiny, torch backend
    python bench/batch.py --backend onnxruntime             # tiny, ONNX Runtime (exports a batched bundle first)
    python bench/batch.py --real-shape                      # the real 0.5B shapes, random weights (random-0.5b)
    python bench/batch.py --real-shape --decode-only --threads 2   # the CPU short run of docs/benchmarks.md
    python bench/batch.py --real-shape --device cuda --dtype float16   # bench/gpu's stage
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# --real-shape defaults: a short CPU run (one 384 px frame is 196 tokens after pooling; the vision tower dominates)
REAL_SHAPE = {"frames": 1, "fifo_tokens": 196, "caption_tokens": 16}
TINY = {"frames": 4, "fifo_tokens": 100, "caption_tokens": 32}


def _engine(args):
    from rlivs.runtime.config import CaptionConfig, ClipConfig, PipelineConfig
    from rlivs.runtime.engine import Engine, load_engine
    from rlivs.runtime.frames import FramePreprocessor
    from rlivs.runtime.models import resolve_model
    from rlivs.runtime.text import TextCodec

    config = PipelineConfig(clip=ClipConfig(frames_per_clip=args.frames),
                            caption=CaptionConfig(max_new_tokens=args.caption_tokens))
    if args.backend == "onnxruntime":
        from rlivs.runtime.config import EngineConfig

        return load_engine(EngineConfig(model=str(_bundle(args)), threads=args.threads), config)
    from rlivs.runtime.backends.torch import TorchBackend

    model_dir, model_id = resolve_model(args.model)
    # the dynamic cache explicitly: the torch backend batches on it (its CUDA default, the static cache, does not)
    be = TorchBackend(model_dir, model_id=model_id, device=args.device, dtype=args.dtype, threads=args.threads,
                      cache="dynamic", cuda_graph=False)
    return Engine(be, TextCodec(model_dir), FramePreprocessor.from_model_dir(model_dir), config)


def _bundle(args) -> Path:
    """--bundle, or the model exported with the batched decoder into a temporary directory."""
    if args.bundle:
        return args.bundle
    from rlivs.export.bundle import ExportConfig, export_bundle

    out = Path(tempfile.mkdtemp(prefix="rlivs-batch-bench-")) / "bundle"
    export_bundle(args.model, out, ExportConfig(batch=True, check=False))
    return out


def _clips(engine, n: int, args):
    from rlivs.runtime.engine import ClipInput

    rng = np.random.default_rng(0)
    d = engine.backend.info.hidden_size
    return [ClipInput(rng.integers(0, 256, (args.frames, 240, 320, 3), dtype=np.uint8),
                      (rng.standard_normal((args.fifo_tokens, d)) * 0.02).astype(np.float32), i) for i in range(n)]


def _same(a, b) -> bool:
    return a.caption_ids == b.caption_ids and np.array_equal(a.selection.indices, b.selection.indices) and \
        float(np.abs(a.scores - b.scores).max()) <= 1e-5


def run_decode(args) -> dict:
    """greedy one at a time vs greedy_batch on B random contexts (S, D), fixed-length, scored over half the context."""
    from rlivs.runtime.generate import greedy, greedy_batch

    batches = sorted({int(b) for b in args.batches.split(",")})
    be = _engine(args).backend
    rng = np.random.default_rng(0)
    s_len, d = args.context_tokens, be.info.hidden_size
    ctxs = [(rng.standard_normal((s_len, d)) * 0.02).astype(np.float32) for _ in range(max(batches))]
    cols = slice(s_len // 4, 3 * s_len // 4)
    n_new = args.caption_tokens
    rows = []
    for b in batches:
        best = {"dec_alone": float("inf"), "dec_batch": float("inf"), "all_alone": float("inf"), "wall": float("inf")}
        for _ in range(args.repeat):  # alone then batched, back to back; the best of each over the repeats
            alone = [greedy(be, c, n_new, frozenset(), cols) for c in ctxs[:b]]
            t0 = time.perf_counter()
            got = greedy_batch(be, ctxs[:b], n_new, frozenset(), [cols] * b)
            wall = time.perf_counter() - t0
            for k, v in (("dec_alone", sum(g.decode_s for g in alone)), ("dec_batch", got[0].decode_s),
                         ("all_alone", sum(g.prefill_s + g.decode_s for g in alone)), ("wall", wall)):
                best[k] = min(best[k], v)
        steps = sum(g.steps - 1 for g in alone)
        row = {"batch": b, "decode_steps": steps, "alone_decode_tok_s": round(steps / best["dec_alone"], 2),
               "batched_decode_tok_s": round(steps / best["dec_batch"], 2),
               "alone_seqs_s": round(b / best["all_alone"], 4), "batched_seqs_s": round(b / best["wall"], 4),
               "same_as_alone": all(g.ids == a.ids and float(np.abs(g.scores - a.scores).max()) <= 1e-5
                                    for g, a in zip(got, alone))}
        row["decode_speedup"] = round(row["batched_decode_tok_s"] / row["alone_decode_tok_s"], 2)
        row["seq_speedup"] = round(row["batched_seqs_s"] / row["alone_seqs_s"], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"model": args.model, "backend": args.backend, "device": args.device, "dtype": args.dtype,
            "threads": args.threads, "mode": "decode-only", "context_tokens": s_len, "caption_tokens": n_new,
            "prefill_s": round(alone[0].prefill_s, 3), "rows": rows, "decode_speedup_at_max": rows[-1]["decode_speedup"],
            "all_same_as_alone": all(r["same_as_alone"] for r in rows)}


def run(args) -> dict:
    batches = sorted({int(b) for b in args.batches.split(",")})
    engine = _engine(args)
    engine.text.eos_ids = frozenset()  # fixed-length captions
    clips = _clips(engine, max(batches), args)
    if args.warmup:
        engine.caption_clips(clips[:2])
    rows = []
    for b in batches:
        best = {"dec_alone": float("inf"), "dec_batch": float("inf"), "all_alone": float("inf"), "wall": float("inf")}
        for _ in range(args.repeat):  # alone then batched, back to back; the best of each over the repeats
            alone, alone_s = [], 0.0
            for c in clips[:b]:  # one at a time
                t0 = time.perf_counter()
                alone.append(engine.caption_clip(c.frames, c.fifo_tokens, c.index))
                alone_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            got = engine.caption_clips(clips[:b])
            wall = time.perf_counter() - t0
            for k, v in (("dec_alone", sum(o.timings["decode"] for o in alone)),
                         ("dec_batch", got[0].timings["decode"]), ("all_alone", alone_s), ("wall", wall)):
                best[k] = min(best[k], v)  # the batch's decode time is shared by its clips
        steps = sum(o.steps - 1 for o in alone)  # decode steps of the B captions
        row = {"batch": b, "decode_steps": steps,
               "alone_decode_tok_s": round(steps / best["dec_alone"], 2),
               "batched_decode_tok_s": round(steps / best["dec_batch"], 2),
               "alone_clips_s": round(b / best["all_alone"], 4), "batched_clips_s": round(b / best["wall"], 4),
               "same_as_alone": all(_same(g, a) for g, a in zip(got, alone))}
        row["decode_speedup"] = round(row["batched_decode_tok_s"] / row["alone_decode_tok_s"], 2)
        row["clip_speedup"] = round(row["batched_clips_s"] / row["alone_clips_s"], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    t = alone[0].timings
    return {"model": args.model, "backend": args.backend, "device": args.device, "dtype": args.dtype,
            "threads": args.threads, "frames": args.frames, "fifo_tokens": args.fifo_tokens,
            "caption_tokens": args.caption_tokens, "context_tokens": alone[0].context_tokens,
            "clip_alone_stages_s": {k: round(v, 4) for k, v in t.items()}, "rows": rows,
            "decode_speedup_at_max": rows[-1]["decode_speedup"], "all_same_as_alone": all(r["same_as_alone"] for r in rows)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="tiny (default) | tiny-gqa | random-0.5b | an HF directory")
    p.add_argument("--real-shape", action="store_true", help="random-0.5b: the real 0.5B shapes with random weights "
                   f"(short-run defaults {REAL_SHAPE})")
    p.add_argument("--backend", default="torch", choices=("torch", "onnxruntime"))
    p.add_argument("--bundle", type=Path, default=None, help="onnxruntime: a bundle exported with the batched decoder "
                   "(default: export --model into a temporary directory)")
    p.add_argument("--batches", default="1,2,4,8")
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--fifo-tokens", type=int, default=None, help="FIFO tokens in front of each clip")
    p.add_argument("--caption-tokens", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--decode-only", action="store_true", help="the decode measurement alone on random contexts "
                   "(no vision tower): see above")
    p.add_argument("--context-tokens", type=int, default=256, help="--decode-only: context length per sequence")
    p.add_argument("--repeat", type=int, default=1, help="alone + batched rounds per batch size; the best time of "
                   "each counts (a shared machine's load changes within a run)")
    p.add_argument("--warmup", type=int, default=None, help="an untimed batched pass first (default: 1 on CUDA)")
    args = p.parse_args()
    if args.model is None:
        args.model = "random-0.5b" if args.real_shape else "tiny"
    defaults = REAL_SHAPE if args.real_shape else TINY
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.warmup is None:
        args.warmup = 1 if args.device.startswith("cuda") else 0
    print(json.dumps(run_decode(args) if args.decode_only else run(args)))


if __name__ == "__main__":
    main()
