"""Backends behind one interface (`base.Backend`), chosen once at start-up by `load_backend` from a registry.

| name        | runs                                       | needs                                          |
|-------------|--------------------------------------------|------------------------------------------------|
| tensorrt    | a bundle's engines (`rlivs build-engines`) | tensorrt (JetPack) + cuda-python, a GPU        |
| onnxruntime | an exported bundle (`rlivs export`)        | onnxruntime (or onnxruntime-gpu)               |
| torch       | an HF-format model directory               | the `torch` extra (the reference)              |

Each registry entry says whether it runs a given model directory (`refusal`: None, or what to do instead), which
packages it lacks here (`missing`: None, or what to install) and how to build it. `auto` takes the first entry, in
the table's order, that runs the model (TensorRT only where its packages import, else the bundle falls through to
ONNX Runtime). The choice and its reason are logged once at start-up.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from ..config import EngineConfig, ProbeConfig
from ..errors import UserError
from .base import Backend, BatchState, DecodeState, ModelInfo, StepOutput
from .bundle import Manifest, is_bundle, load_manifest, onnxruntime_gap

log = logging.getLogger("rlivs.backend")

__all__ = ["Backend", "BatchState", "DecodeState", "ModelInfo", "StepOutput", "BACKENDS", "REGISTRY", "choose_backend",
           "load_backend", "check_engine_config", "default_threads"]

KV_CACHES = ("auto", "dynamic", "static")


def _has(*modules: str) -> bool:
    def found(m: str) -> bool:
        try:
            return importlib.util.find_spec(m) is not None
        except ModuleNotFoundError:  # a dotted name whose parent package is missing
            return False

    return all(found(m) for m in modules)


@dataclass(frozen=True)
class BackendEntry:
    name: str
    why: Callable[[Path, Manifest | None], str]  # why `auto` picked it for this model (for the log)
    refusal: Callable[[Path, Manifest | None], str | None]  # None when it runs this model dir (manifest or None)
    missing: Callable[[Path, Manifest | None], str | None]  # None when its packages (in a version that reads this
    #                                                          model) are here, else what to install or re-export
    build: Callable[[Path, EngineConfig, str, ProbeConfig | None, Manifest | None], Backend]
    auto_needs: tuple[str, ...] = ()  # modules without which `auto` passes it over (others: chosen, then refused)


# ---- tensorrt -------------------------------------------------------------------------------------------------------

def _trt_refusal(path: Path, manifest: Manifest | None) -> str | None:
    if manifest is None or manifest.tensorrt_engines is None:
        return (f"{path} has no TensorRT engines: export with rlivs export --target tensorrt, then build them on the "
                f"device with rlivs build-engines --bundle {path}")
    return None


def _trt_missing(path: Path, manifest: Manifest | None) -> str | None:
    if not _has("tensorrt"):
        return ("the tensorrt backend needs TensorRT's Python package (JetPack provides it on a Jetson): "
                "python3 -c 'import tensorrt' must work; else use --backend onnxruntime")
    if not (_has("cuda.bindings") or _has("cuda.cudart")):
        return "the tensorrt backend needs cuda-python for device memory: pip install 'rlivs[tensorrt]'"
    return None


def _bundle_checks(manifest: Manifest, ec: EngineConfig, probe: ProbeConfig | None) -> None:
    """Options that a bundle fixed at export cannot take at run time."""
    if probe is not None and probe.layers is not None and tuple(sorted(probe.layers)) != tuple(manifest.probe_layers):
        raise UserError(f"the bundle was exported with probe layers {manifest.probe_layers}, not "
                        f"{list(probe.layers)}: re-export with rlivs export --probe-layers ...")
    if ec.dtype != "float32":
        raise UserError(f"--dtype {ec.dtype} applies to the torch backend; a bundle's precision is set at export")
    if ec.kv_cache != "auto" or ec.max_context is not None:
        raise UserError("--kv-cache / --max-context apply to the torch backend; a bundle's KV cache is set at export "
                        "(rlivs export --max-context N)")


def _build_trt(path: Path, ec: EngineConfig, model_id: str, probe: ProbeConfig | None, manifest: Manifest | None):
    from .tensorrt import TrtBackend

    _bundle_checks(manifest, ec, probe)
    return TrtBackend(path, manifest=manifest, device=int(ec.device.partition(":")[2] or 0))


# ---- onnxruntime ----------------------------------------------------------------------------------------------------

def _ort_refusal(path: Path, manifest: Manifest | None) -> str | None:
    if manifest is None:
        if (path / "config.json").exists() and not any(path.glob("*.onnx")):
            return (f"{path} is not an exported bundle: run rlivs export --model {path} --out BUNDLE and pass "
                    "--bundle BUNDLE (or use --backend torch)")
        try:
            load_manifest(path)
        except UserError as e:  # "... is not an rlivs bundle (no manifest.json): create one with ..."
            return str(e)
    return None


def _ort_missing(path: Path, manifest: Manifest | None) -> str | None:
    if not _has("onnxruntime"):
        return "the onnxruntime backend needs onnxruntime: pip install 'rlivs[ort]' (onnxruntime-gpu on a CUDA device)"
    return onnxruntime_gap(path, manifest) if manifest is not None else None  # too old for the bundle's opset


def _ort_why(path: Path, manifest: Manifest | None) -> str:
    if manifest is not None and manifest.tensorrt_engines is not None:
        return "the bundle has TensorRT engines but tensorrt is not importable here, so it runs on ONNX Runtime"
    return "an exported bundle runs on ONNX Runtime"


def _build_ort(path: Path, ec: EngineConfig, model_id: str, probe: ProbeConfig | None, manifest: Manifest | None):
    from .onnxruntime import OrtBackend

    _bundle_checks(manifest, ec, probe)
    providers = ["CUDAExecutionProvider"] if ec.device.startswith("cuda") else ["CPUExecutionProvider"]
    return OrtBackend(path, providers=providers, threads=ec.threads, manifest=manifest)


# ---- torch ----------------------------------------------------------------------------------------------------------

def _torch_refusal(path: Path, manifest: Manifest | None) -> str | None:
    if manifest is not None:
        return (f"{path} is an exported bundle; the torch backend runs HF-format model directories: use --backend "
                "onnxruntime (or auto)")
    if not (path / "config.json").exists():
        return f"{path} is not an HF-format model directory (no config.json)"
    return None


def _torch_missing(path: Path, manifest: Manifest | None) -> str | None:
    if not _has("torch", "transformers"):
        return (f"{path} is an HF-format model and only the torch backend runs those, but torch/transformers are not "
                "installed: pip install torch==2.13.0 && pip install 'rlivs[torch]', or export a bundle on another "
                "machine (rlivs export) and run it with --bundle")
    return None


def _build_torch(path: Path, ec: EngineConfig, model_id: str, probe: ProbeConfig | None, manifest: Manifest | None):
    from .torch import TorchBackend

    extra = {} if ec.max_context is None else {"max_context": ec.max_context}
    return TorchBackend(path, model_id=model_id, probe=probe, device=ec.device, dtype=ec.dtype, threads=ec.threads,
                        cache=None if ec.kv_cache == "auto" else ec.kv_cache, **extra)


REGISTRY: dict[str, BackendEntry] = {e.name: e for e in (  # in `auto`'s order of preference
    BackendEntry("tensorrt", lambda p, m: "the bundle has TensorRT engines and tensorrt is importable",
                 _trt_refusal, _trt_missing, _build_trt, auto_needs=("tensorrt",)),
    BackendEntry("onnxruntime", _ort_why, _ort_refusal, _ort_missing, _build_ort),
    BackendEntry("torch", lambda p, m: "an HF-format model directory runs on the torch reference backend",
                 _torch_refusal, _torch_missing, _build_torch),
)}
BACKENDS = ("auto", *REGISTRY)


def choose_backend(name: str, model_dir: Path, bundle_given: bool = False) -> tuple[str, str]:
    """-> (backend name, the reason it was chosen). Errors say what to install or export. `bundle_given`: the user
    passed the directory as --bundle, so under `auto` a directory that is not a bundle is refused as one."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir) if is_bundle(model_dir) else None
    if name != "auto":
        entry, why = REGISTRY[name], "asked for explicitly"
    elif bundle_given and manifest is None:
        entry, why = REGISTRY["onnxruntime"], "--bundle names an exported bundle"
    else:
        runs = [e for e in REGISTRY.values() if e.refusal(model_dir, manifest) is None
                and _has(*e.auto_needs)]
        entry = runs[0] if runs else list(REGISTRY.values())[-1]  # none runs it: the last one says why not
        why = entry.why(model_dir, manifest)
    problem = entry.refusal(model_dir, manifest) or entry.missing(model_dir, manifest)
    if problem:
        raise UserError(problem)
    return entry.name, why


