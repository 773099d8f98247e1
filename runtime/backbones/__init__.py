"""Model families ("backbones") behind one small interface, chosen from the model's config.

What differs between LLaVA-OneVision and Qwen2.5-VL, and nothing else, lives here (torch-free: the engine, the
ONNX Runtime and TensorRT backends use it too); how the torch backend loads and runs each family is in
`backends/torch/backbones.py`, keyed by the same names.

| backbone         | frames -> visual tokens                              | clip in the prompt          | positions        |
|------------------|------------------------------------------------------|-----------------------------|------------------|
| llava_onevision  | SigLIP per frame, projector, 2x2 bilinear pooling    | [FIFO][clip][newline]       | 1-D              |
| qwen2_5_vl       | temporal patches of 2 frames, ViT, 2x2 merge         | [FIFO][clip] (no newline)   | 3-D M-RoPE (t,h,w) |
| qwen3_vl         | as Qwen2.5-VL (16 px patches) + DeepStack features   | per group: <t seconds><vs>  | interleaved M-RoPE |
|                  | injected into the first decoder layers               | [tokens]<ve> (`layout`)     | (t from text)      |

Letters: T frames, G = ceil(T / temporal_patch) token groups (frames for LLaVA-OV, temporal patches for Qwen),
rows x cols the token grid of one group, P = rows * cols, A/B prompt ids before/after the video placeholder,
F FIFO tokens, N_V = G * P clip tokens, S context length.

M-RoPE positions of FIFO tokens (`FIFO_POSITIONS`, setting `FifoConfig.positions`):
  "original"   (default) each FIFO token keeps the (t, h, w) it had in its own clip, on one time axis that runs from
               the oldest FIFO clip to the current one: the context is positioned exactly as Qwen2.5-VL positions
               one long video of those clips with the unselected tokens dropped (temporal ids follow seconds).
  "sequential" FIFO tokens are re-indexed like text (t = h = w, consecutive) and the current clip is a video of its
               own after them (what a 1-D model such as LLaVA-OV sees). Also the fallback when a FIFO clip has no
               token indices (pooled strategies, a FIFO restored from memory).
docs/method.md ("Backbones") says why "original" is the default.

Qwen3-VL (`Qwen3VL`) writes time as text: the processor expands a video into one block per temporal patch,
"<{t:.1f} seconds><|vision_start|>[P tokens]<|vision_end|>", inside the chat template's own
<|vision_start|> ... <|vision_end|> (transformers' Qwen3VLProcessor keeps that outer pair), and positions each block
like an image (t = h - row = w - col = the block's start). So the clip is not one run of tokens: `layout` returns the
context as segments of text ids and token runs, with the (3, S) positions. FIFO tokens, "original": grouped back under
their own block's timestamp (a block none of whose tokens was kept is left out), each at its own (row, col) in the
block, i.e. the long video of the FIFO clips and this one with the unselected tokens dropped; "sequential": a bare
run of text-like positions before the clip, no timestamps. DeepStack: each FIFO token keeps its K DeepStack
features (`FifoClip.deepstack`) and gets the same injections when it is fed again (docs/method.md).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError

log = logging.getLogger("rlivs.backbones")

FIFO_POSITIONS = ("original", "sequential")
QWEN_FRAME_SIDE = 448  # default frame side for Qwen-VL (a multiple of patch 14 x merge 2: 16x16 = 256 tokens / group)


@dataclass(frozen=True)
class FifoClip:
    """One FIFO clip, as the positions need it: its stream clip index, token count and flat token indices."""

    index: int  # the clip's index in its stream
    n: int  # tokens it holds in the FIFO
    kept: np.ndarray | None  # (n,) flat indices into its G * P clip tokens (None: pooled or unknown)
    deepstack: np.ndarray | None = None  # (K, n, D) DeepStack features of its tokens (Qwen3-VL; None: none kept)


@dataclass
class Segment:
    """One piece of a `layout`: `before` text ids, then tokens `idx` of the FIFO or of the clip, then `after` ids."""

    before: np.ndarray  # (a,) int64 text ids
    source: str  # "fifo" | "clip"
    idx: np.ndarray  # (m,) int64 flat indices into the FIFO's F tokens or the clip's G * P tokens
    after: np.ndarray  # (b,) int64 text ids


class Backbone:
    """What one model family does differently. Subclasses are registered in REGISTRY by name."""

    name: str = ""
    label: str = ""
    model_types: tuple[str, ...] = ()  # config.json model_type values it runs
    architectures: tuple[str, ...] = ()  # config.json architectures it runs
    temporal_patch: int = 1  # frames per token group
    newline: bool = True  # a learned separator follows the clip's tokens
    mrope: bool = False  # 3-D positions (t, h, w) instead of 1-D
    exportable: bool = True  # `rlivs export` writes a bundle for it
    deepstack: bool = False  # the vision tower also yields K feature maps added to the first K decoder layers' output
    text_in_video: bool = False  # the video has text between its token groups (`layout`, not [FIFO][clip])

    def __init__(self, config: dict | None = None):
        self.config = config or {}  # the model's config.json

    def check_frames(self, frames_per_clip: int) -> None:
        """Refuse a clip length the model cannot group."""

    def groups(self, n_frames: int) -> int:
        """G: token groups of a clip of n_frames (a short last clip is padded to a whole group)."""
        return math.ceil(n_frames / self.temporal_patch)

    def clip_tokens(self, n_frames: int, tokens_per_group: int) -> int:
        return self.groups(n_frames) * tokens_per_group

    def frame_size(self, config: dict, preprocessor: dict) -> tuple[int, int]:
        """(H, W) frames are resized to."""
        raise NotImplementedError

    def positions(self, prefix: int, fifo: list[FifoClip], clip_index: int, groups: int, grid: tuple[int, int],
                  suffix: int, *, fps: float, frames_per_clip: int, mode: str = "original") -> np.ndarray | None:
        """Position ids of the caption context [prefix A][FIFO F][clip G*P][newline?][suffix B]: None for 1-D
        (positions 0..S-1, the backend's default), else (3, S) int64."""
        return None

    def layout(self, prefix: int, fifo: list[FifoClip], clip_index: int, groups: int, grid: tuple[int, int],
               suffix: int, *, fps: float, frames_per_clip: int, n_frames: int, encode, mode: str = "original"
               ) -> tuple[list[Segment], np.ndarray] | None:
        """For a backbone with `text_in_video`: the context between prefix and suffix as segments, and the (3, S)
        positions of [prefix][segments][suffix]; `encode` turns text into ids. None: [FIFO][clip] (`positions`)."""
        return None

    def probe_candidates(self, n_layers: int) -> tuple[int, ...]:
        """Decoder layers `calibrate layers` may choose from (all of them unless a family says otherwise)."""
        return tuple(range(n_layers))


class LlavaOneVision(Backbone):
    name, label = "llava_onevision", "LLaVA-OneVision"
    model_types = ("llava_onevision",)
    architectures = ("LlavaOnevisionForConditionalGeneration",)

    def frame_size(self, config: dict, preprocessor: dict) -> tuple[int, int]:
        side = int(config.get("vision_config", {}).get("image_size", 384))
        return side, side


class Qwen25VL(Backbone):
    name, label = "qwen2_5_vl", "Qwen2.5-VL"
    model_types = ("qwen2_5_vl",)
    architectures = ("Qwen2_5_VLForConditionalGeneration",)
    temporal_patch, newline, mrope = 2, False, True

    def check_frames(self, frames_per_clip: int) -> None:
        if frames_per_clip % self.temporal_patch:
            raise UserError(f"{self.label} encodes frames in temporal patches of {self.temporal_patch}: frames per "
                            f"clip must be even, got {frames_per_clip}; use --frames-per-clip "
                            f"{frames_per_clip + 1} (or {max(2, frames_per_clip - 1)})")

    def frame_size(self, config: dict, preprocessor: dict) -> tuple[int, int]:
        """preprocessor_config.json's size {height, width} when it has one (rlivs' tiny models), else
        QWEN_FRAME_SIDE square; either way a multiple of patch_size * spatial_merge_size."""
        vc = config.get("vision_config", {})
        unit = int(vc.get("patch_size", 14)) * int(vc.get("spatial_merge_size", 2))
        size = preprocessor.get("size") or {}
        h, w = (int(size["height"]), int(size["width"])) if "height" in size and "width" in size else \
            (QWEN_FRAME_SIDE, QWEN_FRAME_SIDE)
        if h % unit or w % unit:
            raise UserError(f"{self.label} frames must be a multiple of {unit} px (patch x merge), got {h}x{w}: "
                            f"fix size in preprocessor_config.json")
        return h, w

    @staticmethod
    def _video(start: int, t0: float, groups: int, grid: tuple[int, int], interval: float) -> np.ndarray:
        """(3, G*P) positions of a video whose first group sits t0 groups after the window start, as
        Qwen2.5-VL positions a video: t = long(group * interval) + start, h = row + start, w = col + start."""
        rows, cols = grid
        t = ((t0 + np.arange(groups)) * interval).astype(np.int64) + start  # (G,)
        tt, hh, ww = np.meshgrid(t, np.arange(rows) + start, np.arange(cols) + start, indexing="ij")
        return np.stack([tt.ravel(), hh.ravel(), ww.ravel()]).astype(np.int64)

    def positions(self, prefix: int, fifo: list[FifoClip], clip_index: int, groups: int, grid: tuple[int, int],
                  suffix: int, *, fps: float, frames_per_clip: int, mode: str = "original") -> np.ndarray:
        """Text: consecutive on all three axes; each text run starts at the max position so far + 1 (Qwen2.5-VL's
        rule); the clip: one video (temporal ids `long(group * tokens_per_second * temporal_patch / fps)`)."""
        if mode not in FIFO_POSITIONS:
            raise UserError(f"FIFO positions {mode!r} unknown: use one of {', '.join(FIFO_POSITIONS)}")
        interval = self.tokens_per_second * self.temporal_patch / fps
        parts = [np.broadcast_to(np.arange(prefix, dtype=np.int64), (3, prefix))]
        start = prefix
        n_fifo = sum(c.n for c in fifo)
        if mode == "original" and fifo and any(c.kept is None for c in fifo):
            log.debug("a FIFO clip has no token indices: FIFO tokens get sequential positions")
            mode = "sequential"
        rows, cols = grid
        per_clip = self.groups(frames_per_clip)  # groups of a full clip: clip k starts k * per_clip groups in
        if mode == "original" and fifo:
            first = fifo[0].index
            for c in fifo:
                kept = np.asarray(c.kept, dtype=np.int64)
                g, rc = np.divmod(kept, rows * cols)
                r, col = np.divmod(rc, cols)
                t = (((c.index - first) * per_clip + g) * interval).astype(np.int64) + start
                parts.append(np.stack([t, r + start, col + start]))
            clip = self._video(start, (clip_index - first) * per_clip, groups, grid, interval)
        else:
            parts.append(np.broadcast_to(np.arange(start, start + n_fifo, dtype=np.int64), (3, n_fifo)))
            start += n_fifo
            clip = self._video(start, 0, groups, grid, interval)
        parts.append(clip)
        nxt = int(max(p.max() for p in parts if p.size)) + 1
        parts.append(np.broadcast_to(np.arange(nxt, nxt + suffix, dtype=np.int64), (3, suffix)))
        return np.ascontiguousarray(np.concatenate(parts, axis=1))

    @property
    def tokens_per_second(self) -> float:
        """Temporal position ids per second of video (vision_config.tokens_per_second; 2 in the released models)."""
        return float(self.config.get("vision_config", {}).get("tokens_per_second", 2))


QWEN3_FRAME_SIDE = 512  # default frame side for Qwen3-VL (a multiple of patch 16 x merge 2: 16x16 = 256 tokens / group)


class Qwen3VL(Qwen25VL):
    """Qwen3-VL: Qwen2.5-VL's grouping (temporal patches of 2, 2x2 merge; 16 px patches), DeepStack, and time as
    text: each temporal patch is a block "<t seconds><|vision_start|>[P tokens]<|vision_end|>" positioned like an
    image (interleaved M-RoPE: t, h, w frequencies alternate over the head dimension; the rotary code is transformers')."""

    name, label = "qwen3_vl", "Qwen3-VL"
    model_types = ("qwen3_vl",)
    architectures = ("Qwen3VLForConditionalGeneration",)
    deepstack, text_in_video = True, True
    exportable = True  # ONNX Runtime bundles, TensorRT-target graphs (tests/parity/test_qwen3_onnx.py, _tensorrt.py)

    def frame_size(self, config: dict, preprocessor: dict) -> tuple[int, int]:
        vc = config.get("vision_config", {})
        unit = int(vc.get("patch_size", 16)) * int(vc.get("spatial_merge_size", 2))
        size = preprocessor.get("size") or {}
        h, w = (int(size["height"]), int(size["width"])) if "height" in size and "width" in size else \
            (QWEN3_FRAME_SIDE, QWEN3_FRAME_SIDE)
        if h % unit or w % unit:
            raise UserError(f"{self.label} frames must be a multiple of {unit} px (patch x merge), got {h}x{w}: "
                            f"fix size in preprocessor_config.json")
        return h, w

    @property
    def vision_ids(self) -> tuple[int, int]:
        return int(self.config.get("vision_start_token_id", 151652)), int(self.config.get("vision_end_token_id", 151653))

    def timestamp(self, clip_index: int, group: int, *, fps: float, frames_per_clip: int, n_frames: int) -> str:
        """The text before a block, as Qwen3VLProcessor writes it: the mean time of the block's first and last frame
        (a short last block repeats its last frame), frames numbered on the stream at `fps`, "<%.1f seconds>"."""
        first = clip_index * frames_per_clip + group * self.temporal_patch
        last = clip_index * frames_per_clip + min((group + 1) * self.temporal_patch, n_frames) - 1
        return f"<{(first / fps + last / fps) / 2:.1f} seconds>"

    def positions(self, prefix, fifo, clip_index, groups, grid, suffix, *, fps, frames_per_clip, mode="original"):
        raise UserError(f"{self.label} puts text between its token groups: its positions come with `layout`")

    def layout(self, prefix: int, fifo: list[FifoClip], clip_index: int, groups: int, grid: tuple[int, int],
               suffix: int, *, fps: float, frames_per_clip: int, n_frames: int, encode, mode: str = "original"
               ) -> tuple[list[Segment], np.ndarray]:
        """Segments and positions (get_rope_index's rule: a text run continues from the current position; a block's
        tokens sit at (s, s + row, s + col) for the block start s, after which the position advances by
        max(rows, cols))."""
        if mode not in FIFO_POSITIONS:
            raise UserError(f"FIFO positions {mode!r} unknown: use one of {', '.join(FIFO_POSITIONS)}")
        if mode == "original" and fifo and any(c.kept is None for c in fifo):
            log.debug("a FIFO clip has no token indices: FIFO tokens get sequential positions")
            mode = "sequential"
        rows, cols = grid
        per = rows * cols
        vs, ve = self.vision_ids
        none = np.zeros(0, dtype=np.int64)
        segments: list[Segment] = []
        pos = [np.broadcast_to(np.arange(prefix, dtype=np.int64), (3, prefix))]
        cur = prefix

        def text(ids):
            nonlocal cur
            pos.append(np.broadcast_to(np.arange(cur, cur + len(ids), dtype=np.int64), (3, len(ids))))
            cur += len(ids)

        def block(before, source, idx, local):  # local: (m,) flat indices inside the block's rows x cols
            nonlocal cur
            text(before)
            r, c = np.divmod(np.asarray(local, dtype=np.int64), cols)
            pos.append(np.stack([np.full(len(local), cur, dtype=np.int64), r + cur, c + cur]))
            cur += max(rows, cols)
            after = np.array([ve], dtype=np.int64)
            text(after)
            segments.append(Segment(before, source, np.asarray(idx, dtype=np.int64), after))

        def stamp(index, group, frames):
            return np.concatenate([encode(self.timestamp(index, group, fps=fps, frames_per_clip=frames_per_clip,
                                                         n_frames=frames)), [vs]]).astype(np.int64)

        if mode == "original":
            offset = 0
            for c in fifo:
                kept = np.asarray(c.kept, dtype=np.int64)
                g = kept // per
                for group in np.unique(g):  # kept indices ascend: groups in time order, tokens in raster order
                    where = np.flatnonzero(g == group)
                    block(stamp(c.index, int(group), frames_per_clip), "fifo", offset + where, kept[where] % per)
                offset += c.n
        elif fifo:
            n = sum(c.n for c in fifo)
            text(np.zeros(n))  # text-like positions, consecutive
            segments.append(Segment(none, "fifo", np.arange(n, dtype=np.int64), none))
        for group in range(groups):
            block(stamp(clip_index, group, n_frames), "clip", np.arange(group * per, (group + 1) * per), np.arange(per))
        text(np.zeros(suffix))
        return segments, np.ascontiguousarray(np.concatenate(pos, axis=1))


REGISTRY: dict[str, type[Backbone]] = {b.name: b for b in (LlavaOneVision, Qwen25VL, Qwen3VL)}


def backbone_for_config(config: dict) -> Backbone:
    """The backbone that runs an HF config.json dict (by model_type, else by architectures)."""
    mt, arch = config.get("model_type"), tuple(config.get("architectures") or ())
    for cls in REGISTRY.values():
        if mt in cls.model_types or any(a in cls.architectures for a in arch):
            return cls(config)
    known = ", ".join(f"{c.label} ({c.model_types[0]})" for c in REGISTRY.values())
    raise UserError(f"model_type {mt!r} (architectures {list(arch)}) is not a backbone rlivs runs: it runs {known}; "
                    f"pass a model directory of one of those")


def read_config(model_dir: str | Path) -> dict:
    path = Path(model_dir) / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path} cannot be read ({e}): copy the model directory again") from None


def backbone_for_dir(model_dir: str | Path) -> Backbone:
    return backbone_for_config(read_config(model_dir))


def get_backbone(name: str, config: dict | None = None) -> Backbone:
    if name not in REGISTRY:
        raise UserError(f"unknown backbone {name!r}: one of {', '.join(REGISTRY)}")
    return REGISTRY[name](config)
