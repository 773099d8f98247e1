"""Which of a clip's visual tokens go into the FIFO. One interface, several strategies (for ablations).

A strategy takes the clip's tokens (T, P, D), their attention scores (T*P,) and a count N, and
returns N tokens (N, D) in temporal order, with the flat indices they came from where they are
original tokens (attention, uniform, k-means, random) or None where they are pooled (meanpool).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from rlivs.runtime.errors import UserError


@dataclass
class Selection:
    tokens: np.ndarray  # (N, D) kept tokens, temporal order
    indices: np.ndarray | None  # (N,) flat indices into the clip's T*P tokens, ascending; None if pooled


def select_attention(tokens: np.ndarray, scores: np.ndarray, n: int, rng: np.random.Generator) -> Selection:
    """Top-N by attention score (ties broken toward earlier tokens), kept in temporal order."""
    flat = tokens.reshape(-1, tokens.shape[-1])  # (T*P, D)
    if scores is None or scores.shape != (flat.shape[0],):
        raise UserError(f"attention selection needs one score per visual token ({flat.shape[0]}), got "
                        f"{None if scores is None else scores.shape}")
    order = np.argsort(-scores, kind="stable")[:n]
    idx = np.sort(order)
    return Selection(flat[idx], idx)


def select_uniform(tokens: np.ndarray, scores: np.ndarray, n: int, rng: np.random.Generator) -> Selection:
    """N tokens evenly spaced over the clip (in time, then raster order)."""
    flat = tokens.reshape(-1, tokens.shape[-1])
    idx = np.unique(np.floor((np.arange(n) + 0.5) * flat.shape[0] / n).astype(np.int64))
    return Selection(flat[idx], idx)


def select_random(tokens: np.ndarray, scores: np.ndarray, n: int, rng: np.random.Generator) -> Selection:
    flat = tokens.reshape(-1, tokens.shape[-1])
    idx = np.sort(rng.choice(flat.shape[0], size=n, replace=False))
    return Selection(flat[idx], idx)


def select_meanpool(tokens: np.ndarray, scores: np.ndarray, n: int, rng: np.random.Generator) -> Selection:
    """Spatial mean-pooling: each frame's raster of P tokens is split into contiguous regions whose
    means become the kept tokens; the N outputs are shared out over the T frames as evenly as possible."""
    t, p, d = tokens.shape
    per_frame = [len(a) for a in np.array_split(np.arange(n), t)]  # outputs per frame, sums to n
    out = []
    for f, k in enumerate(per_frame):
        if k == 0:
            continue
        out.extend(region.mean(axis=0) for region in np.array_split(tokens[f], min(k, p)))
    pooled = np.stack(out).astype(tokens.dtype)  # (N', D)
    if len(pooled) < n:  # more outputs asked than patches in some frames: pad with uniform originals
        extra = select_uniform(tokens, scores, n - len(pooled), rng).tokens
        pooled = np.concatenate([pooled, extra])
    return Selection(pooled[:n], None)


def select_kmeans(tokens: np.ndarray, scores: np.ndarray, n: int, rng: np.random.Generator,
                  iters: int = 10) -> Selection:
    """k-means (k = N, Lloyd, uniform init) over the clip's tokens; keeps the token nearest each centroid."""
    flat = tokens.reshape(-1, tokens.shape[-1]).astype(np.float32)  # (M, D)
    centroids = flat[select_uniform(tokens, scores, n, rng).indices].copy()  # (N, D)
    sq = (flat**2).sum(1)  # (M,)
    for _ in range(iters):
        dist = sq[:, None] - 2 * flat @ centroids.T + (centroids**2).sum(1)[None]  # (M, N)
        assign = dist.argmin(1)
        for c in range(len(centroids)):
            members = flat[assign == c]
            if len(members):
                centroids[c] = members.mean(0)
    dist = sq[:, None] - 2 * flat @ centroids.T + (centroids**2).sum(1)[None]  # (M, N)
    chosen: list[int] = []
    taken = np.zeros(len(flat), dtype=bool)
    for c in range(len(centroids)):  # nearest not-yet-taken token per centroid: always N distinct tokens
        col = np.where(taken, np.inf, dist[:, c])
        j = int(col.argmin())
        taken[j] = True
        chosen.append(j)
    idx = np.sort(np.asarray(chosen, dtype=np.int64))
    return Selection(tokens.reshape(-1, tokens.shape[-1])[idx], idx)


Strategy = Callable[[np.ndarray, np.ndarray, int, np.random.Generator], Selection]

STRATEGIES: dict[str, Strategy] = {
    "attention": select_attention,
    "uniform": select_uniform,
    "meanpool": select_meanpool,
    "kmeans": select_kmeans,
    "random": select_random,
}


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise UserError(f"unknown selection strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]
