"""The bundle format: what `rlivs export` writes and the ONNX Runtime and TensorRT backends read (numpy only)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from .base import ModelInfo
from .kv_arena import KVLayout
from rlivs.runtime.errors import UserError

BUNDLE_FORMAT = "rlivs-bundle"
BUNDLE_VERSION = 1
MANIFEST = "manifest.json"
REQUIRED = ("vision.onnx", "decoder.onnx", "embeddings.npy", "image_newline.npy", "tokenizer.json", "config.json",
            "preprocessor_config.json")


MAX_BATCH = 256  # the most sequences one batched step is built or asked for (build-engines --max-batch, serve --batch)


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


@dataclass(frozen=True)
class Manifest:
    """A bundle's manifest.json: what `rlivs export` writes, `rlivs build-engines` and calibration extend, and every
    reader (backends, builder, calibration, CLI) uses. Field names are the JSON keys; keys this class does not name
    are kept in `extra` and written back unchanged, so an older or newer rlivs's additions survive a rewrite."""

    format: str = BUNDLE_FORMAT
    version: int = BUNDLE_VERSION
    created: str | None = None  # UTC time of the export
    model_id: str | None = None  # where the weights came from
    config_sha256: str | None = None  # sha256 of the exported config.json
    hidden_size: int | None = None  # D
    vocab_size: int | None = None  # V
    num_layers: int | None = None  # decoder layers
    probe_layers: list[int] = field(default_factory=list)  # decoder layers whose attention the graph outputs
    tokens_per_frame: int | None = None  # P
    image_size: list[int] | None = None  # [H, W]
    video_token_id: int | None = None
    backbone: str | None = None  # the model family (runtime/backbones REGISTRY); absent: llava_onevision (older bundles)
    grid: list[int] | None = None  # [rows, cols] of one token group's tokens (absent: square, P = side^2)
    temporal_patch: int | None = None  # frames per token group (absent: 1)
    kv_cache: dict = field(default_factory=dict)  # {layers, kv_heads, head_dim, layout, dtype, max_context[, batch: true]}
    embeddings: dict | None = None  # {file, dtype, shape}
    image_newline: dict | None = None  # {file, dtype, shape}
    graphs: dict = field(default_factory=dict)  # {"vision"|"decoder": export.graph.graph_io(...)}
    opset: int | None = None
    requires: dict | None = None  # {"onnxruntime": "1.20"}: the oldest runtime that loads the graphs (from the opset)
    target: str = "onnxruntime"  # onnxruntime | tensorrt
    tools: dict | None = None  # package versions of the export
    precision: dict | None = None  # calibration: how the decoder was quantized (absent: float32)
    tensorrt_engines: dict | None = None  # rlivs build-engines: the engines built into the bundle
    extra: dict = field(default_factory=dict)  # every other key (export_check, tensorrt_check, calibration, ...)

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        names = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in d.items() if k in names}, extra={k: v for k, v in d.items() if k not in names})

    def to_dict(self) -> dict:
        """The JSON object (None-valued optional keys left out, as export writes them)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out = {k: v for k, v in out.items() if v is not None or k in _ALWAYS}
        return {**out, **self.extra}

    def with_(self, **changes) -> Manifest:
        """A copy with fields (or extra keys) changed; a value of None removes an optional key."""
        named = {f.name for f in fields(self)}
        extra = {**self.extra, **{k: v for k, v in changes.items() if k not in named}}
        return replace(self, **{k: v for k, v in changes.items() if k in named},
                       extra={k: v for k, v in extra.items() if v is not None})

    def info(self, bundle: str | Path):
        """The ModelInfo and KV layout the manifest declares (shared by the ONNX Runtime and TensorRT backends)."""
        backbone = self.backbone_name(bundle)  # a family this rlivs does not run is refused first, by name
        try:
            kv = self.kv_cache
            layout = KVLayout(layers=int(kv["layers"]), kv_heads=int(kv["kv_heads"]), head_dim=int(kv["head_dim"]),
                              layout=kv.get("layout", "stacked"), dtype=kv.get("dtype", "float32"),
                              max_context=int(kv.get("max_context", 0)))
            need = {k: getattr(self, k) for k in ("model_id", "hidden_size", "vocab_size", "num_layers",
                                                  "tokens_per_frame", "image_size", "video_token_id")}
            missing = [k for k, v in need.items() if v is None]
            if missing or not self.probe_layers:
                raise KeyError(", ".join(missing) or "probe_layers")
            info = ModelInfo(
                model_id=self.model_id, hidden_size=int(self.hidden_size), vocab_size=int(self.vocab_size),
                num_layers=int(self.num_layers), probe_layers=tuple(self.probe_layers),
                tokens_per_frame=int(self.tokens_per_frame), image_size=tuple(self.image_size),
                video_token_id=int(self.video_token_id), backbone=backbone,
                grid=tuple(int(x) for x in self.grid) if self.grid else None,
                temporal_patch=int(self.temporal_patch or 1),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{bundle}/manifest.json lacks or garbles {e}: the bundle is damaged; copy the "
                            f"whole bundle directory again or re-export it") from None
        return info, layout

    def backbone_name(self, bundle: str | Path = "the bundle") -> str:
        """The bundle's backbone; UserError naming the ones this rlivs runs when it is not one of them."""
        from ..backbones import REGISTRY

        name = self.backbone or "llava_onevision"  # bundles from before the backbone registry are LLaVA-OV's
        if name not in REGISTRY:
            known = ", ".join(f"{c.label} ({n})" for n, c in REGISTRY.items())
            raise UserError(f"{bundle} holds a {name!r} model, a backbone this rlivs does not run (it runs {known}): "
                            f"run it with the rlivs that exported it, or re-export the model with this one")
        return name

    @property
    def batched(self) -> bool:
        """The decoder has a dynamic batch axis (rlivs export --batch): B sequences step as one run."""
        return bool((self.kv_cache or {}).get("batch"))

    def max_batch(self, backend: str) -> int | None:
        """Most sequences one batched decoder step takes on `backend` (onnxruntime | tensorrt): 1 without a batch
        axis (a batch then steps sequence by sequence), None (any) on ONNX Runtime, the engines' batch range (rlivs
        build-engines --max-batch; 0 when no engines are built) on TensorRT."""
        if not self.batched:
            return 1
        if backend != "tensorrt":
            return None
        return int((self.tensorrt_engines or {}).get("max_batch", 0))

    def graph_opset(self) -> int | None:
        """The newest ONNX opset among the graphs (the manifest's top-level opset when the graphs do not say)."""
        opsets = [int(g["opset"]) for g in self.graphs.values() if isinstance(g, dict) and g.get("opset")]
        return max(opsets) if opsets else self.opset

    def onnxruntime_needed(self) -> str:
        """The oldest ONNX Runtime that loads this bundle: what export recorded, else derived from the opset (bundles
        exported before the manifest said it)."""
        return (self.requires or {}).get("onnxruntime") or onnxruntime_for_opset(self.graph_opset())

    def save(self, bundle: str | Path) -> None:
        """Write BUNDLE/manifest.json atomically (temp file + fsync + os.replace): a reader sees the old manifest or
        the new one, never a partial one."""
        bundle = Path(bundle)
        fd, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".tmp", dir=bundle)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_dict(), f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, bundle / MANIFEST)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# The oldest ONNX Runtime that loads a graph of each ONNX opset, measured: the tiny model exported at opsets 20-23
