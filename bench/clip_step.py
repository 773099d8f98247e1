"""One clip step, stage by stage, through every way rlivs can run it, in one invocation:

  naive        transformers eager, output_attentions=True on ALL layers (probe layers picked afterwards)
  torch        the torch reference backend (dynamic KV cache; probe rows only, SDPA elsewhere)
  torch_fast   the torch backend's fast path: static KV cache, the decode step replayed as a CUDA graph
               (on CPU: the static cache, no graph)
  ort          the ONNX Runtime backend on the exported bundle (torch-free path)
  ort_noprobe  the same bundle's decoder exported without the probe output: what the probe rows cost
  ort_arena    the same model exported with the in-place KV arena (past_kv -> new_kv, as for TensorRT)
               instead of the stacked past -> present cache: what appending in place saves per step

Each variant runs in its own process (peak RSS and peak GPU memory are its own). Per variant: per-stage
latency of one clip step, video seconds per wall second at 1 fps (a clip of F frames is F video seconds over the
clip's wall time), question -> answer latency (retrieval over a memory of --answer-captions stored captions,
then greedy through `pipeline.answer` with --answer-tokens new tokens; and the same prompt forced to exactly
--answer-tokens tokens), and on CUDA torch.cuda.max_memory_allocated. Prints one JSON object as its last line.

    python bench/clip_step.py --model tiny
    python bench/clip_step.py --model random-0.5b --frames 4 --fifo-tokens 784 --caption-tokens 8
    python bench/clip_step.py --model random-0.5b --device cuda --dtype float16 --variants torch,torch_fast
    python bench/clip_step.py --model random-0.5b,random-qwen2.5-vl-3b --dtype bfloat16 --variants torch \
        --frames 4 --fifo-clips 2 --caption-tokens 4 --answer-tokens 0     # LLaVA-OV-0.5B next to Qwen2.5-VL-3B
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

VARIANTS = ("naive", "torch", "torch_fast", "ort", "ort_noprobe", "ort_arena")
TORCH_VARIANTS = ("naive", "torch", "torch_fast")
# real-size Qwen shapes built in memory with random weights in --dtype (3.75 B parameters would be 15 GB on disk)
IN_MEMORY = {"random-qwen2.5-vl-3b": "qwen2.5-vl-3b"}
# The targets for the fast path, random-0.5b on an H100
TARGETS = {"realtime_x_min": 100.0, "answer_s_max": 0.150, "peak_gpu_bytes_max": 3e9}
_WORDS = ("a person walks toward the red door then picks up a small blue box from the table while the camera "
          "slowly moves left and a bright light appears behind the window near the wall").split()


def _naive_scores(engine, ctx, cols, n_new, t, sync):
    """transformers eager with every layer's attention probabilities returned."""
    import torch

    from rlivs.runtime.backends.torch.hf_compat import cache_kwargs, output_cache

    be = engine.backend
    lm = be.model.model.language_model
    lm.set_attn_implementation("eager")
    layers = be.info.probe_layers
    with torch.inference_mode():
        t0 = time.perf_counter()
        r = lm(inputs_embeds=torch.from_numpy(ctx)[None].to(be.device, be.dtype), output_attentions=True,
               use_cache=True)
        sync()
        t["prefill"] = time.perf_counter() - t0
        probe = lambda r: torch.stack([r.attentions[i][0, :, -1].float().mean(0) for i in layers]).mean(0)  # noqa: E731
        scores = probe(r)[cols].double().cpu().numpy()
        cache, logits = output_cache(r), be.model.lm_head(r.last_hidden_state[:, -1])
        del r
        t0 = time.perf_counter()
        for _ in range(n_new):
            r = lm(input_ids=logits.argmax(-1)[None], **cache_kwargs(cache), output_attentions=True, use_cache=True)
            scores += probe(r)[cols].double().cpu().numpy()
            cache, logits = output_cache(r), be.model.lm_head(r.last_hidden_state[:, -1])
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


