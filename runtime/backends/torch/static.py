"""The torch backend's static KV cache: preallocated per-sequence arenas, pooled, for CUDA-graph decode steps.

Letters: N decoder layers, H_kv KV heads, Dh head dim, M = max_context positions per arena, D width, V vocabulary.

One arena holds everything a sequence's decode step touches, at fixed addresses:

    kv     (N, 2, 1, H_kv, M, Dh)  every layer's keys ([:, 0]) and values ([:, 1]), model dtype
    x      (1, 1, D)               the decode step's input embedding, model dtype
    pos    (1,) int64              the decode step's position (= keys already cached)
    probe  (1, M) float32          the probe layers' attention row, summed over probe layers
    graphs {rows: (graph, logits)} CUDA graphs captured on this arena, with their (V,) float32 output

so a decode step captured once per arena (and per probe on/off) replays for every token of every sequence that
later uses the arena. `StaticKV` is a transformers `Cache` whose layers (`ArenaLayer`, a `CacheLayerMixin`) are
views into the arena: `update(key, value, ...)` writes the new keys/values with index_copy_ at `write_at` and
returns either the first `read_len` positions (eager prefill: exactly the real keys) or all M (decode: positions
past the sequence are masked out by the caller's 4-D boolean mask, so their probability is exactly 0).

`kv_arena.ArenaPool` (shared with the ONNX Runtime and TensorRT arenas) hands a released arena (its owner state was garbage-collected) to the next state's first step, so a
caption and a question can each hold one while graphs are still captured once per arena, not once per clip.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from ..base import DecodeState

log = logging.getLogger("rlivs.backend.torch")


class ArenaCursor:
    """Where the next update writes and how many keys it returns; one per arena, shared by all its layers."""

    def __init__(self):
        self.write_at: torch.Tensor | None = None  # (L,) int64: positions the next update writes
        self.read_len: int | None = None  # keys returned: the first read_len (eager), or all M when None


class ArenaLayer(CacheLayerMixin):
    """One decoder layer's keys and values: fixed-address views into the arena, written in place.

    transformers' documented per-layer cache contract (`CacheLayerMixin`): `update(key_states, value_states,
    *args, **kwargs)` returns the keys/values attention should use; `get_mask_sizes`, `get_seq_length` and
    `get_max_length` describe them. The storage is preallocated, so `lazy_initialization` has nothing to do.
    """

    is_compileable = True  # fixed addresses: safe under torch.compile / CUDA graphs

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, cursor: ArenaCursor):
        super().__init__()
        self.keys, self.values = keys, values  # (1, H_kv, M, Dh) views into the arena
        self.cursor, self.max_cache_len = cursor, keys.shape[2]
        self.device, self.is_initialized = keys.device, True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        return None  # preallocated by the arena

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """key/value_states (1, H_kv, L, Dh) -> this layer's (1, H_kv, K, Dh) keys and values, K = read_len or M.
        Extra positional or keyword arguments (transformers passes its attention kwargs) are not needed."""
        c = self.cursor
        self.keys.index_copy_(2, c.write_at, key_states)
        self.values.index_copy_(2, c.write_at, value_states)
        if c.read_len is None:
            return self.keys, self.values
        return self.keys[:, :, : c.read_len], self.values[:, :, : c.read_len]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return (self.max_cache_len if self.cursor.read_len is None else self.cursor.read_len), 0

    def get_seq_length(self) -> int:
        return self.max_cache_len if self.cursor.read_len is None else self.cursor.read_len

    def get_max_length(self) -> int:
        return self.max_cache_len


class StaticKV(Cache):
    """Preallocated keys/values of every layer, as a transformers `Cache` of `ArenaLayer`s.

    Qwen2Attention calls `Cache.update(key, value, layer_idx, ...)`, which dispatches to the layer: only the
    public cache interface is used, so a change in the arguments transformers passes along does not matter.
    """

    def __init__(self, n_layers: int, kv_heads: int, head_dim: int, max_context: int, dtype: torch.dtype,
                 device: torch.device):
        self.max_context = max_context  # M
        self.kv = torch.zeros((n_layers, 2, 1, kv_heads, max_context, head_dim), dtype=dtype, device=device)
        self.cursor = ArenaCursor()
        super().__init__(layers=[ArenaLayer(self.kv[i, 0], self.kv[i, 1], self.cursor) for i in range(n_layers)])

    @property
    def write_at(self) -> torch.Tensor | None:
        return self.cursor.write_at

    @write_at.setter
    def write_at(self, value: torch.Tensor) -> None:
        self.cursor.write_at = value

    @property
    def read_len(self) -> int | None:
        return self.cursor.read_len

    @read_len.setter
    def read_len(self, value: int | None) -> None:
        self.cursor.read_len = value


@dataclass(eq=False)
class StaticArena:
    kv: StaticKV
    x: torch.Tensor  # (1, 1, D) decode input, model dtype
    pos: torch.Tensor  # (1,) int64 decode position
    probe: torch.Tensor  # (1, M) float32 probe row summed over probe layers
    graphs: dict = field(default_factory=dict)  # probe rows (0 or 1) -> (torch.cuda.CUDAGraph, logits (V,) float32)
    uses: int = 0  # sequences that have used this arena


@dataclass(eq=False)
class StaticState(DecodeState):
    arena: StaticArena | None  # taken at the first step, owned while this state lives, back to the pool when it dies
    length: int = 0  # K: positions written to the arena
