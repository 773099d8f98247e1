"""What the probe output costs: the bundle's decoder with and without `probe_attn`, on ONNX Runtime.

Both decoders are loaded in one process and run interleaved (alternating which goes first), and the
medians are compared, so that load from other processes hits both alike. Prints JSON as its last line.

    python bench/probe_cost.py --model tiny
    python bench/probe_cost.py --model random-0.5b --context 1598 --decode 8 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np


def run(be, session, ctx, n_decode) -> tuple[float, float]:
    """(prefill seconds, decode seconds per token) with `session` as the decoder."""
    be.decoder = session
    be.has_probe = "probe_attn" in {o.name for o in session.get_outputs()}
    state = be.new_state()
    t0 = time.perf_counter()
    out = be.step(ctx, state, probe_rows=1 if be.has_probe else 0)
    t1 = time.perf_counter()
    for _ in range(n_decode):
        out = be.step(be.embed_tokens(np.array([int(np.argmax(out.logits))])), state,
                      probe_rows=1 if be.has_probe else 0)
    return t1 - t0, (time.perf_counter() - t1) / n_decode


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--bundle", type=Path, default=None, help="default: the bench cache (see clip_step.py)")
    p.add_argument("--context", type=int, default=830, help="prefill length in tokens")
    p.add_argument("--decode", type=int, default=16, help="decode steps per run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()

    import onnxruntime as ort
    from clip_step import ensure_bundle

    from rlivs.runtime.backends.onnxruntime import OrtBackend

    bundle = ensure_bundle(args.model, args.bundle)
    be = OrtBackend(bundle, threads=args.threads)
    opts = ort.SessionOptions()
    if args.threads:
        opts.intra_op_num_threads = args.threads
    sessions = {"probe": be.decoder,
                "noprobe": ort.InferenceSession(str(bundle / "decoder_noprobe.onnx"), opts, providers=be.decoder.get_providers())}
    ctx = np.random.default_rng(0).standard_normal((args.context, be.info.hidden_size)).astype(np.float32) * 0.02
    times = {k: {"prefill": [], "decode": []} for k in sessions}
    run(be, sessions["probe"], ctx[:16], 2)  # warm-up both
    run(be, sessions["noprobe"], ctx[:16], 2)
    for r in range(args.repeats):
        order = ("probe", "noprobe") if r % 2 == 0 else ("noprobe", "probe")
        for k in order:
            pre, dec = run(be, sessions[k], ctx, args.decode)
            times[k]["prefill"].append(pre)
            times[k]["decode"].append(dec)
    med = {k: {s: statistics.median(v) for s, v in t.items()} for k, t in times.items()}
    print(json.dumps({
        "model": args.model, "context": args.context, "decode_steps": args.decode, "repeats": args.repeats,
        "median_s": med,
        "probe_overhead": {s: med["probe"][s] / med["noprobe"][s] - 1 for s in ("prefill", "decode")},
    }))


if __name__ == "__main__":
    main()
