"""Fidelity report: each precision against the float32 reference bundle on the set's held-out clips.

For every held-out clip each bundle runs what the pipeline runs (vision graph, caption context with the clip's
stored FIFO prefix, greedy caption with probe scoring, attention selection), and the results are compared with
the float32 bundle's:

  selected-token overlap    |kept ∩ kept_ref| / N per clip (N tokens kept per clip); mean and minimum
  caption token agreement   positions where the greedy captions hold the same token / the longer caption's length
  identical captions        fraction of clips whose captions are equal token for token
  retrieval agreement       for each query (the reference captions of the `calib` clips), |top-k ∩ top-k_ref| / k
                            of MMR retrieval over the held-out clips' caption vectors
  speed                     medians per clip: vision, prefill, decode per token (after one warm-up clip)
  memory                    decoder size on disk; peak resident memory of the process that ran the bundle

Each bundle runs in its own process (`isolate`), so its peak memory is its own. The FIFO prefix is the one
the reference pipeline built (stored in the set), so the figures are per clip: how errors compound through
the FIFO over a long stream is not measured here.
"""

from __future__ import annotations

import json
import logging
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .config import ReportConfig
from .dataset import CalibrationSet
from rlivs.runtime.errors import UserError

log = logging.getLogger("rlivs.calibration")

MARK = "rlivs-calibration-report"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_bundle(bundle: str, calib_path: str, threads: int | None) -> dict:
    """Run the held-out clips through one bundle (the function a report's worker process runs)."""
    from rlivs.runtime.config import EngineConfig
    from rlivs.runtime.engine import load_engine

    calib = CalibrationSet(calib_path, verify=False)
    base = _peak_rss_mb()
    t0 = time.perf_counter()
    pc = calib.pipeline_config()
    engine = load_engine(EngineConfig(model=bundle, backend="onnxruntime", threads=threads), pc)
    load_s = time.perf_counter() - t0
    held = calib.split("heldout")
    if not held:
        raise UserError(f"the calibration set {calib.path} has no held-out clips: re-collect with --heldout >= 1")
    engine.caption_clip(calib.pixels(held[0]), calib.fifo(held[0]), held[0].clip, preprocessed=True,
                        fifo_clips=calib.fifo_clips(held[0]))  # warm-up, untimed
    rows = []
    for it in held:  # the clip step, its FIFO's clips as the pipeline held them (Qwen-VL: positions, DeepStack)
        step = engine.caption_clip(calib.pixels(it), calib.fifo(it), it.clip, preprocessed=True,
                                   fifo_clips=calib.fifo_clips(it))
        rows.append({"id": it.id, "ids": step.caption_ids, "kept": step.selection.indices.tolist(),
                     "vision_s": step.timings["encode"], "prefill_s": step.timings["prefill"],
                     "decode_s": step.timings["decode"], "steps": step.steps, "context": step.context_tokens,
                     "vector": step.vector.tolist()})
    queries = [engine.vector(it.caption_ids).tolist() for it in calib.split("calib") if it.caption_ids]
    return {"bundle": bundle, "rows": rows, "queries": queries, "load_s": load_s,
            "peak_rss_mb": _peak_rss_mb(), "base_rss_mb": base}


def _worker() -> None:
    """Entry of an isolated run: reads {"bundle", "calib", "threads", "out"} as JSON on stdin, writes the result to out."""
    args = json.loads(sys.stdin.read())
    result = run_bundle(args["bundle"], args["calib"], args["threads"])
    Path(args["out"]).write_text(json.dumps(result))


def _run(bundle: Path, calib: CalibrationSet, cfg: ReportConfig) -> dict:
    if not cfg.isolate:
        return run_bundle(str(bundle), str(calib.path), cfg.threads)
    with tempfile.TemporaryDirectory(prefix="rlivs-report-") as tmp:
        out = Path(tmp) / "run.json"
        args = json.dumps({"bundle": str(bundle), "calib": str(calib.path), "threads": cfg.threads, "out": str(out)})
        proc = subprocess.run([sys.executable, "-c", "from rlivs.calibration.report import _worker; _worker()"],
                              input=args, text=True, capture_output=True)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"running {bundle} on the held-out clips failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def token_agreement(a: list[int], b: list[int]) -> float:
    """Positions holding the same token / the longer sequence's length (1.0 for two empty captions)."""
    n = max(len(a), len(b))
    if n == 0:
        return 1.0
    return sum(x == y for x, y in zip(a, b)) / n


