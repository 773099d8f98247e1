"""Greedy decoding on any backend, scoring visual tokens with the probe attention on the way: one sequence (`greedy`)
or several decoded together (`greedy_batch`, the same rule per sequence)."""

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
           on_token: Callable[[int], None] | None = None, positions: np.ndarray | None = None,
           deepstack: tuple[np.ndarray, np.ndarray] | None = None) -> Generation:
    """Greedy continuation of (S, D) context embeddings.

    With `columns`, every decoder step's query row (the last prompt token at prefill, then each
    generated token that is fed back) adds its probe attention over keys[columns] into the scores:
    the attention behind every caption token, at no extra forward pass. The final token is never
    fed back (nothing is generated after it), as in HF `generate`. `on_token(id)` is called with each generated
    token as soon as it is chosen (EOS excluded): answers stream through it. `positions`: (3, S) M-RoPE ids of the
    context (None: 1-D); generated tokens continue after their maximum (the backend keeps the offset). `columns`
    may also be an index array (a context with text between its visual tokens, Qwen3-VL). `deepstack`: ((n,) visual
    context rows, (K, n, D) their DeepStack features), given to the prefill (DeepStack backbones).
    """
    rows = 1 if columns is not None else 0
    state = backend.new_state()
    t0 = time.perf_counter()
    extra = {} if positions is None else {"positions": positions}  # 1-D backends take no positions
    if deepstack is not None:
        extra["deepstack"] = deepstack
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


def greedy_batch(backend: Backend, contexts: list[np.ndarray], max_new_tokens: int, eos_ids,
                 columns: list[slice | None] | None = None, *, batch_prefill: bool = False) -> list[Generation]:
    """`greedy` for B sequences at once: contexts[i] (S_i, D), scored over columns[i] -> B Generations, each what
    `greedy(backend, contexts[i], ..., columns[i])` returns (ids, scores, steps); the decode steps of every sequence
    still running run as one `step_batch`. A sequence leaves the batch when it ends (EOS or max_new_tokens).

    Prefill: each context on its own state by default (a prefill is compute-bound, and padding a short context to a
    long one would only add work), then the states are grouped with `backend.batch`; `batch_prefill` runs the
    prefills as one padded `step_batch` instead. Timings: prefill_s is each sequence's own prefill (with
    batch_prefill: the batch's), decode_s the batch's decode wall time, shared by the sequences.
    """
    n = len(contexts)
    if n == 0:
        return []
    columns = list(columns) if columns is not None else [None] * n
    if len(columns) != n:
        raise ValueError(f"greedy_batch got {len(columns)} column slices for {n} contexts")
    score = columns[0] is not None
    if any((c is not None) != score for c in columns):
        raise ValueError("greedy_batch scores every sequence or none: give a column slice for each context or none")
    rows = 1 if score else 0
    prefill_s = [0.0] * n
    if batch_prefill:
        t0 = time.perf_counter()
        batch = backend.batch([backend.new_state() for _ in range(n)])
        outs = backend.step_batch(list(contexts), batch, probe_rows=rows)
        prefill_s = [time.perf_counter() - t0] * n
    else:
        states, outs = [], []
        for i, ctx in enumerate(contexts):
            t0 = time.perf_counter()
            states.append(backend.new_state())
            outs.append(backend.step(ctx, states[-1], probe_rows=rows))  # (S_i, D) prefill, alone
            prefill_s[i] = time.perf_counter() - t0
        batch = backend.batch(states)
    scores = [o.probe_attn[0, c].astype(np.float64) if rows else None for o, c in zip(outs, columns)]  # (C_i,)
    ids: list[list[int]] = [[] for _ in range(n)]
    steps = [1] * n
    live = list(range(n))  # sequence index of each batch row
    t0 = time.perf_counter()
    while live:
        going, feed = [], []  # batch rows that go on, and their next input ids
        for row, i in enumerate(live):
            tok = int(np.argmax(outs[row].logits))
            if tok in eos_ids:
                continue
            ids[i].append(tok)
            if len(ids[i]) >= max_new_tokens:
                continue
            going.append(row)
            feed.append(tok)
        if not going:
            break
        if len(going) < len(live):
            batch.keep(going)
            live = [live[r] for r in going]
        embeds = backend.embed_tokens(np.array(feed, dtype=np.int64))  # (B', D)
        outs = backend.step_batch([embeds[j:j + 1] for j in range(len(feed))], batch, probe_rows=rows)  # (1, D) each
        for row, i in enumerate(live):
            steps[i] += 1
            if rows:
                scores[i] += outs[row].probe_attn[0, columns[i]]
    decode_s = time.perf_counter() - t0
    return [Generation(ids[i], None if scores[i] is None else scores[i].astype(np.float32), steps[i], prefill_s[i],
                       decode_s) for i in range(n)]
