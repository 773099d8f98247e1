"""`rlivs build-engines`: TensorRT engines from a TensorRT-target bundle, built on the device that runs them.

Order: parse ONNX -> configure -> build -> inspect -> write.

  parse       TensorRT's ONNX parser reads BUNDLE/vision.onnx and decoder.onnx (external weights beside them).
  configure   FP16 kernels (or fp32 with TF32 off); the probe rows' score path (probe_row_nodes: score
              MatMul, scale, mask, Softmax, head mean) pinned to fp32 with layer precision +
              OBEY_PRECISION_CONSTRAINTS; the workspace limit and optimization level; DETAILED profiling
              verbosity (the inspector's layer list); the timing cache; one optimization profile per shape regime:
                vision   0 "frames"   pixel_values (F, 3, H, W), F in [1, max_frames], opt frames_per_clip
                                      (Qwen2.5-VL: (2*groups, 3, H, W), groups in [1, max_frames / 2])
                decoder  0 "prefill"  inputs_embeds (1, L, D), position_ids (1, L) (M-RoPE: (3, L)), past_kv (P, N, 2, H_kv, Dh):
                                      L in [1, K_max] (opt FIFO window + clip + prompt), P in [0, K_max - 1] (opt 0)
                         1 "decode"   L = 1, P in [0, K_max - 1] (opt the steady-state caption past)
                         DeepStack (Qwen3-VL): visual_rows (n,), deepstack (K, n, D): n in [0, K_max] (opt FIFO +
                                      clip) at prefill, n = 0 at decode (empty tensors: nothing is added)
              (the runtime picks the profile by L). Shapes come from the manifest's graph inputs: the symbolic
              dims `seq`, `past` and `frames` (or `groups`) get the profile's values, fixed dims stay.
  build       IBuilder.build_serialized_network, once per graph; the timing cache is shared and saved after each.
  inspect     the engine inspector's JSON layer list -> BUNDLE/<graph>.layers.json; every engine input/output
              logged with name, shape and dtype; the fusion report: in each decoder layer and profile, did the
              attention Softmax end up in one engine layer with its value MatMul (fused attention), or alone?
  write       BUNDLE/vision.engine, decoder.engine, and manifest.json["tensorrt_engines"]
              (runtime/backends/tensorrt/engine_entry.py): TensorRT version, GPU, compute capability, precision,
              profiles, bundle digest. The TensorRT backend refuses engines built elsewhere or for another export.

tensorrt is imported only inside build_engines: everything else here (profiles, the fusion report) runs without it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlivs.runtime.backends.bundle import MAX_BATCH, Manifest, load_manifest
from rlivs.runtime.backends.tensorrt import compat
from rlivs.runtime.backends.tensorrt.engine_entry import (
    ENTRY_SCHEMA, bundle_digest, cuda_device, write_engine_entry,
)
from rlivs.runtime.config import PipelineConfig
from rlivs.runtime.errors import UserError

log = logging.getLogger("rlivs.export")

TENSORRT_MISSING = ("TensorRT is not installed: it comes with JetPack on a Jetson (python3 -c 'import tensorrt'); on "
                    "x86 install the tensorrt wheel from NVIDIA's index; build engines on the device that will run them")
PRECISIONS = ("fp16", "fp32")
DEFAULT_MAX_BATCH = 8  # sequences per batched decoder step when --max-batch is not given (a batch-capable bundle)
ENGINE_FILES = {"vision": "vision.engine", "decoder": "decoder.engine"}
LAYER_FILES = {"vision": "vision.layers.json", "decoder": "decoder.layers.json"}
TIMING_CACHE = "timing.cache"
PROFILE_NAMES = {"vision": ("frames",), "decoder": ("prefill", "decode")}


@dataclass
class EngineBuildConfig:
    precision: str = "fp16"  # fp16 (default): FP16 kernels, the probe layers' score path kept fp32 | fp32: all fp32
    max_context: int | None = None  # K_max, the decoder cache positions the profiles accept (default: the bundle's
    #                                 kv_cache.max_context, the arena the runtime allocates; may only be lowered)
    max_frames: int | None = None  # most frames per vision call (default: the pipeline's frames_per_clip)
    timing_cache: Path | None = None  # tactic timing cache, loaded if present, saved after each build
    #                                   (default: BUNDLE/timing.cache)
    workspace_mib: int = 2048  # TensorRT's workspace memory pool limit, MiB (Jetson memory is shared with the CPU)
    builder_optimization_level: int = 3  # 0..5: TensorRT's default is 3; higher searches longer for faster kernels
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)  # FIFO, clip and caption sizes to size for
    prompt_tokens: int = 64  # allowance for the chat template and prompt text around the video tokens
    verbose: bool = False  # pass TensorRT's VERBOSE messages to the debug log
    max_batch: int | None = None  # most sequences per batched decoder step (--max-batch; default 8 for a bundle
    #                                exported with --batch; a bundle without a batch axis takes only 1)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise UserError(f"precision must be fp16 or fp32, got {self.precision!r}: use --precision fp16")
        if self.max_context is not None and self.max_context < 2:
            raise UserError(f"max_context must be >= 2 cache positions, got {self.max_context}; e.g. --max-context 8192")
        if self.max_frames is not None and self.max_frames < 1:
            raise UserError(f"max_frames must be >= 1, got {self.max_frames}; e.g. --max-frames 16")
        if self.workspace_mib < 64:
            raise UserError(f"the workspace limit must be >= 64 MiB, got {self.workspace_mib}")
        if not 0 <= self.builder_optimization_level <= 5:
            raise UserError(f"builder_optimization_level must be 0..5, got {self.builder_optimization_level}")
        if self.max_batch is not None and not 1 <= self.max_batch <= MAX_BATCH:
            raise UserError(f"max_batch must be 1..{MAX_BATCH} sequences, got {self.max_batch}; e.g. --max-batch 8")
        if self.prompt_tokens < 0:
            raise UserError(f"prompt_tokens must be >= 0, got {self.prompt_tokens}")


# ---------------------------------------------------------------------------------------------------------------------
# Profiles (no TensorRT needed)
# ---------------------------------------------------------------------------------------------------------------------


def context_budget(tokens_per_frame: int, pipeline: PipelineConfig, prompt_tokens: int = 64,
                   temporal_patch: int = 1) -> dict:
    """Positions the decoder sees under `pipeline`: a caption prefill is [prompt][FIFO][clip][newline][prompt],
    then up to max_new_tokens caption tokens; an answer is retrieved captions (token_budget) + prompt + answer.
    tokens_per_frame is per token group of `temporal_patch` frames (Qwen2.5-VL: 2)."""
    clip = -(-pipeline.clip.frames_per_clip // temporal_patch) * tokens_per_frame  # visual tokens of one full clip
    keep = pipeline.selection.n_keep(clip)  # tokens a clip leaves in the FIFO
    cap_c, cap_t = pipeline.fifo.capacity_clips, pipeline.fifo.capacity_tokens
    if cap_c is None and cap_t is None:
        raise UserError("the pipeline's FIFO is unbounded (no capacity in clips or tokens), so the context the engines "
                        "must hold cannot be derived: give it a capacity (FifoConfig capacity_clips or capacity_tokens)")
    fifo = min(x for x in (None if cap_c is None else cap_c * keep, cap_t) if x is not None)
    prefill = prompt_tokens + fifo + clip + 1  # + 1: the image newline after the clip
    caption = prefill + pipeline.caption.max_new_tokens
    answer = pipeline.retrieval.token_budget + prompt_tokens + pipeline.answer.max_new_tokens
    return {"clip_tokens": clip, "kept_per_clip": keep, "fifo_tokens": fifo, "prompt_tokens": prompt_tokens,
            "prefill_tokens": prefill, "caption_context": caption, "answer_context": answer,
            "needed": max(caption, answer)}


def _shape(shape: list, dims: dict, which: int, graph: str, name: str) -> list[int]:
    out = []
    for d in shape:
        k, _, sym = d.partition("*") if isinstance(d, str) and "*" in d else ("1", "", d)  # "2*groups": 2 x groups
        if isinstance(d, int):
            out.append(d)
        elif sym in dims and k.isdigit():
            out.append(int(k) * int(dims[sym][which]))
        else:
            raise UserError(f"{graph} input {name} has a dynamic dimension {d!r} that no profile sets (known: "
                            f"{', '.join(dims)}): the bundle is from another rlivs; re-export it with rlivs export "
                            f"--target tensorrt")
    return out


def _profile(graph: str, index: int, name: str, dims: dict, inputs: list[dict]) -> dict:
    shapes = {i["name"]: {k: _shape(i["shape"], dims, j, graph, i["name"]) for j, k in enumerate(("min", "opt", "max"))}
              for i in inputs}
    return {"name": name, "index": index, "dims": {k: list(v) for k, v in dims.items()}, "shapes": shapes}


def profile_specs(manifest: Manifest, config: EngineBuildConfig | None = None) -> dict:
    """The optimization profiles for a TensorRT-target bundle's manifest. ValueError for any other bundle.

    -> {"max_context", "max_frames", "budget", "vision": [profile], "decoder": [prefill, decode]}; a profile is
    {"name", "index", "dims": {symbol: [min, opt, max]}, "shapes": {input: {"min", "opt", "max"}}}.
    """
    cfg = config or EngineBuildConfig()
    if manifest.target != "tensorrt":
        raise UserError(f"this bundle was exported for {manifest.target}, not TensorRT: re-export "
                        f"with rlivs export --target tensorrt")
    kv = manifest.kv_cache or {}
    arena = int(kv.get("max_context") or 0)
    if kv.get("layout") != "arena" or arena < 2:
        raise UserError("this bundle's decoder has no in-place (arena) KV cache with a max_context: it is from an "
                        "older rlivs; re-export with rlivs export --target tensorrt")
    k_max = cfg.max_context or arena
    if k_max > arena:
        raise UserError(f"--max-context {k_max} is larger than the bundle's KV cache ({arena} positions, the arena "
                        f"the runtime allocates): re-export with rlivs export --target tensorrt --max-context {k_max}, "
                        f"or build with --max-context <= {arena}")
    tp = int(manifest.temporal_patch or 1)  # frames per token group (Qwen2.5-VL: 2)
    budget = context_budget(int(manifest.tokens_per_frame), cfg.pipeline, cfg.prompt_tokens, tp)
    budget["fits"] = budget["needed"] <= k_max
    if not budget["fits"]:
        log.warning("the pipeline defaults need up to %d cache positions (caption %d, answer %d) but the engines will "
                    "accept %d: long contexts will be refused at run time", budget["needed"], budget["caption_context"],
                    budget["answer_context"], k_max)
    frames = cfg.max_frames or cfg.pipeline.clip.frames_per_clip
    if frames % tp:
        raise UserError(f"this bundle's vision graph takes whole temporal patches of {tp} frames: --max-frames must "
                        f"be a multiple of {tp}, got {frames}; use --max-frames {frames + tp - frames % tp}")
    graphs = manifest.graphs
    prefill_opt = min(budget["prefill_tokens"], k_max)  # steady state: a full FIFO + one clip + the prompt
    decode_opt = min(budget["prefill_tokens"] + cfg.pipeline.caption.max_new_tokens // 2, k_max - 1)
    dec_in = graphs["decoder"]["inputs"]  # inputs_embeds (1, seq, D), position_ids (1, seq),
    #                                       past_kv (past, N, 2, H_kv, Dh); batched (--batch): inputs_embeds
    #                                       (batch, seq, D), past_kv (past, batch, N, 2, H_kv, Dh), past_valid, new_valid
    vis_in = graphs["vision"]["inputs"]  # pixel_values (frames, 3, H, W)
    opt_frames = min(cfg.pipeline.clip.frames_per_clip, frames)
    # pixel_values (frames, 3, H, W); Qwen2.5-VL: (2*groups, 3, H, W), the profile then ranges over groups
    vision_dims = {"groups": (1, -(-opt_frames // tp), frames // tp)} if tp > 1 else {"frames": (1, opt_frames, frames)}
    deep = ({"visual": (0, min(budget["fifo_tokens"] + budget["clip_tokens"], k_max), k_max)}, {"visual": (0, 0, 0)}) \
        if any("visual" in i["shape"] for i in dec_in) else ({}, {})  # DeepStack rows: prefill, decode
    batched = any("batch" in i["shape"] for i in dec_in)
    if not batched and (cfg.max_batch or 1) > 1:
        raise UserError(f"--max-batch {cfg.max_batch}: this bundle's decoder has no batch axis (it steps one sequence "
                        f"at a time): re-export with rlivs export --target tensorrt --batch, or leave --max-batch out")
    b_max = (cfg.max_batch or DEFAULT_MAX_BATCH) if batched else 1
    # batch range per profile: a prefill runs alone or a few at once (opt 1), a decode step batches every camera's
    # caption (opt = max); the runtime sizes its I/O buffers for b_max
    prefill_b, decode_b = ({"batch": (1, 1, b_max)}, {"batch": (1, b_max, b_max)}) if batched else ({}, {})
    return {
        "max_context": k_max, "max_frames": frames, "budget": budget, "max_batch": b_max,
        "vision": [_profile("vision.onnx", 0, "frames", vision_dims, vis_in)],
        "decoder": [  # (min, opt, max) of L = seq and P = past
            _profile("decoder.onnx", 0, "prefill", {"seq": (1, prefill_opt, k_max), "past": (0, 0, k_max - 1),
                                                    **prefill_b, **deep[0]}, dec_in),
            _profile("decoder.onnx", 1, "decode", {"seq": (1, 1, 1), "past": (0, decode_opt, k_max - 1), **decode_b,
                                                   **deep[1]}, dec_in),
        ],
    }


# ---------------------------------------------------------------------------------------------------------------------
# The decoder's attention nodes and the fusion report (no TensorRT needed)
# ---------------------------------------------------------------------------------------------------------------------

_LAYER_SCOPE = re.compile(r"^lm\.layers\.(\d+)\.self_attn")
_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^|\]\x1e\x1f]+?)\s*(?:\|[^\]]*)?\]")  # layer Metadata, one per source node
_PROFILE_SUFFIX = re.compile(r"\[profile +(\d+)\]")  # layers of profile N >= 1 carry it; profile 0's do not
_MYELIN_SUFFIX = re.compile(r"_my[le]\d+(?:_\d+)?$")  # Myelin kernels: <node>_myl<region>_<k>


def probe_row_nodes(model, probe_layers) -> list[str]:
    """The nodes of the probe rows' score path, pinned to fp32: per probe layer, the last-row score MatMul, the
    scale, the mask Add, the Softmax and the head mean (ReduceMean). Only these: the probe layers' own attention
    keeps the fusable pattern (pinning it would materialise its (H, L, K) probabilities in fp32 at prefill)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    byname = {n.name: n for n in model.graph.node}
    out = []
    for a in attention_nodes(model, probe_layers):
        if a["role"] != "probe_row":
            continue
        softmax = byname[a["softmax"]]
        out += [softmax.name] + [u.name for u in consumers.get(softmax.output[0], []) if u.op_type == "ReduceMean"]
        node = producer.get(softmax.input[0])
        while node is not None and node.op_type in ("Add", "Mul", "Div", "MatMul"):
            out.append(node.name)
            if node.op_type == "MatMul":
                break
            node = producer.get(node.input[0])
        if node is None or node.op_type != "MatMul":
            raise UserError(f"decoder.onnx probe row {softmax.name} (layer {a['layer']}) is not MatMul -> scale -> mask "
                            f"-> Softmax: re-export the bundle with this rlivs (rlivs export --target tensorrt)")
    return out