def load_backend(model_dir: Path, engine: EngineConfig | None = None, *, model_id: str | None = None,
                 probe: ProbeConfig | None = None) -> Backend:
    """The backend `engine` (EngineConfig) asks for, on `model_dir`. kv_cache / max_context: the torch backend's KV
    cache (auto: static + CUDA graph on cuda, dynamic on cpu); an exported bundle's cache is fixed at export."""
    ec = check_engine_config(engine or EngineConfig())
    model_dir = Path(model_dir)
    chosen, why = choose_backend(ec.backend, model_dir, bundle_given=ec.bundle is not None)
    threads = ""
    if ec.threads is None and not ec.device.startswith("cuda"):
        ec = replace(ec, threads=default_threads())
        threads = f"; {ec.threads} CPU threads: the physical cores this process may use (--threads N to change)"
    log.info("backend: %s (%s)%s", chosen, why, threads)
    manifest = load_manifest(model_dir) if chosen != "torch" else None
    return REGISTRY[chosen].build(model_dir, ec, model_id or str(model_dir), probe, manifest)


def check_engine_config(ec: EngineConfig) -> EngineConfig:
    """The EngineConfig checks that need no model: backend and KV-cache names, threads. Returns `ec` or raises
    UserError; `load_backend` calls it, and the CLI calls it before anything loads."""
    if ec.backend not in BACKENDS:
        raise UserError(f"unknown backend {ec.backend!r}: choose one of {', '.join(BACKENDS)}")
    if ec.kv_cache not in KV_CACHES:
        raise UserError(f"unknown KV cache {ec.kv_cache!r}: use one of {', '.join(KV_CACHES)}")
    if ec.threads is not None and ec.threads < 1:
        raise UserError(f"threads must be >= 1, got {ec.threads}: pass e.g. --threads 4, or leave it out for the "
                        f"default (the physical cores this process may use: {default_threads()} here)")
    return ec


def default_threads() -> int:
    """CPU threads a backend uses when --threads is not given: the physical cores this process may run on (its CPU
    affinity, hyperthread siblings counted once, capped by a cgroup CPU quota). More threads than that only
    oversubscribe the cores (on a busy 2-core machine, 2-4x slower than 1 thread)."""
    import math
    import os

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for c in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{c}/topology")
        try:
            cores.add((topo.joinpath("physical_package_id").read_text().strip(),
                       topo.joinpath("core_id").read_text().strip()))
        except OSError:  # no sysfs topology (not Linux, or hidden): count logical CPUs
            cores.add(("cpu", str(c)))
    n = len(cores) or 1
    try:  # cgroup v2 quota, e.g. "200000 100000" = 2 CPUs
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n
