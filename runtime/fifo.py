"""The recurrent memory: the tokens selected from the last clips, prefixed to the next clip's context."""

from __future__ import annotations

from collections import deque

import numpy as np

from .backbones import FifoClip
from .config import FifoConfig
from rlivs.runtime.errors import UserError


class TokenFifo:
    """Clips enter at the back; the oldest leave when the clip or token bound is exceeded."""

    def __init__(self, config: FifoConfig, dim: int):
        self.config = config
        self.dim = dim  # D
        self._clips: deque[tuple[int, np.ndarray]] = deque()  # (clip index, (n_i, D)), oldest first
        self._kept: dict[int, np.ndarray] = {}  # clip index -> (n_i,) flat indices of its tokens in its clip, if known
        self._deep: dict[int, np.ndarray] = {}  # clip index -> (K, n_i, D) its tokens' DeepStack features (Qwen3-VL)

    def __len__(self) -> int:
        return len(self._clips)

    @property
    def n_tokens(self) -> int:
        return sum(len(t) for _, t in self._clips)

    @property
    def clip_indices(self) -> list[int]:
        return [i for i, _ in self._clips]

    def clips(self) -> list[FifoClip]:
        """Where the FIFO's tokens came from, oldest first (M-RoPE backbones position them by it); None: no token
        indices (pooled tokens)."""
        return [FifoClip(i, len(t), self._kept.get(i), self._deep.get(i)) for i, t in self._clips]

    def entries(self) -> list[tuple[int, np.ndarray]]:
        return list(self._clips)

    def tokens(self) -> np.ndarray:
        """(sum n_i, D) all kept tokens, oldest clip first."""
        if not self._clips:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate([t for _, t in self._clips], axis=0)

    def evictions(self, n_new: int) -> list[int]:
        """Clip indices that must leave if a clip of n_new tokens enters (computed, nothing changes)."""
        cap_c, cap_t = self.config.capacity_clips, self.config.capacity_tokens
        sizes = [(i, len(t)) for i, t in self._clips] + [(None, n_new)]
        out = []
        while sizes and ((cap_c is not None and len(sizes) > cap_c) or
                         (cap_t is not None and sum(s for _, s in sizes) > cap_t)):
            i, _ = sizes.pop(0)
            if i is not None:
                out.append(i)
        return out

    def admits(self, n_new: int) -> bool:
        """False when the bounds leave no room even for the new clip (e.g. capacity 0: no recurrence)."""
        cap_c, cap_t = self.config.capacity_clips, self.config.capacity_tokens
        return (cap_c is None or cap_c > 0) and (cap_t is None or n_new <= cap_t)

    def push(self, index: int, tokens: np.ndarray, kept: np.ndarray | None = None,
             deepstack: np.ndarray | None = None) -> list[int]:
        """Add a clip's (n, D) tokens (`kept`: their (n,) flat indices in the clip, None if pooled; `deepstack`:
        their (K, n, D) DeepStack features, Qwen3-VL); returns the clip indices evicted."""
        if tokens.ndim != 2 or tokens.shape[1] != self.dim:
            raise UserError(f"FIFO tokens must be (n, {self.dim}), got {tokens.shape}")
        evicted = self.evictions(len(tokens))
        for _ in evicted:
            gone = self._clips.popleft()[0]
            self._kept.pop(gone, None)
            self._deep.pop(gone, None)
        if self.admits(len(tokens)):
            self._clips.append((index, tokens))
            if kept is not None and len(kept) == len(tokens):
                self._kept[index] = np.asarray(kept, dtype=np.int64)
            if deepstack is not None and deepstack.ndim == 3 and deepstack.shape[1:] == tokens.shape:
                self._deep[index] = deepstack
        return evicted

    def restore(self, entries: list[tuple[int, np.ndarray]], kept: dict[int, np.ndarray] | None = None) -> None:
        """Reload the state saved in memory (oldest first); `kept`: clip index -> its tokens' flat indices."""
        self._clips = deque((int(i), np.asarray(t)) for i, t in entries)
        self._deep = {}  # not stored in the memory: a restored FIFO's tokens are fed without DeepStack features
        self._kept = {i: np.asarray(k, dtype=np.int64) for i, k in (kept or {}).items()
                      if any(j == i and len(t) == len(k) for j, t in self._clips)}
