"""Probe-layer calibration: which K decoder layers' attention best reproduces the all-layer selection.

Reference (per calibration clip): the selection score of every visual token using ALL L decoder layers,
i.e. the mean over layers of the head-mean attention rows, summed over the scoring rows (the last prompt
token at prefill + every caption token fed back), on the clip's columns. It comes from the torch reference
backend with one small recorder per layer: each layer hands over its (1, K) row as it runs, so memory holds
one layer's rows at a time and the accumulated per-layer scores (L, C), never an attention matrix.

Candidate K-subsets S score tokens by the mean over S of the same per-layer scores. A subset is judged by
overlap@N with the reference's top N (N = the pipeline's tokens kept per clip), averaged over clips;
Spearman's rank correlation with the reference scores breaks ties. The search is exhaustive when C(L, K) is
at most `max_exhaustive` (tiny: C(8, 4) = 70; 0.5B: C(24, 4) = 10,626: a few seconds, the per-layer scores
being precomputed), else greedy forward selection followed by a swap pass until no swap improves.

Shapes: L decoder layers, K chosen layers, C clip tokens (T * P), N kept tokens, n_sub subsets.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from rlivs.runtime.config import ProbeConfig, SelectionConfig

from .config import LayerSearchConfig
from .dataset import CalibItem, CalibrationSet
from rlivs.runtime.errors import UserError

log = logging.getLogger("rlivs.calibration")

LAYERS_FILE = "layers.json"


# ---------------------------------------------------------------------------------------------------------------------
# Per-layer scores from the torch reference
# ---------------------------------------------------------------------------------------------------------------------


class _LayerRow:
    """Recorder for one layer (the protocol of the torch backend's probe: `.rows` and `.add`)."""

    def __init__(self):
        self.rows = 1  # record the last query row at every step
        self.row = None  # (1, K) float32: this layer's head-mean row of the current step

    def add(self, rows) -> None:
        self.row = rows


def _require_torch(backend) -> None:
    if getattr(backend, "name", None) != "torch":
        raise UserError("probe-layer calibration needs the torch reference backend (all layers' attention): pass the "
                        "HF-format model (--model tiny | DIR | hub id), not an exported bundle")


@contextlib.contextmanager
def record_all_layers(backend):
    """Attach a recorder to every decoder layer of a TorchBackend; restore the backend's probes afterwards."""
    _require_torch(backend)
    layers = backend.lm.layers[: backend.info.num_layers]
    saved = [getattr(layer.self_attn, "_rlivs_probe", None) for layer in layers]
    recorders = [_LayerRow() for _ in layers]
    try:
        for layer, rec in zip(layers, recorders):
            layer.self_attn._rlivs_probe = rec
        yield recorders
    finally:
        for layer, old in zip(layers, saved):
            if old is None:
                del layer.self_attn._rlivs_probe
            else:
                layer.self_attn._rlivs_probe = old


def item_layer_scores(engine, calib: CalibrationSet, item: CalibItem) -> np.ndarray:
    """(L, C) float64: each layer's head-mean attention to the clip's tokens, summed over the item's scoring rows
    (prefill row + the reference caption's tokens fed back, teacher-forced)."""
    be = engine.backend
    # the pipeline's prefill: context (S, D), the clip's columns, (3, S) M-RoPE ids (None: 1-D; caption tokens
    # continue after their maximum) and DeepStack features (Qwen3-VL: added to the visual rows, as in captioning)
    ctx, cols, positions, deep = calib.prefill(engine, item)
    first = {k: v for k, v in (("positions", positions), ("deepstack", deep)) if v is not None}
    with record_all_layers(be) as recs:
        scores = np.zeros((len(recs), len(cols)), dtype=np.float64)  # (L, C)
        state = be.new_state()
        inputs = [ctx] + [be.embed_tokens(np.array([t])) for t in item.fed_ids()]
        for n, x in enumerate(inputs):
            be.step(x, state, probe_rows=1, **(first if n == 0 else {}))
            for i, rec in enumerate(recs):
                scores[i] += rec.row[0, cols].double().cpu().numpy()
                rec.row = None
    return scores


def _weights_signature(backend) -> str:
    """Cheap identity of the decoder weights: names, shapes and the first values of every parameter."""
    h = hashlib.sha256()
    for name, p in backend.lm.named_parameters():
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(p.detach().reshape(-1)[:64].float().cpu().numpy().tobytes())
    return h.hexdigest()


def layer_scores(engine, calib: CalibrationSet, use_cache: bool = True,
                 on_item: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """{item id: (L, C) per-layer scores} for every item of the set; cached under CALIB/cache/ and reused."""
    _require_torch(engine.backend)
    calib.check_engine(engine)
    key = hashlib.sha256(json.dumps([calib.sha256, engine.backend.info.model_id, engine.model_fingerprint,
                                     _weights_signature(engine.backend)]).encode()).hexdigest()[:16]
    path = calib.cache_dir() / f"layer_scores-{key}.npz"
    if use_cache and path.is_file():
        with np.load(path) as z:
            if set(z.files) == {it.id for it in calib.items}:
                log.info("per-layer scores reused from %s", path)
                return {k: z[k] for k in z.files}
    out = {}
    for n, item in enumerate(calib.items):
        out[item.id] = item_layer_scores(engine, calib, item)
        if on_item:
            on_item(n + 1, len(calib.items))
    np.savez(path, **out)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Search (numpy only)
# ---------------------------------------------------------------------------------------------------------------------


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks along the last axis (0 = smallest); ties get distinct ranks (they have measure zero here)."""
    r = np.empty_like(x, dtype=np.float64)
    idx = np.argsort(x, axis=-1, kind="stable")
    np.put_along_axis(r, idx, np.broadcast_to(np.arange(x.shape[-1], dtype=np.float64), x.shape), axis=-1)
    return r


def _spearman(ranks: np.ndarray, ref_ranks: np.ndarray) -> np.ndarray:
    """Pearson correlation of ranks (n, C) with reference ranks (C,) -> (n,)."""
    a = ranks - ranks.mean(axis=-1, keepdims=True)
    b = ref_ranks - ref_ranks.mean()
    den = np.sqrt((a * a).sum(-1) * (b * b).sum())
    return np.where(den > 0, (a @ b) / np.where(den > 0, den, 1), 0.0)


@dataclass
class ClipScores:
    """One clip's per-layer scores and what the search compares against."""

    layers: np.ndarray  # (L, C) per-layer scores
    n_keep: int  # N: tokens the pipeline keeps from this clip

    def __post_init__(self):
        self.reference = self.layers.mean(axis=0)  # (C,) the all-layer scores
        top = np.argsort(-self.reference, kind="stable")[: self.n_keep]
        self.ref_mask = np.zeros(self.layers.shape[1], dtype=bool)  # (C,) True = in the reference top N
        self.ref_mask[top] = True
        self.ref_ranks = _ranks(self.reference)  # (C,)


def evaluate_subsets(clips: Sequence[ClipScores], subsets: np.ndarray, spearman: bool = True,
                     chunk: int = 1024) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean over clips of overlap@N (and Spearman) for each subset. subsets: (n_sub, K) layer indices.

    A subset's scores are the sum over its layers (the mean's ranking). Top N by argpartition: ties at the
    N-th score are broken arbitrarily (continuous scores make them vanishingly rare).
    """
    subsets = np.asarray(subsets, dtype=np.int64)
    overlap = np.zeros(len(subsets))
    rho = np.zeros(len(subsets)) if spearman else None
    for c in clips:
        for s in range(0, len(subsets), chunk):
            sub = subsets[s: s + chunk]  # (c, K)
            x = c.layers[sub].sum(axis=1)  # (c, C)
            top = np.argpartition(-x, c.n_keep - 1, axis=1)[:, : c.n_keep]  # (c, N)
            overlap[s: s + chunk] += c.ref_mask[top].sum(axis=1) / c.n_keep
            if spearman:
                rho[s: s + chunk] += _spearman(_ranks(x), c.ref_ranks)
    overlap /= len(clips)
    if spearman:
        rho /= len(clips)
    return overlap, rho


@dataclass
class SearchResult:
    layers: tuple[int, ...]  # the chosen K layers, ascending
    overlap: float  # mean overlap@N with the reference top N on the clips searched
    spearman: float  # mean Spearman with the reference scores
    method: str  # exhaustive | greedy+swap
    evaluated: int  # subsets evaluated


def _best(overlap: np.ndarray, rho: np.ndarray, tol: float) -> int:
    """Index of the best subset: highest overlap, Spearman among those within tol of it."""
    near = np.flatnonzero(overlap >= overlap.max() - tol)
    return int(near[np.argmax(rho[near])])


def search_layers(clips: Sequence[ClipScores], config: LayerSearchConfig | None = None,
                  candidates: Sequence[int] | None = None) -> SearchResult:
    """The K-subset of layers whose averaged scores best reproduce the all-layer top-N selection. `candidates`: the
    layers a subset may hold (the backbone's `probe_candidates`; default all); the reference is all layers."""
    cfg = config or LayerSearchConfig()
    if not clips:
        raise UserError("no calibration clips to search on: collect a calibration set with --clips >= 1")
    n_layers = clips[0].layers.shape[0]
    cands = sorted(set(int(i) for i in (range(n_layers) if candidates is None else candidates)))
    if not cands or cands[0] < 0 or cands[-1] >= n_layers:
        raise ValueError(f"probe candidates {cands} are not layers of a {n_layers}-layer decoder")
    k = cfg.num_layers
    if k > len(cands):
        which = "" if len(cands) == n_layers else f" ({len(cands)} of them probe candidates)"
        raise UserError(f"cannot choose {k} probe layers from a {n_layers}-layer decoder{which}: lower --num-layers")
    if math.comb(len(cands), k) <= cfg.max_exhaustive:
        subsets = np.array(list(itertools.combinations(cands, k)), dtype=np.int64)  # (C(L,K), K)
        overlap, _ = evaluate_subsets(clips, subsets, spearman=False)
        near = np.flatnonzero(overlap >= overlap.max() - cfg.tie_tol)  # Spearman only where it can decide
        _, rho = evaluate_subsets(clips, subsets[near])
        best = near[int(np.argmax(rho))]
        return SearchResult(tuple(int(i) for i in subsets[best]), float(overlap[best]), float(rho.max()),
                            "exhaustive", len(subsets))
    return _greedy_swap(clips, cands, k, cfg.tie_tol)


def _greedy_swap(clips: Sequence[ClipScores], layers: Sequence[int], k: int, tol: float) -> SearchResult:
    evaluated = 0
    chosen: list[int] = []
    n_layers = len(layers)
    for _ in range(k):  # forward: add the layer that helps most
        cands = [sorted(chosen + [i]) for i in layers if i not in chosen]
        ov, rho = evaluate_subsets(clips, np.array(cands))
        evaluated += len(cands)
        chosen = cands[_best(ov, rho, tol)]
    (cur_ov,), (cur_rho,) = evaluate_subsets(clips, np.array([chosen]))
    for _ in range(n_layers * k):  # swap: replace one member while that improves (overlap, then Spearman)
        cands = [sorted(chosen[:j] + chosen[j + 1:] + [i]) for j in range(k) for i in layers if i not in chosen]
        ov, rho = evaluate_subsets(clips, np.array(cands))
        evaluated += len(cands)
        b = _best(ov, rho, tol)
        if ov[b] > cur_ov + tol or (ov[b] >= cur_ov - tol and rho[b] > cur_rho + 1e-12):
            chosen, cur_ov, cur_rho = cands[b], ov[b], rho[b]
        else:
            break
    return SearchResult(tuple(chosen), float(cur_ov), float(cur_rho), "greedy+swap", evaluated)


# ---------------------------------------------------------------------------------------------------------------------
# The calibration step: scores -> search -> comparison with evenly spaced layers -> layers.json
# ---------------------------------------------------------------------------------------------------------------------


def clip_scores(scores: dict[str, np.ndarray], items: Sequence[CalibItem], selection: SelectionConfig) -> list[ClipScores]:
    return [ClipScores(scores[it.id], selection.n_keep(scores[it.id].shape[1])) for it in items]


def _metrics(clips: Sequence[ClipScores], layers: Sequence[int]) -> dict:
    if not clips:
        return {"overlap": None, "spearman": None, "clips": 0}
    ov, rho = evaluate_subsets(clips, np.array([sorted(layers)]))
    return {"overlap": float(ov[0]), "spearman": float(rho[0]), "clips": len(clips)}


def calibrate_layers(engine, calib: CalibrationSet, config: LayerSearchConfig | None = None, use_cache: bool = True,
                     on_item: Callable[[int, int], None] | None = None) -> dict:
    """Choose the probe layers on the set's `calib` clips; compare with evenly spaced layers on both splits.
    Writes CALIB/layers.json and returns it."""
    cfg = config or LayerSearchConfig()
    t0 = time.perf_counter()
    scores = layer_scores(engine, calib, use_cache=use_cache, on_item=on_item)
    t_scores = time.perf_counter() - t0
    selection = SelectionConfig(**{k: v for k, v in calib.pipeline["selection"].items()})
    fit = clip_scores(scores, calib.split("calib"), selection)
    held = clip_scores(scores, calib.split("heldout"), selection)
    n_layers = engine.backend.info.num_layers
    candidates = engine.backbone.probe_candidates(n_layers)  # the layers this model family may probe
    t1 = time.perf_counter()
    res = search_layers(fit, cfg, candidates)
    t_search = time.perf_counter() - t1
    even = ProbeConfig(num_layers=cfg.num_layers).resolve(n_layers)
    per_layer = [{"layer": i, **{f"calib_{k}": v for k, v in _metrics(fit, [i]).items() if k != "clips"}}
                 for i in range(n_layers)]
    out = {
        "model_id": engine.backend.info.model_id, "backbone": engine.backbone.name, "set_sha256": calib.sha256,
        "num_layers": n_layers, "k": cfg.num_layers, "candidates": list(candidates),
        "reference": "mean over all decoder layers of the head-mean attention rows, summed over the scoring rows "
                     "(last prompt token + caption tokens fed back), on the clip's columns",
        "metric": "overlap@N with the reference top N (N = tokens kept per clip), Spearman as tie-break; mean over clips",
        "chosen": {"layers": list(res.layers), "calib": _metrics(fit, res.layers), "heldout": _metrics(held, res.layers)},
        "evenly_spaced": {"layers": list(even), "calib": _metrics(fit, even), "heldout": _metrics(held, even)},
        "per_layer": per_layer,
        "search": {"method": res.method, "subsets_evaluated": res.evaluated, "max_exhaustive": cfg.max_exhaustive,
                   "seconds": round(t_search, 3)},
        "scores_seconds": round(t_scores, 3),
        "n_keep": sorted({c.n_keep for c in fit + held}),
    }
    (calib.path / LAYERS_FILE).write_text(json.dumps(out, indent=2))
    log.info("probe layers: chosen %s (overlap %.3f calib / %s held out), evenly spaced %s (overlap %.3f / %s)",
             res.layers, out["chosen"]["calib"]["overlap"], out["chosen"]["heldout"]["overlap"], even,
             out["evenly_spaced"]["calib"]["overlap"], out["evenly_spaced"]["heldout"]["overlap"])
    return out


def export_with_layers(model: str | Path, out: str | Path, layers: dict, export_config=None):
    """Export a bundle whose decoder probes the calibrated layers; its manifest records where they came from."""
    from dataclasses import replace

    from rlivs.export.bundle import ExportConfig, export_bundle

    cfg = replace(export_config or ExportConfig(), probe=ProbeConfig(layers=tuple(layers["chosen"]["layers"])))
    manifest = export_bundle(model, out, cfg).with_(calibration={"probe_layers": {
        "source": "rlivs calibrate layers", "set_sha256": layers["set_sha256"], "layers": layers["chosen"]["layers"],
        "chosen": layers["chosen"], "evenly_spaced": layers["evenly_spaced"], "search": layers["search"]}})
    manifest.save(out)
    return manifest
