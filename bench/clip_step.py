"""One clip step, stage by stage, through every way rlivs can run it, in one invocation:

  naive        transformers eager, output_attentions=True on ALL layers (probe layers picked afterwards)
  torch        the torch reference backend (probe rows only, SDPA elsewhere)
  ort          the ONNX Runtime backend on the exported bundle (torch-free path)
  ort_noprobe  the same bundle's decoder exported without the probe output: what the probe rows cost

Each variant runs in its own process (peak RSS is its own). Prints one JSON object as its last line.

    python bench/clip_step.py --model tiny
    python bench/clip_step.py --model random-0.5b --frames 4 --fifo-tokens 784 --caption-tokens 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = ("naive", "torch", "ort", "ort_noprobe")


def _naive_scores(engine, ctx, cols, n_new, t, sync):
    """transformers eager with every layer's attention probabilities returned."""
    import torch

    be = engine.backend
    lm = be.model.model.language_model
    lm.set_attn_implementation("eager")
    layers = be.info.probe_layers
    with torch.inference_mode():
        t0 = time.perf_counter()
        r = lm(inputs_embeds=torch.from_numpy(ctx)[None].to(be.device), output_attentions=True, use_cache=True)
        sync()
        t["prefill"] = time.perf_counter() - t0
        probe = lambda r: torch.stack([r.attentions[i][0, :, -1].float().mean(0) for i in layers]).mean(0)  # noqa: E731
        scores = probe(r)[cols].double().cpu().numpy()
        cache, logits = r.past_key_values, be.model.lm_head(r.last_hidden_state[:, -1])
        del r
        t0 = time.perf_counter()
        for _ in range(n_new):
            r = lm(input_ids=logits.argmax(-1)[None], past_key_values=cache, output_attentions=True, use_cache=True)
            scores += probe(r)[cols].double().cpu().numpy()
            cache, logits = r.past_key_values, be.model.lm_head(r.last_hidden_state[:, -1])
        sync()
        t["decode_per_token"] = (time.perf_counter() - t0) / n_new
    return scores


def _backend_scores(engine, ctx, cols, n_new, t, sync, probe=True):
    be = engine.backend
    rows = 1 if probe else 0
    state = be.new_state()
    t0 = time.perf_counter()
    out = be.step(ctx, state, probe_rows=rows)
    sync()
    t["prefill"] = time.perf_counter() - t0
    scores = out.probe_attn[0, cols].astype(np.float64) if probe else np.zeros(cols.stop - cols.start)
    t0 = time.perf_counter()
    for _ in range(n_new):  # fixed length: random weights need not stop
        out = be.step(be.embed_tokens(np.array([int(np.argmax(out.logits))])), state, probe_rows=rows)
        if probe:
            scores += out.probe_attn[0, cols]
    sync()
    t["decode_per_token"] = (time.perf_counter() - t0) / n_new
    return scores


