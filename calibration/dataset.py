"""Calibration sets: clips sampled from the user's own footage, with the prompts the pipeline would build.

`collect` samples clips stratified over time (one per equal stretch of the footage), drops near-duplicates
(static scenes), and stores for each clip what the decoder will see in the pipeline:

  CALIB/
    manifest.json   format, version, the model and pipeline settings, videos (path, sha256, clips), items, set hash
    items/cNNN.npz  frames (T, 3, h, w) uint8: the frames resized to the vision tower's input (normalising them
                    on load gives exactly the pipeline's pixels: FramePreprocessor resizes the uint8 frame first);
                    fifo (F, D) float32: the FIFO tokens in front of the clip when the pipeline reaches it;
                    positions (3, S) int64, M-RoPE backbones only (Qwen-VL): the context's position ids, FIFO
                    tokens placed as --fifo-positions says (runtime/backbones);
                    fifo_n (C,) int64: tokens per FIFO clip (oldest first, clips as the item's fifo_clips);
                    fifo_kept (F,) int64: their flat indices in their clips, when every FIFO clip has them;
                    fifo_deepstack (K, F, D) float32, DeepStack backbones only (Qwen3-VL): the FIFO tokens'
                    features, fed again with them as in the pipeline
    cache/          results computed from the set (per-layer scores, quantization ranges), reused when present

Each item also records the caption prompt's ids (before/after the video), the reference greedy caption ids
and how many query rows scored the clip (1 prefill row + one per caption token fed back). A clip's FIFO is
built by running the pipeline, from an empty FIFO, over at least the `warmup_clips` clips before it (ranges
of nearby picked clips merge into one run); with warmup_clips None it runs from the video's start, which is
exactly what an ingest holds.

Items are split into `calib` (used to calibrate) and `heldout` (only for the fidelity report), interleaved in time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from rlivs.runtime.config import (
    AnswerConfig, CaptionConfig, ClipConfig, FifoConfig, PipelineConfig, ProbeConfig, RetrievalConfig, SelectionConfig,
)
from rlivs.runtime.fifo import TokenFifo
from rlivs.runtime.frames import Clip, FramePreprocessor, iter_clips
from rlivs.runtime.sources import resume_time
from rlivs.runtime.sources.file import VideoFileSource

from .config import CollectConfig
from rlivs.runtime.errors import UserError

log = logging.getLogger("rlivs.calibration")

SET_FORMAT = "rlivs-calibration-set"
SET_VERSION = 1
MANIFEST = "manifest.json"


# ---------------------------------------------------------------------------------------------------------------------
# Sampling: signatures, duplicates, strata
# ---------------------------------------------------------------------------------------------------------------------


def clip_signature(frames: np.ndarray, side: int = 16, segments: int = 4) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (segments, side, side) float32 in [0, 1]: mean grey thumbnail of each time segment."""
    grey = frames.astype(np.float32).mean(axis=-1)  # (T, H, W)
    thumbs = np.stack([np.asarray(Image.fromarray(g).resize((side, side), Image.Resampling.BOX))
                       for g in grey]) / 255.0  # (T, side, side)
    parts = np.array_split(np.arange(len(thumbs)), min(segments, len(thumbs)))
    sig = np.stack([thumbs[p].mean(axis=0) for p in parts])  # (<= segments, side, side)
    if len(sig) < segments:  # a clip shorter than `segments` frames: repeat its last segment
        sig = np.concatenate([sig, np.repeat(sig[-1:], segments - len(sig), axis=0)])
    return sig.astype(np.float32)


