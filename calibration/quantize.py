"""Quantized bundles from a float32 bundle and a calibration set.

  int8 (tool ort)       onnxruntime.quantization.quantize_static: QDQ, int8 weights per output channel, int8
                        activations whose ranges come from the calibration set's real decoder inputs (each clip's
                        prefill context, FIFO included, and its first decode steps with their KV caches).
  int4 (tool ort)       onnxruntime.quantization MatMulNBitsQuantizer: weight-only, block-wise, round-to-nearest
                        (data-free: the calibration set is not needed for the weights).
  int8 / int4 (modelopt) NVIDIA ModelOpt's ONNX PTQ (the TensorRT path's quantizer): int8 QDQ with max calibration,
                        or int4 weight-only AWQ-lite calibrated on fixed-length chunks of the contexts.

In every case the probe layers' attention path stays float32: the explicit score MatMul -> Softmax -> head mean
of the probe row, the fused Attention op (never quantized), and by default the probe layers' q/k projections
(`keep_probe_qk`). Nodes are found by the torch module scopes the exporter writes into the graph
(`lm.layers.<i>.self_attn[.q_proj|.k_proj]`).

A quantized bundle is a copy of the float32 bundle with decoder.onnx replaced; its manifest records the
precision, tool, calibration set hash, the float32 nodes, and a check against the float32 decoder. Activation
ranges (int8) are cached as JSON under CALIB/cache/, keyed by the source decoder, the set and the settings, and
reused when present.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Iterator

import numpy as np

from rlivs.export.graph import graph_io, node_module
from rlivs.runtime.backends.bundle import MANIFEST, Manifest, deepstack_feed, load_manifest, step_positions

from .config import QuantizeConfig
from .dataset import CalibrationSet
from rlivs.runtime.errors import UserError

log = logging.getLogger("rlivs.calibration")

_PARTIAL = ".rlivs-partial"
_ATTN = re.compile(r"^lm\.layers\.(\d+)\.self_attn(?:\.(\w+))?$")


# ---------------------------------------------------------------------------------------------------------------------
# Which nodes stay float32
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class FloatNodes:
    probe_path: list[str]  # score MatMul, Softmax, head mean, rotary... of the probe layers' attention
    probe_qk: list[str]  # q/k projections of the probe layers (float32 when keep_probe_qk)
    lm_head: list[str]  # the LM head's nodes (float32 when quantize_lm_head is off)
    attention: list[str] = field(default_factory=list)  # the other layers' attention core (score and value MatMuls,
    #   mask, Softmax at opset 20): float32 as opset 23's fused Attention op is; only the projections are quantized

    def excluded(self, cfg: QuantizeConfig) -> list[str]:
        return (self.probe_path + self.attention + (self.probe_qk if cfg.keep_probe_qk else [])
                + ([] if cfg.quantize_lm_head else self.lm_head))


def float_nodes(model, probe_layers) -> FloatNodes:
    """Classify the decoder's nodes by the module they came from. ValueError when the graph has no scopes."""
    probe = set(int(i) for i in probe_layers)
    out = FloatNodes([], [], [])
    seen_scope = False
    softmax = {i: 0 for i in probe}  # Softmax nodes per probe layer (1 with fused attention, 2 with plain)
    for n in model.graph.node:
        mod = node_module(n)
        seen_scope |= mod is not None
        if mod is None:
            continue
        if mod.startswith("lm_head"):
            out.lm_head.append(n.name)
            continue
        m = _ATTN.match(mod)
        if m and int(m[1]) not in probe and m[2] is None:  # a non-probe layer's attention core
            out.attention.append(n.name)
        if not m or int(m[1]) not in probe:
            continue
        if m[2] is None:  # directly in self_attn: rotary, Attention op, the probe row's MatMul/Softmax/mean
            out.probe_path.append(n.name)
            softmax[int(m[1])] += n.op_type == "Softmax"
        elif m[2] in ("q_proj", "k_proj"):
            out.probe_qk.append(n.name)
    if not seen_scope:
        raise UserError("decoder.onnx carries no torch module scopes, so the probe layers' nodes cannot be found: "
                        "re-export the bundle with this rlivs (rlivs export)")
    if not all(softmax.values()):
        raise UserError(f"no probe Softmax found in probe layers {[i for i, c in softmax.items() if not c]} of "
                        "decoder.onnx: the manifest and the graph disagree; re-export the bundle")
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Calibration feeds: the decoder's real inputs on the calibration clips
# ---------------------------------------------------------------------------------------------------------------------