def worker(args) -> dict:
    from rlivs.runtime.config import PipelineConfig
    from rlivs.runtime.memory import ClipRecord, Memory
    from rlivs.runtime.pipeline import load_engine
    from rlivs.runtime.selection import select_attention

    where = args.bundle if args.variant.startswith("ort") else args.model
    engine = load_engine(where, config=PipelineConfig(), device=args.device, threads=args.threads)
    be = engine.backend
    if args.variant == "ort_noprobe":
        import onnxruntime as ort

        be.decoder = ort.InferenceSession(str(Path(args.bundle) / "decoder_noprobe.onnx"),
                                          providers=be.decoder.get_providers())
        be.has_probe = False
    cuda = args.device.startswith("cuda") and args.variant in ("naive", "torch")
    if cuda:
        import torch
        sync = torch.cuda.synchronize
    else:
        sync = lambda: None  # noqa: E731
    d = be.info.hidden_size
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (args.frames, 240, 320, 3), dtype=np.uint8)
    fifo = rng.standard_normal((args.fifo_tokens, d)).astype(np.float32) * 0.02
    t = {}
    t0 = time.perf_counter()
    vis = be.encode_frames(engine.preprocess(frames))  # (T, P, D)
    sync()
    t["encode"] = time.perf_counter() - t0
    ctx, cols = engine.caption_context(fifo, vis.reshape(-1, d))
    if args.variant == "naive":
        scores = _naive_scores(engine, ctx, cols, args.caption_tokens, t, sync)
    else:
        scores = _backend_scores(engine, ctx, cols, args.caption_tokens, t, sync, probe=args.variant != "ort_noprobe")
    t0 = time.perf_counter()
    sel = select_attention(vis, scores.astype(np.float32), engine.config.selection.n_keep(len(scores)), rng)
    t["select"] = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp, Memory(f"{tmp}/m.db") as mem:
        mem.open_stream("s", "bench", "bench", "x")
        t0 = time.perf_counter()
        mem.commit_clip(ClipRecord("s", 0, 0.0, 16.0, "caption " * 20, 40, engine.vector([5, 6, 7])), sel.tokens)
        t["store"] = time.perf_counter() - t0
    t["clip"] = sum(v for k, v in t.items() if k != "decode_per_token") + t["decode_per_token"] * args.caption_tokens
    gpu = None
    if cuda:
        import torch
        gpu = torch.cuda.max_memory_allocated() / 2**20
    return {"variant": args.variant, "context_tokens": len(ctx), "stages_s": t, "selected": sel.indices.tolist(),
            "peak_rss_mib": peak_rss_mib(), "peak_gpu_mib": gpu}


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM). Not getrusage: Linux carries ru_maxrss over fork+exec,
    so a child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ensure_bundle(model: str, bundle: Path | None) -> Path:
    """The model's bundle (exported once into the rlivs cache) plus a probe-free decoder beside it."""
    from rlivs.export.bundle import export_bundle
    from rlivs.export.onnx_export import export_decoder
    from rlivs.runtime.backends.torch import TorchBackend
    from rlivs.runtime.backends.torch.tiny import default_cache_dir
    from rlivs.runtime.models import resolve_model

    bundle = bundle or default_cache_dir() / "bundles" / model.replace("/", "--")
    if not (bundle / "manifest.json").exists():
        export_bundle(model, bundle)
    if not (bundle / "decoder_noprobe.onnx").exists():
        export_decoder(TorchBackend(resolve_model(model)[0]), bundle / "decoder_noprobe.onnx", 23, probe=False)
    return bundle


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="tiny | random-0.5b | an HF directory")
    p.add_argument("--bundle", type=Path, default=None, help="its exported bundle (default: export into the cache)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--fifo-tokens", type=int, default=None, help="FIFO prefix length (default: 16 clips' worth)")
    p.add_argument("--caption-tokens", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        print(json.dumps(worker(args)))
        return
    variants = args.variants.split(",")
    if any(v.startswith("ort") for v in variants):
        args.bundle = ensure_bundle(args.model, args.bundle)
    if args.fifo_tokens is None:
        from rlivs.runtime.models import resolve_model

        vc = json.loads((resolve_model(args.model)[0] / "config.json").read_text())["vision_config"]
        side = (vc["image_size"] // vc["patch_size"] + 1) // 2  # 2x2 pooling, ceil
        args.fifo_tokens = 16 * round(0.0625 * 16 * side * side)  # 16 clips of 6.25% of 16 frames
    runs = {}
    for v in variants:
        cmd = [sys.executable, __file__, "--model", args.model, "--frames", str(args.frames), "--fifo-tokens",
               str(args.fifo_tokens), "--caption-tokens", str(args.caption_tokens), "--device", args.device,
               "--variant", v] + (["--bundle", str(args.bundle)] if args.bundle else []) + \
              (["--threads", str(args.threads)] if args.threads else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{v} failed:\n{out.stderr[-3000:]}")
        runs[v] = json.loads(out.stdout.strip().splitlines()[-1])
        print(v, json.dumps(runs[v]["stages_s"]), f"peak RSS {runs[v]['peak_rss_mib']:.0f} MiB", file=sys.stderr)
    ref = runs.get("torch") or next(iter(runs.values()))
    summary = {"model": args.model, "frames": args.frames, "fifo_tokens": args.fifo_tokens,
               "caption_tokens": args.caption_tokens, "device": args.device, "context_tokens": ref["context_tokens"],
               "variants": {v: {k: r[k] for k in ("stages_s", "peak_rss_mib", "peak_gpu_mib")} for v, r in runs.items()}}
    if "naive" in runs:
        n = runs["naive"]
        for v in ("torch", "ort"):
            if v in runs:
                summary[f"{v}_vs_naive"] = {
                    "clip_speedup": n["stages_s"]["clip"] / runs[v]["stages_s"]["clip"],
                    "prefill_speedup": n["stages_s"]["prefill"] / runs[v]["stages_s"]["prefill"],
                    "decode_speedup": n["stages_s"]["decode_per_token"] / runs[v]["stages_s"]["decode_per_token"],
                    "peak_rss_ratio": n["peak_rss_mib"] / runs[v]["peak_rss_mib"],
                    "selection_overlap": len(set(n["selected"]) & set(runs[v]["selected"])) / len(n["selected"]),
                }
    if "ort" in runs and "ort_noprobe" in runs:
        a, b = runs["ort"]["stages_s"], runs["ort_noprobe"]["stages_s"]
        summary["probe_overhead"] = {k: a[k] / b[k] - 1 for k in ("prefill", "decode_per_token")}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
