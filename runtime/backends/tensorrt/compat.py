"""Which TensorRT versions the engine builder and the TensorRT backend accept, and the fallbacks between them.

Every TensorRT Python API rlivs calls exists in TensorRT 10.3, the version JetPack 6.1/6.2 ship; docs/jetson.md
lists each one with the release it came in (checked against NVIDIA/TensorRT's python bindings at tag v10.3.0).
This module holds the places where TensorRT versions differ:

  older than 10.0        refused: int64 I/O tensors (position_ids) came in 9.0/10.0, and TensorRT 8.x's
                         create_network(0) makes an implicit-batch network the ONNX parser rejects.
                         JetPack 5 ships TensorRT 8.5/8.6.
  10.0                   ICudaEngine.device_memory_size_v2 came in 10.1: fall back to device_memory_size.
  11 (not on JetPack)    weak typing is gone (BuilderFlag.FP16, OBEY_PRECISION_CONSTRAINTS, ILayer.precision /
                         set_output_type, Builder.platform_has_fast_fp16; deprecated since 10.12, 10.5 for the last):
                         an fp16 build is refused with what to do, the fp16 platform check is skipped.

Pure Python: the functions take the imported `tensorrt` module (or its objects) as an argument.
"""

from __future__ import annotations

import re

from rlivs.runtime.errors import UserError

MIN_TENSORRT = (10, 0)
JETPACK_TENSORRT = "10.3"  # JetPack 6.1 and 6.2
# (owner, attribute) the fp16 build needs: TensorRT's weak typing, removed in TensorRT 11
WEAK_TYPING = (("BuilderFlag", "FP16"), ("BuilderFlag", "OBEY_PRECISION_CONSTRAINTS"), ("ILayer", "precision"),
               ("ILayer", "set_output_type"))


def tensorrt_version(trt) -> tuple[int, int] | None:
    """(major, minor) of `trt.__version__` ("10.3.0", "10.3.0.30" ...); None when it does not read as a version."""
    m = re.match(r"\D*(\d+)\.(\d+)", str(getattr(trt, "__version__", "")))
    return (int(m[1]), int(m[2])) if m else None


def require_tensorrt(trt, what: str, fallback: str) -> None:
    """Refuse a TensorRT older than MIN_TENSORRT, naming the version it is, the one needed and `fallback`."""
    found = tensorrt_version(trt)
    if found is not None and found < MIN_TENSORRT:
        raise UserError(f"{what} needs TensorRT {MIN_TENSORRT[0]}.{MIN_TENSORRT[1]} or newer (JetPack 6.1/6.2 ship "
                        f"TensorRT {JETPACK_TENSORRT}), but this is TensorRT {trt.__version__}: the decoder's int64 "
                        f"position_ids and the explicit-batch network rlivs builds are beyond TensorRT {found[0]}.x "
                        f"(JetPack 5 ships TensorRT 8.5/8.6). Upgrade to JetPack 6 (or TensorRT 10 elsewhere), or "
                        f"{fallback}")


def missing_weak_typing(trt) -> list[str]:
    """The weak-typing APIs the fp16 build uses that `trt` lacks (all of them on TensorRT 11, none on 10.x)."""
    return [f"{owner}.{name}" for owner, name in WEAK_TYPING if not hasattr(getattr(trt, owner, None), name)]


def require_fp16_build(trt) -> None:
    """Refuse --precision fp16 where TensorRT has no weak typing (TensorRT 11 builds strongly typed networks only)."""
    missing = missing_weak_typing(trt)
    if missing:
        version = getattr(trt, "__version__", "?")
        raise UserError(f"TensorRT {version} has no {', '.join(missing)}: the fp16 build (FP16 kernels, the probe "
                        f"layers' score path pinned to fp32) needs TensorRT's weak typing, deprecated in 10.12 and "
                        f"removed in 11. Build with --precision fp32, or with TensorRT 10.x (JetPack 6.1/6.2 ship "
                        f"{JETPACK_TENSORRT})")


def platform_has_fast_fp16(builder) -> bool | None:
    """Builder.platform_has_fast_fp16 (deprecated in 10.5, removed in 11); None where TensorRT no longer has it."""
    return getattr(builder, "platform_has_fast_fp16", None)


def device_memory_size(engine) -> int:
    """The engine's execution-context device memory: device_memory_size_v2 (TensorRT 10.1+), else
    device_memory_size (10.0; deprecated in 10.1, removed in 11)."""
    if hasattr(engine, "device_memory_size_v2"):
        return int(engine.device_memory_size_v2)
    return int(engine.device_memory_size)
