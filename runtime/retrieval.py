"""Caption retrieval: one vector per text, mean-pairwise-cosine relevance, maximal marginal relevance.

A text's vector is the mean of its tokens' unit-normalised input embeddings. The paper scores a
caption by the average cosine between question tokens and caption tokens; that average equals
the dot product of the two mean vectors, so one vector per caption stands for all its tokens and
`similarity` is a plain dot product (docs/method.md).
"""

from __future__ import annotations

import numpy as np


def text_vector(token_embeds: np.ndarray) -> np.ndarray:
    """(L, D) input embeddings -> (D,) float32 mean of unit vectors (zeros for an empty text)."""
    if len(token_embeds) == 0:
        return np.zeros(token_embeds.shape[-1], dtype=np.float32)
    e = token_embeds.astype(np.float64)
    e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return e.mean(axis=0).astype(np.float32)


def similarity(query: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(D,), (N, D) mean-unit vectors -> (N,) mean pairwise token cosine (= dot product of the means)."""
    return matrix.astype(np.float64) @ query.astype(np.float64)


def mmr(query: np.ndarray, matrix: np.ndarray, k: int, lam: float = 0.5,
        costs: np.ndarray | None = None, budget: float | None = None,
        relevance: np.ndarray | None = None) -> list[int]:
    """Maximal marginal relevance: repeatedly take argmax  lam*sim(q, d) - (1-lam)*max_{s in S} sim(d, s),
    with sim the mean pairwise token cosine (`similarity`) of mean-unit vectors; `relevance` (N,) replaces
    sim(q, d) when given (hybrid ranking puts its fused score there, on the similarity's scale).

    Stops at k items or when the next pick would exceed `budget` (sum of `costs`, e.g. caption
    tokens); an item too large for the remaining budget is skipped. Returns indices in pick order.
    """
    n = len(matrix)
    if n == 0:
        return []
    rel = similarity(query, matrix) if relevance is None else np.asarray(relevance, dtype=np.float64)  # (N,)
    vecs = matrix.astype(np.float64)
    red = np.full(n, -np.inf)  # max similarity to anything picked so far
    picked: list[int] = []
    open_ = np.ones(n, dtype=bool)
    spent = 0.0
    while len(picked) < k and open_.any():
        score = lam * rel - (1.0 - lam) * np.where(np.isfinite(red), red, 0.0)
        score = np.where(open_, score, -np.inf)
        j = int(np.argmax(score))
        open_[j] = False
        if budget is not None and costs is not None and spent + costs[j] > budget:
            continue
        picked.append(j)
        spent += 0.0 if costs is None else float(costs[j])
        red = np.maximum(red, vecs @ vecs[j])
    return picked