def retrieval_agreement(queries: np.ndarray, ref: np.ndarray, cand: np.ndarray, k: int, lam: float) -> float | None:
    """Mean over queries (Q, D) of |MMR top-k over cand (M, D) ∩ top-k over ref (M, D)| / k."""
    from rlivs.runtime.retrieval import mmr

    if len(queries) == 0 or k < 1:
        return None
    return float(np.mean([len(set(mmr(q, ref, k, lam)) & set(mmr(q, cand, k, lam))) / k for q in queries]))


def _median_ms(values) -> float | None:
    values = list(values)
    return round(1000 * statistics.median(values), 3) if values else None


def compare(ref: dict, run: dict, retrieval_k: int, mmr_lambda: float) -> dict:
    """Fidelity and speed of one bundle's run against the reference run (both from `run_bundle`)."""
    by_id = {r["id"]: r for r in ref["rows"]}
    overlaps, agree, exact = [], [], []
    for r in run["rows"]:
        q = by_id[r["id"]]
        overlaps.append(len(set(r["kept"]) & set(q["kept"])) / max(1, len(q["kept"])))
        agree.append(token_agreement(r["ids"], q["ids"]))
        exact.append(float(r["ids"] == q["ids"]))
    k = min(retrieval_k, len(run["rows"]) - 1)
    retrieval = retrieval_agreement(np.array(ref["queries"], dtype=np.float32).reshape(len(ref["queries"]), -1),
                                    np.array([by_id[r["id"]]["vector"] for r in run["rows"]], dtype=np.float32),
                                    np.array([r["vector"] for r in run["rows"]], dtype=np.float32), k, mmr_lambda)
    decode = [r["decode_s"] / (r["steps"] - 1) for r in run["rows"] if r["steps"] > 1]
    return {
        "selected_overlap": float(np.mean(overlaps)), "selected_overlap_min": float(np.min(overlaps)),
        "caption_token_agreement": float(np.mean(agree)), "caption_identical": float(np.mean(exact)),
        "retrieval_agreement": retrieval, "retrieval_k": k, "retrieval_queries": len(ref["queries"]),
        "vision_ms": _median_ms(r["vision_s"] for r in run["rows"]),
        "prefill_ms": _median_ms(r["prefill_s"] for r in run["rows"]),
        "decode_ms_per_token": _median_ms(decode),
        "clip_s": round(statistics.median(r["vision_s"] + r["prefill_s"] + r["decode_s"] for r in run["rows"]), 4),
        "caption_tokens": round(float(np.mean([len(r["ids"]) for r in run["rows"]])), 2),
        "context_tokens": int(statistics.median(r["context"] for r in run["rows"])),
        "peak_rss_mb": round(run["peak_rss_mb"], 1), "peak_rss_delta_mb": round(run["peak_rss_mb"] - run["base_rss_mb"], 1),
        "load_s": round(run["load_s"], 3),
    }


def _bytes(bundle: Path, prefix: str) -> int:
    return sum(p.stat().st_size for p in bundle.glob(prefix + "*"))