def attention_nodes(model, probe_layers) -> list[dict]:
    """Every decoder layer's attention Softmax: [{"layer", "probe", "role", "softmax", "value_matmul"}].

    role "attention": Add(mask) -> Softmax -> MatMul(V), the pattern TensorRT fuses (value_matmul names that
    MatMul); "probe_row": a probe layer's last-row Softmax feeding the head mean (stays unfused by design).
    Layers come from the torch module scopes the exporter writes (as for calibration.quantize.float_nodes).
    """
    from .graph import node_module

    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    probe = {int(i) for i in probe_layers}
    out = []
    for n in g.node:
        if n.op_type != "Softmax":
            continue
        m = _LAYER_SCOPE.match(node_module(n) or "")
        if m is None:
            raise UserError(f"decoder.onnx Softmax {n.name} carries no decoder-layer scope, so the fusion report cannot "
                            f"place it: re-export the bundle with this rlivs (rlivs export --target tensorrt)")
        src, uses = producer.get(n.input[0]), consumers.get(n.output[0], [])
        if src is not None and src.op_type == "Add" and uses and all(u.op_type == "MatMul" for u in uses):
            role, value = "attention", uses[0].name
        elif any(u.op_type == "ReduceMean" for u in uses):
            role, value = "probe_row", None
        else:
            role, value = "other", None
        out.append({"layer": int(m[1]), "probe": int(m[1]) in probe, "role": role, "softmax": n.name,
                    "value_matmul": value})
    return out


