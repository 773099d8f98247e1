"""The in-place KV cache ("arena") shared by the ONNX Runtime and TensorRT backends.

One sequence's cache is one preallocated buffer of K_max rows, position-major:

    arena (K_max, N, 2, H_kv, Dh)     row p = every layer's key and value at position p

so the cache of K positions is the contiguous prefix arena[:K]. A decoder step with L new positions reads
past_kv = arena[:K] and writes new_kv straight into arena[K:K + L]: the two bindings are disjoint ranges
of the same buffer, so the cache is appended in place, never copied and never sent to the host.

Buffers come from a backend's allocator (ONNX Runtime OrtValues, CUDA device memory) through ArenaPool,
which hands a released buffer to the next sequence instead of allocating again.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

import numpy as np
from rlivs.runtime.errors import UserError

ALIGN = 256  # bytes: TensorRT wants I/O tensor addresses aligned to 256 bytes


@dataclass(frozen=True)
class KVLayout:
    layers: int  # N decoder layers
    kv_heads: int  # H_kv
    head_dim: int  # Dh
    layout: str = "stacked"  # stacked (past/present tensors) | arena (this module)
    dtype: str = "float32"  # element type of the cache
    max_context: int = 0  # K_max rows of an arena (0: unbounded, stacked only)

    @property
    def row_shape(self) -> tuple[int, int, int, int]:
        return (self.layers, 2, self.kv_heads, self.head_dim)  # (N, 2, H_kv, Dh)

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape)) * np.dtype(self.dtype).itemsize

    @property
    def arena_bytes(self) -> int:
        return self.max_context * self.row_bytes

    def check_room(self, length: int, n_new: int) -> None:
        """A step may not run past the arena: say what to change."""
        if self.layout == "arena" and length + n_new > self.max_context:
            raise UserError(f"this sequence needs {length + n_new} cache positions but the bundle's KV cache holds "
                            f"{self.max_context}: lower the FIFO (--fifo-clips / --fifo-tokens), the caption or answer "
                            f"length, or re-export with a larger --max-context")

    def offsets(self, length: int) -> tuple[int, int]:
        """Byte offsets into an arena of past_kv (rows [0, length)) and new_kv (rows from length)."""
        return 0, length * self.row_bytes


@dataclass
class Arena:
    handle: Any  # what keeps the memory alive (an OrtValue, a device buffer)
    ptr: int  # address of row 0
    uses: int = 0  # sequences that have used this buffer (reuse is visible in tests)

    @classmethod
    def allocate(cls, alloc: Callable[[int], tuple[Any, int]], nbytes: int, align: int = 1) -> "Arena":
        """alloc(nbytes) -> (handle, ptr); the address must keep `align` (TensorRT: ALIGN)."""
        handle, ptr = alloc(nbytes)
        if ptr % align:
            raise UserError(f"the KV arena allocator returned an address not aligned to {align} bytes")
        return cls(handle, ptr)


T = TypeVar("T")


class ArenaPool(Generic[T]):
    """Per-sequence cache buffers, reused: a sequence's arena returns to the pool when its state object is
    garbage-collected (weakref.finalize), and the next sequence gets it instead of a new allocation. Used by
    the ONNX Runtime and TensorRT arenas here and by the torch backend's static cache. `make()` creates one
    arena (anything with a `uses` counter); `free(arena)` releases an idle one at close()."""

    def __init__(self, make: Callable[[], T], free: Callable[[T], None] | None = None):
        self._make, self._free = make, free
        self._lock = threading.Lock()  # finalizers may run on any thread
        self.idle: list[T] = []  # released arenas
        self.allocated = 0  # arenas created so far

    def acquire(self, owner: object) -> T:
        with self._lock:
            arena = self.idle.pop() if self.idle else None
            if arena is None:
                self.allocated += 1
        if arena is None:
            arena = self._make()
        arena.uses += 1
        weakref.finalize(owner, self._release, arena)
        return arena

    def _release(self, arena: T) -> None:
        with self._lock:
            self.idle.append(arena)

    def close(self) -> None:
        with self._lock:
            idle, self.idle = self.idle, []
        if self._free is not None:
            for a in idle:
                self._free(a)
