"""TensorRT execution of a bundle's engines (built by `rlivs build-engines`), with neither torch nor ONNX Runtime.

  vision.engine   pixel_values (F, 3, H, W) f32 -> visual_tokens (F, P, D) f32            F <= max_frames
  decoder.engine  inputs_embeds (1, L, D) f32, position_ids (1, L) i64, past_kv (K, N, 2, H_kv, Dh)
               -> logits (1, V) f32, new_kv (L, N, 2, H_kv, Dh), probe_attn (1, K + L) f32
                  profile "prefill" (L >= 1) and "decode" (L = 1), picked per step by L

The KV cache of a sequence is one device arena of max_context rows (kv_arena.py): past_kv is bound to its
first K rows and new_kv to the rows after them, so every step appends in place; the cache never leaves the
GPU. Only the step's embeddings and positions go up and the logits and the probe row come down.

No CUDA graph for the decode step: every step binds a longer past_kv and a new_kv address one row further,
and a captured graph holds fixed shapes and addresses (it would have to be re-captured each token). The
torch CUDA path's static cache is where the decode step is graph-captured.

Not run anywhere yet: TensorRT cannot be installed on our development machines. tests/test_tensorrt_backend.py
holds the parity tests that run it where TensorRT and a GPU exist.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..base import Backend, DecodeState, StepOutput
from ..bundle import Manifest, load_manifest, load_tables
from ..kv_arena import ALIGN, Arena, ArenaPool
from . import compat
from .device import DeviceBuffer, Stream
from .engine_entry import check_engine_entry, current_env
from rlivs.runtime.errors import UserError

log = logging.getLogger("rlivs.backend.tensorrt")

DECODER_IO = {"inputs_embeds": "float32", "position_ids": "int64", "past_kv": None, "logits": "float32",
              "new_kv": None, "probe_attn": "float32"}  # None: the bundle's KV dtype
VISION_IO = {"pixel_values": "float32", "visual_tokens": "float32"}


def import_tensorrt():
    """tensorrt, when it is one the backend can use (TensorRT >= 10.0; compat.py)."""
    try:
        import tensorrt
    except ImportError:
        raise UserError("the TensorRT backend needs TensorRT's Python package: it comes with JetPack on a Jetson "
                        "(python3 -c 'import tensorrt'); elsewhere use --backend onnxruntime") from None
    compat.require_tensorrt(tensorrt, "the TensorRT backend", "use --backend onnxruntime")
    return tensorrt


class _Engine:
    """One deserialized engine and its execution context; logs every I/O tensor with name, shape, dtype."""

    def __init__(self, trt, runtime, path: Path, want: dict[str, str], fix: str):
        self.trt = trt
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise UserError(f"TensorRT could not deserialize {path} (see the TensorRT log above): {fix}")
        self.context = self.engine.create_execution_context()
        self.inputs, self.dtypes = set(), {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            self.dtypes[name] = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))).name
            if is_input:
                self.inputs.add(name)
            log.info("%s %-6s %-14s %-28s %s", path.name, "input" if is_input else "output", name,
                     tuple(self.engine.get_tensor_shape(name)), self.dtypes[name])
        wrong = {k: (v, self.dtypes.get(k)) for k, v in want.items() if self.dtypes.get(k) != v}
        if wrong:
            raise UserError(f"{path} does not have the I/O the runtime binds ({{name: (wanted, found)}} {wrong}): "
                            f"it was built from another graph; {fix}")
        self.profile = 0
        self.profiles = {}  # name -> index, from the manifest entry

    def run(self, stream: Stream, shapes: dict[str, tuple], addresses: dict[str, int], profile: int = 0) -> None:
        if profile != self.profile:
            self.context.set_optimization_profile_async(profile, stream.ptr)
            self.profile = profile
        for name, shape in shapes.items():
            if not self.context.set_input_shape(name, shape):
                raise UserError(f"input {name} of shape {shape} is outside the engine's optimization profile "
                                f"{profile}: rebuild the engines with larger --max-context / --max-frames")
        for name, ptr in addresses.items():
            self.context.set_tensor_address(name, ptr)
        if not self.context.execute_async_v3(stream.ptr):
            raise RuntimeError("TensorRT failed to enqueue the engine (see the TensorRT log above)")


@dataclass
class TrtState(DecodeState):
    arena: Arena | None = None  # (max_context, N, 2, H_kv, Dh) on the device; the first `length` rows are the cache
    length: int = 0  # K


class TrtBackend(Backend):
    name = "tensorrt"

    def __init__(self, bundle: str | Path, *, manifest: Manifest | None = None, device: int = 0):
        trt = import_tensorrt()
        self.bundle = Path(bundle)
        m = manifest or load_manifest(self.bundle)
        self.info, self.kv = m.info(self.bundle)
        if self.kv.layout != "arena":
            raise UserError(f"{self.bundle} was not exported for TensorRT (its KV cache layout is {self.kv.layout}): "
                            f"re-export with rlivs export --target tensorrt, then rlivs build-engines")
        entry = check_engine_entry(self.bundle, m, current_env(trt.__version__, device))  # else: rebuild
        fix = f"rebuild the engines with rlivs build-engines --bundle {self.bundle}"
        self.max_context = min(int(entry["max_context"]), self.kv.max_context)
        self.max_frames = int(entry["max_frames"])
        self.logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self.logger)
        self.stream = Stream()
        kv_io = {"past_kv": self.kv.dtype, "new_kv": self.kv.dtype}
        self.vision = _Engine(trt, runtime, self.bundle / entry["engines"]["vision"]["file"], VISION_IO, fix)
        self.decoder = _Engine(trt, runtime, self.bundle / entry["engines"]["decoder"]["file"],
                               {k: v or kv_io[k] for k, v in DECODER_IO.items()}, fix)
        names = {p.get("name"): int(p.get("index", i)) for i, p in enumerate(entry["engines"]["decoder"]["profiles"])}
        self.prefill_profile, self.decode_profile = names.get("prefill", 0), names.get("decode", 1)
        d, v, (h, w), p = self.info.hidden_size, self.info.vocab_size, self.info.image_size, self.info.tokens_per_frame
        self.buf = {  # device buffers sized for the largest step the profiles accept
            "inputs_embeds": DeviceBuffer(self.max_context * d * 4), "position_ids": DeviceBuffer(self.max_context * 8),
            "logits": DeviceBuffer(v * 4), "probe_attn": DeviceBuffer(self.max_context * 4),
            "pixel_values": DeviceBuffer(self.max_frames * 3 * h * w * 4),
            "visual_tokens": DeviceBuffer(self.max_frames * p * d * 4)}
        self.host_logits = np.empty(v, np.float32)  # (V,)
        self.host_probe = np.empty(self.max_context, np.float32)  # (K_max,)
        # new_kv goes straight into the arena when its row offset keeps TensorRT's 256-byte alignment;
        # otherwise into a scratch buffer and then device-to-device into the arena (still no host trip)
        self.in_place = self.kv.row_bytes % ALIGN == 0
        if not self.in_place:
            self.buf["new_kv"] = DeviceBuffer(self.max_context * self.kv.row_bytes)
        nbytes = self.max_context * self.kv.row_bytes
        self.pool = ArenaPool(lambda: Arena.allocate(self._alloc_arena, nbytes, ALIGN), free=lambda a: a.handle.free())
        self.table, self.newline = load_tables(self.bundle, self.info)  # (V, D) memory-mapped, (D,)
        log.info("tensorrt backend: bundle %s (%s), TensorRT %s on %s (sm %s), %s engines, probe layers %s, KV arena "
                 "%d x %s (%.1f MB per sequence, %s)", self.bundle, self.info.model_id, trt.__version__,
                 entry["gpu_name"], entry["compute_capability"], entry["precision"], self.info.probe_layers,
                 self.max_context, self.kv.dtype, nbytes / 1e6, "in place" if self.in_place else "via scratch")

    @staticmethod
    def _alloc_arena(nbytes: int) -> tuple[DeviceBuffer, int]:
        buf = DeviceBuffer(nbytes)
        return buf, buf.ptr

    def encode_frames(self, pixels: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(pixels, dtype=np.float32)  # (T, 3, H, W)
        out = np.empty((x.shape[0], self.info.tokens_per_frame, self.info.hidden_size), np.float32)  # (T, P, D)
        for a in range(0, x.shape[0], self.max_frames):  # the vision profile takes up to max_frames at once
            chunk, dst = x[a: a + self.max_frames], out[a: a + self.max_frames]
            self.stream.to_device(self.buf["pixel_values"].ptr, chunk)
            self.vision.run(self.stream, {"pixel_values": chunk.shape},
                            {"pixel_values": self.buf["pixel_values"].ptr, "visual_tokens": self.buf["visual_tokens"].ptr})
            self.stream.to_host(dst, self.buf["visual_tokens"].ptr)
            self.stream.synchronize()
        return out

    def image_newline(self) -> np.ndarray:
        return self.newline

    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.table[np.asarray(ids, dtype=np.int64)], dtype=np.float32)  # (L, D)

    def new_state(self) -> TrtState:
        state = TrtState()
        state.arena = self.pool.acquire(state)
        return state

    def step(self, embeds: np.ndarray, state: TrtState, probe_rows: int = 1) -> StepOutput:
        if probe_rows > 1:
            raise UserError("exported decoders return the probe attention of the last query row only (probe_rows <= 1)")
        x = np.ascontiguousarray(embeds, dtype=np.float32)[None]  # (1, L, D)
        n_new, k = x.shape[1], state.length
        self.kv.check_room(k, n_new)
        pos = np.arange(k, k + n_new, dtype=np.int64)[None]  # (1, L); host arrays live until the synchronize below
        self.stream.to_device(self.buf["inputs_embeds"].ptr, x)
        self.stream.to_device(self.buf["position_ids"].ptr, pos)
        past_at, new_at = self.kv.offsets(k)
        target = state.arena.ptr + new_at if self.in_place else self.buf["new_kv"].ptr
        addresses = {name: self.buf[name].ptr for name in ("inputs_embeds", "position_ids", "logits", "probe_attn")}
        addresses.update(past_kv=state.arena.ptr + past_at, new_kv=target)
        self.decoder.run(self.stream, {"inputs_embeds": x.shape, "position_ids": pos.shape,
                                       "past_kv": (k, *self.kv.row_shape)}, addresses,
                         profile=self.decode_profile if n_new == 1 else self.prefill_profile)
        if not self.in_place:
            self.stream.on_device(state.arena.ptr + new_at, target, n_new * self.kv.row_bytes)
        self.stream.to_host(self.host_logits, self.buf["logits"].ptr)
        probe = self.stream.to_host(self.host_probe[: k + n_new], self.buf["probe_attn"].ptr) if probe_rows else None
        self.stream.synchronize()
        state.length += n_new
        return StepOutput(logits=self.host_logits.copy(), probe_attn=None if probe is None else probe.copy()[None])

    def arena_rows(self, state: TrtState) -> np.ndarray:
        """(K, N, 2, H_kv, Dh) copy of a state's cache, brought to the host (tests)."""
        out = np.empty((state.length, *self.kv.row_shape), self.kv.dtype)
        self.stream.to_host(out, state.arena.ptr)
        self.stream.synchronize()
        return out

    def close(self) -> None:
        self.pool.close()
        for b in self.buf.values():
            b.free()
        self.stream.close()
