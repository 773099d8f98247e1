"""TensorRT's runtime API, played by ONNX Runtime on host memory: runs rlivs' TensorRT backend code on CPU.

It checks *our* side of the TensorRT boundary (tensor names, dtypes, shapes, profile choice, the addresses bound
into the KV arena, the copies to and from "device" buffers, the probe slicing) by executing
`runtime/backends/tensorrt/backend.py` line for line. It says nothing about TensorRT itself: engine building,
kernels, fusion and fp16 numerics stay unproven until a TensorRT device runs tests/parity/test_tensorrt_*.py.

  install(monkeypatch, bundle)   fake `tensorrt` module, host-memory DeviceBuffer/Stream, this "GPU" = the
                                 manifest entry's GPU; engine files name the ONNX graph they stand for.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import json
import sys
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort

from rlivs.runtime.backends.tensorrt import backend as trt_backend
from rlivs.runtime.backends.tensorrt.engine_entry import bundle_digest, write_engine_entry

VERSION = "emulated-10.3"
GPU = {"gpu_name": "Emulated Orin", "compute_capability": "8.7"}


class _Enum:
    def __init__(self, **kw):
        self.__dict__.update(kw)


TensorIOMode = _Enum(INPUT="input", OUTPUT="output")


class HostBuffer:
    """Stands in for DeviceBuffer: host memory with a stable address, 256-byte aligned like cudaMalloc."""

    align = 256  # bytes (tests raise it together with the backend's ALIGN)

    def __init__(self, nbytes: int):
        self.nbytes = nbytes
        self._raw = np.zeros(nbytes + self.align, np.uint8)
        self.ptr = self._raw.ctypes.data + (-self._raw.ctypes.data) % self.align
        self.freed = False

    def free(self) -> None:
        self.freed = True


class HostStream:
    """Stands in for Stream: the copies are memmoves, synchronize does nothing (everything ran already)."""

    ptr = 0
    copies = 0  # bytes copied host -> device -> host (tests read it: the cache must not travel)

    def to_device(self, dst: int, host: np.ndarray) -> None:
        host = np.ascontiguousarray(host)
        ctypes.memmove(dst, host.ctypes.data, host.nbytes)
        HostStream.copies += host.nbytes

    def to_host(self, host: np.ndarray, src: int) -> np.ndarray:
        ctypes.memmove(host.ctypes.data, src, host.nbytes)
        HostStream.copies += host.nbytes
        return host

    def on_device(self, dst: int, src: int, nbytes: int) -> None:
        ctypes.memmove(dst, src, nbytes)

    def on_device_2d(self, dst: int, dst_pitch: int, src: int, src_pitch: int, width: int, rows: int) -> None:
        for r in range(rows):  # cudaMemcpy2DAsync, row by row
            ctypes.memmove(dst + r * dst_pitch, src + r * src_pitch, width)

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        pass


def _view(ptr: int, shape, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    buf = (ctypes.c_byte * (n * dtype.itemsize)).from_address(ptr)
    return np.frombuffer(buf, dtype=dtype, count=n).reshape(shape)


class _Context:
    def __init__(self, engine: "_Engine"):
        self.engine, self.shapes, self.addresses = engine, {}, {}
        self.profile, self.log = 0, []  # (profile, {input: shape}) per execution

    def set_optimization_profile_async(self, index: int, stream) -> bool:
        assert 0 <= index < self.engine.num_optimization_profiles
        self.profile = index
        return True

    def set_input_shape(self, name: str, shape) -> bool:
        self.shapes[name] = tuple(int(d) for d in shape)
        lo, hi = self.engine.profiles[self.profile].get(name, (None, None))
        return lo is None or all(a <= d <= b for a, d, b in zip(lo, self.shapes[name], hi))

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = int(ptr)
        return True

    def execute_async_v3(self, stream) -> bool:
        sess = self.engine.session
        feeds = {i.name: _view(self.addresses[i.name], self.shapes[i.name], self.engine.dtypes[i.name]).copy()
                 for i in sess.get_inputs()}
        self.log.append((self.profile, dict(self.shapes)))
        for o, value in zip(sess.get_outputs(), sess.run(None, feeds)):
            _view(self.addresses[o.name], value.shape, value.dtype)[...] = value
        return True


class _Engine:
    def __init__(self, onnx_path: Path, profiles: list[dict]):
        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        ios = [*self.session.get_inputs(), *self.session.get_outputs()]
        np_types = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
                    "tensor(bool)": "bool"}
        self.names = [v.name for v in ios]
        self.modes = {v.name: TensorIOMode.INPUT for v in self.session.get_inputs()}
        self.dtypes = {v.name: np_types[v.type] for v in ios}
        self.shapes = {v.name: tuple(d if isinstance(d, int) else -1 for d in v.shape) for v in ios}
        self.profiles = [{name: (s["min"], s["max"]) for name, s in p["shapes"].items()} for p in profiles]
        self.num_optimization_profiles = len(self.profiles)
        self.num_io_tensors = len(self.names)
        self.contexts = []

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return self.modes.get(name, TensorIOMode.OUTPUT)

    def get_tensor_dtype(self, name):
        return self.dtypes[name]

    def get_tensor_shape(self, name):
        return self.shapes[name]

    def create_execution_context(self):
        self.contexts.append(_Context(self))
        return self.contexts[-1]


class _Runtime:
    def __init__(self, logger):
        self.logger = logger

    def deserialize_cuda_engine(self, data: bytes):
        spec = json.loads(data)
        return _Engine(Path(spec["onnx"]), spec["profiles"])


def _module() -> types.ModuleType:
    m = types.ModuleType("tensorrt")
    m.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # importlib.util.find_spec reads it
    m.__version__ = VERSION
    m.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=2: None})
    m.Runtime = _Runtime
    m.TensorIOMode = TensorIOMode
    m.nptype = lambda dtype: np.dtype(dtype).type
    return m


def install(monkeypatch, bundle: Path, max_context: int | None = None) -> dict:
    """Emulated engines for `bundle` (a --target tensorrt bundle) and the emulated device; returns the entry."""
    from rlivs.export.tensorrt_build import EngineBuildConfig, profile_specs
    from rlivs.runtime.backends.bundle import load_manifest

    monkeypatch.setitem(sys.modules, "tensorrt", _module())
    monkeypatch.setattr(trt_backend, "DeviceBuffer", HostBuffer)
    monkeypatch.setattr(trt_backend, "Stream", HostStream)
    monkeypatch.setattr(trt_backend, "current_env", lambda version, device=0: {"tensorrt_version": version, **GPU})
    write_engine_entry(bundle, None)
    manifest = load_manifest(bundle)
    specs = profile_specs(manifest, EngineBuildConfig(max_context=max_context))
    engines = {}
    for key in ("vision", "decoder"):
        (bundle / f"{key}.engine").write_text(json.dumps({"onnx": str(bundle / f"{key}.onnx"), "profiles": specs[key]}))
        engines[key] = {"file": f"{key}.engine", "profiles": specs[key]}
    entry = {"schema": 1, "tensorrt_version": VERSION, **GPU, "precision": "emulated",
             "bundle_digest": bundle_digest(bundle, manifest), "max_context": specs["max_context"],
             "max_frames": specs["max_frames"], "max_batch": specs["max_batch"], "engines": engines}
    write_engine_entry(bundle, entry)
    return entry


def export_fp32_bundle(tmp_path_factory, model: str, check: bool = False) -> Path:
    """A TensorRT-target bundle of a tiny model in float32 (embeddings and KV cache), exported once into a fresh
    temp dir: what the emulated-backend tests run."""
    from rlivs.export.bundle import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp(f"trt-{model}") / model
    export_bundle(model, out, ExportConfig(target="tensorrt", embed_dtype="float32", kv_dtype="float32", check=check))
    return out


def emulated_fixture(bundle_fixture: str):
    """A pytest fixture that installs the emulated TensorRT runtime over the bundle of `bundle_fixture`."""
    import pytest

    @pytest.fixture()
    def emulated(monkeypatch, request):
        bundle = request.getfixturevalue(bundle_fixture)
        install(monkeypatch, bundle)
        return bundle

    return emulated
