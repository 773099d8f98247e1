"""The same synthetic clips through two engines, compared: the on-device self-test (`rlivs check`) and the GPU run's
parity stage (bench/gpu/run.py) both use it. No torch: it drives `Engine.caption_clip`, the pipeline's own clip step,
with the FIFO carried from clip to clip as a stream would.

Tolerances are per precision of the engine under test against its reference (`TOLERANCES`): float32 (the same
graphs on another provider, or TensorRT engines built in fp32) must give identical captions and selections and clip
scores within 1e-4 per scored row; float16 (TensorRT fp16 engines) must keep the selection (overlap >= 0.9 on every
clip) and the caption of at least half of the clips, as the float16 arena does on CPU (docs/export.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .engine import Engine
from .fifo import TokenFifo


@dataclass
class SelfTestConfig:
    clips: int = 2  # synthetic clips, the FIFO carried from one to the next
    frames: int = 4  # frames per clip
    caption_tokens: int = 16  # greedy caption bound
    seed: int = 0  # the frames' random generator
    frame_size: tuple[int, int] = (240, 320)  # (H, W) of the synthetic frames before preprocessing


@dataclass(frozen=True)
class Tolerance:
    precision: str  # float32 | float16: the engine under test's
    captions_identical_min: float  # fraction of clips whose greedy caption must equal the reference's
    selection_overlap_min: float  # on every clip: |kept ∩ reference's kept| / |reference's kept|
    score_atol_per_row: float | None  # clip scores on clips with identical captions (x scored rows); None: reported


TOLERANCES = {
    "float32": Tolerance("float32", 1.0, 1.0, 1e-4),
    "float16": Tolerance("float16", 0.5, 0.9, None),
}


def synthetic_clips(cfg: SelfTestConfig) -> list[np.ndarray]:
    """cfg.clips clips of random uint8 frames, (T, H, W, 3) each: deterministic for a seed."""
    rng = np.random.default_rng(cfg.seed)
    return [rng.integers(0, 256, (cfg.frames, *cfg.frame_size, 3), dtype=np.uint8) for _ in range(cfg.clips)]


def caption_clips(engine: Engine, clips: list[np.ndarray], fifo0: np.ndarray | None = None) -> list[dict]:
    """The clip step over `clips`, the FIFO carried between them (starting from `fifo0`, (F, D), when given) -> per
    clip: caption ids, scores (N_V,), kept indices, scored rows (steps), context length, seconds."""
    fifo = TokenFifo(engine.config.fifo, engine.backend.info.hidden_size)
    if fifo0 is not None:
        fifo.push(-1, fifo0)
    out = []
    for i, frames in enumerate(clips):
        t = time.perf_counter()
        step = engine.caption_clip(frames, fifo.tokens(), i)
        out.append({"ids": step.caption_ids, "caption": step.caption, "scores": step.scores,
                    "kept": step.selection.indices, "steps": step.steps, "context": step.context_tokens,
                    "s": time.perf_counter() - t})
        fifo.push(i, step.selection.tokens)
    return out


def compare_runs(ref: list[dict], got: list[dict]) -> dict:
    """Clip by clip against the reference: identical captions, the first differing caption token, the largest clip
    score difference (on clips with the same caption; per scored row too), selection overlap."""
    same = [a["ids"] == b["ids"] for a, b in zip(ref, got)]
    first = [next((k for k, (x, y) in enumerate(zip(a["ids"], b["ids"])) if x != y),
                  None if s else min(len(a["ids"]), len(b["ids"]))) for a, b, s in zip(ref, got, same)]
    diffs = [float(np.abs(a["scores"] - b["scores"]).max()) for a, b, s in zip(ref, got, same) if s]
    per_row = [float(np.abs(a["scores"] - b["scores"]).max()) / a["steps"] for a, b, s in zip(ref, got, same) if s]
    overlap = [len(set(a["kept"].tolist()) & set(b["kept"].tolist())) / len(a["kept"]) for a, b in zip(ref, got)]
    return {"clips": len(same), "captions_identical": sum(same), "first_diff_token": first,
            "max_score_diff": max(diffs) if diffs else None,
            "max_score_diff_per_row": max(per_row) if per_row else None,
            "selection_overlap": overlap, "selection_overlap_min": min(overlap),
            "selections_identical": all(o == 1.0 for o in overlap)}


def verdict(cmp: dict, tol: Tolerance) -> tuple[bool, list[str]]:
    """(passed, the failed conditions in words) of a compare_runs result under a tolerance."""
    failed = []
    if cmp["captions_identical"] < tol.captions_identical_min * cmp["clips"]:
        failed.append(f"{cmp['captions_identical']}/{cmp['clips']} captions identical, fewer than "
                      f"{tol.captions_identical_min:.0%}")
    if cmp["selection_overlap_min"] < tol.selection_overlap_min:
        failed.append(f"selection overlap {cmp['selection_overlap_min']:.2f} < {tol.selection_overlap_min}")
    if tol.score_atol_per_row is not None and (cmp["max_score_diff_per_row"] or 0.0) > tol.score_atol_per_row:
        failed.append(f"clip scores differ by {cmp['max_score_diff_per_row']:.2e} per row > {tol.score_atol_per_row}")
    return not failed, failed