def _mangle(name: str) -> str:
    """Myelin writes node names with '.' and '/' replaced; compare names in one form."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _engine_layers(info: dict) -> list[tuple[int, str, set[str], str]]:
    """(profile, name, the ONNX nodes it computes (mangled), LayerType) of each engine layer in inspector JSON.

    The nodes come from the layer's Metadata ("[ONNX Layer: <node>]" per source node) when it has any, else from
    its Name (node names joined by " + ", "PWN(...)", "||", "{ForeignNode[a...b]}", or "<node>_myl3_6")."""
    layers = info.get("Layers") if isinstance(info, dict) else None
    if not isinstance(layers, list):
        raise UserError("not engine-inspector JSON (no \"Layers\" list): save it with "
                        "IEngineInspector.get_engine_information(LayerInformationFormat.JSON)")
    out = []
    for layer in layers:
        name = layer if isinstance(layer, str) else str(layer.get("Name", ""))
        meta = "" if isinstance(layer, str) else str(layer.get("Metadata") or "")
        kind = "" if isinstance(layer, str) else str(layer.get("LayerType", ""))
        m = _PROFILE_SUFFIX.search(name)
        nodes = {s.strip() for s in _ONNX_LAYER.findall(meta)}
        if not nodes:
            for tok in re.split(r"\.\.\.|[\s+(),\[\]{}|\x1e\x1f]+", _PROFILE_SUFFIX.sub("", name)):
                if tok:
                    nodes |= {tok, _MYELIN_SUFFIX.sub("", tok)}
        out.append((int(m[1]) if m else 0, name, {_mangle(n) for n in nodes}, kind))
    return out


def _is_region(name: str, kind: str) -> bool:
    """A Myelin region listed as one layer (its kernels not shown)."""
    return kind.lower() == "myelin" or name.startswith("{ForeignNode[")


def fusion_report(info: dict | str, attention: list[dict], profiles=PROFILE_NAMES["decoder"]) -> dict:
    """Did each decoder layer's attention fuse, in each optimization profile of the engine?

    Written against the engine inspector's documented JSON (get_engine_information(LayerInformationFormat.JSON)
    with ProfilingVerbosity.DETAILED): {"Layers": [{"Name", "LayerType", "Metadata", "Inputs", "Outputs", ...}],
    "Bindings": [...]}. A layer's Metadata lists its source ONNX nodes ("[ONNX Layer: <node>]", joined by \\x1E
    when layers fused); layers of optimization profile N >= 1 end in "[profile N]". For each `attention` entry
    (attention_nodes' role "attention") and profile, the status is
      fused       one engine layer computes the Softmax and its value MatMul (a fused attention kernel: Myelin's
                  _gemm_mha_v2, _gemv_mha_v1 ...)
      absorbed    the Softmax is inside a Myelin region the inspector lists as one layer ({ForeignNode[...]})
      standalone  the Softmax's engine layer does not include the value MatMul: the probabilities are materialized
      unknown     no engine layer names the Softmax
    all_fused: every non-probe layer's attention fused or absorbed in every profile. Probe layers are reported and
    not counted (their score path is pinned to fp32 and their probability row leaves the graph).
    """
    if isinstance(info, str):
        info = json.loads(info)
    layers = _engine_layers(info)
    seen = sorted({p for p, *_ in layers})
    names = {i: (profiles[i] if i < len(profiles) else f"profile {i}") for i in seen}
    rows, not_fused, unknown = [], [], []
    for a in (a for a in attention if a["role"] == "attention"):
        sm, pv = _mangle(a["softmax"]), _mangle(a["value_matmul"] or "")
        row = {"layer": a["layer"], "probe": a["probe"], "softmax": a["softmax"], "value_matmul": a["value_matmul"],
               "status": {}, "engine_layer": {}}
        for p in seen:
            covering = [(n, kind, nodes) for q, n, nodes, kind in layers if q == p and sm in nodes]
            fused = [n for n, kind, nodes in covering if pv in nodes and not _is_region(n, kind)]
            region = [n for n, kind, _ in covering if _is_region(n, kind)]
            status = ("fused" if fused else "absorbed" if region else "standalone" if covering else "unknown")
            where = (fused or region or [n for n, *_ in covering] or [None])[0]
            row["status"][names[p]], row["engine_layer"][names[p]] = status, where
            if a["probe"]:
                continue
            if status == "standalone":
                not_fused.append(f"layer {a['layer']} ({names[p]}): Softmax {a['softmax']} runs without its value "
                                 f"MatMul, in engine layer {where!r}")
            elif status == "unknown":
                unknown.append(f"layer {a['layer']} ({names[p]}): no engine layer names Softmax {a['softmax']}")
        rows.append(row)
    counted = [r for r in rows if not r["probe"]]
    mha = {names[p]: sum(1 for q, n, _, kind in layers if q == p and "mha" in f"{n} {kind}".lower()) for p in seen}
    return {"checked_against": "engine inspector JSON (ProfilingVerbosity.DETAILED)", "profiles": list(names.values()),
            "all_fused": bool(counted) and not not_fused and not unknown, "layers": rows, "not_fused": not_fused,
            "unknown": unknown, "mha_layers": mha, "engine_layers": len(layers)}


# ---------------------------------------------------------------------------------------------------------------------
# The build (needs TensorRT and a GPU)
# ---------------------------------------------------------------------------------------------------------------------


def _import_tensorrt():
    """tensorrt, when it is one the builder can use (TensorRT >= 10.0; runtime/backends/tensorrt/compat.py)."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise UserError(f"{TENSORRT_MISSING} ({e})") from None
    compat.require_tensorrt(trt, "rlivs build-engines", "run the bundle with --backend onnxruntime")
    return trt


def _logger(trt, verbose: bool):
    """A TensorRT ILogger that writes into the rlivs.export log (INFO and VERBOSE as debug)."""
    S = trt.ILogger.Severity
    levels = {S.INTERNAL_ERROR: logging.CRITICAL, S.ERROR: logging.ERROR, S.WARNING: logging.WARNING,
              S.INFO: logging.DEBUG, S.VERBOSE: logging.DEBUG}

    class _Log(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            if severity == S.VERBOSE and not verbose:
                return
            log.log(levels.get(severity, logging.INFO), "[TensorRT] %s", msg)

    return _Log()


def _dtype(trt, dt) -> str:
    try:
        import numpy as np

        return np.dtype(trt.nptype(dt)).name
    except TypeError:
        return str(dt).rsplit(".", 1)[-1].lower()


def _dims(d) -> list[int]:
    """A TensorRT Dims as a list (-1: dynamic)."""
    return [int(d[i]) for i in range(len(d))]


def _write_bytes(path: Path, data) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _pin_fp32(trt, network, nodes: set[str]) -> dict:
    """Layer precision fp32 (and fp32 outputs) on the network layers parsed from `nodes`. The ONNX parser names a
    layer after its node (a unique suffix for a node's further layers) and sets its metadata to
    "[ONNX Layer: <node>]". Left alone: layers with a non-float32 output (shape arithmetic, casts into the fp16
    cache), constants, shape and cast layers (their output type is the graph's)."""
    pinned, matched = 0, set()
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        m = _ONNX_LAYER.search(layer.metadata or "")
        node = m[1].strip() if m else layer.name
        if node not in nodes:
            continue
        matched.add(node)
        if layer.type in (trt.LayerType.CONSTANT, trt.LayerType.SHAPE, trt.LayerType.CAST):
            continue
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not outs or any(t.dtype != trt.float32 for t in outs):
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        pinned += 1
    if nodes and not matched:
        raise UserError(f"none of the probe layers' {len(nodes)} score-path nodes matched a TensorRT layer (this "
                        f"TensorRT's ONNX parser names layers differently), so they cannot be kept fp32: build with "
                        f"--precision fp32, and report the TensorRT version")
    return {"nodes": len(nodes), "nodes_matched": len(matched), "layers_pinned": pinned}


def _engine_io(trt, engine, key: str) -> list[dict]:
    io = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_in = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        row = {"name": name, "mode": "input" if is_in else "output", "shape": _dims(engine.get_tensor_shape(name)),
               "dtype": _dtype(trt, engine.get_tensor_dtype(name))}
        if is_in:
            row["profiles"] = [[_dims(d) for d in engine.get_tensor_profile_shape(name, p)]
                               for p in range(engine.num_optimization_profiles)]
        io.append(row)
        log.info("%s engine %-6s %-14s %-22s %s%s", key, row["mode"], name, row["shape"], row["dtype"],
                 "  profiles (min, opt, max): " + "; ".join(str(s) for s in row["profiles"]) if is_in else "")
    return io


class _TimingCache:
    """One timing cache for both builds: loaded from `path` if present, saved after each build."""

    def __init__(self, path: Path):
        self.path, self.blob, self.loaded = path, b"", False
        if path.is_file():
            self.blob, self.loaded = path.read_bytes(), True

    def attach(self, config) -> None:
        cache = config.create_timing_cache(self.blob)
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            log.warning("timing cache %s is from another TensorRT or GPU: starting an empty one", self.path)
            self.blob, self.loaded = b"", False
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    def save(self, config) -> None:
        self.blob = bytes(config.get_timing_cache().serialize())
        _write_bytes(self.path, self.blob)


def _build_one(trt, logger, bundle: Path, key: str, profiles: list[dict], fp32_nodes: set[str],
               cfg: EngineBuildConfig, cache: _TimingCache) -> dict:
    onnx_path = bundle / f"{key}.onnx"
    # 1. parse
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads external weights beside the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}: re-export with rlivs export "
                        f"--target tensorrt (its tensorrt_check lists the ops TensorRT reads)")
    for kind, n, get in (("input", network.num_inputs, network.get_input), ("output", network.num_outputs,
                                                                             network.get_output)):
        for i in range(n):
            t = get(i)
            log.info("%s network %-6s %-14s %-22s %s", key, kind, t.name, _dims(t.shape), _dtype(trt, t.dtype))
    names = {network.get_input(i).name for i in range(network.num_inputs)}
    if names != set(profiles[0]["shapes"]):
        raise UserError(f"{onnx_path} has inputs {sorted(names)}, the manifest lists {sorted(profiles[0]['shapes'])}: "
                        f"the bundle is inconsistent; re-export it")
    # 2. configure
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mib << 20)
    config.builder_optimization_level = cfg.builder_optimization_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    pinned = None
    if cfg.precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default: fp32 engines must match the fp32 reference
    if cfg.precision == "fp16":
        if compat.platform_has_fast_fp16(builder) is False:  # None: TensorRT 11 no longer says
            log.warning("this GPU has no fast FP16: the fp16 engine may be slower than fp32")
        config.set_flag(trt.BuilderFlag.FP16)
        if fp32_nodes:
            pinned = _pin_fp32(trt, network, fp32_nodes)
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            log.info("%s: %d layers pinned to fp32 (%d of %d probe score-path nodes matched)", key,
                     pinned["layers_pinned"], pinned["nodes_matched"], pinned["nodes"])
    for p in profiles:
        prof = builder.create_optimization_profile()
        for name, s in p["shapes"].items():
            try:
                prof.set_shape(name, s["min"], s["opt"], s["max"])
            except RuntimeError as e:  # the bindings raise RuntimeError for inconsistent min/opt/max
                raise UserError(f"TensorRT refused the {key} profile {p['name']} shapes for {name} {s} ({e}): lower "
                                f"--max-context / --max-frames, and report it if a zero-length past is the cause") \
                    from None
        index = config.add_optimization_profile(prof)
        if index != p["index"]:
            raise UserError(f"TensorRT refused the {key} optimization profile {p['name']} {p['shapes']} (index "
                            f"{index}): lower --max-context / --max-frames")
    cache.attach(config)
    # 3. build
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if serialized is None:
        raise UserError(f"TensorRT could not build the {key} engine (its errors are logged above): try --precision "
                        f"fp32, a lower --max-context, or a larger workspace")
    cache.save(config)
    # 4. inspect
    runtime = trt.Runtime(logger)  # outlives the engine below
    engine = runtime.deserialize_cuda_engine(serialized)
    if engine is None:
        raise UserError(f"the {key} engine TensorRT just built does not deserialize (its errors are logged above)")
    io = _engine_io(trt, engine, key)
    text = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    try:
        layers = json.loads(text)
    except json.JSONDecodeError:
        layers = {"raw": text}
    # 5. write
    _write_bytes(bundle / ENGINE_FILES[key], serialized)
    _write_bytes(bundle / LAYER_FILES[key], json.dumps(layers, indent=1).encode())
    nbytes = (bundle / ENGINE_FILES[key]).stat().st_size
    log.info("%s engine: %s (%.1f MB) built in %.0f s; layer list %s", key, ENGINE_FILES[key], nbytes / 1e6, seconds,
             LAYER_FILES[key])
    return {"file": ENGINE_FILES[key], "bytes": nbytes, "profiles": profiles, "io": io, "seconds": round(seconds, 1),
            "device_memory_bytes": compat.device_memory_size(engine), "fp32_pinned": pinned, "inspector": layers}


