"""Backends behind one interface (`base.Backend`), chosen once at start-up by `load_backend`.

| name  | runs                      | needs                       |
|-------|---------------------------|-----------------------------|
| torch | an HF-format model dir    | the `torch` extra (reference) |

ONNX Runtime and TensorRT backends run exported bundles (`rlivs export`, planned).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from ..config import ProbeConfig
from .base import Backend, DecodeState, ModelInfo, StepOutput

log = logging.getLogger("rlivs.backend")

BACKENDS = ("auto", "torch")

__all__ = ["Backend", "DecodeState", "ModelInfo", "StepOutput", "BACKENDS", "choose_backend", "load_backend"]


def choose_backend(name: str, model_dir: Path) -> tuple[str, str]:
    """-> (backend name, the reason it was chosen)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    has_torch = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None
    if name == "auto":
        if not (model_dir / "config.json").exists():
            raise ValueError(f"{model_dir} is not an HF-format model directory (no config.json)")
        if not has_torch:
            raise ValueError(
                f"{model_dir} is an HF-format model and only the torch backend runs those, but torch/transformers "
                "are not installed: pip install torch==2.13.0 && pip install 'rlivs[torch]'"
            )
        return "torch", "an HF-format model directory runs on the torch reference backend"
    if name == "torch" and not has_torch:
        raise ValueError("--backend torch needs torch and transformers: pip install torch==2.13.0 && pip install 'rlivs[torch]'")
    return name, "asked for explicitly"


def load_backend(model_dir: Path, *, name: str = "auto", model_id: str | None = None,
                 probe: ProbeConfig | None = None, device: str = "cpu", dtype: str = "float32",
                 threads: int | None = None) -> Backend:
    chosen, why = choose_backend(name, Path(model_dir))
    log.info("backend: %s (%s)", chosen, why)
    if chosen == "torch":
        from .torch import TorchBackend

        return TorchBackend(model_dir, model_id=model_id, probe=probe, device=device, dtype=dtype, threads=threads)
    raise AssertionError(chosen)  # choose_backend returns only known names