def _load(args):
    """The engine of a variant. Torch variants build the backend explicitly: on CUDA the backend's default cache
    is the static one, and `torch` must stay the dynamic reference."""
    from rlivs.runtime.config import PipelineConfig
    from rlivs.runtime.engine import load_engine
    from rlivs.runtime.config import EngineConfig

    if args.variant not in TORCH_VARIANTS:
        bundle = arena_bundle(args.bundle) if args.variant == "ort_arena" else args.bundle
        return load_engine(EngineConfig(model=str(bundle), device=args.device, threads=args.threads), PipelineConfig())
    from rlivs.runtime.backends.torch import TorchBackend
    from rlivs.runtime.frames import FramePreprocessor
    from rlivs.runtime.models import resolve_model
    from rlivs.runtime.engine import Engine
    from rlivs.runtime.text import TextCodec

    fast = args.variant == "torch_fast"
    kw = dict(device=args.device, dtype=args.dtype, threads=args.threads, cache="static" if fast else "dynamic",
              max_context=args.max_context, cuda_graph=None if fast else False)
    if args.model in IN_MEMORY:  # real-size Qwen shapes: random weights built in memory in --dtype, none on disk
        import torch
        from rlivs.runtime.backends.torch.tiny_qwen import random_model_in_memory

        model_dir, model = random_model_in_memory(IN_MEMORY[args.model], getattr(torch, args.dtype),
                                                  device=args.device)  # initialised where it runs
        be = TorchBackend(model=model, model_id=args.model, **kw)
    else:
        model_dir, model_id = resolve_model(args.model)
        be = TorchBackend(model_dir, model_id=model_id, **kw)
    return Engine(be, TextCodec(model_dir), FramePreprocessor.from_model_dir(model_dir), PipelineConfig())


def _clip(engine, args, sync) -> tuple[dict, list, int]:
    """One clip step, stage by stage -> (stages_s, selected indices, context tokens). The method's variants run the
    pipeline's own clip step (`Engine.caption_clip`); `naive` and `ort_noprobe` score the same context their own way
    (what the method is compared with). Random weights need not stop: captions are exactly --caption-tokens long."""
    from rlivs.runtime.config import CaptionConfig
    from rlivs.runtime.memory import ClipRecord, Memory
    from rlivs.runtime.selection import select_attention

    be = engine.backend
    d = be.info.hidden_size
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (args.frames, 240, 320, 3), dtype=np.uint8)
    fifo = rng.standard_normal((args.fifo_tokens, d)).astype(np.float32) * 0.02
    eos, caption = engine.text.eos_ids, engine.config.caption
    engine.text.eos_ids = frozenset()  # fixed-length captions (the answer stage after this keeps its EOS)
    engine.config.caption = CaptionConfig(max_new_tokens=args.caption_tokens)
    t = {}
    if args.variant in ("naive", "ort_noprobe"):
        t0 = time.perf_counter()
        vis = be.encode_frames(engine.preprocess(frames))  # (T, P, D)
        sync()
        t["encode"] = time.perf_counter() - t0
        ctx, cols = engine.caption_context(fifo, vis.reshape(-1, d))
        if args.variant == "naive":
            scores = _naive_scores(engine, ctx, cols, args.caption_tokens, t, sync)
        else:
            scores = _backend_scores(engine, ctx, cols, args.caption_tokens, t, sync, probe=False)
        t0 = time.perf_counter()
        sel = select_attention(vis, scores.astype(np.float32), engine.config.selection.n_keep(len(scores)), rng)
        t["select"] = time.perf_counter() - t0
        n_ctx = len(ctx)
        engine.text.eos_ids, engine.config.caption = eos, caption
    else:
        try:
            step = engine.caption_clip(frames, fifo, 0)  # the pipeline's clip step: encode, caption + score, select
            sync()
        finally:
            engine.text.eos_ids, engine.config.caption = eos, caption
        sel, n_ctx = step.selection, step.context_tokens
        t.update({k: step.timings[k] for k in ("encode", "prefill", "select")})
        t["decode_per_token"] = step.timings["decode"] / max(1, step.steps - 1)
    with tempfile.TemporaryDirectory() as tmp, Memory(f"{tmp}/m.db") as mem:
        mem.open_stream("s", "bench", "bench", "x")
        t0 = time.perf_counter()
        mem.commit_clip(ClipRecord("s", 0, 0.0, 16.0, "caption " * 20, 40, engine.vector([5, 6, 7])), sel.tokens)
        t["store"] = time.perf_counter() - t0
    t["clip"] = sum(v for k, v in t.items() if k != "decode_per_token") + t["decode_per_token"] * args.caption_tokens
    return t, sel.indices.tolist(), n_ctx


