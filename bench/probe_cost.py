"""What the probe output costs: the bundle's decoder with and without `probe_attn`, on ONNX Runtime.

Both decoders are loaded in one process and run interleaved (alternating which goes first), and the
medians are compared, so that load from other processes hits both alike. Prints JSON as its last line.

    python bench/probe_cost.py --model tiny
    python bench/probe_cost.py --model random-0.5b --context 1598 --decode 8 --repeats 3
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from clip_step import ensure_bundle
from interleave import decoder_args, interleaved, timed_greedy


def run(be, session, ctx, n_decode) -> tuple[float, float, list[int]]:
    """timed_greedy with `session` as the bundle's decoder (probe rows only where it has the output)."""
    be.decoder = session
    be.has_probe = "probe_attn" in {o.name for o in session.get_outputs()}
    return timed_greedy(be, ctx, n_decode, probe_rows=1 if be.has_probe else 0)


def main():
    args = decoder_args(__doc__)
    import onnxruntime as ort

    from rlivs.runtime.backends.onnxruntime import OrtBackend

    bundle = ensure_bundle(args.model, args.bundle)
    be = OrtBackend(bundle, threads=args.threads)
    opts = ort.SessionOptions()
    if args.threads:
        opts.intra_op_num_threads = args.threads
    sessions = {"probe": be.decoder,
                "noprobe": ort.InferenceSession(str(Path(bundle) / "decoder_noprobe.onnx"), opts,
                                                providers=be.decoder.get_providers())}
    ctx = np.random.default_rng(0).standard_normal((args.context, be.info.hidden_size)).astype(np.float32) * 0.02
    med, _ = interleaved({k: (lambda c, s=s: run(be, s, c, args.decode)) for k, s in sessions.items()}, ctx,
                         args.repeats)
    print(json.dumps({
        "model": args.model, "context": args.context, "decode_steps": args.decode, "repeats": args.repeats,
        "median_s": med,
        "probe_overhead": {s: med["probe"][s] / med["noprobe"][s] - 1 for s in ("prefill", "decode")},
    }))


if __name__ == "__main__":
    main()