def fidelity_report(calib: CalibrationSet, reference: str | Path, candidates: dict[str, str | Path],
                    config: ReportConfig | None = None, command: str | None = None) -> dict:
    """Compare each candidate bundle ({name: dir}) and the reference itself with the float32 `reference` bundle."""
    from rlivs.runtime.backends.bundle import load_manifest

    cfg = config or ReportConfig()
    reference = Path(reference)
    ref_manifest = load_manifest(reference)
    if (ref_manifest.precision or {}).get("decoder", "float32") != "float32":
        raise UserError(f"the reference {reference} is a {ref_manifest.precision['decoder']} bundle: pass the "
                        "float32 bundle as --reference")
    for name, path in candidates.items():
        m = load_manifest(path)
        if m.probe_layers != ref_manifest.probe_layers or m.model_id != ref_manifest.model_id:
            raise UserError(f"{name} ({path}) was made from another model or probe layers than the reference "
                            f"{reference}: compare bundles quantized from the reference (rlivs calibrate quantize)")
    lam = calib.pipeline["retrieval"]["mmr_lambda"]
    ref_run = _run(reference, calib, cfg)
    rows = [{"precision": "fp32", "bundle": str(reference), "decoder_mb": round(_bytes(reference, "decoder.onnx") / 1e6, 3),
             **compare(ref_run, ref_run, cfg.retrieval_k, lam)}]
    for name, path in candidates.items():
        m = load_manifest(path)
        run = _run(Path(path), calib, cfg)
        rows.append({"precision": name, "bundle": str(path), "decoder_mb": round(_bytes(Path(path), "decoder.onnx") / 1e6, 3),
                     "quantization": {k: (m.precision or {}).get(k) for k in ("decoder", "format", "weights", "activations", "tool")},
                     **compare(ref_run, run, cfg.retrieval_k, lam)})
    pc = calib.pipeline
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": command,
        "model_id": ref_manifest.model_id, "probe_layers": ref_manifest.probe_layers,
        "calibration_set": calib.sha256, "heldout_clips": len(calib.split("heldout")),
        "pipeline": {"fps": pc["clip"]["fps"], "frames_per_clip": pc["clip"]["frames_per_clip"],
                     "keep_ratio": pc["selection"]["keep_ratio"], "keep": pc["selection"]["keep"],
                     "fifo_clips": pc["fifo"]["capacity_clips"], "max_caption_tokens": pc["caption"]["max_new_tokens"]},
        "threads": cfg.threads, "reference_export_check": ref_manifest.extra.get("export_check"),
        "rows": rows,
    }


def _fmt(v, digits=3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown(report: dict, title: str | None = None) -> str:
    """The report as a Markdown table, with the command that made it."""
    lines = []
    if title:
        lines.append(f"**{title}**\n")
    p = report["pipeline"]
    lines.append(f"Model `{report['model_id']}`, probe layers {report['probe_layers']}, {report['heldout_clips']} held-out "
                 f"clips ({p['frames_per_clip']} frames at {p['fps']} fps, keep ratio {p['keep_ratio']}, FIFO "
                 f"{p['fifo_clips']} clips, ≤ {p['max_caption_tokens']} caption tokens), ONNX Runtime CPU, "
                 f"{report['threads']} threads; calibration set `{report['calibration_set'][:12]}`.\n")
    lines.append("| precision | decoder MB | selected-token overlap (mean / min) | caption token agreement | identical "
                 "captions | retrieval agreement (k) | vision ms | prefill ms | decode ms/token | clip s | peak RSS MB |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in report["rows"]:
        lines.append(
            f"| {r['precision']}{' (reference)' if r['precision'] == 'fp32' else ''} | {_fmt(r['decoder_mb'], 2)} | "
            f"{_fmt(r['selected_overlap'])} / {_fmt(r['selected_overlap_min'])} | {_fmt(r['caption_token_agreement'])} | "
            f"{_fmt(r['caption_identical'], 2)} | {_fmt(r['retrieval_agreement'])} ({r['retrieval_k']}) | "
            f"{_fmt(r['vision_ms'], 1)} | {_fmt(r['prefill_ms'], 1)} | {_fmt(r['decode_ms_per_token'], 2)} | "
            f"{_fmt(r['clip_s'], 3)} | {_fmt(r['peak_rss_mb'], 0)} |")
    if report.get("command"):
        lines.append(f"\nMade by: `{report['command']}` ({report['created']}).")
    return "\n".join(lines) + "\n"


def update_doc(doc: str | Path, section: str, text: str) -> None:
    """Put `text` between this section's markers in `doc` (appended, with markers, when they are absent)."""
    doc = Path(doc)
    start, end = f"<!-- {MARK}:{section} -->", f"<!-- /{MARK}:{section} -->"
    body = doc.read_text() if doc.exists() else ""
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in body and end in body:
        head, rest = body.split(start, 1)
        _, tail = rest.split(end, 1)
        body = head + block + tail
    else:
        body = body.rstrip() + ("\n\n" if body else "") + block + "\n"
    doc.write_text(body)


def write_report(report: dict, json_path: str | Path, md_path: str | Path | None = None, title: str | None = None) -> str:
    """Write the JSON (and Markdown) report; returns the Markdown."""
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(json.dumps(report, indent=2))
    md = markdown(report, title)
    if md_path:
        Path(md_path).write_text(md)
    return md