# (IR version 10), each graph opened with onnxruntime 1.20.1, 1.21.1, 1.22.1 and 1.23.2 on CPython 3.10 with numpy
# 1.26.4 (docs/jetson.md, "Which bundle loads where"). Older runtimes refuse a newer opset at load ("ValidateOpsetForDomain").
# 1.20 is also the oldest of NVIDIA's Jetson builds of onnxruntime-gpu for JetPack 6, and the floor of the `ort` extra.
ORT_FOR_OPSET = ((21, "1.20"), (22, "1.21"), (23, "1.23"))  # (newest opset it loads, onnxruntime version)
ORT_DEVICE_OPSET = 21  # the newest opset every supported ONNX Runtime (>= 1.20) loads


def onnxruntime_for_opset(opset: int | None) -> str:
    """The oldest onnxruntime version (as "major.minor") that loads graphs of `opset`."""
    for newest, version in ORT_FOR_OPSET:
        if opset is None or opset <= newest:
            return version
    return ORT_FOR_OPSET[-1][1]  # newer than any measured: the newest measured runtime at least


def _release(version: str) -> tuple[int, ...]:
    """"1.20.1" / "1.23.0rc1" / "1.22.0+cu126" -> (1, 20, 1): the leading release numbers."""
    import re

    return tuple(int(x) for x in re.findall(r"\d+", re.match(r"[\d.]*", version.strip()).group())[:3])