def _answer(engine, args, sync) -> dict:
    """Question -> answer over a memory of --answer-captions captions: through `pipeline.answer` (retrieval, prompt,
    greedy with at most --answer-tokens new tokens), and the same prompt forced to exactly --answer-tokens tokens."""
    from rlivs.runtime.config import AnswerConfig
    from rlivs.runtime.memory import ClipRecord, Memory
    from rlivs.runtime.answer import answer, build_answer_prompt

    be, n_new = engine.backend, args.answer_tokens
    engine.config.answer = AnswerConfig(max_new_tokens=n_new)
    question = "what did the person pick up from the table, and when?"
    rng = np.random.default_rng(1)
    out = {}
    with tempfile.TemporaryDirectory() as tmp, Memory(f"{tmp}/m.db") as mem:
        mem.open_stream("s", "bench", "bench", "x")
        records = []
        for i in range(args.answer_captions):  # ~30-word captions, 16 s clips
            caption = " ".join(rng.choice(_WORDS, 30))
            ids = engine.text.encode(caption)
            records.append(ClipRecord("s", i, 16.0 * i, 16.0 * (i + 1), caption, len(ids), engine.vector(ids)))
            mem.commit_clip(records[-1], None)
        decoded = []
        real_decode = engine.text.decode
        engine.text.decode = lambda ids, *a, **kw: decoded.append(len(ids)) or real_decode(ids, *a, **kw)
        try:
            t0 = time.perf_counter()
            a = answer(engine, mem, question)
            sync()
            out["answer_s"] = time.perf_counter() - t0
        finally:
            engine.text.decode = real_decode
        out.update({"answer_tokens": decoded[-1], "answer_prompt_tokens": a.prompt_tokens,
                    "answer_captions": len(a.used)})
        ids = build_answer_prompt(engine, question, records)  # (L,) all captions: the same length class
        t0 = time.perf_counter()
        state = be.new_state()
        logits = be.step(be.embed_tokens(ids), state, probe_rows=0).logits  # prefill -> token 1
        t1 = time.perf_counter()
        for _ in range(n_new - 1):  # tokens 2..n_new; the last token is never fed back
            logits = be.step(be.embed_tokens(np.array([int(np.argmax(logits))])), state, probe_rows=0).logits
        sync()
        t2 = time.perf_counter()
        out.update({"answer_forced_s": t2 - t0, "answer_forced_prefill_s": t1 - t0,
                    "answer_forced_decode_per_token_s": (t2 - t1) / max(1, n_new - 1),
                    "answer_forced_prompt_tokens": len(ids), "answer_forced_tokens": n_new})
    return out


