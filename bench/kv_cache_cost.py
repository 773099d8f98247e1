"""What appending the KV cache in place saves: the stacked cache (past -> present, a new cache tensor every
step) vs the arena (past_kv bound to the cache's rows, new_kv written after them), on ONNX Runtime.

The same model is exported both ways (ONNX Runtime target: fused Attention either way); both bundles are loaded
in one process and run interleaved (alternating which goes first), medians compared, so load from other
processes hits both alike. Also checks that both produce the same greedy tokens. Prints JSON as its last line.

    python bench/kv_cache_cost.py --model tiny
    python bench/kv_cache_cost.py --model random-0.5b --context 1598 --decode 8 --repeats 3
"""

from __future__ import annotations

import json

import numpy as np
from clip_step import arena_bundle, ensure_bundle
from interleave import decoder_args, interleaved, timed_greedy


def main():
    args = decoder_args(__doc__)
    from rlivs.runtime.backends.onnxruntime import OrtBackend

    bundle = ensure_bundle(args.model, args.bundle, arena=True)
    backends = {"stacked": OrtBackend(bundle, threads=args.threads),
                "arena": OrtBackend(arena_bundle(bundle), threads=args.threads)}
    assert backends["arena"].kv.layout == "arena" and backends["stacked"].kv.layout == "stacked"
    d = backends["stacked"].info.hidden_size
    ctx = np.random.default_rng(0).standard_normal((args.context, d)).astype(np.float32) * 0.02
    med, tokens = interleaved({k: (lambda c, be=be: timed_greedy(be, c, args.decode)) for k, be in backends.items()},
                              ctx, args.repeats)
    print(json.dumps({
        "model": args.model, "context": args.context, "decode_steps": args.decode, "repeats": args.repeats,
        "median_s": med, "same_tokens": tokens["stacked"] == tokens["arena"],
        "arena_speedup": {s: med["stacked"][s] / med["arena"][s] for s in ("prefill", "decode")},
    }))


if __name__ == "__main__":
    main()