def signature_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two signatures, in [0, 1]."""
    return float(np.abs(a - b).mean())


@dataclass
class Candidate:
    video: int  # index into the collected videos
    clip: int  # clip index in that video (as the pipeline numbers it)
    t_start: float  # seconds
    t_end: float  # seconds
    signature: np.ndarray  # (segments, side, side) float32


def stratified_sample(candidates: Sequence[Candidate], n: int, threshold: float, seed: int = 0) -> tuple[list[int], int]:
    """Pick up to n candidates, one per equal stretch (stratum) of the time-ordered list, skipping near-duplicates.

    In each stratum the candidates are tried in a seeded random order; the first whose signature is at least
    `threshold` away from every clip already picked is taken. A stratum with no such clip gives none.
    Returns (picked candidate indices in time order, number of candidates rejected as duplicates).
    """
    if n < 1:
        raise UserError(f"asked for {n} clips: ask for at least 1")
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    rejected = 0
    for stratum in np.array_split(np.arange(len(candidates)), min(n, len(candidates))):
        for i in rng.permutation(stratum):
            sig = candidates[i].signature
            if all(signature_distance(sig, candidates[j].signature) >= threshold for j in picked):
                picked.append(int(i))
                break
            rejected += 1
    return sorted(picked), rejected


def heldout_positions(n_items: int, n_heldout: int) -> set[int]:
    """Positions (in time order) held back: spread evenly, so both splits cover the whole footage."""
    if n_heldout == 0:
        return set()
    return {min(n_items - 1, int((j + 0.5) * n_items / n_heldout)) for j in range(n_heldout)}


# ---------------------------------------------------------------------------------------------------------------------
# The set on disk
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class CalibItem:
    id: str  # "c000", ...: the file items/<id>.npz
    split: str  # calib | heldout
    video: int  # index into the set's videos
    clip: int  # clip index in the video
    t_start: float  # seconds
    t_end: float  # seconds
    fifo_clips: list[int]  # clip indices whose kept tokens form the FIFO prefix, oldest first
    caption_ids: list[int]  # the reference's greedy caption (EOS excluded)
    scored_rows: int  # query rows that scored the clip: 1 prefill row + caption tokens fed back
    sha256: str  # of items/<id>.npz

    def fed_ids(self) -> list[int]:
        """Caption tokens that were fed back to the decoder (the last one is not when the length bound stopped it)."""
        return self.caption_ids[: self.scored_rows - 1]


class CalibrationSet:
    """A collected calibration set (read-only). `pixels(item)` and `fifo(item)` load an item's arrays."""

    def __init__(self, path: str | Path, verify: bool = True):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise UserError(f"{self.path} is not a calibration set (no {MANIFEST}): create one with "
                            f"rlivs calibrate collect --video VIDEO --out {self.path}")
        try:
            self.manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{mpath} is not valid JSON ({e}): re-run rlivs calibrate collect") from e
        if self.manifest.get("format") != SET_FORMAT or self.manifest.get("version") != SET_VERSION:
            raise UserError(f"{mpath} is not a version {SET_VERSION} calibration set manifest "
                            f"(format {self.manifest.get('format')!r}, version {self.manifest.get('version')!r}): "
                            "re-run rlivs calibrate collect with this rlivs")
        self.items = [CalibItem(**it) for it in self.manifest["items"]]
        self.pipeline = self.manifest["pipeline"]  # the PipelineConfig dict the set was collected with
        pre = self.manifest["preprocess"]
        self._normalise = dataclasses.replace(FramePreprocessor.from_dict(pre["config"]), do_resize=False)
        if verify:
            for it in self.items:
                f = self.item_path(it)
                if not f.is_file():
                    raise UserError(f"{f} is missing: copy the whole calibration directory or re-run collect")
                if _sha256(f) != it.sha256:
                    raise UserError(f"{f} changed since it was collected: re-run rlivs calibrate collect")

    @property
    def sha256(self) -> str:
        return self.manifest["set_sha256"]

    @property
    def prompt(self) -> dict:
        return self.manifest["prompt"]  # {"text", "prefix_ids", "suffix_ids"}

    def pipeline_config(self, probe: bool = False) -> PipelineConfig:
        """The PipelineConfig the set was collected with (probe layers left to the model unless `probe`)."""
        return pipeline_config(self.pipeline, probe)

    def split(self, name: str) -> list[CalibItem]:
        return [it for it in self.items if it.split == name]

    def item_path(self, item: CalibItem) -> Path:
        return self.path / "items" / f"{item.id}.npz"

    def pixels(self, item: CalibItem) -> np.ndarray:
        """(T, 3, h, w) float32, exactly what the pipeline's FramePreprocessor gives for the clip's frames."""
        with np.load(self.item_path(item)) as z:
            frames = z["frames"]  # (T, 3, h, w) uint8
        return self._normalise(frames.transpose(0, 2, 3, 1))

    def fifo(self, item: CalibItem) -> np.ndarray:
        with np.load(self.item_path(item)) as z:
            return z["fifo"].astype(np.float32)  # (F, D)

    def positions(self, item: CalibItem) -> np.ndarray | None:
        """(3, S) M-RoPE position ids of the item's caption context as the pipeline built them (None: 1-D, the
        backend's default 0..S-1)."""
        with np.load(self.item_path(item)) as z:
            return z["positions"].astype(np.int64) if "positions" in z.files else None

    def fifo_clips(self, item: CalibItem) -> list | None:
        """The FIFO's clips (runtime.backbones.FifoClip, oldest first: index, tokens, kept indices, DeepStack
        features) as the pipeline held them in front of the item; None for a set collected before they were stored
        (the engine then treats the FIFO as one clip of unknown origin)."""
        from rlivs.runtime.backbones import FifoClip

        with np.load(self.item_path(item)) as z:
            if "fifo_n" not in z.files:
                return None
            ns = z["fifo_n"].astype(np.int64)
            kept = z["fifo_kept"].astype(np.int64) if "fifo_kept" in z.files else None
            deep = z["fifo_deepstack"].astype(np.float32) if "fifo_deepstack" in z.files else None
        out, at = [], 0
        for index, n in zip(item.fifo_clips, ns):
            n = int(n)
            out.append(FifoClip(int(index), n, None if kept is None else kept[at:at + n],
                                None if deep is None else np.ascontiguousarray(deep[:, at:at + n])))
            at += n
        return out

    def prefill(self, engine, item: CalibItem) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, tuple | None]:
        """What the pipeline's clip step prefills for `item`, on `engine`'s backend (its own vision graph/tower):
        -> (context (S, D), clip columns (C,) int64, (3, S) M-RoPE ids or None (1-D), DeepStack step argument
        ((n,) visual rows, (K, n, D) features) or None). The positions are the stored ones (the pipeline's)."""
        be, bb = engine.backend, engine.backbone
        pixels = self.pixels(item)
        positions = self.positions(item)
        if bb.text_in_video:  # Qwen3-VL: timestamps between the token groups, DeepStack features with the tokens
            visual, deep = be.encode_video(pixels) if bb.deepstack else (be.encode_frames(pixels), None)
            ctx, cols, pos, ds = engine.caption_layout(self.fifo(item), visual, item.clip, self.fifo_clips(item),
                                                       len(pixels), deep)
            return ctx, np.asarray(cols, np.int64), pos if positions is None else positions, ds
        ctx, cols = self.context(engine, item, be.encode_frames(pixels))
        return ctx, np.arange(cols.start, cols.stop, dtype=np.int64), positions, None

    def cache_dir(self) -> Path:
        d = self.path / "cache"
        d.mkdir(exist_ok=True)
        return d

    def check_engine(self, engine) -> None:
        """Refuse an engine whose embedding space or prompt differs from the one the set was collected with."""
        from rlivs.runtime.memory.records import same_model

        want, have = self.manifest["model_fingerprint"], engine.model_fingerprint
        if not same_model(want, have):  # a set collected before rlivs recorded the model family: the rest compared
            raise UserError(f"the calibration set {self.path} was collected with model {self.manifest['model_id']} "
                            f"(fingerprint {want}); this model's is {have}: re-collect with this model "
                            "(rlivs calibrate collect --model ...)")
        prefix = engine.text.caption_prompt(self.prompt["text"])
        if list(map(int, prefix.prefix)) != self.prompt["prefix_ids"] or list(map(int, prefix.suffix)) != self.prompt["suffix_ids"]:
            raise UserError(f"the caption prompt ids differ from the calibration set's ({self.path}): "
                            "the tokenizer or chat template changed; re-collect the set")

    def context(self, engine, item: CalibItem, visual: np.ndarray) -> tuple[np.ndarray, slice]:
        """The caption context (S, D) and clip columns the pipeline builds for `item` from its visual tokens (T, P, D)."""
        return engine.caption_context(self.fifo(item), visual.reshape(-1, visual.shape[-1]))


