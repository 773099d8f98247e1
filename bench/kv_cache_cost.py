"""What appending the KV cache in place saves: the stacked cache (past -> present, a new cache tensor every
step) vs the arena (past_kv bound to the cache's rows, new_kv written after them), on ONNX Runtime.

The same model is exported both ways (ONNX Runtime target: fused Attention either way); both bundles are loaded
in one process and run interleaved (alternating which goes first), medians compared, so load from other
processes hits both alike. Also checks that both produce the same greedy tokens. Prints JSON as its last line.

    python bench/kv_cache_cost.py --model tiny
    python bench/kv_cache_cost.py --model random-0.5b --context 1598 --decode 8 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np


def run(be, ctx, n_decode) -> tuple[float, float, list[int]]:
    """(prefill seconds, decode seconds per token, greedy tokens)."""
    state = be.new_state()
    t0 = time.perf_counter()
    out = be.step(ctx, state)
    t1 = time.perf_counter()
    tokens = []
    for _ in range(n_decode):
        tokens.append(int(np.argmax(out.logits)))
        out = be.step(be.embed_tokens(np.array(tokens[-1:])), state)
    return t1 - t0, (time.perf_counter() - t1) / n_decode, tokens


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--bundle", type=Path, default=None, help="default: the bench cache (see clip_step.py)")
    p.add_argument("--context", type=int, default=830, help="prefill length in tokens")
    p.add_argument("--decode", type=int, default=16, help="decode steps per run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()

    from clip_step import arena_bundle, ensure_bundle

    from rlivs.runtime.backends.onnxruntime import OrtBackend

    bundle = ensure_bundle(args.model, args.bundle, arena=True)
    backends = {"stacked": OrtBackend(bundle, threads=args.threads),
                "arena": OrtBackend(arena_bundle(bundle), threads=args.threads)}
    assert backends["arena"].kv.layout == "arena" and backends["stacked"].kv.layout == "stacked"
    d = backends["stacked"].info.hidden_size
    ctx = np.random.default_rng(0).standard_normal((args.context, d)).astype(np.float32) * 0.02
    times = {k: {"prefill": [], "decode": []} for k in backends}
    tokens = {}
    for be in backends.values():  # warm-up
        run(be, ctx[:16], 2)
    for r in range(args.repeats):
        for k in (("stacked", "arena") if r % 2 == 0 else ("arena", "stacked")):
            pre, dec, tokens[k] = run(backends[k], ctx, args.decode)
            times[k]["prefill"].append(pre)
            times[k]["decode"].append(dec)
    med = {k: {s: statistics.median(v) for s, v in t.items()} for k, t in times.items()}
    print(json.dumps({
        "model": args.model, "context": args.context, "decode_steps": args.decode, "repeats": args.repeats,
        "median_s": med, "same_tokens": tokens["stacked"] == tokens["arena"],
        "arena_speedup": {s: med["stacked"][s] / med["arena"][s] for s in ("prefill", "decode")},
    }))


if __name__ == "__main__":
    main()
