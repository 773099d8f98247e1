"""Greedy decoding on any backend, scoring visual tokens with the probe attention on the way."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .backends.base import Backend


@dataclass
class Generation:
    ids: list[int]  # generated tokens, EOS excluded
    scores: np.ndarray | None  # (C,) summed probe attention over the scored columns, or None
    steps: int  # decoder steps run (1 prefill + decode steps)
    prefill_s: float = 0.0  # seconds in the prefill step
    decode_s: float = 0.0  # seconds in decode steps


def greedy(backend: Backend, context: np.ndarray, max_new_tokens: int, eos_ids, columns: slice | None = None,
           on_token: Callable[[int], None] | None = None, positions: np.ndarray | None = None) -> Generation:
    """Greedy continuation of (S, D) context embeddings.

    With `columns`, every decoder step's query row (the last prompt token at prefill, then each
    generated token that is fed back) adds its probe attention over keys[columns] into the scores:
    the attention behind every caption token, at no extra forward pass. The final token is never
    fed back (nothing is generated after it), as in HF `generate`. `on_token(id)` is called with each generated
    token as soon as it is chosen (EOS excluded): answers stream through it. `positions`: (3, S) M-RoPE ids of the
    context (None: 1-D); generated tokens continue after their maximum (the backend keeps the offset).
    """
    rows = 1 if columns is not None else 0
    state = backend.new_state()
    t0 = time.perf_counter()
    extra = {} if positions is None else {"positions": positions}  # 1-D backends take no positions
    out = backend.step(context, state, probe_rows=rows, **extra)  # prefill
    prefill_s = time.perf_counter() - t0
    scores = out.probe_attn[0, columns].astype(np.float64) if rows else None  # (C,)
    ids: list[int] = []
    steps = 1
    while True:
        tok = int(np.argmax(out.logits))
        if tok in eos_ids:
            break
        ids.append(tok)
        if on_token is not None:
            on_token(tok)
        if len(ids) >= max_new_tokens:
            break
        out = backend.step(backend.embed_tokens(np.array([tok])), state, probe_rows=rows)  # (1, D) in
        steps += 1
        if rows:
            scores += out.probe_attn[0, columns]
    total = time.perf_counter() - t0
    return Generation(ids, None if scores is None else scores.astype(np.float32), steps, prefill_s, total - prefill_s)
