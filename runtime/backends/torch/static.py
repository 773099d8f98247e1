"""The torch backend's static KV cache: preallocated per-sequence arenas, pooled, for CUDA-graph decode steps.

Letters: N decoder layers, H_kv KV heads, Dh head dim, M = max_context positions per arena, D width, V vocabulary.

One arena holds everything a sequence's decode step touches, at fixed addresses:

    kv     (N, 2, 1, H_kv, M, Dh)  every layer's keys ([:, 0]) and values ([:, 1]), model dtype
    x      (1, 1, D)               the decode step's input embedding, model dtype
    pos    (1,) int64              the decode step's position (= keys already cached)
    probe  (1, M) float32          the probe layers' attention row, summed over probe layers
    graphs {rows: (graph, logits)} CUDA graphs captured on this arena, with their (V,) float32 output

so a decode step captured once per arena (and per probe on/off) replays for every token of every sequence that
later uses the arena. `StaticKV` implements the one cache method Qwen2Attention calls,
`update(key, value, layer_idx, cache_kwargs)`: it writes the new keys/values with index_copy_ at `write_at` and
returns either the first `read_len` positions (eager prefill: exactly the real keys) or all M (decode: positions
past the sequence are masked out by the caller's 4-D boolean mask, so their probability is exactly 0).

`kv_arena.ArenaPool` (shared with the ONNX Runtime and TensorRT arenas) hands a released arena (its owner state was garbage-collected) to the next state's first step, so a
caption and a question can each hold one while graphs are still captured once per arena, not once per clip.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from ..base import DecodeState

log = logging.getLogger("rlivs.backend.torch")


class StaticKV:
    """Preallocated keys/values of every layer; the `update` contract of a transformers Cache, nothing else."""

    def __init__(self, n_layers: int, kv_heads: int, head_dim: int, max_context: int, dtype: torch.dtype,
                 device: torch.device):
        self.max_context = max_context  # M
        self.kv = torch.zeros((n_layers, 2, 1, kv_heads, max_context, head_dim), dtype=dtype, device=device)
        self.write_at: torch.Tensor | None = None  # (L,) int64: positions the next update writes
        self.read_len: int | None = None  # keys returned: the first read_len (eager), or all M when None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, cache_kwargs=None):
        """key/value_states (1, H_kv, L, Dh) -> this layer's (1, H_kv, K, Dh) keys and values, K = read_len or M."""
        keys, values = self.kv[layer_idx, 0], self.kv[layer_idx, 1]  # (1, H_kv, M, Dh) views, fixed addresses
        keys.index_copy_(2, self.write_at, key_states)
        values.index_copy_(2, self.write_at, value_states)
        if self.read_len is None:
            return keys, values
        return keys[:, :, : self.read_len], values[:, :, : self.read_len]


@dataclass(eq=False)
class Arena:
    kv: StaticKV
    x: torch.Tensor  # (1, 1, D) decode input, model dtype
    pos: torch.Tensor  # (1,) int64 decode position
    probe: torch.Tensor  # (1, M) float32 probe row summed over probe layers
    graphs: dict = field(default_factory=dict)  # probe rows (0 or 1) -> (torch.cuda.CUDAGraph, logits (V,) float32)
    uses: int = 0  # sequences that have used this arena


@dataclass(eq=False)
class StaticState(DecodeState):
    arena: Arena | None  # taken at the first step, owned while this state lives, back to the pool when it dies
    length: int = 0  # K: positions written to the arena