def installed_onnxruntime() -> tuple[str, str] | None:
    """(distribution, version) of the installed ONNX Runtime, read from the package metadata without importing it
    (NVIDIA's Jetson onnxruntime-gpu fails to import beside numpy 2, and importing it costs a second): PyPI's
    onnxruntime, onnxruntime-gpu (NVIDIA's Jetson builds, PyPI's CUDA build), or None."""
    from importlib import metadata

    for dist in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino"):
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def onnxruntime_gap(bundle: str | Path, manifest: Manifest, installed: tuple[str, str] | None = None) -> str | None:
    """None when the installed ONNX Runtime loads the bundle's graphs; else what to do, said before anything loads.
    `installed`: (distribution, version); default: what is installed here (None when nothing is: not this check's
    business, the backend's `missing` says what to install)."""
    installed = installed or installed_onnxruntime()
    need = manifest.onnxruntime_needed()
    if installed is None or _release(installed[1]) >= _release(need):
        return None
    dist, have = installed
    return (f"{bundle} needs onnxruntime >= {need} (its graphs are ONNX opset {manifest.graph_opset()}); you have "
            f"{dist} {have}: re-export it with rlivs export --opset {ORT_DEVICE_OPSET} (or the default, 20), which "
            f"loads on onnxruntime 1.20 and later, or install {dist}>={need} (on a Jetson, NVIDIA's onnxruntime-gpu "
            f"build for your JetPack: docs/jetson.md)")


_ALWAYS = {"format", "version", "probe_layers", "kv_cache", "graphs", "target"}


def read_manifest_json(bundle: str | Path) -> dict:
    """The raw JSON object of BUNDLE/manifest.json; UserError saying how to fix a missing or broken one."""
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not path.is_file():
        raise UserError(f"{bundle} is not an rlivs bundle (no {MANIFEST}): create one with rlivs export --model M --out {bundle}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}): re-run rlivs export") from e
    if not isinstance(manifest, dict):
        raise UserError(f"{path} is not an rlivs bundle manifest (a JSON {type(manifest).__name__}, not an object): "
                        f"re-run rlivs export")
    return manifest


def load_manifest(bundle: str | Path) -> Manifest:
    """Read and validate a bundle's manifest; UserError saying how to fix a broken or foreign bundle."""
    bundle = Path(bundle)
    path = bundle / MANIFEST
    manifest = read_manifest_json(bundle)
    if manifest.get("format") != BUNDLE_FORMAT:
        raise UserError(f"{path} is not an rlivs bundle manifest (format {manifest.get('format')!r})")
    if manifest.get("version") != BUNDLE_VERSION:
        raise UserError(f"{bundle} is bundle version {manifest.get('version')}; this rlivs reads version "
                        f"{BUNDLE_VERSION}: re-export it with this rlivs (rlivs export)")
    missing = [f for f in REQUIRED if not (bundle / f).is_file()]
    if missing:
        raise UserError(f"bundle {bundle} is missing {', '.join(missing)}: copy the whole bundle directory or re-export it")
    want = manifest.get("config_sha256")
    if want and hashlib.sha256((bundle / "config.json").read_bytes()).hexdigest() != want:
        raise UserError(f"{bundle}/config.json is not the one this bundle was exported with (its sha256 differs from "
                        f"the manifest's): it is damaged or from another model; copy the whole bundle directory "
                        f"from one export or re-export it")
    m = Manifest.from_dict(manifest)
    m.backbone_name(bundle)  # a model family this rlivs does not run: refused here, before any graph loads
    return m


