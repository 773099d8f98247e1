"""The TensorRT engines' manifest entry: what a bundle records about the engines built into it, and the check
that refuses an engine built for another GPU, TensorRT version or bundle. Pure Python: no tensorrt, no torch.

`rlivs build-engines` (export/tensorrt_build.py) writes the engines into the bundle and this entry into
manifest.json; the TensorRT backend calls `check_engine_entry` before it deserializes anything.

  manifest["tensorrt_engines"] = {
    "schema": 1,
    "tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7",
    "precision": "fp16",                       # fp16 | fp32 (the probe layers' score path is fp32 in both)
    "bundle_digest": "<sha256>",               # bundle_digest() of the bundle the engines were built from
    "max_context": 8192, "max_frames": 16,     # the largest decoder cache and vision batch the profiles accept
    "engines": {
      "vision":  {"file": "vision.engine",  "bytes": n, "profiles": [...], "io": [...]},
      "decoder": {"file": "decoder.engine", "bytes": n, "profiles": [...], "io": [...]},
    },                                         # profiles: [{"name", "index", "dims": {sym: [min, opt, max]},
                                               #             "shapes": {input: {"min", "opt", "max"}}}]
    "timing_cache": "timing.cache",
    "layers": {"vision": "vision.layers.json", "decoder": "decoder.layers.json"},  # engine inspector output
    "fusion": {"all_fused": bool, ...},        # export.tensorrt_build.fusion_report
    "built": "2025-01-01T00:00:00Z",
  }

An engine runs only on the GPU model and TensorRT version it was built with, and only with the graphs it was
built from: any difference is refused with the command that rebuilds it.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
from pathlib import Path

from ..bundle import MANIFEST, Manifest, read_manifest_json
from rlivs.runtime.errors import UserError

ENTRY = "tensorrt_engines"
ENTRY_SCHEMA = 1
ENGINES = ("vision", "decoder")

# Manifest fields the graphs' meaning depends on: a re-export rewrites them (at least "created").
DIGEST_FIELDS = ("format", "version", "created", "model_id", "config_sha256", "hidden_size", "vocab_size",
                 "num_layers", "probe_layers", "tokens_per_frame", "image_size", "video_token_id", "kv_cache",
                 "graphs", "opset", "target", "precision")
_FULL_HASH_LIMIT = 64 << 20  # graph files up to this size are hashed whole; larger ones by size + head/tail samples
_SAMPLE = 1 << 20  # bytes sampled from the head and the tail of large graphs and of external weight files


def rebuild_hint(bundle: str | Path) -> str:
    return f"rebuild the engines on this device with `rlivs build-engines --bundle {bundle}`"


# ---------------------------------------------------------------------------------------------------------------------
# The bundle digest
# ---------------------------------------------------------------------------------------------------------------------


def _sampled(h, path: Path, size: int) -> None:
    """Feed `h` the first and last _SAMPLE bytes of `path` (everything when it is small)."""
    with open(path, "rb") as f:
        if size <= 2 * _SAMPLE:
            h.update(f.read())
            return
        h.update(f.read(_SAMPLE))
        f.seek(size - _SAMPLE)
        h.update(f.read(_SAMPLE))


def graph_files(bundle: str | Path, manifest: Manifest) -> list[Path]:
    """The ONNX graphs the manifest names, each followed by its external-data files (`decoder.onnx.data`, ...)."""
    bundle = Path(bundle)
    out = []
    for key in ENGINES:
        name = (manifest.graphs or {}).get(key, {}).get("file", f"{key}.onnx")
        out.append(bundle / name)
        out += sorted(p for p in bundle.glob(name + "*") if p.name != name and p.is_file())
    return out


def bundle_digest(bundle: str | Path, manifest: Manifest | None = None) -> str:
    """sha256 over the ONNX graphs the engines are built from and the manifest fields they depend on.

    Cheap for multi-GB bundles: a graph file is hashed whole up to 64 MiB (graphs with external weights are
    small), else by size and its first and last MiB; external weight files by name, size and their first and
    last MiB. Paths and modification times are left out, so a copied bundle keeps its digest; a re-export
    changes it (the manifest's "created" field alone changes on every export).
    """
    bundle = Path(bundle)
    if manifest is None:
        manifest = Manifest.from_dict(read_manifest_json(bundle))
    fields = manifest.to_dict()
    h = hashlib.sha256()
    h.update(json.dumps({k: fields.get(k) for k in DIGEST_FIELDS}, sort_keys=True, default=str).encode())
    for path in graph_files(bundle, manifest):
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            h.update(f"{path.name}:missing".encode())
            continue
        h.update(f"{path.name}:{size}".encode())
        if path.suffix == ".onnx" and size <= _FULL_HASH_LIMIT:
            h.update(path.read_bytes())
        else:
            _sampled(h, path, size)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# Where the engines would run
# ---------------------------------------------------------------------------------------------------------------------


def cuda_device(index: int = 0) -> dict:
    """{"gpu_name", "compute_capability"} of CUDA device `index` through the CUDA driver (libcuda, ctypes).

    The driver API numbers devices after CUDA_VISIBLE_DEVICES, as the CUDA runtime and TensorRT do.
    ValueError when there is no driver or no device.
    """
    lib = None
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        raise UserError("no CUDA driver (libcuda) on this machine: TensorRT engines need an NVIDIA GPU and its "
                        "driver (on a Jetson: JetPack)")

    def check(rc: int, what: str) -> None:
        if rc != 0:
            raise UserError(f"the CUDA driver failed in {what} (CUresult {rc}): is the GPU visible to this process "
                            f"(CUDA_VISIBLE_DEVICES, container --gpus / --runtime nvidia)?")

    dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    raw = ctypes.create_string_buffer(256)
    check(lib.cuInit(0), "cuInit")
    check(lib.cuDeviceGet(ctypes.byref(dev), index), f"cuDeviceGet({index})")
    check(lib.cuDeviceGetName(raw, len(raw), dev), "cuDeviceGetName")
    check(lib.cuDeviceGetAttribute(ctypes.byref(major), 75, dev), "cuDeviceGetAttribute(COMPUTE_CAPABILITY_MAJOR)")
    check(lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev), "cuDeviceGetAttribute(COMPUTE_CAPABILITY_MINOR)")
    return {"gpu_name": raw.value.decode(errors="replace").strip(), "compute_capability": f"{major.value}.{minor.value}"}


def current_env(tensorrt_version: str, device: int = 0) -> dict:
    """The runtime_env for check_engine_entry: this TensorRT (pass tensorrt.__version__) and CUDA device."""
    return {"tensorrt_version": str(tensorrt_version), **cuda_device(device)}


# ---------------------------------------------------------------------------------------------------------------------
# Reading, checking and writing the entry
# ---------------------------------------------------------------------------------------------------------------------

_REQUIRED = ("tensorrt_version", "gpu_name", "compute_capability", "precision", "bundle_digest", "max_context",
             "max_frames", "engines")


def check_engine_entry(bundle: str | Path, manifest: Manifest, runtime_env: dict) -> dict:
    """The manifest's engine entry, when its engines can run here; else ValueError naming what differs.

    runtime_env = {"tensorrt_version", "gpu_name", "compute_capability"} of this process (see current_env).
    Refused: no entry, a damaged entry, another TensorRT version, GPU model or compute capability, a missing or
    truncated engine file, and a bundle re-exported (or its graphs changed) since the engines were built.
    """
    bundle = Path(bundle)
    fix = rebuild_hint(bundle)
    entry = manifest.tensorrt_engines
    if entry is None:
        raise UserError(f"{bundle} has no TensorRT engines (no {ENTRY!r} in its manifest): {fix}")
    missing = [k for k in _REQUIRED if k not in entry] if isinstance(entry, dict) else list(_REQUIRED)
    engines = entry.get("engines") if isinstance(entry, dict) else None
    if missing or not isinstance(engines, dict) or any(not isinstance(engines.get(k), dict) or "file" not in engines[k]
                                                       for k in ENGINES):
        raise UserError(f"{bundle}/{MANIFEST}: the {ENTRY!r} entry is damaged (missing "
                        f"{', '.join(missing) or 'engine files'}): {fix}")
    differ = []
    if str(entry["tensorrt_version"]) != str(runtime_env.get("tensorrt_version")):
        differ.append(f"TensorRT {entry['tensorrt_version']} built them, this device runs TensorRT "
                      f"{runtime_env.get('tensorrt_version')}")
    if str(entry["gpu_name"]) != str(runtime_env.get("gpu_name")):
        differ.append(f"they were built on GPU {entry['gpu_name']!r}, this GPU is {runtime_env.get('gpu_name')!r}")
    if str(entry["compute_capability"]) != str(runtime_env.get("compute_capability")):
        differ.append(f"they were built for compute capability {entry['compute_capability']}, this GPU has "
                      f"{runtime_env.get('compute_capability')}")
    if differ:
        raise UserError(f"the TensorRT engines in {bundle} cannot run here: {'; '.join(differ)} (an engine runs "
                        f"only on the GPU model and TensorRT version it was built with): {fix}")
    for key in ENGINES:
        e = engines[key]
        path = bundle / e["file"]
        if not path.is_file():
            raise UserError(f"the {key} engine {path} is missing (the manifest lists it): {fix}")
        if "bytes" in e and path.stat().st_size != int(e["bytes"]):
            raise UserError(f"the {key} engine {path} has {path.stat().st_size} bytes, the build wrote "
                            f"{e['bytes']}: it is truncated or from another build; {fix}")
    digest = bundle_digest(bundle, manifest)
    if digest != entry["bundle_digest"]:
        raise UserError(f"{bundle} was re-exported (or its ONNX graphs changed) since its TensorRT engines were "
                        f"built: the engines no longer match the graphs; {fix}")
    return entry


def write_engine_entry(bundle: str | Path, entry: dict | None) -> Manifest:
    """Put `entry` into BUNDLE/manifest.json as "tensorrt_engines" (None: remove it), keeping every other key;
    atomic (Manifest.save), so a reader sees the old manifest or the new one, never a partial one.
    Returns the manifest."""
    bundle = Path(bundle)
    if not (bundle / MANIFEST).is_file():
        raise UserError(f"{bundle} is not an rlivs bundle (no {MANIFEST}): export one with rlivs export "
                        f"--target tensorrt")
    manifest = Manifest.from_dict(read_manifest_json(bundle)).with_(tensorrt_engines=entry)
    manifest.save(bundle)
    return manifest