def pipeline_config(d: dict, probe: bool = False) -> PipelineConfig:
    """PipelineConfig from its to_dict(); probe settings only when `probe` (a bundle fixes its own layers)."""
    p = d["probe"]
    return PipelineConfig(
        clip=ClipConfig(**d["clip"]), selection=SelectionConfig(**d["selection"]), fifo=FifoConfig(**d["fifo"]),
        caption=CaptionConfig(**d["caption"]), retrieval=RetrievalConfig(**d["retrieval"]),
        answer=AnswerConfig(**d["answer"]),
        probe=ProbeConfig(num_layers=p["num_layers"], layers=tuple(p["layers"]) if p["layers"] else None) if probe
        else ProbeConfig())


def _sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# Collect
# ---------------------------------------------------------------------------------------------------------------------


def _scan(path: Path, video_index: int, cfg: CollectConfig, pc: PipelineConfig) -> tuple[list[Candidate], int, float | None]:
    """Pass 1: the signature of every full clip of one video. -> (candidates, clips seen, duration)."""
    c = pc.clip
    source = VideoFileSource(path, fps=c.fps)
    out, seen = [], 0
    for clip in iter_clips(source, c.frames_per_clip, c.fps):
        seen += 1
        if len(clip) < c.frames_per_clip:
            continue  # a short final clip is not a calibration candidate
        out.append(Candidate(video_index, clip.index, clip.t_start, clip.t_end,
                             clip_signature(clip.frames, cfg.thumb_side, cfg.thumb_segments)))
    return out, seen, source.duration