def bundle_backbone(bundle: str | Path, manifest: Manifest):
    """The runtime backbone (runtime/backbones) of a bundle, configured from its config.json (M-RoPE's temporal
    ids read vision_config.tokens_per_second)."""
    from ..backbones import get_backbone

    try:
        config = json.loads((Path(bundle) / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise damaged(bundle, "config.json", e) from None
    return get_backbone(manifest.backbone_name(bundle), config)


def group_frames(pixels: np.ndarray, temporal_patch: int) -> np.ndarray:
    """(T, 3, H, W) float32 frames, a short last token group completed with copies of the last frame (as Qwen-VL's
    processors and the torch reference do); unchanged when temporal_patch is 1."""
    x = np.ascontiguousarray(pixels, dtype=np.float32)
    short = -len(x) % temporal_patch
    return np.concatenate([x, np.repeat(x[-1:], short, axis=0)]) if short else x


def step_positions(backbone, length: int, rope_delta: int, n_new: int, positions) -> tuple[np.ndarray, int]:
    """The position ids an exported decoder is fed for n_new inputs after `length` cached positions, and the
    sequence's new rope_delta (as the torch backend keeps it). 1-D backbones: (1, L) = length..length+L-1 and
    `positions` must be None. M-RoPE: (3, L), the given (3, L) ids or else the next L positions on every axis
    after the offset the last positioned step left (a generated token continues after the prompt's maximum)."""
    if not backbone.mrope:
        if positions is not None:
            raise UserError(f"{backbone.label} takes 1-D positions: step() got (3, L) M-RoPE position ids")
        return np.arange(length, length + n_new, dtype=np.int64)[None], rope_delta
    if positions is None:
        start = length + rope_delta
        return np.ascontiguousarray(np.broadcast_to(np.arange(start, start + n_new, dtype=np.int64), (3, n_new))), \
            rope_delta
    pos = np.ascontiguousarray(positions, dtype=np.int64)
    if pos.shape != (3, n_new):
        raise UserError(f"positions must be (3, {n_new}) M-RoPE ids, got {pos.shape}")
    return pos, int(pos.max()) + 1 - (length + n_new)


def deepstack_feed(deepstack, maps: int, hidden: int, bundle, label: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The DeepStack inputs an exported decoder is fed: ((n,) int64 ascending visual rows, (K, n, D) float32
    features), empty (n = 0) when `deepstack` is None; (None, None) for a decoder without them (`maps` = 0), which
    refuses given features rather than dropping them."""
    if not maps:
        if deepstack is not None:
            raise UserError(f"{bundle} is a {label} bundle: its decoder takes no DeepStack features")
        return None, None
    if deepstack is None:
        return np.zeros(0, np.int64), np.zeros((maps, 0, hidden), np.float32)
    rows = np.ascontiguousarray(deepstack[0], dtype=np.int64)
    feats = np.ascontiguousarray(deepstack[1], dtype=np.float32)
    if feats.shape != (maps, len(rows), hidden):
        raise UserError(f"DeepStack features must be ({maps}, {len(rows)}, {hidden}) for these rows, got {feats.shape}")
    if len(rows) > 1 and not bool((np.diff(rows) > 0).all()):
        raise UserError("DeepStack rows must ascend (the features are added in input order)")
    return rows, feats


def deepstack_maps(manifest) -> int:
    """K, the DeepStack maps a bundle's decoder takes (its `deepstack (K, n, D)` input); 0: none."""
    for i in manifest.graphs.get("decoder", {}).get("inputs", []):
        if i["name"] == "deepstack":
            return int(i["shape"][0])
    return 0


def damaged(bundle: str | Path, name: str, e: BaseException) -> UserError:
    return UserError(f"{bundle}/{name} cannot be loaded ({type(e).__name__}: {str(e)[:300]}): the file is "
                     f"damaged or truncated; copy the whole bundle directory again or re-export it")


def load_tables(bundle: str | Path, info: ModelInfo):
    """-> the (V, D) embedding table (memory-mapped, float16|float32) and the (D,) float32 image newline."""
    bundle = Path(bundle)

    def npy(name: str, **kw):
        try:
            return np.load(bundle / name, **kw)
        except (ValueError, OSError, EOFError) as e:  # a truncated header or data
            raise damaged(bundle, name, e) from None

    table = npy("embeddings.npy", mmap_mode="r")  # (V, D)
    newline = npy("image_newline.npy").astype(np.float32)  # (D,)
    if table.shape != (info.vocab_size, info.hidden_size):
        raise UserError(f"{bundle}/embeddings.npy has shape {table.shape}, the manifest says "
                        f"{(info.vocab_size, info.hidden_size)}: the bundle is damaged, re-export it")
    if newline.shape != (info.hidden_size,):
        raise UserError(f"{bundle}/image_newline.npy has shape {newline.shape}, the manifest says "
                        f"({info.hidden_size},): it is from another model; copy the whole bundle directory "
                        f"from one export or re-export it")
    return table, newline