try:  # the reader is an onnxruntime CalibrationDataReader (ModelOpt takes the same interface)
    from onnxruntime.quantization import CalibrationDataReader as _ReaderBase
except ImportError:  # pragma: no cover - onnxruntime is required for quantization anyway
    _ReaderBase = object


class DecoderFeeds(_ReaderBase):
    """Decoder input dicts for each calibration clip, computed lazily with the float32 bundle.

    mode "steps": the prefill (1, S, D) with an empty past, then up to `decode_steps` fed caption tokens
    (1, 1, D) with the past KV the float32 decoder produced. mode "chunks": `n_chunks` feeds of `chunk` tokens
    at evenly spaced offsets o of the context, with the float32 prefill's KV before o as the past (what a
    chunked prefill would see; all feeds have one length, as AWQ needs).
    """

    def __init__(self, engine, calib: CalibrationSet, split: str = "calib", mode: str = "steps",
                 decode_steps: int = 3, chunk: int = 32, n_chunks: int = 4):
        if mode not in ("steps", "chunks"):
            raise UserError(f"mode must be steps or chunks, got {mode!r}")
        self.engine, self.calib, self.mode = engine, calib, mode
        self.items = calib.split(split)
        if not self.items:
            raise UserError(f"the calibration set {calib.path} has no {split!r} clips: re-collect with --clips >= 1")
        self.decode_steps, self.chunk, self.n_chunks = decode_steps, chunk, n_chunks
        self._first = None
        self.rewind()

    def __len__(self) -> int:
        if self.mode == "chunks":
            return len(self.items) * self.n_chunks
        return sum(1 + min(self.decode_steps, len(it.fed_ids())) for it in self.items)

    def rewind(self) -> None:
        self._it = self._feeds()

    def get_next(self) -> dict | None:
        return next(self._it, None)

    def get_first(self) -> dict:
        if self._first is None:
            self._first = next(self._feeds())
        return self._first

    def _feeds(self) -> Iterator[dict]:
        """The decoder's inputs as the backend's own steps feed them: position ids (1, L), or (3, L) M-RoPE ids
        from the set (Qwen-VL; a fed caption token continues after the prompt's maximum), and for a DeepStack
        decoder (Qwen3-VL) the visual rows of the input with their (K, n, D) features (none at decode steps)."""
        be = self.engine.backend
        empty = be.past_feed(be.new_state())  # zero-length past in the bundle's cache layout
        for it in self.items:
            ctx, _, positions, deep = self.calib.prefill(self.engine, it)  # (S, D), ...
            s = len(ctx)
            state = be.new_state()
            pos, _ = step_positions(be.backbone, 0, 0, s, positions)  # (1, S) or (3, S)
            if self.mode == "steps":
                yield {"inputs_embeds": ctx[None], "position_ids": pos, **self._deep(deep, 0, s), **empty}
                be.step(ctx, state, probe_rows=0, positions=positions, deepstack=deep)
                for tok in it.fed_ids()[: self.decode_steps]:
                    x = be.embed_tokens(np.array([tok]))  # (1, D)
                    p, _ = step_positions(be.backbone, state.length, state.rope_delta, 1, None)
                    yield {"inputs_embeds": x[None], "position_ids": p, **self._deep(None, 0, 1), **be.past_feed(state)}
                    be.step(x, state, probe_rows=0)
            else:
                be.step(ctx, state, probe_rows=0, positions=positions, deepstack=deep)
                c = min(self.chunk, s)
                for o in np.linspace(0, s - c, self.n_chunks).round().astype(int):
                    yield {"inputs_embeds": ctx[None, o: o + c], "position_ids": np.ascontiguousarray(pos[:, o: o + c]),
                           **self._deep(deep, o, c), **be.past_feed(state, upto=o)}

    def _deep(self, deep, o: int, n: int) -> dict:
        """A DeepStack decoder's visual_rows / deepstack inputs for input rows [o, o + n) ({} for other decoders)."""
        be = self.engine.backend
        maps = getattr(be, "deepstack_maps", 0)
        rows, feats = deepstack_feed(deep, maps, be.info.hidden_size, be.bundle, be.backbone.label)
        if rows is None:
            return {}
        sel = (rows >= o) & (rows < o + n)
        return {"visual_rows": np.ascontiguousarray(rows[sel] - o), "deepstack": np.ascontiguousarray(feats[:, sel])}


