"""The one small interface every backend (torch reference, ONNX Runtime, TensorRT) implements.

Shapes use: T frames, P visual tokens per frame (after 2x2 pooling), D the LLM width,
L new input positions, K keys (all positions so far), V vocabulary, R probe rows;
B sequences stepped together, L_i / K_i sequence i's new positions / keys.
Everything crossing this boundary is numpy; float32 unless stated.

Batched steps: `batch(states)` groups B sequences' states (each empty or already stepped on its own) into one
`BatchState`; `step_batch([(L_i, D)] * B, batch)` runs one step of every sequence together and returns each
sequence's own `StepOutput`: logits (V,) at its last new position and the probe rows over its own K_i keys only
(padding never shows). `batch.keep(indices)` drops the sequences that are done. The base class steps the
sequences one after another (every backend has the contract); torch and ONNX Runtime run them as one batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ModelInfo:
    """What the runtime needs to know about a model, whatever runs it."""

    model_id: str  # where the weights came from (hub id, directory, or "tiny")
    hidden_size: int  # D: the LLM input width
    vocab_size: int  # V
    num_layers: int  # decoder layers
    probe_layers: tuple[int, ...]  # decoder layers whose attention scores visual tokens
    tokens_per_frame: int  # P: visual tokens per token group (a frame, or Qwen's temporal patch) after pooling
    image_size: tuple[int, int]  # (H, W) the vision tower expects
    video_token_id: int  # the placeholder id the chat template emits for a video
    backbone: str = "llava_onevision"  # the model family (runtime/backbones REGISTRY)
    grid: tuple[int, int] | None = None  # (rows, cols) of one token group's tokens (None: square, P = side^2)
    temporal_patch: int = 1  # frames per token group: P is per frame for LLaVA-OV, per 2 frames for Qwen2.5-VL

    def fingerprint(self) -> dict:
        """The facts a stored memory depends on (vectors live in this model's embedding space)."""
        return {"hidden_size": self.hidden_size, "vocab_size": self.vocab_size}


@dataclass
class StepOutput:
    logits: np.ndarray  # (V,) next-token logits at the last input position
    probe_attn: np.ndarray | None  # (R, K) attention of the last R query rows, mean over heads and probe layers


class DecodeState(ABC):
    """Opaque KV state of one sequence. `length` = positions already in the cache."""

    length: int


class BatchState:
    """The KV states of B sequences stepped together, in order. `lengths[i]` = K_i of sequence i.

    The base form holds the sequences' own states and steps them one by one; backends that batch subclass it."""

    def __init__(self, states: list[DecodeState]):
        self.states = list(states)

    @property
    def lengths(self) -> list[int]:
        return [s.length for s in self.states]

    def __len__(self) -> int:
        return len(self.states)

    def keep(self, indices: list[int]) -> None:
        """Keep only sequences `indices` (ascending positions in this batch), e.g. drop the ones whose caption ended."""
        self.states = [self.states[i] for i in indices]


class MergedBatch(BatchState):
    """B sequences merged into one batched KV cache (the backends that batch): their own states were merged in and
    nothing steps alone; `_lengths[i]` = K_i real positions of sequence i, advanced by the backend's step."""

    def __init__(self, lengths: list[int]):
        super().__init__([])
        self._lengths = list(lengths)

    @property
    def lengths(self) -> list[int]:
        return list(self._lengths)

    def __len__(self) -> int:
        return len(self._lengths)

    def keep(self, indices: list[int]) -> None:
        """Subclasses drop the sequences' rows of their cache, then call this for the lengths."""
        self._lengths = [self._lengths[i] for i in indices]


def check_step_batch(embeds: list, batch: BatchState, probe_rows: int, last_row_only: bool = False) -> None:
    """What every step_batch checks first: one input per sequence; `last_row_only` (exported decoders): the probe
    attention exists for the last query row only."""
    if len(embeds) != len(batch):
        raise ValueError(f"step_batch got {len(embeds)} inputs for a batch of {len(batch)} sequences")
    if last_row_only and probe_rows > 1:
        from rlivs.runtime.errors import UserError

        raise UserError("exported decoders return the probe attention of the last query row only (probe_rows <= 1)")


class Backend(ABC):
    """encode frames -> visual tokens; decoder step -> logits + reduced probe attention."""

    name: str
    info: ModelInfo

    @abstractmethod
    def encode_frames(self, pixels: np.ndarray) -> np.ndarray:
        """(T, 3, H, W) preprocessed frames -> (T, P, D) visual tokens in the LLM's input space."""

    def encode_video(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """encode_frames, and for a DeepStack backbone (Qwen3-VL) its (K, G, P, D) features beside the tokens."""
        return self.encode_frames(pixels), None

    @abstractmethod
    def image_newline(self) -> np.ndarray:
        """(D,) the learned separator appended after a clip's visual tokens."""

    @abstractmethod
    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        """(L,) token ids -> (L, D) input embeddings."""

    @abstractmethod
    def new_state(self) -> DecodeState:
        """An empty KV state."""

    @abstractmethod
    def step(self, embeds: np.ndarray, state: DecodeState, probe_rows: int = 1) -> StepOutput:
        """Run (L, D) new input embeddings after `state` (updated in place).

        Returns the last position's logits and, when probe_rows > 0, the probe layers' attention
        probabilities of the last `probe_rows` query rows over all K = state.length keys,
        averaged over heads and probe layers: (probe_rows, K). Other layers never materialise
        attention probabilities.
        """

    def batch(self, states: list[DecodeState]) -> BatchState:
        """Group B sequences' states (from new_state(), empty or already stepped) to step together. The batch owns
        them from now on: step them only through step_batch."""
        return BatchState(states)

    def step_batch(self, embeds: list[np.ndarray], batch: BatchState, probe_rows: int = 1) -> list[StepOutput]:
        """One step of every sequence in `batch`: embeds[i] (L_i, D) follows sequence i's K_i cached positions.

        Returns B StepOutputs, each as `step` would return for that sequence alone: logits (V,) of its last new
        position; with probe_rows > 0, probe_attn (probe_rows, K_i + L_i) over its own keys (no padding).
        This base form runs `step` per sequence; batching backends override it."""
        check_step_batch(embeds, batch, probe_rows)
        return [self.step(x, s, probe_rows) for x, s in zip(embeds, batch.states)]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (device memory, sessions)."""
