"""The one small interface every backend (torch reference, ONNX Runtime, TensorRT) implements.

Shapes use: T frames, P visual tokens per frame (after 2x2 pooling), D the LLM width,
L new input positions, K keys (all positions so far), V vocabulary, R probe rows.
Everything crossing this boundary is numpy; float32 unless stated.
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


class Backend(ABC):
    """encode frames -> visual tokens; decoder step -> logits + reduced probe attention."""

    name: str
    info: ModelInfo

    @abstractmethod
    def encode_frames(self, pixels: np.ndarray) -> np.ndarray:
        """(T, 3, H, W) preprocessed frames -> (T, P, D) visual tokens in the LLM's input space."""

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

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (device memory, sessions)."""