def _ranges(targets: list[int], warmup: int | None) -> list[tuple[int, int]]:
    """Merged clip ranges [a, b] to run so that every target clip has `warmup` clips before it."""
    spans = sorted((0 if warmup is None else max(0, t - warmup), t) for t in targets)
    merged: list[list[int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def _clips(path: Path, pc: PipelineConfig, first: int) -> Iterator[Clip]:
    c = pc.clip
    source = VideoFileSource(path, fps=c.fps, start_time=resume_time(first, c.frames_per_clip, c.fps))
    return iter_clips(source, c.frames_per_clip, c.fps, first_index=first)


def collect(videos: Sequence[str | Path], out: str | Path, engine, config: CollectConfig | None = None,
            on_clip: Callable[[str, int, int], None] | None = None) -> dict:
    """Sample a calibration set from `videos` with `engine` (its PipelineConfig decides clips, prompt, FIFO,
    selection). Writes `out` (see the module docstring) and returns its manifest.

    `on_clip(phase, done, total)` reports progress ("scan" per clip decoded, "run" per clip captioned).
    """
    cfg = config or CollectConfig()
    pc: PipelineConfig = engine.config
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise UserError(f"{out} exists and is not a calibration set: choose an empty or new --out directory")
    paths = [Path(v) for v in videos]
    if not paths:
        raise UserError("no video given: pass at least one --video FILE")
    for p in paths:
        if not p.is_file():
            raise UserError(f"{p} does not exist: pass a video file with --video")

    # pass 1: signatures of every clip, then the stratified, deduplicated choice
    t0 = time.perf_counter()
    candidates, vids = [], []
    for vi, p in enumerate(paths):
        cands, seen, duration = _scan(p, vi, cfg, pc)
        candidates.extend(cands)
        vids.append({"path": str(p.resolve()), "sha256": _sha256(p), "duration": duration, "clips": seen,
                     "full_clips": len(cands)})
        if on_clip:
            on_clip("scan", vi + 1, len(paths))
    n_want = cfg.n_calib + cfg.n_heldout
    picked, rejected = stratified_sample(candidates, n_want, cfg.dedup_threshold, cfg.seed)
    if len(picked) < cfg.n_heldout + 1:
        raise UserError(f"the footage gives only {len(picked)} distinct full clips of {pc.clip.frames_per_clip} frames "
                        f"({len(candidates)} full clips, {rejected} rejected as duplicates); at least "
                        f"{cfg.n_heldout + 1} are needed: give more or longer footage, or lower --heldout/--dedup")
    held = heldout_positions(len(picked), cfg.n_heldout)
    log.info("calibration clips: %d of %d full clips picked (%d duplicates skipped), %d held out",
             len(picked), len(candidates), rejected, len(held))

    # pass 2: run the pipeline over each picked clip's warm-up range; snapshot the FIFO in front of it
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # valid only once the manifest is written, last
    (out / "items").mkdir(exist_ok=True)
    items: list[dict] = []
    order = {(candidates[i].video, candidates[i].clip): pos for pos, i in enumerate(picked)}
    n_run = sum(b - a + 1 for vi in range(len(paths))
                for a, b in _ranges([candidates[i].clip for i in picked if candidates[i].video == vi], cfg.warmup_clips))
    done = 0
    raw = dataclasses.replace(engine.preprocess, do_rescale=False, do_normalize=False)  # resize only
    for vi, p in enumerate(paths):
        targets = [candidates[i].clip for i in picked if candidates[i].video == vi]
        for a, b in _ranges(targets, cfg.warmup_clips):
            fifo = TokenFifo(pc.fifo, engine.backend.info.hidden_size)
            for clip in _clips(p, pc, a):
                if clip.index > b:
                    break
                pos = order.get((vi, clip.index))
                prefix, prefix_clips, in_fifo = fifo.tokens(), fifo.clip_indices, fifo.clips()  # before this clip
                step = engine.caption_clip(clip.frames, prefix, clip.index,  # the pipeline's own clip step
                                           fifo_clips=in_fifo)  # (M-RoPE backbones position the FIFO by it)
                fifo.push(clip.index, step.selection.tokens, step.selection.indices,
                          deepstack=getattr(step, "deepstack", None))  # as the ingest's FIFO (Qwen3-VL)
                if pos is not None:
                    item_id = f"c{pos:03d}"
                    f = out / "items" / f"{item_id}.npz"
                    frames = raw(clip.frames).astype(np.uint8)  # (T, 3, h, w): exact, the values are uint8
                    arrays = dict(frames=frames, fifo=prefix.astype(np.float32))
                    if step.positions is not None:  # M-RoPE: the context's (3, S) position ids, as the step had them
                        arrays["positions"] = step.positions.astype(np.int64)
                    arrays["fifo_n"] = np.array([f.n for f in in_fifo], np.int64)
                    if in_fifo and all(f.kept is not None for f in in_fifo):
                        arrays["fifo_kept"] = np.concatenate([f.kept for f in in_fifo]).astype(np.int64)
                    if in_fifo and all(f.deepstack is not None for f in in_fifo):
                        arrays["fifo_deepstack"] = np.concatenate([f.deepstack for f in in_fifo], axis=1).astype(np.float32)
                    np.savez(f, **arrays)
                    items.append({"id": item_id, "split": "heldout" if pos in held else "calib", "video": vi,
                                  "clip": clip.index, "t_start": clip.t_start, "t_end": clip.t_end,
                                  "fifo_clips": [int(i) for i in prefix_clips], "caption_ids": [int(i) for i in step.caption_ids],
                                  "scored_rows": step.steps, "sha256": _sha256(f)})
                done += 1
                if on_clip:
                    on_clip("run", done, n_run)
    items.sort(key=lambda it: it["id"])
    prompt = engine.text.caption_prompt(pc.caption.prompt)
    manifest = {
        "format": SET_FORMAT, "version": SET_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model_id": engine.backend.info.model_id, "model_fingerprint": engine.model_fingerprint,
        "backend": engine.backend.name, "probe_layers": list(engine.backend.info.probe_layers),
        "pipeline": pc.to_dict(), "ingest_fingerprint": pc.ingest_fingerprint(), "collect": cfg.to_dict(),
        "preprocess": {"config": _preprocessor_dict(engine.preprocess), "stored": "resized uint8 (T, 3, h, w)"},
        "prompt": {"text": pc.caption.prompt, "prefix_ids": [int(i) for i in prompt.prefix],
                   "suffix_ids": [int(i) for i in prompt.suffix]},
        "videos": vids, "candidates": len(candidates), "duplicates_rejected": rejected,
        "clips_run": n_run, "seconds": round(time.perf_counter() - t0, 3),
        "items": items,
    }
    manifest["set_sha256"] = set_hash(manifest)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def set_hash(manifest: dict) -> str:
    """SHA-256 over what defines the set's content: model fingerprint, settings, prompt and every item (with its file hash)."""
    keep = {k: manifest[k] for k in ("model_fingerprint", "pipeline", "collect", "preprocess", "prompt", "items")}
    keep["videos"] = [v["sha256"] for v in manifest["videos"]]
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()


def _preprocessor_dict(p: FramePreprocessor) -> dict:
    """The preprocessor as a preprocessor_config.json-style dict (FramePreprocessor.from_dict reads it back)."""
    return {"size": {"height": p.height, "width": p.width}, "image_mean": list(p.image_mean),
            "image_std": list(p.image_std), "rescale_factor": p.rescale_factor, "resample": p.resample,
            "do_resize": p.do_resize, "do_rescale": p.do_rescale, "do_normalize": p.do_normalize}
