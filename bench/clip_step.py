"""One clip step, stage by stage: the naive way (transformers eager, output_attentions on ALL layers)
against the torch reference backend (probe rows only, SDPA elsewhere). Each variant runs in its own
process so that peak RSS is its own. Prints one JSON object as its last line.

    python bench/clip_step.py --size tiny
    python bench/clip_step.py --size 0.5b --frames 4 --fifo-tokens 784 --caption-tokens 8
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def worker(args) -> dict:
    import torch

    from rlivs.runtime.backends.torch import TorchBackend
    from rlivs.runtime.backends.torch.tiny import ensure_tiny_model, real_size_config
    from rlivs.runtime.config import PipelineConfig
    from rlivs.runtime.frames import FramePreprocessor
    from rlivs.runtime.memory import ClipRecord, Memory
    from rlivs.runtime.pipeline import Engine
    from rlivs.runtime.selection import select_attention
    from rlivs.runtime.text import TextCodec
    from transformers import LlavaOnevisionForConditionalGeneration

    torch.set_num_threads(args.threads) if args.threads else None
    tiny = ensure_tiny_model()
    text = TextCodec(tiny)
    if args.size == "tiny":
        be = TorchBackend(tiny)
        pre = FramePreprocessor.from_model_dir(tiny)
    else:
        torch.manual_seed(0)
        tok = text.tokenizer
        model = LlavaOnevisionForConditionalGeneration(
            real_size_config(tok.token_to_id("<image>"), tok.token_to_id("<video>"))).eval()
        be = TorchBackend(model=model, model_id="random-0.5b", device=args.device)
        pre = FramePreprocessor(384, 384, (0.5,) * 3, (0.5,) * 3)
    engine = Engine(be, text, pre, PipelineConfig())
    d = be.info.hidden_size
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (args.frames, 240, 320, 3), dtype=np.uint8)
    fifo = rng.standard_normal((args.fifo_tokens, d)).astype(np.float32) * 0.02
    t = {}
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    t0 = time.perf_counter()
    vis = be.encode_frames(pre(frames))  # (T, P, D)
    t["encode"] = time.perf_counter() - t0
    ctx, cols = engine.caption_context(fifo, vis.reshape(-1, d))
    n_new = args.caption_tokens
    if args.variant == "torch":
        state = be.new_state()
        t0 = time.perf_counter()
        out = be.step(ctx, state)
        sync()
        t["prefill"] = time.perf_counter() - t0
        scores = out.probe_attn[0, cols].astype(np.float64)
        t0 = time.perf_counter()
        for _ in range(n_new):  # fixed-length decode: feed the argmax back, random weights never stop early
            out = be.step(be.embed_tokens(np.array([int(np.argmax(out.logits))])), state)
            scores += out.probe_attn[0, cols]
        sync()
        t["decode_per_token"] = (time.perf_counter() - t0) / n_new
    else:  # naive: eager attention, every layer's full probabilities returned, probe layers picked afterwards
        lm = be.model.model.language_model
        lm.set_attn_implementation("eager")
        layers = be.info.probe_layers
        with torch.inference_mode():
            x = torch.from_numpy(ctx)[None].to(be.device)
            t0 = time.perf_counter()
            r = lm(inputs_embeds=x, output_attentions=True, use_cache=True)
            sync()
            t["prefill"] = time.perf_counter() - t0
            att = torch.stack([r.attentions[i][0, :, -1].float().mean(0) for i in layers]).mean(0)
            scores = att[cols].double().cpu().numpy()
            cache = r.past_key_values
            logits = be.model.lm_head(r.last_hidden_state[:, -1])
            del r
            t0 = time.perf_counter()
            for _ in range(n_new):
                tok = logits.argmax(-1)
                r = lm(input_ids=tok[None] if tok.ndim == 1 else tok, past_key_values=cache,
                       output_attentions=True, use_cache=True)
                att = torch.stack([r.attentions[i][0, :, -1].float().mean(0) for i in layers]).mean(0)
                scores += att[cols].double().cpu().numpy()
                cache, logits = r.past_key_values, be.model.lm_head(r.last_hidden_state[:, -1])
            sync()
            t["decode_per_token"] = (time.perf_counter() - t0) / n_new
    t0 = time.perf_counter()
    n_keep = engine.config.selection.n_keep(len(scores))
    sel = select_attention(vis, scores.astype(np.float32), n_keep, rng)
    t["select"] = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp, Memory(f"{tmp}/m.db") as mem:
        mem.open_stream("s", "bench", "bench", "x")
        t0 = time.perf_counter()
        mem.commit_clip(ClipRecord("s", 0, 0.0, 16.0, "caption " * 20, 40, engine.vector([5, 6, 7])), sel.tokens)
        t["store"] = time.perf_counter() - t0
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    gpu = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else None
    return {"variant": args.variant, "context_tokens": len(ctx), "stages_s": t, "peak_rss_mib": peak_rss,
            "peak_gpu_mib": gpu, "selected": sel.indices.tolist()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["tiny", "0.5b"], default="tiny")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--fifo-tokens", type=int, default=None, help="FIFO prefix length (default: 16 clips' worth)")
    p.add_argument("--caption-tokens", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--variant", choices=["naive", "torch"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.fifo_tokens is None:
        per_frame = 25 if args.size == "tiny" else 196
        args.fifo_tokens = 16 * round(0.0625 * 16 * per_frame)
    if args.variant:
        print(json.dumps(worker(args)))
        return
    runs = {}
    for variant in ("naive", "torch"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--variant", variant, "--fifo-tokens", str(args.fifo_tokens)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{variant} failed:\n{out.stderr[-3000:]}")
        runs[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    n, tb = runs["naive"], runs["torch"]
    total = lambda r: sum(v for k, v in r["stages_s"].items() if k != "decode_per_token") + \
        r["stages_s"]["decode_per_token"] * args.caption_tokens  # noqa: E731
    summary = {
        "size": args.size, "frames": args.frames, "fifo_tokens": args.fifo_tokens, "caption_tokens": args.caption_tokens,
        "device": args.device, "context_tokens": tb["context_tokens"],
        "naive": {k: n[k] for k in ("stages_s", "peak_rss_mib", "peak_gpu_mib")},
        "torch_backend": {k: tb[k] for k in ("stages_s", "peak_rss_mib", "peak_gpu_mib")},
        "speedup_prefill": n["stages_s"]["prefill"] / tb["stages_s"]["prefill"],
        "speedup_decode_token": n["stages_s"]["decode_per_token"] / tb["stages_s"]["decode_per_token"],
        "speedup_clip": total(n) / total(tb),
        "peak_rss_ratio": n["peak_rss_mib"] / tb["peak_rss_mib"],
        "same_selection": n["selected"] == tb["selected"],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