def build_engines(bundle: str | Path, config: EngineBuildConfig | None = None) -> dict:
    """Build BUNDLE's vision and decoder engines on this GPU and record them in its manifest. Returns the entry."""
    cfg = config or EngineBuildConfig()
    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    specs = profile_specs(manifest, cfg)
    trt = _import_tensorrt()
    if cfg.precision == "fp16":
        compat.require_fp16_build(trt)  # TensorRT 11 has no weak typing: refused before anything is written
    try:
        import onnx
    except ImportError:
        raise UserError("the engine builder reads decoder.onnx with the onnx package to find the probe layers' nodes: "
                        "pip install onnx") from None
    env = {"tensorrt_version": trt.__version__, **cuda_device(0)}
    log.info("building TensorRT %s engines for %s (compute capability %s), %s, K_max %d, frames <= %d",
             env["tensorrt_version"], env["gpu_name"], env["compute_capability"], cfg.precision, specs["max_context"],
             specs["max_frames"])
    digest = bundle_digest(bundle, manifest)
    graph = onnx.load(str(bundle / "decoder.onnx"), load_external_data=False)
    probe = manifest.probe_layers
    fp32 = set(probe_row_nodes(graph, probe))
    attention = attention_nodes(graph, probe)
    del graph
    write_engine_entry(bundle, None)  # the old engines are about to be replaced: no entry until both are built
    cache_path = Path(cfg.timing_cache) if cfg.timing_cache else bundle / TIMING_CACHE
    cache = _TimingCache(cache_path)
    logger = _logger(trt, cfg.verbose)
    built = {"vision": _build_one(trt, logger, bundle, "vision", specs["vision"], set(), cfg, cache),
             "decoder": _build_one(trt, logger, bundle, "decoder", specs["decoder"], fp32, cfg, cache)}
    fusion = fusion_report(built["decoder"].pop("inspector"), attention)
    built["vision"].pop("inspector")
    if not fusion["all_fused"]:
        log.warning("attention is not fused in every non-probe layer: %s", "; ".join(fusion["not_fused"] +
                                                                                     fusion["unknown"]))
    try:
        cache_ref = str(cache_path.resolve().relative_to(bundle.resolve()))
    except ValueError:
        cache_ref = str(cache_path)
    entry = {
        "schema": ENTRY_SCHEMA, **env, "precision": cfg.precision, "bundle_digest": digest,
        "max_context": specs["max_context"], "max_frames": specs["max_frames"], "max_batch": specs["max_batch"],
        "context_budget": specs["budget"],
        "engines": built, "timing_cache": cache_ref, "timing_cache_reused": cache.loaded,
        "layers": dict(LAYER_FILES), "fusion": fusion,
        "builder": {"workspace_mib": cfg.workspace_mib, "optimization_level": cfg.builder_optimization_level},
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_engine_entry(bundle, entry)
    return entry