# ---------------------------------------------------------------------------------------------------------------------
# The quantizers
# ---------------------------------------------------------------------------------------------------------------------


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.parent.glob(path.name + "*")):  # decoder.onnx and its external data
        h.update(p.name.encode())
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def _is_large(path: Path) -> bool:
    return any(p != path for p in path.parent.glob(path.name + "*"))


class _quiet_root(logging.Filter):
    """Drop root-logger records containing `text` while active (a context manager)."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()

    def __enter__(self):
        logging.getLogger().addFilter(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger().removeFilter(self)


def _ort_int8(src: Path, dst: Path, reader: DecoderFeeds, excluded: list[str], cfg: QuantizeConfig,
              cache: Path) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if "modelopt.onnx.quantization.ort_patching" in sys.modules:
        raise UserError("NVIDIA ModelOpt has patched onnxruntime.quantization in this process (it does so when it "
                        "quantizes), which breaks --tool ort: run the ort quantization in a fresh process")
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.calibrate_method]
    ops = ["MatMul", "Gemm"]
    reused = cache.is_file()
    qdq = cfg.format == "qdq"
    fmt = QuantFormat.QDQ if qdq else QuantFormat.QOperator
    act = QuantType.QInt8 if qdq else QuantType.QUInt8  # U8S8 is what ORT's x64 QLinearMatMul kernels want
    with _quiet_root("pre-process"):  # ORT's "please consider pre-processing" nag goes to the root logger
        quantize_static(
            str(src), str(dst), reader if not reused else None, quant_format=fmt, op_types_to_quantize=ops,
            per_channel=cfg.per_channel, activation_type=act, weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded, calibrate_method=method, use_external_data_format=_is_large(src),
            extra_options={"MatMulConstBOnly": True},  # per feed the calibrator keeps scalars (ReduceMin/Max)
            calibration_cache_path=str(cache))
    rewired = float_inputs(dst, excluded)
    return {"format": "QDQ" if qdq else "QOperator (QLinearMatMul)",
            "weights": "int8 symmetric, " + ("per output channel" if cfg.per_channel else "per tensor"),
            "activations": f"{'int8' if qdq else 'uint8'}, {cfg.calibrate_method} ranges", "op_types": ops,
            "calibration_cache": str(cache), "calibration_cache_reused": reused, "float_inputs_restored": rewired,
            "tool": f"onnxruntime.quantization {metadata.version('onnxruntime')}"}


def float_inputs(path: Path, nodes: list[str]) -> int:
    """Feed the float32 `nodes` their float inputs again where a quantizer routed them through Q -> DQ.

    A tensor shared by a quantized node and a float32 one (a probe layer's RMSNorm output feeds its float32 q/k
    projections and its quantized v projection) gets one Q -> DQ pair for all its consumers; the float32 nodes are
    pointed back at the tensor itself. Returns the inputs rewired.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    prod = {o: n for n in model.graph.node for o in n.output}
    keep = set(nodes)
    n_rewired = 0
    for node in model.graph.node:
        if node.name not in keep:
            continue
        for i, name in enumerate(node.input):
            dq = prod.get(name)
            q = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
                n_rewired += 1
    if n_rewired:
        onnx.save(model, str(path))  # initializers keep their external-data references
    return n_rewired


