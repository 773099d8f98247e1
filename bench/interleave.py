"""Interleaved A/B timing of decoder variants in one process: shared by probe_cost.py and kv_cache_cost.py.

Each repeat runs every variant once, alternating the order, and medians are compared, so load from other
processes hits all variants alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np


def decoder_args(doc: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--bundle", type=Path, default=None, help="default: the bench cache (see clip_step.py)")
    p.add_argument("--context", type=int, default=830, help="prefill length in tokens")
    p.add_argument("--decode", type=int, default=16, help="decode steps per run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args()


def timed_greedy(be, ctx: np.ndarray, n_decode: int, probe_rows: int = 1) -> tuple[float, float, list[int]]:
    """(prefill seconds, decode seconds per token, greedy tokens) of one fresh sequence on backend `be`."""
    state = be.new_state()
    t0 = time.perf_counter()
    out = be.step(ctx, state, probe_rows=probe_rows)
    t1 = time.perf_counter()
    tokens = []
    for _ in range(n_decode):
        tokens.append(int(np.argmax(out.logits)))
        out = be.step(be.embed_tokens(np.array(tokens[-1:])), state, probe_rows=probe_rows)
    return t1 - t0, (time.perf_counter() - t1) / n_decode, tokens


def interleaved(variants: dict[str, Callable[[np.ndarray], tuple]], ctx: np.ndarray, repeats: int):
    """variants: name -> run(ctx) returning (prefill s, decode s per token, tokens). One short warm-up each.
    -> ({name: {"prefill", "decode"} medians}, {name: tokens of the last run})."""
    for run in variants.values():
        run(ctx[:16])
    times = {k: {"prefill": [], "decode": []} for k in variants}
    tokens = {}
    names = list(variants)
    for r in range(repeats):
        for k in names if r % 2 == 0 else names[::-1]:
            pre, dec, tokens[k] = variants[k](ctx)
            times[k]["prefill"].append(pre)
            times[k]["decode"].append(dec)
    return {k: {s: statistics.median(v) for s, v in t.items()} for k, t in times.items()}, tokens
