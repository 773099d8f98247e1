"""`rlivs export`: a LLaVA-OneVision, Qwen2.5-VL or Qwen3-VL checkpoint -> a self-contained bundle for the torch-free
runtime.

Order: create ONNX -> check the graphs -> compare with the torch reference -> write the manifest.

  BUNDLE/
    vision.onnx, decoder.onnx (+ .data external weights when large)
    embeddings.npy      (V, D) input-embedding table, memory-mappable: float32 (default for onnxruntime bundles,
                        exact parity) or float16 (default for tensorrt bundles, whose engines run in half precision)
    image_newline.npy   (D,) float32 (zeros for a backbone without a learned newline: Qwen2.5-VL; never read)
    tokenizer.json, tokenizer_config.json, chat template, config.json, generation_config.json,
    preprocessor_config.json   (what TextCodec and FramePreprocessor read)
    manifest.json       model source + config hash, probe layers, every graph input/output with name,
                        shape and dtype, opset, tool versions, the export-time numerics check
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from rlivs.runtime.backends.bundle import MANIFEST, Manifest, onnxruntime_for_opset

from .graph import graph_io
from rlivs.runtime.config import ProbeConfig
from rlivs.runtime.models import resolve_model
from rlivs.runtime.errors import UserError

log = logging.getLogger("rlivs.export")

COPIED_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "chat_template.jinja", "chat_template.json",
                "preprocessor_config.json", "processor_config.json")


TARGETS = ("onnxruntime", "tensorrt")
# The default opset of every target: the newest TensorRT 10's parser reads, and one every supported ONNX Runtime
# (>= 1.20, the oldest Jetson build) loads. Opset 23's fused ops stay a choice (--opset 23): docs/jetson.md measures both.
DEFAULT_OPSET = 20


@dataclass
class ExportConfig:
    target: str = "onnxruntime"  # onnxruntime | tensorrt (opset <= 20, plain attention TensorRT can fuse)
    opset: int | None = None  # default 20 for every target: loads on onnxruntime >= 1.20 (every Jetson build) and
    #                           TensorRT 10; 23 (fused Attention/RotaryEmbedding/RMSNorm) needs onnxruntime >= 1.23
    embed_dtype: str | None = None  # dtype of embeddings.npy; default by precision: float32 where the engine runs in
    #                                  float32 (onnxruntime: identical captions and selections), float16 where it runs
    #                                  in half precision anyway (tensorrt with the float16 arena cache)
    probe: ProbeConfig | None = None  # probe layers baked into the decoder graph (default: 4 evenly spaced)
    check: bool = True  # compare ORT with the torch reference after export
    kv_layout: str | None = None  # stacked (ORT: cache passed past->present) | arena (appended in place); default by target
    kv_dtype: str | None = None  # arena cache dtype: float16 (default for tensorrt) | float32 (exact parity)
    max_context: int = 8192  # arena rows preallocated per sequence: FIFO (16 x 196) + clip (3136) + prompt + caption
    batch: bool = False  # decoder with a dynamic batch axis (B sequences stepped together): onnxruntime batches on
    #                      the stacked cache; the arena (tensorrt) gets the slot-major batch contract (onnx_export.py)

    def __post_init__(self):
        if self.target not in TARGETS:
            raise UserError(f"unknown export target {self.target!r}: use one of {', '.join(TARGETS)}")
        if self.opset is None:
            self.opset = DEFAULT_OPSET
        if not 17 <= self.opset <= 23:
            raise UserError(f"opset {self.opset} is not supported: use 17..23 (default {DEFAULT_OPSET}: loads on "
                            f"onnxruntime 1.20 and later; 23 needs onnxruntime >= 1.23)")
        if self.target == "tensorrt" and self.opset > 20:
            raise UserError(f"TensorRT 10's ONNX parser reads opsets up to 20, not {self.opset}: use --opset 20")
        if self.kv_layout is None:
            self.kv_layout = "arena" if self.target == "tensorrt" else "stacked"
        if self.kv_layout not in ("stacked", "arena"):
            raise UserError(f"kv_layout must be stacked or arena, got {self.kv_layout!r}")
        if self.kv_dtype is None:
            self.kv_dtype = "float16" if self.target == "tensorrt" else "float32"
        if self.kv_dtype not in ("float16", "float32") or (self.kv_layout == "stacked" and self.kv_dtype != "float32"):
            raise UserError(f"kv_dtype {self.kv_dtype!r} is not available with the {self.kv_layout} cache: use float32, "
                            f"or float16 with the arena cache (--target tensorrt)")
        if self.embed_dtype is None:
            self.embed_dtype = "float16" if self.kv_dtype == "float16" else "float32"
        if self.embed_dtype not in ("float16", "float32"):
            raise UserError(f"embed_dtype must be float16 or float32, got {self.embed_dtype!r}")
        if not 64 <= self.max_context <= 1 << 20:
            raise UserError(f"max_context must be 64..{1 << 20} positions, got {self.max_context}; e.g. --max-context "
                            f"8192 (a FIFO of 16 clips + one clip + prompt + caption is ~6.5K for the 0.5B model)")


def _versions() -> dict:
    out = {}
    for pkg in ("rlivs", "torch", "transformers", "onnx", "onnxscript", "onnxruntime"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def export_bundle(model: str | Path, out: str | Path, config: ExportConfig | None = None) -> Manifest:
    """Export `model` (tiny | HF directory | cached hub id) into the bundle directory `out`. Returns the manifest."""
    from rlivs.runtime.backends.torch import TorchBackend

    from .onnx_export import decoder_shapes, export_decoder, export_vision

    config = config or ExportConfig()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise UserError(f"{out} exists and is not an rlivs bundle: choose an empty or new --out directory")
    model_dir, model_id = resolve_model(model)
    from rlivs.runtime.backbones import backbone_for_dir

    backbone = backbone_for_dir(model_dir)
    if not backbone.exportable:  # before anything is written or loaded
        raise UserError(f"rlivs export does not support {backbone.label} yet (ONNX / TensorRT graphs for it are not "
                        f"written): run it on the torch backend, e.g. rlivs ingest --model {model} --backend torch")
    if backbone.mrope and config.batch:
        raise UserError(f"--batch exports a decoder with 1-D (B, L) positions; {backbone.label} uses 3-D M-RoPE "
                        f"positions: export it without --batch (its clips are captioned one at a time)")
    backend = TorchBackend(model_dir, model_id=model_id, probe=config.probe)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # a bundle is valid only once its manifest is written, last

    # 1. create ONNX (one log line per stage: the CLI shows these and hides the exporters' own logs unless -v)
    t0 = time.perf_counter()
    export_vision(backend, out / "vision.onnx", config.opset)
    log.info("export 1/4: vision graph written: %s (%.1f s)", out / "vision.onnx", time.perf_counter() - t0)
    t0 = time.perf_counter()
    export_decoder(backend, out / "decoder.onnx", config.opset, plain=config.target == "tensorrt",
                   kv_layout=config.kv_layout, kv_dtype=config.kv_dtype, batch=config.batch)
    log.info("export 2/4: decoder graph written: %s (%.1f s)", out / "decoder.onnx", time.perf_counter() - t0)
    table = backend.model.model.language_model.embed_tokens.weight.detach().float().numpy()  # (V, D)
    np.save(out / "embeddings.npy", table.astype(config.embed_dtype))
    newline = backend.image_newline() if backbone.newline else np.zeros(backend.info.hidden_size, np.float32)
    np.save(out / "image_newline.npy", newline)
    for name in COPIED_FILES:
        if (model_dir / name).exists():
            shutil.copy2(model_dir / name, out / name)

    # 2. check the graphs, 3. compare with the reference
    import onnx

    t0 = time.perf_counter()
    for name in ("vision.onnx", "decoder.onnx"):
        onnx.checker.check_model(str(out / name))
    n_layers, h_kv, head_dim = decoder_shapes(backend)
    info = backend.info
    max_positions = int(backend.model.config.text_config.max_position_embeddings)
    manifest = Manifest(
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), model_id=model_id,
        config_sha256=hashlib.sha256((model_dir / "config.json").read_bytes()).hexdigest(),
        hidden_size=info.hidden_size, vocab_size=info.vocab_size, num_layers=info.num_layers,
        probe_layers=list(info.probe_layers), tokens_per_frame=info.tokens_per_frame,
        image_size=list(info.image_size), video_token_id=info.video_token_id, backbone=backbone.name,
        grid=list(info.grid) if info.grid else None, temporal_patch=info.temporal_patch,
        kv_cache={"layers": n_layers, "kv_heads": h_kv, "head_dim": head_dim, "layout": config.kv_layout,
                  "dtype": config.kv_dtype, "max_context": min(config.max_context, max_positions),
                  **({"batch": True} if config.batch else {})},
        embeddings={"file": "embeddings.npy", "dtype": config.embed_dtype, "shape": list(table.shape)},
        image_newline={"file": "image_newline.npy", "dtype": "float32", "shape": [info.hidden_size]},
        graphs={"vision": graph_io(out / "vision.onnx"), "decoder": graph_io(out / "decoder.onnx")},
        opset=config.opset, target=config.target, tools=_versions(),
    )
    manifest = manifest.with_(requires={"onnxruntime": onnxruntime_for_opset(manifest.graph_opset())})
    if config.target == "tensorrt":
        manifest = manifest.with_(tensorrt_check=tensorrt_check(out, len(info.probe_layers), info.num_layers))
    for g in manifest.graphs.values():
        for io in ("inputs", "outputs"):
            for v in g[io]:
                log.debug("%s %s %-15s %-28s %s", g["file"], io[:-1], v["name"], v["shape"], v["dtype"])
    log.info("export 3/4: graphs checked (onnx checker%s), tables written (%.1f s)",
             ", TensorRT operators and attention fusion" if config.target == "tensorrt" else "",
             time.perf_counter() - t0)
    if config.check:
        t0 = time.perf_counter()
        manifest = manifest.with_(export_check=compare_with_reference(backend, out, manifest))
        log.info("export 4/4: compared with the torch reference (%.1f s): %s", time.perf_counter() - t0,
                 parity_summary(manifest.extra["export_check"]))
    else:
        log.info("export 4/4: comparison with the torch reference skipped (--no-check)")
    manifest.save(out)  # last: the bundle is valid only once its manifest is written
    need = manifest.onnxruntime_needed()
    log.info("bundle %s: opset %d, loads on onnxruntime >= %s%s", out, manifest.graph_opset(), need,
             "" if need == "1.20" else " (NVIDIA's Jetson builds start at 1.20: export with the default --opset "
                                       f"{DEFAULT_OPSET} for those)")
    return manifest


def parity_summary(check: dict) -> str:
    """The export check in words: the largest differences between ONNX Runtime and torch, the logits' difference
    put next to their size (`logit_scale` is the largest |logit|, a scale, not an error)."""
    parts = [f"vision tokens max |diff| {check['vision']:.1e}"]
    if "deepstack" in check:
        parts.append(f"DeepStack features max |diff| {check['deepstack']:.1e}")
    if "logit_scale" in check:
        parts.append(f"logits max |diff| {check['logits']:.1e} (the logits reach {check['logit_scale']:.2f}: "
                     f"relative {check['logits'] / max(check['logit_scale'], 1e-30):.1e})")
    else:
        parts.append(f"logits max |diff| {check['logits']:.1e}")
    parts.append(f"probe attention max |diff| {check['probe_attn']:.1e}")
    return "; ".join(parts)


def tensorrt_check(bundle: Path, n_probe: int, n_layers: int) -> dict:
    """Every op in TensorRT's parser table, and every layer's attention in the fusable pattern."""
    from .tensorrt_ops import TENSORRT_TABLE_SOURCE, attention_patterns, check_tensorrt_graph

    problems = [f"{g}: {p}" for g in ("vision.onnx", "decoder.onnx") for p in check_tensorrt_graph(bundle / g)]
    patterns = attention_patterns(bundle / "decoder.onnx")
    if patterns["fusable"] != n_layers or patterns["probe"] != n_probe or patterns["other"]:
        problems.append(f"decoder attention pattern {patterns}: expected {n_layers} fusable and {n_probe} probe rows")
    if problems:
        raise UserError("the TensorRT-target graphs would not parse or fuse: " + "; ".join(problems))
    return {"operator_table": TENSORRT_TABLE_SOURCE, "problems": [], "decoder_attention": patterns}


def compare_with_reference(backend, bundle: Path, manifest: Manifest, n_frames: int = 2, n_decode: int = 3) -> dict:
    """Max abs differences ORT vs torch on random frames and a short greedy continuation."""
    from rlivs.runtime.backends.onnxruntime import OrtBackend

    ort_be = OrtBackend(bundle, manifest=manifest)
    rng = np.random.default_rng(0)
    n_frames = max(n_frames, backend.info.temporal_patch)
    pixels = rng.uniform(-1, 1, (n_frames, 3, *backend.info.image_size)).astype(np.float32)
    (vis_ref, deep_ref), (vis, deep) = backend.encode_video(pixels), ort_be.encode_video(pixels)  # (G, P, D)
    ids = np.arange(10, 20) % backend.info.vocab_size
    d = backend.info.hidden_size
    ctx = np.concatenate([backend.embed_tokens(ids), vis_ref.reshape(-1, d)])  # (S, D)
    s_ref, s_ort = backend.new_state(), ort_be.new_state()
    worst = {"vision": float(np.abs(vis - vis_ref).max()), "logits": 0.0, "probe_attn": 0.0}
    x, extra = ctx, {}
    if backend.backbone.text_in_video:  # positions come with a tokenized layout: ids with three distinct axes
        a = np.arange(len(ctx), dtype=np.int64)
        extra["positions"] = np.stack([a, a + a % 3, a + a % 5])  # (3, S)
    elif backend.backbone.mrope:  # the prompt's text, then the frames as one video: M-RoPE (t, h, w) ids
        extra["positions"] = backend.backbone.positions(len(ids), [], 0, vis_ref.shape[0], backend.info.grid, 0,
                                                        fps=2.0, frames_per_clip=n_frames)
    if deep_ref is not None:  # DeepStack: the features of the visual rows, the reference's into both
        worst["deepstack"] = float(np.abs(deep - deep_ref).max())
        extra["deepstack"] = (np.arange(len(ids), len(ctx)), deep_ref.reshape(deep_ref.shape[0], -1, d))
    for _ in range(1 + n_decode):
        a, b = backend.step(x, s_ref, **extra), ort_be.step(x, s_ort, **extra)
        extra = {}
        worst["logits"] = max(worst["logits"], float(np.abs(a.logits - b.logits).max()))
        worst["probe_attn"] = max(worst["probe_attn"], float(np.abs(a.probe_attn - b.probe_attn).max()))
        x = backend.embed_tokens(np.array([int(np.argmax(a.logits))]))
    worst["logit_scale"] = float(np.abs(a.logits).max())
    return worst