def _ort_int4(src: Path, dst: Path, excluded: list[str], cfg: QuantizeConfig) -> dict:
    import onnx
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(onnx.load(str(src)), bits=4, block_size=cfg.block_size, is_symmetric=cfg.symmetric,
                             nodes_to_exclude=excluded, quant_format=QuantFormat.QOperator,
                             op_types_to_quantize=("MatMul",))
    q.process()
    q.model.save_model_to_file(str(dst), use_external_data_format=_is_large(src))
    return {"format": "MatMulNBits (com.microsoft)", "weights": f"int4 {'symmetric' if cfg.symmetric else 'asymmetric'}, "
            f"blocks of {cfg.block_size}, round-to-nearest", "activations": "float32", "op_types": ["MatMul"],
            "tool": f"onnxruntime.quantization {metadata.version('onnxruntime')}"}


def _modelopt(src: Path, dst: Path, reader: DecoderFeeds, excluded: list[str], cfg: QuantizeConfig,
              gemm_nodes: list[str]) -> dict:
    try:
        from modelopt.onnx.quantization import quantize as mo_quantize
    except ImportError as e:
        raise UserError(f"tool modelopt needs NVIDIA ModelOpt ({e}); see docs/calibration.md for installing it "
                        "next to the CPU onnxruntime, or use --tool ort") from e
    exclude = [f"^{re.escape(n)}$" for n in excluded]
    if cfg.precision == "int4":  # ModelOpt's blocked int4 DQ on a Gemm does not load in ORT: keep the LM head float
        exclude += [f"^{re.escape(n)}$" for n in gemm_nodes]
    mo_quantize(str(src), quantize_mode=cfg.precision, calibration_data_reader=reader,
                calibration_method="max" if cfg.precision == "int8" else "awq_lite",
                calibration_eps=["cpu"], op_types_to_quantize=["MatMul", "Gemm"] if cfg.precision == "int8" else ["MatMul"],
                nodes_to_exclude=exclude, output_path=str(dst), high_precision_dtype="fp32",
                use_external_data_format=_is_large(src), log_level="WARNING", disable_mha_qdq=not cfg.mha_int8,
                **({"block_size": cfg.block_size} if cfg.precision == "int4" else {}))
    rewired = float_inputs(dst, excluded)
    return {"format": "QDQ (ModelOpt)", "float_inputs_restored": rewired, "weights": "int8 per channel" if cfg.precision == "int8"
            else f"int4 blocks of {cfg.block_size}, AWQ-lite", "activations": "int8, max ranges"
            if cfg.precision == "int8" else "float32", "tool": f"nvidia-modelopt {metadata.version('nvidia-modelopt')}"}


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def quantize_bundle(bundle: str | Path, calib: CalibrationSet, out: str | Path, config: QuantizeConfig | None = None,
                    threads: int | None = None) -> Manifest:
    """Write `out`: the float32 `bundle` with its decoder quantized as `config` says. Returns the new manifest."""
    import onnx

    from rlivs.runtime.config import EngineConfig
    from rlivs.runtime.engine import load_engine

    cfg = config or QuantizeConfig()
    bundle, out = Path(bundle), Path(out)
    src_manifest = load_manifest(bundle)
    if (src_manifest.precision or {}).get("decoder", "float32") != "float32":
        raise UserError(f"{bundle} is already quantized ({src_manifest.precision['decoder']}): quantize the "
                        "float32 bundle that rlivs export wrote")
    if out.resolve() == bundle.resolve():
        raise UserError("--out must be a new directory, not the float32 bundle itself")
    if out.exists() and any(out.iterdir()) and not ((out / MANIFEST).exists() or (out / _PARTIAL).exists()):
        raise UserError(f"{out} exists and is not an rlivs bundle: choose an empty or new --out directory")
    engine = load_engine(EngineConfig(model=str(bundle), backend="onnxruntime", threads=threads), calib.pipeline_config())
    calib.check_engine(engine)
    src = bundle / "decoder.onnx"
    graph = onnx.load(str(src), load_external_data=False)
    fl = float_nodes(graph, src_manifest.probe_layers)
    excluded = fl.excluded(cfg)
    gemm = [n.name for n in graph.graph.node if n.op_type == "Gemm"]
    del graph

    out.mkdir(parents=True, exist_ok=True)
    (out / _PARTIAL).touch()  # marks a bundle being written by us: a failed run can be repeated into it
    (out / MANIFEST).unlink(missing_ok=True)  # the bundle is valid only once its manifest is written, last
    for f in bundle.iterdir():
        if f.is_file() and not f.name.startswith(("decoder.onnx", ".")) and f.name != MANIFEST:
            (out / f.name).unlink(missing_ok=True)
            _link_or_copy(f, out / f.name)
    for f in out.glob("decoder.onnx*"):
        f.unlink()
    dst = out / "decoder.onnx"
    t0 = time.perf_counter()
    src_sha = _file_sha256(src)
    if cfg.tool == "ort" and cfg.precision == "int8":
        key = hashlib.sha256(json.dumps([src_sha, calib.sha256, cfg.calibrate_method, cfg.decode_steps,
                                         sorted(excluded)]).encode()).hexdigest()[:16]
        reader = DecoderFeeds(engine, calib, decode_steps=cfg.decode_steps)
        how = _ort_int8(src, dst, reader, excluded, cfg, calib.cache_dir() / f"ort-int8-ranges-{key}.json")
    elif cfg.tool == "ort":
        how = _ort_int4(src, dst, excluded, cfg)
    else:
        reader = (DecoderFeeds(engine, calib, decode_steps=cfg.decode_steps) if cfg.precision == "int8" else
                  DecoderFeeds(engine, calib, mode="chunks", chunk=cfg.awq_chunk, n_chunks=cfg.awq_chunks_per_clip))
        how = _modelopt(src, dst, reader, excluded, cfg, gemm)
    seconds = time.perf_counter() - t0
    onnx.checker.check_model(str(dst))

    precision = {
        "decoder": cfg.precision, "vision": "float32", **how, "config": cfg.to_dict(),
        "float_nodes": {"probe_path": len(fl.probe_path), "probe_qk": len(fl.probe_qk) if cfg.keep_probe_qk else 0,
                        "lm_head": 0 if cfg.quantize_lm_head else len(fl.lm_head), "names": excluded},
        "calibration_set": calib.sha256, "source_bundle": str(bundle.resolve()), "source_decoder_sha256": src_sha,
        "seconds": round(seconds, 3),
        "decoder_bytes": sum(p.stat().st_size for p in out.glob("decoder.onnx*")),
        "source_decoder_bytes": sum(p.stat().st_size for p in bundle.glob("decoder.onnx*")),
    }
    precision["check"] = decoder_check(bundle, out, DecoderFeeds(engine, calib, decode_steps=1), threads)
    manifest = src_manifest.with_(graphs={**src_manifest.graphs, "decoder": graph_io(dst)}, precision=precision)
    manifest.save(out)
    (out / _PARTIAL).unlink()
    log.info("%s decoder written to %s in %.1f s (%s); check vs float32: %s", cfg.precision, out, seconds, how["tool"],
             precision["check"])
    return manifest


def decoder_check(ref_bundle: Path, bundle: Path, feeds: DecoderFeeds, threads: int | None = None,
                  max_feeds: int = 4) -> dict:
    """Max |quantized - float32| of logits and probe rows over the first calibration feeds, with the logit scale."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    a = ort.InferenceSession(str(ref_bundle / "decoder.onnx"), opts, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(bundle / "decoder.onnx"), opts, providers=["CPUExecutionProvider"])
    worst = {"logits": 0.0, "probe_attn": 0.0, "logit_scale": 0.0, "argmax_agree": 0, "feeds": 0}
    names = ["logits", "probe_attn"]
    for i, feed in enumerate(feeds._feeds()):
        if i >= max_feeds:
            break
        (la, pa), (lb, pb) = a.run(names, feed), b.run(names, feed)
        worst["logits"] = max(worst["logits"], float(np.abs(la - lb).max()))
        worst["probe_attn"] = max(worst["probe_attn"], float(np.abs(pa - pb).max()))
        worst["logit_scale"] = max(worst["logit_scale"], float(np.abs(la).max()))
        worst["argmax_agree"] += int(np.argmax(la) == np.argmax(lb))
        worst["feeds"] += 1
    return worst
