"""Device memory and streams for the TensorRT backend, through cuda-python's runtime bindings (no torch).

Every call returns (cudaError_t, *values) in cuda-python; `_check` turns a failure into an error that says
what failed. Buffers are plain device pointers (ints) that TensorRT's set_tensor_address takes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rlivs.runtime.errors import UserError


def cudart():
    """cuda-python's runtime module (cuda.bindings.runtime since 12.6; cuda.cudart before)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError:
            raise UserError("the TensorRT backend needs cuda-python for device memory: pip install 'rlivs[tensorrt]' "
                            "(cuda-python); TensorRT itself comes with JetPack on a Jetson") from None
    return runtime


def _check(result, what: str):
    err, *values = result if isinstance(result, tuple) else (result,)
    rt = cudart()
    if err != rt.cudaError_t.cudaSuccess:
        _, name = rt.cudaGetErrorName(err)
        name = name.decode() if isinstance(name, bytes) else str(err)
        hint = (" (no usable NVIDIA driver/GPU in this process: run on the Jetson/GPU, or use --backend onnxruntime)"
                if name in ("cudaErrorInsufficientDriver", "cudaErrorNoDevice") else "")
        raise UserError(f"CUDA {what} failed: {name}{hint}")
    return values[0] if len(values) == 1 else tuple(values) if values else None


def device_count() -> int:
    return int(_check(cudart().cudaGetDeviceCount(), "cudaGetDeviceCount"))


@dataclass
class DeviceBuffer:
    """One cudaMalloc allocation of `nbytes` (device pointer `ptr`); freed by free()."""

    nbytes: int
    ptr: int = 0

    def __post_init__(self):
        self.ptr = int(_check(cudart().cudaMalloc(max(self.nbytes, 1)), f"cudaMalloc({self.nbytes} bytes)"))

    def free(self) -> None:
        if self.ptr:
            _check(cudart().cudaFree(self.ptr), "cudaFree")
            self.ptr = 0


class Stream:
    """A CUDA stream with the copies the backend needs. Host arrays must stay alive until synchronize()."""

    def __init__(self):
        self.rt = cudart()
        self.handle = _check(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    @property
    def ptr(self) -> int:
        return int(self.handle)

    def to_device(self, dst: int, host: np.ndarray) -> None:
        host = np.ascontiguousarray(host)
        _check(self.rt.cudaMemcpyAsync(dst, host.ctypes.data, host.nbytes,
                                       self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.handle), "copy to device")

    def to_host(self, host: np.ndarray, src: int) -> np.ndarray:
        _check(self.rt.cudaMemcpyAsync(host.ctypes.data, src, host.nbytes,
                                       self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.handle), "copy to host")
        return host

    def on_device(self, dst: int, src: int, nbytes: int) -> None:
        _check(self.rt.cudaMemcpyAsync(dst, src, nbytes, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice,
                                       self.handle), "device-to-device copy")

    def on_device_2d(self, dst: int, dst_pitch: int, src: int, src_pitch: int, width: int, rows: int) -> None:
        """`rows` rows of `width` bytes, device to device, each `src_pitch` / `dst_pitch` bytes after the last."""
        _check(self.rt.cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width, rows,
                                         self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, self.handle),
               "device-to-device 2-D copy")

    def synchronize(self) -> None:
        _check(self.rt.cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.handle is not None:
            _check(self.rt.cudaStreamDestroy(self.handle), "cudaStreamDestroy")
            self.handle = None
