"""Backends behind one interface (`base.Backend`), chosen once at start-up by `load_backend`.

| name        | runs                                | needs                                   |
|-------------|-------------------------------------|-----------------------------------------|
| torch       | an HF-format model directory        | the `torch` extra (the reference)       |
| onnxruntime | an exported bundle (`rlivs export`) | onnxruntime (or onnxruntime-gpu)        |
| tensorrt    | a bundle's engines (`rlivs build-engines`) | tensorrt (JetPack) + cuda-python, a GPU |

`auto` picks by what the model path is: a bundle with TensorRT engines runs on TensorRT when tensorrt
is importable, any other bundle on ONNX Runtime, an HF directory on torch. The choice and its reason
are logged once at start-up.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from ..config import ProbeConfig
from .base import Backend, DecodeState, ModelInfo, StepOutput
from .bundle import is_bundle, load_manifest
from rlivs.runtime.errors import UserError

log = logging.getLogger("rlivs.backend")

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")

__all__ = ["Backend", "DecodeState", "ModelInfo", "StepOutput", "BACKENDS", "choose_backend", "load_backend"]


def _has(*modules: str) -> bool:
    def found(m: str) -> bool:
        try:
            return importlib.util.find_spec(m) is not None
        except ModuleNotFoundError:  # a dotted name whose parent package is missing
            return False

    return all(found(m) for m in modules)


def choose_backend(name: str, model_dir: Path) -> tuple[str, str]:
    """-> (backend name, the reason it was chosen). Errors say what to install or export."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    bundle = is_bundle(model_dir)
    engines = bundle and "tensorrt_engines" in load_manifest(model_dir)
    if name == "auto":
        name = "onnxruntime" if bundle else "torch"
        why = ("an exported bundle runs on ONNX Runtime" if bundle
               else "an HF-format model directory runs on the torch reference backend")
        if engines and _has("tensorrt"):
            name, why = "tensorrt", "the bundle has TensorRT engines and tensorrt is importable"
        elif engines:
            why = "the bundle has TensorRT engines but tensorrt is not importable here, so it runs on ONNX Runtime"
    else:
        why = "asked for explicitly"
    if name == "tensorrt":
        if not engines:
            raise UserError(f"{model_dir} has no TensorRT engines: export with rlivs export --target tensorrt, then "
                            f"build them on the device with rlivs build-engines --bundle {model_dir}")
        if not _has("tensorrt"):
            raise UserError("the tensorrt backend needs TensorRT's Python package (JetPack provides it on a Jetson): "
                            "python3 -c 'import tensorrt' must work; else use --backend onnxruntime")
        if not (_has("cuda.bindings") or _has("cuda.cudart")):
            raise UserError("the tensorrt backend needs cuda-python for device memory: pip install 'rlivs[tensorrt]'")
    if name == "onnxruntime":
        if not bundle:
            if (Path(model_dir) / "config.json").exists() and not any(Path(model_dir).glob("*.onnx")):
                raise UserError(f"{model_dir} is not an exported bundle: run rlivs export --model {model_dir} --out "
                                "BUNDLE and pass --bundle BUNDLE (or use --backend torch)")
            load_manifest(model_dir)  # raises: "... is not an rlivs bundle (no manifest.json): create one with ..."
        if not _has("onnxruntime"):
            raise UserError("the onnxruntime backend needs onnxruntime: pip install 'rlivs[ort]' "
                            "(onnxruntime-gpu on a CUDA device)")
    if name == "torch":
        if bundle:
            raise UserError(f"{model_dir} is an exported bundle; the torch backend runs HF-format model directories: "
                            "use --backend onnxruntime (or auto)")
        if not (model_dir / "config.json").exists():
            raise UserError(f"{model_dir} is not an HF-format model directory (no config.json)")
        if not _has("torch", "transformers"):
            raise UserError(f"{model_dir} is an HF-format model and only the torch backend runs those, but torch/"
                            "transformers are not installed: pip install torch==2.13.0 && pip install 'rlivs[torch]', "
                            "or export a bundle on another machine (rlivs export) and run it with --bundle")
    return name, why


KV_CACHES = ("auto", "dynamic", "static")


def load_backend(model_dir: Path, *, name: str = "auto", model_id: str | None = None,
                 probe: ProbeConfig | None = None, device: str = "cpu", dtype: str = "float32",
                 threads: int | None = None, kv_cache: str = "auto", max_context: int | None = None) -> Backend:
    """kv_cache / max_context: the torch backend's KV cache (auto: static + CUDA graph on cuda, dynamic on cpu);
    an exported bundle's cache is fixed at export (rlivs export --max-context)."""
    if kv_cache not in KV_CACHES:
        raise UserError(f"unknown KV cache {kv_cache!r}: use one of {', '.join(KV_CACHES)}")
    if threads is not None and threads < 1:
        raise UserError(f"threads must be >= 1, got {threads}: pass e.g. --threads 4, or leave it out for the "
                        f"backend's default")
    chosen, why = choose_backend(name, Path(model_dir))
    log.info("backend: %s (%s)", chosen, why)
    if chosen == "torch":
        from .torch import TorchBackend

        extra = {} if max_context is None else {"max_context": max_context}
        return TorchBackend(model_dir, model_id=model_id, probe=probe, device=device, dtype=dtype, threads=threads,
                            cache=None if kv_cache == "auto" else kv_cache, **extra)
    manifest = load_manifest(model_dir)
    if probe is not None and probe.layers is not None and tuple(sorted(probe.layers)) != tuple(manifest["probe_layers"]):
        raise UserError(f"the bundle was exported with probe layers {manifest['probe_layers']}, not "
                        f"{list(probe.layers)}: re-export with rlivs export --probe-layers ...")
    if dtype != "float32":
        raise UserError(f"--dtype {dtype} applies to the torch backend; a bundle's precision is set at export")
    if kv_cache != "auto" or max_context is not None:
        raise UserError("--kv-cache / --max-context apply to the torch backend; a bundle's KV cache is set at export "
                        "(rlivs export --max-context N)")
    if chosen == "tensorrt":
        from .tensorrt import TrtBackend

        return TrtBackend(model_dir, manifest=manifest, device=int(device.partition(":")[2] or 0))
    from .onnxruntime import OrtBackend

    providers = ["CUDAExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
    return OrtBackend(model_dir, providers=providers, threads=threads, manifest=manifest)
