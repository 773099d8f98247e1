"""One dataclass per component. Defaults come from the paper's reference settings (docs/method.md)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from rlivs.runtime.errors import UserError

CAPTION_PROMPT = "Describe what's happening in this video."


@dataclass
class ClipConfig:
    fps: float = 1.0  # frames sampled per second of video
    frames_per_clip: int = 16  # frames in one clip (one captioning step)

    def __post_init__(self):
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise UserError(f"fps must be > 0 and finite, got {self.fps}; use e.g. --fps 1")
        if self.frames_per_clip < 1:
            raise UserError(f"frames_per_clip must be >= 1, got {self.frames_per_clip}; use e.g. --frames-per-clip 16")
        self.clip_seconds = self.frames_per_clip / self.fps  # derived: video seconds covered by one clip


@dataclass
class SelectionConfig:
    strategy: str = "attention"  # attention | uniform | meanpool | kmeans | random
    keep: int | None = None  # visual tokens kept per clip; when set it overrides keep_ratio
    keep_ratio: float = 0.0625  # fraction of a clip's tokens kept: 196 of 3136 for 16 frames of 14x14
    seed: int = 0  # seeds the random strategy (per clip, so a resumed stream draws the same)

    def __post_init__(self):
        from .selection import get_strategy

        get_strategy(self.strategy)  # an unknown strategy is refused here, before any model loads
        if not 0 < self.keep_ratio <= 1:
            raise UserError(f"keep_ratio must be in (0, 1], got {self.keep_ratio}; e.g. --keep-ratio 0.0625")
        if self.keep is not None and self.keep < 1:
            raise UserError(f"keep must be >= 1 token per clip, got {self.keep}; e.g. --keep 196")

    def validate(self, full_clip_tokens: int) -> None:
        """Refuse settings that cannot be met by a full clip of `full_clip_tokens` visual tokens."""
        if self.keep is not None and self.keep > full_clip_tokens:
            raise UserError(
                f"cannot keep {self.keep} tokens per clip: a full clip has only {full_clip_tokens} visual "
                f"tokens; lower --keep or use --keep-ratio"
            )

    def n_keep(self, n_tokens: int) -> int:
        """Tokens kept from a clip of `n_tokens` visual tokens: keep_ratio scales with a short last clip;
        an explicit keep is capped at the tokens the clip has."""
        if self.keep is not None:
            return min(self.keep, n_tokens)
        return max(1, min(n_tokens, round(self.keep_ratio * n_tokens)))


@dataclass
class FifoConfig:
    capacity_clips: int | None = 16  # selections of the last N clips are kept (0 = no recurrence)
    capacity_tokens: int | None = None  # alternative bound in tokens; oldest clips leave first
    positions: str = "original"  # M-RoPE backbones: FIFO tokens keep their "original" (t, h, w) or are "sequential"

    def __post_init__(self):
        from .backbones import FIFO_POSITIONS

        if self.positions not in FIFO_POSITIONS:
            raise UserError(f"FIFO positions {self.positions!r} unknown: use --fifo-positions "
                            f"{' or '.join(FIFO_POSITIONS)}")
        if self.capacity_clips is not None and self.capacity_clips < 0:
            raise UserError(f"capacity_clips must be >= 0, got {self.capacity_clips}; e.g. --fifo-clips 16 "
                            f"(0 = no recurrence)")
        if self.capacity_tokens is not None and self.capacity_tokens < 0:
            raise UserError(f"capacity_tokens must be >= 0, got {self.capacity_tokens}; e.g. --fifo-tokens 3136 "
                            f"(or leave it out)")


@dataclass
class CaptionConfig:
    prompt: str = CAPTION_PROMPT  # user prompt after the video placeholder
    max_new_tokens: int = 128  # greedy caption length bound

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise UserError(f"caption max_new_tokens must be >= 1, got {self.max_new_tokens}; e.g. "
                            f"--max-caption-tokens 128")


@dataclass
class ProbeConfig:
    num_layers: int = 4  # decoder layers whose attention scores tokens (paper: 4, uniformly spaced)
    layers: tuple[int, ...] | None = None  # explicit layer indices; overrides num_layers

    def resolve(self, n_decoder_layers: int) -> tuple[int, ...]:
        """The probe layers for a decoder of `n_decoder_layers`: explicit, or evenly spaced interior layers."""
        if self.layers is not None:
            bad = [i for i in self.layers if not 0 <= i < n_decoder_layers]
            if bad or not self.layers:
                raise UserError(
                    f"probe layers {list(self.layers)} are not valid for a {n_decoder_layers}-layer decoder; "
                    f"give indices in 0..{n_decoder_layers - 1}"
                )
            return tuple(sorted(set(self.layers)))
        k = min(self.num_layers, n_decoder_layers)
        if k < 1:
            raise UserError(f"num_layers must be >= 1, got {self.num_layers}")
        # k interior points of an even split of [0, L-1]: 24 layers -> (5, 9, 14, 18)
        step = (n_decoder_layers - 1) / (k + 1)
        layers = sorted({min(n_decoder_layers - 1, round(step * (i + 1))) for i in range(k)})
        return tuple(layers)


@dataclass
class RetrievalConfig:
    top_k: int = 8  # at most this many captions go into the answer prompt
    token_budget: int = 2048  # ... and at most this many caption tokens
    mmr_lambda: float = 0.5  # relevance vs diversity (1.0 = relevance only)
    mode: str = "hybrid"  # "hybrid" (keywords + vectors, fused), "paper" (the paper's vector ranking), "lexical"
    shortlist: int = 64  # clips the index hands to MMR (docs/edge_app.md: agreement with MMR over every clip)

    def __post_init__(self):
        from .memory.search import MODES

        if self.mode not in MODES:
            raise UserError(f"retrieval mode {self.mode!r} is unknown: use one of {', '.join(MODES)} "
                            f"(e.g. --retrieval paper for the paper's ranking)")
        if self.shortlist < self.top_k:
            raise UserError(f"shortlist ({self.shortlist}) must be >= top_k ({self.top_k})")
        if self.top_k < 1:
            raise UserError(f"top_k must be >= 1, got {self.top_k}; e.g. --top-k 8")
        if self.token_budget < 1:
            raise UserError(f"token_budget must be >= 1 caption token, got {self.token_budget}; "
                            f"e.g. --token-budget 2048")
        if not 0.0 <= self.mmr_lambda <= 1.0:
            raise UserError(f"mmr_lambda must be in [0, 1], got {self.mmr_lambda}")


@dataclass
class AnswerConfig:
    max_new_tokens: int = 256  # greedy answer length bound

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise UserError(f"the answer length bound must be >= 1 token, got {self.max_new_tokens}; e.g. 256 "
                            f"(--max-answer-tokens of rlivs ask, serve and eval)")


@dataclass(frozen=True)
class EngineConfig:
    """Which model runs where and how: the engine-loading choices, built once from options (edge_app/options.py)
    and passed whole to `load_engine`. Method settings live in PipelineConfig."""

    model: str = "tiny"  # tiny | random-0.5b | HF-format directory | hub id in the local HF cache
    bundle: str | None = None  # an exported bundle (rlivs export): wins over `model`; no torch needed
    backend: str = "auto"  # auto | torch | onnxruntime | tensorrt (see backends/__init__.py)
    device: str = "cpu"  # cpu | cuda[:N]
    dtype: str = "float32"  # float32 | float16 | bfloat16 (torch backend)
    threads: int | None = None  # CPU threads for the backend (None: its default)
    kv_cache: str = "auto"  # auto | dynamic | static (torch backend)
    max_context: int | None = None  # static KV cache positions per sequence (torch backend)

    @property
    def source(self) -> str:
        """The path or name the backend loads: the bundle when one is given, else the model."""
        return str(self.bundle) if self.bundle else str(self.model)


@dataclass
class PipelineConfig:
    clip: ClipConfig = field(default_factory=ClipConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    fifo: FifoConfig = field(default_factory=FifoConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    answer: AnswerConfig = field(default_factory=AnswerConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    def ingest_fingerprint(self) -> str:
        """Hash of the settings that change what a stream stores; a resumed stream must match it."""
        d = self.to_dict()
        keep = {k: d[k] for k in ("clip", "selection", "fifo", "caption", "probe")}
        if keep["fifo"]["positions"] == "original":  # the default leaves fingerprints of older streams unchanged
            keep["fifo"] = {k: v for k, v in keep["fifo"].items() if k != "positions"}
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=list).encode()).hexdigest()[:16]