def worker(args) -> dict:
    engine = _load(args)
    be = engine.backend
    if args.variant == "ort_noprobe":
        import onnxruntime as ort

        be.decoder = ort.InferenceSession(str(Path(args.bundle) / "decoder_noprobe.onnx"),
                                          providers=be.decoder.get_providers())
        be.has_probe = False
    cuda = args.device.startswith("cuda") and args.variant in TORCH_VARIANTS
    if cuda:
        import torch
        sync = torch.cuda.synchronize
    else:
        sync = lambda: None  # noqa: E731
    warmup = args.warmup if args.warmup is not None else int(args.device.startswith("cuda"))
    answers = args.variant != "naive" and args.answer_tokens > 0  # naive leaves the model on eager attention
    for _ in range(warmup):  # lazy initialisation, kernel selection, CUDA graph capture: not timed
        _clip(engine, args, sync)
        if answers:
            _answer(engine, args, sync)
    t, selected, n_ctx = _clip(engine, args, sync)
    info = be.info
    result = {"variant": args.variant, "context_tokens": n_ctx, "stages_s": t, "selected": selected,
              "backbone": engine.backbone.name, "tokens_per_group": info.tokens_per_frame,
              "clip_tokens": engine.backbone.clip_tokens(args.frames, info.tokens_per_frame),
              "realtime_x": args.frames / t["clip"],  # video seconds (1 fps) per wall second
              "answer": _answer(engine, args, sync) if answers else None, "warmup_passes": warmup,
              "cuda_graph": getattr(be, "cuda_graph", None), "graph_error": getattr(be, "graph_error", None)}
    gpu = None
    if cuda:
        import torch
        gpu = {"max_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
               "max_reserved_mib": torch.cuda.max_memory_reserved() / 2**20, "device": torch.cuda.get_device_name()}
    result.update({"peak_rss_mib": peak_rss_mib(), "peak_gpu_mib": gpu and gpu["max_allocated_mib"], "gpu": gpu})
    return result


def clip_tokens(model: str, frames: int) -> int:
    """Visual tokens of a clip of `frames` frames for a model, from its config alone (no weights loaded)."""
    from rlivs.runtime.backbones import backbone_for_config

    if model in IN_MEMORY:
        from rlivs.runtime.backends.torch.tiny import RECIPE_VERSION, default_cache_dir
        from rlivs.runtime.backends.torch.tiny_qwen import build_qwen_model_dir

        model_dir = default_cache_dir() / "models" / f"{IN_MEMORY[model]}-noweights-r{RECIPE_VERSION}-s0"
        if not (model_dir / "rlivs_random_model.json").exists():
            build_qwen_model_dir(model_dir, 0, IN_MEMORY[model], RECIPE_VERSION, weights=False)
    else:
        from rlivs.runtime.models import resolve_model

        model_dir = resolve_model(model)[0]
    config = json.loads((model_dir / "config.json").read_text())
    backbone, vc = backbone_for_config(config), config["vision_config"]
    if backbone.mrope:  # Qwen-VL: (H / (patch * merge)) x (W / (patch * merge)) merged tokens per temporal patch
        pre = model_dir / "preprocessor_config.json"
        h, w = backbone.frame_size(config, json.loads(pre.read_text()) if pre.is_file() else {})
        unit = vc["patch_size"] * vc.get("spatial_merge_size", 2)
        per_group = (h // unit) * (w // unit)
    else:
        side = (vc["image_size"] // vc["patch_size"] + 1) // 2  # LLaVA-OV: 2x2 pooling, ceil
        per_group = side * side
    return backbone.clip_tokens(frames, per_group)


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM). Not getrusage: Linux carries ru_maxrss over fork+exec,
    so a child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def arena_bundle(bundle: Path) -> Path:
    return bundle.with_name(bundle.name + "-arena")


def ensure_bundle(model: str, bundle: Path | None, arena: bool = False) -> Path:
    """The model's bundle (exported once into the rlivs cache) plus a probe-free decoder beside it, and with
    `arena` the same model exported with the in-place KV arena beside the bundle (BUNDLE-arena)."""
    from rlivs.export.bundle import ExportConfig, export_bundle
    from rlivs.export.onnx_export import export_decoder
    from rlivs.runtime.backends.torch import TorchBackend
    from rlivs.runtime.backends.torch.tiny import default_cache_dir
    from rlivs.runtime.models import resolve_model

    bundle = bundle or default_cache_dir() / "bundles" / model.replace("/", "--")
    if not (bundle / "manifest.json").exists():
        export_bundle(model, bundle)
    if not (bundle / "decoder_noprobe.onnx").exists():
        export_decoder(TorchBackend(resolve_model(model)[0]), bundle / "decoder_noprobe.onnx", 23, probe=False)
    if arena and not (arena_bundle(bundle) / "manifest.json").exists():
        export_bundle(model, arena_bundle(bundle), ExportConfig(kv_layout="arena", kv_dtype="float32"))
    return bundle


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="tiny | random-0.5b | random-qwen2.5-vl-3b | an HF directory; "
                                                   "comma-separated: each in turn, in one run")
    p.add_argument("--bundle", type=Path, default=None, help="its exported bundle (default: export into the cache)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--fifo-tokens", type=int, default=None,
                   help="FIFO prefix length (default: --fifo-clips clips of the default kept fraction)")
    p.add_argument("--fifo-clips", type=int, default=16, help="FIFO clips when --fifo-tokens is not given")
    p.add_argument("--caption-tokens", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                   help="torch variants' weights and activations (ort variants: the bundle's own)")
    p.add_argument("--max-context", type=int, default=8192, help="torch_fast: static KV cache positions per sequence")
    p.add_argument("--answer-tokens", type=int, default=32, help="answer length (0: skip the answer measurement)")
    p.add_argument("--answer-captions", type=int, default=5, help="captions stored in the memory the answer reads")
    p.add_argument("--warmup", type=int, default=None, help="untimed passes first (default: 1 on CUDA, 0 on CPU)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        print(json.dumps(worker(args)))
        return
    variants = args.variants.split(",")
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        sys.exit(f"unknown variant(s) {bad}: choose from {', '.join(VARIANTS)}")
    if any(v.startswith("ort") for v in variants):
        args.bundle = ensure_bundle(args.model, args.bundle, arena="ort_arena" in variants)
    models = args.model.split(",")
    if len(models) > 1:  # several models in one run, one after the other: {"models": {model: its summary}}
        out = {}
        for m in models:
            sub = [a for a in sys.argv[1:]]
            sub[sub.index("--model") + 1] = m
            p = subprocess.run([sys.executable, __file__, *sub], capture_output=True, text=True)
            sys.stderr.write(p.stderr)
            if p.returncode:
                sys.exit(f"{m} failed (exit {p.returncode})")
            out[m] = json.loads(p.stdout.strip().splitlines()[-1])
        print(json.dumps({"models": out}))
        return
    full_clip = clip_tokens(args.model, 16)  # tokens of a full 16-frame clip (the paper's clip)
    if args.fifo_tokens is None:  # --fifo-clips clips of the default kept fraction of a 16-frame clip
        from rlivs.runtime.config import SelectionConfig

        args.fifo_tokens = args.fifo_clips * SelectionConfig().n_keep(full_clip)
    runs = {}
    for v in variants:
        cmd = [sys.executable, __file__, "--model", args.model, "--frames", str(args.frames), "--fifo-tokens",
               str(args.fifo_tokens), "--caption-tokens", str(args.caption_tokens), "--device", args.device,
               "--dtype", args.dtype, "--max-context", str(args.max_context), "--answer-tokens",
               str(args.answer_tokens), "--answer-captions", str(args.answer_captions), "--variant", v] + \
              (["--bundle", str(args.bundle)] if args.bundle else []) + \
              (["--threads", str(args.threads)] if args.threads else []) + \
              (["--warmup", str(args.warmup)] if args.warmup is not None else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{v} failed:\n{out.stderr[-3000:]}")
        runs[v] = json.loads(out.stdout.strip().splitlines()[-1])
        r = runs[v]
        ans = f", answer {r['answer']['answer_forced_s'] * 1e3:.0f} ms" if r["answer"] else ""
        gpu = f", peak GPU {r['peak_gpu_mib']:.0f} MiB" if r["peak_gpu_mib"] is not None else ""
        print(v, json.dumps(r["stages_s"]), f"{r['realtime_x']:.2f}x real time{ans}{gpu}, "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB", file=sys.stderr)
    ref = runs.get("torch") or next(iter(runs.values()))
    keys = ("stages_s", "realtime_x", "answer", "peak_rss_mib", "peak_gpu_mib", "gpu", "warmup_passes", "cuda_graph",
            "graph_error")
    summary = {"model": args.model, "backbone": ref["backbone"], "frames": args.frames, "fifo_tokens": args.fifo_tokens,
               "tokens_per_group": ref["tokens_per_group"], "clip_tokens": ref["clip_tokens"],
               "clip_tokens_16_frames": full_clip,
               "caption_tokens": args.caption_tokens, "device": args.device, "dtype": args.dtype,
               "max_context": args.max_context, "context_tokens": ref["context_tokens"],
               "variants": {v: {k: r.get(k) for k in keys} for v, r in runs.items()}}
    if "naive" in runs:
        n = runs["naive"]
        for v in ("torch", "torch_fast", "ort"):
            if v in runs:
                summary[f"{v}_vs_naive"] = {
                    "clip_speedup": n["stages_s"]["clip"] / runs[v]["stages_s"]["clip"],
                    "prefill_speedup": n["stages_s"]["prefill"] / runs[v]["stages_s"]["prefill"],
                    "decode_speedup": n["stages_s"]["decode_per_token"] / runs[v]["stages_s"]["decode_per_token"],
                    "peak_rss_ratio": n["peak_rss_mib"] / runs[v]["peak_rss_mib"],
                    "selection_overlap": len(set(n["selected"]) & set(runs[v]["selected"])) / len(n["selected"]),
                }
    if "torch" in runs and "torch_fast" in runs:
        a, b = runs["torch"], runs["torch_fast"]
        summary["torch_fast_vs_torch"] = {
            **{f"{k}_speedup": a["stages_s"][k] / b["stages_s"][k] for k in ("clip", "prefill", "decode_per_token")},
            "selection_overlap": len(set(a["selected"]) & set(b["selected"])) / len(a["selected"]),
        }
        if a["answer"] and b["answer"]:
            summary["torch_fast_vs_torch"]["answer_speedup"] = (a["answer"]["answer_forced_s"]
                                                                / b["answer"]["answer_forced_s"])
    if "ort" in runs and "ort_noprobe" in runs:
        a, b = runs["ort"]["stages_s"], runs["ort_noprobe"]["stages_s"]
        summary["probe_overhead"] = {k: a[k] / b[k] - 1 for k in ("prefill", "decode_per_token")}
    if "ort" in runs and "ort_arena" in runs:
        a, b = runs["ort"], runs["ort_arena"]
        summary["ort_arena_vs_ort"] = {
            **{f"{k}_speedup": a["stages_s"][k] / b["stages_s"][k] for k in ("prefill", "decode_per_token")},
            "selection_overlap": len(set(a["selected"]) & set(b["selected"])) / len(a["selected"]),
        }
    if "torch_fast" in runs:  # the targets (stated for random-0.5b on an H100)
        f = runs["torch_fast"]
        gpu_bytes = f["peak_gpu_mib"] * 2**20 if f["peak_gpu_mib"] is not None else None
        summary["torch_fast_targets"] = {
            "applies": args.model == "random-0.5b" and args.device.startswith("cuda"),
            "realtime_x": f["realtime_x"], "realtime_ok": f["realtime_x"] >= TARGETS["realtime_x_min"],
            "answer_s": f["answer"] and f["answer"]["answer_forced_s"],
            "answer_ok": bool(f["answer"]) and f["answer"]["answer_forced_s"] <= TARGETS["answer_s_max"],
            "peak_gpu_gb": gpu_bytes and gpu_bytes / 1e9,
            "peak_gpu_ok": gpu_bytes is not None and gpu_bytes <= TARGETS["peak_gpu_bytes_max"],
        }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
