"""TensorRT execution of a bundle's engines (built by `rlivs build-engines`), with neither torch nor ONNX Runtime.

  vision.engine   pixel_values (F, 3, H, W) f32 -> visual_tokens (F, P, D) f32            F <= max_frames
                  (Qwen2.5-VL: F = 2 * groups frames -> (groups, P, D); a short last group repeats its last frame)
  decoder.engine  inputs_embeds (1, L, D) f32, position_ids (1, L) i64 (M-RoPE backbones: (3, L), computed by the
                  runtime's backbone), past_kv (K, N, 2, H_kv, Dh)
               -> logits (1, V) f32, new_kv (L, N, 2, H_kv, Dh), probe_attn (1, K + L) f32
                  profile "prefill" (L >= 1) and "decode" (L = 1), picked per step by L
  Qwen3-VL (DeepStack): vision.engine also -> deepstack (K, groups, P, D) f32; decoder.engine also takes
                  visual_rows (n,) i64 and deepstack (K, n, D) f32 (n = 0 at decode steps), added to those rows
                  after layers 0..K-1 (export/onnx_export.py)

The KV cache of a sequence is one device arena of max_context rows (kv_arena.py): past_kv is bound to its
first K rows and new_kv to the rows after them, so every step appends in place; the cache never leaves the
GPU. Only the step's embeddings and positions go up and the logits and the probe row come down.

Batched steps (a bundle exported with --batch, engines built with a batch range in both profiles, --max-batch):
the decoder takes inputs_embeds (B, L, D), position_ids (B, L), past_valid (B, S) / new_valid (B, L) bool and a
slot-major past_kv (S, B, N, 2, H_kv, Dh), and writes new_kv (L, B, N, 2, H_kv, Dh) -> logits (B, V), probe_attn
(B, S + L). `batch(states)` gathers the sequences' arenas into one (K_max, B, N, 2, H_kv, Dh) device buffer (one 2-D
copy per sequence), so every batched step appends in place there, as a single sequence does in its own arena (a
single sequence's arena is the B = 1 case, so `step` binds it unchanged). Written to the same contract as the ONNX
Runtime backend's and checked on CPU through tests/helpers/trt_emulator.py; never run on TensorRT yet.

No CUDA graph for the decode step: every step binds a longer past_kv and a new_kv address one row further,
and a captured graph holds fixed shapes and addresses (it would have to be re-captured each token). The
torch CUDA path's static cache is where the decode step is graph-captured.

Not run anywhere yet: TensorRT cannot be installed on our development machines. tests/test_tensorrt_backend.py
holds the parity tests that run it where TensorRT and a GPU exist.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..base import Backend, BatchState, DecodeState, MergedBatch, StepOutput, check_step_batch
from ..bundle import (Manifest, bundle_backbone, deepstack_feed, deepstack_maps, group_frames, load_manifest,
                      load_tables, step_positions)
from ..kv_arena import ALIGN, Arena, ArenaPool
from . import compat
from .device import DeviceBuffer, Stream
from .engine_entry import check_engine_entry, current_env
from rlivs.runtime.errors import UserError

log = logging.getLogger("rlivs.backend.tensorrt")

DECODER_IO = {"inputs_embeds": "float32", "position_ids": "int64", "past_kv": None, "logits": "float32",
              "new_kv": None, "probe_attn": "float32"}  # None: the bundle's KV dtype
BATCH_IO = {"past_valid": "bool", "new_valid": "bool"}  # the batched decoder's extra inputs
DEEPSTACK_IO = {"visual_rows": "int64", "deepstack": "float32"}  # a DeepStack decoder's extra inputs (Qwen3-VL)
VISION_IO = {"pixel_values": "float32", "visual_tokens": "float32"}  # (+ "deepstack" out, DeepStack bundles)


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
    rope_delta: int = 0  # M-RoPE: position id of cache slot k is k + rope_delta after a positioned step


class TrtBatch(MergedBatch):
    """B sequences' caches gathered into one slot-major device buffer (K_max, B, N, 2, H_kv, Dh): slot s of every
    sequence is one contiguous (B, N, 2, H_kv, Dh) block, so the S slots so far are the buffer's first S blocks."""

    def __init__(self, backend: "TrtBackend", buf, valid: np.ndarray, lengths: list[int]):
        super().__init__(lengths)
        self.backend = backend  # compaction runs on its stream
        self.buf = buf  # DeviceBuffer, freed when the batch is garbage-collected or compacted
        self._free = weakref.finalize(self, buf.free)
        self.valid = valid  # (B, S) bool on the host: slot holds one of that sequence's keys

    def keep(self, indices: list[int]) -> None:
        self.backend._keep(self, list(indices))

    def replace(self, buf) -> None:
        self._free.detach()
        self.buf.free()
        self.buf, self._free = buf, weakref.finalize(self, buf.free)

    @property
    def slots(self) -> int:
        return self.valid.shape[1]


class TrtBackend(Backend):
    name = "tensorrt"

    def __init__(self, bundle: str | Path, *, manifest: Manifest | None = None, device: int = 0):
        trt = import_tensorrt()
        self.bundle = Path(bundle)
        m = manifest or load_manifest(self.bundle)
        self.info, self.kv = m.info(self.bundle)
        self.backbone = bundle_backbone(self.bundle, m)  # positions (M-RoPE) and frame grouping (engine.backbone_of)
        if self.kv.layout != "arena":
            raise UserError(f"{self.bundle} was not exported for TensorRT (its KV cache layout is {self.kv.layout}): "
                            f"re-export with rlivs export --target tensorrt, then rlivs build-engines")
        entry = check_engine_entry(self.bundle, m, current_env(trt.__version__, device))  # else: rebuild
        fix = f"rebuild the engines with rlivs build-engines --bundle {self.bundle}"
        self.max_context = min(int(entry["max_context"]), self.kv.max_context)
        self.max_frames = int(entry["max_frames"])  # a multiple of the temporal patch (build-engines checks)
        self.axes = 3 if self.backbone.mrope else 1  # rows of position_ids: (3, L) M-RoPE ids or (1, L)
        self.logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self.logger)
        self.stream = Stream()
        kv_io = {"past_kv": self.kv.dtype, "new_kv": self.kv.dtype}
        self.batched = any(i["name"] == "new_valid" for i in m.graphs.get("decoder", {}).get("inputs", []))
        self.max_batch = int(entry.get("max_batch", 1)) if self.batched else 1
        self.deepstack_maps = deepstack_maps(m)  # K DeepStack maps out of vision, into the decoder (0: none)
        deep_io = {"deepstack": "float32"} if self.deepstack_maps else {}
        self.vision = _Engine(trt, runtime, self.bundle / entry["engines"]["vision"]["file"], {**VISION_IO, **deep_io},
                              fix)
        self.decoder = _Engine(trt, runtime, self.bundle / entry["engines"]["decoder"]["file"],
                               {**{k: v or kv_io[k] for k, v in DECODER_IO.items()},
                                **(BATCH_IO if self.batched else {}),
                                **(DEEPSTACK_IO if self.deepstack_maps else {})}, fix)
        names = {p.get("name"): int(p.get("index", i)) for i, p in enumerate(entry["engines"]["decoder"]["profiles"])}
        self.prefill_profile, self.decode_profile = names.get("prefill", 0), names.get("decode", 1)
        d, v, (h, w), p = self.info.hidden_size, self.info.vocab_size, self.info.image_size, self.info.tokens_per_frame
        b = self.max_batch  # B_max sequences per step (1 without a batched decoder)
        self.buf = {  # device buffers sized for the largest step the profiles accept
            "inputs_embeds": DeviceBuffer(b * self.max_context * d * 4),
            "position_ids": DeviceBuffer(b * self.axes * self.max_context * 8),
            "logits": DeviceBuffer(b * v * 4), "probe_attn": DeviceBuffer(b * self.max_context * 4),
            "pixel_values": DeviceBuffer(self.max_frames * 3 * h * w * 4),
            "visual_tokens": DeviceBuffer(self.max_frames * p * d * 4)}
        if self.deepstack_maps:  # the vision engine's features out; the decoder's rows and features in
            k_maps = self.deepstack_maps
            self.buf["vision_deepstack"] = DeviceBuffer(k_maps * self.max_frames * p * d * 4)
            self.buf["visual_rows"] = DeviceBuffer(self.max_context * 8)
            self.buf["deepstack"] = DeviceBuffer(k_maps * self.max_context * d * 4)
        if self.batched:
            self.buf["past_valid"] = DeviceBuffer(b * self.max_context)
            self.buf["new_valid"] = DeviceBuffer(b * self.max_context)
        self.host_logits = np.empty(b * v, np.float32)  # (B_max * V,)
        self.host_probe = np.empty(b * self.max_context, np.float32)  # (B_max * K_max,)
        # new_kv goes straight into the arena when its row offset keeps TensorRT's 256-byte alignment;
        # otherwise into a scratch buffer and then device-to-device into the arena (still no host trip)
        self.in_place = self.kv.row_bytes % ALIGN == 0
        if not self.in_place:
            self.buf["new_kv"] = DeviceBuffer(b * self.max_context * self.kv.row_bytes)
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
        return self.encode_video(pixels)[0]

    def encode_video(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Backend.encode_video: (G, P, D) tokens and, from DeepStack engines, (K, G, P, D) features."""
        tp = self.info.temporal_patch  # frames per token group
        x = group_frames(pixels, tp)  # (T, 3, H, W), whole groups
        out = np.empty((x.shape[0] // tp, self.info.tokens_per_frame, self.info.hidden_size), np.float32)  # (G, P, D)
        deep = np.empty((self.deepstack_maps, *out.shape), np.float32) if self.deepstack_maps else None  # (K, G, P, D)
        addresses = {"pixel_values": self.buf["pixel_values"].ptr, "visual_tokens": self.buf["visual_tokens"].ptr}
        if deep is not None:
            addresses["deepstack"] = self.buf["vision_deepstack"].ptr
        for a in range(0, x.shape[0], self.max_frames):  # the vision profile takes up to max_frames at once
            chunk, dst = x[a: a + self.max_frames], out[a // tp: (a + self.max_frames) // tp]
            self.stream.to_device(self.buf["pixel_values"].ptr, chunk)
            self.vision.run(self.stream, {"pixel_values": chunk.shape}, addresses)
            self.stream.to_host(dst, self.buf["visual_tokens"].ptr)
            if deep is not None:  # this run's (K, g, P, D), then into the clip's group range
                part = np.empty((self.deepstack_maps, *dst.shape), np.float32)
                self.stream.to_host(part, self.buf["vision_deepstack"].ptr)
            self.stream.synchronize()
            if deep is not None:
                deep[:, a // tp: a // tp + dst.shape[0]] = part
        return out, deep

    def image_newline(self) -> np.ndarray:
        return self.newline

    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.table[np.asarray(ids, dtype=np.int64)], dtype=np.float32)  # (L, D)

    def new_state(self) -> TrtState:
        state = TrtState()
        state.arena = self.pool.acquire(state)
        return state

    def step(self, embeds: np.ndarray, state: TrtState, probe_rows: int = 1,
             positions: np.ndarray | None = None, deepstack: tuple[np.ndarray, np.ndarray] | None = None
             ) -> StepOutput:
        """Backend.step; `positions`: (3, L) M-RoPE ids (M-RoPE bundles), `deepstack`: ((n,) visual rows, (K, n, D)
        features) (DeepStack bundles), as the torch and ONNX Runtime backends'."""
        if probe_rows > 1:
            raise UserError("exported decoders return the probe attention of the last query row only (probe_rows <= 1)")
        x = np.ascontiguousarray(embeds, dtype=np.float32)[None]  # (1, L, D)
        n_new, k = x.shape[1], state.length
        self.kv.check_room(k, n_new)
        # (1, L), or (3, L) M-RoPE ids; host arrays live until the synchronize below
        pos, rope_delta = step_positions(self.backbone, k, state.rope_delta, n_new, positions)
        self.stream.to_device(self.buf["inputs_embeds"].ptr, x)
        self.stream.to_device(self.buf["position_ids"].ptr, pos)
        past_at, new_at = self.kv.offsets(k)
        target = state.arena.ptr + new_at if self.in_place else self.buf["new_kv"].ptr
        addresses = {name: self.buf[name].ptr for name in ("inputs_embeds", "position_ids", "logits", "probe_attn")}
        addresses.update(past_kv=state.arena.ptr + past_at, new_kv=target)
        shapes = {"inputs_embeds": x.shape, "position_ids": pos.shape, "past_kv": (k, *self.kv.row_shape)}
        rows, feats = deepstack_feed(deepstack, self.deepstack_maps, self.info.hidden_size, self.bundle,
                                     self.backbone.label)
        if rows is not None:  # host arrays live until the synchronize below
            self.stream.to_device(self.buf["visual_rows"].ptr, rows)
            self.stream.to_device(self.buf["deepstack"].ptr, feats)
            addresses.update(visual_rows=self.buf["visual_rows"].ptr, deepstack=self.buf["deepstack"].ptr)
            shapes.update(visual_rows=rows.shape, deepstack=feats.shape)
        if self.batched:  # B = 1 of the batched decoder: the arena is the slot-major cache of one sequence
            valid = np.ones(k + n_new, bool)
            self.stream.to_device(self.buf["past_valid"].ptr, valid[:k])
            self.stream.to_device(self.buf["new_valid"].ptr, valid[k:])
            addresses.update(past_valid=self.buf["past_valid"].ptr, new_valid=self.buf["new_valid"].ptr)
            shapes.update(past_kv=(k, 1, *self.kv.row_shape), past_valid=(1, k), new_valid=(1, n_new))
        self.decoder.run(self.stream, shapes, addresses,
                         profile=self.decode_profile if n_new == 1 else self.prefill_profile)
        if not self.in_place:
            self.stream.on_device(state.arena.ptr + new_at, target, n_new * self.kv.row_bytes)
        logits = self.stream.to_host(self.host_logits[: self.info.vocab_size], self.buf["logits"].ptr)  # (V,)
        probe = self.stream.to_host(self.host_probe[: k + n_new], self.buf["probe_attn"].ptr) if probe_rows else None
        self.stream.synchronize()
        state.length, state.rope_delta = state.length + n_new, rope_delta
        return StepOutput(logits=logits.copy(), probe_attn=None if probe is None else probe.copy()[None])

    # ---- batched steps (engines of a bundle exported with --batch) -------------------------------------------

    def batch(self, states: list) -> BatchState:
        """Gather B sequences' arenas into one slot-major batch buffer: sequence b's row p goes to slot p, column b."""
        if not self.batched or len(states) > self.max_batch:
            if self.batched:
                log.warning("a batch of %d sequences is more than the engines' --max-batch %d: stepping them one "
                            "by one", len(states), self.max_batch)
            return super().batch(states)
        n, row = len(states), self.kv.row_bytes
        buf = DeviceBuffer(self.max_context * n * row)  # (K_max, B, N, 2, H_kv, Dh)
        lengths = [s.length for s in states]
        for b, st in enumerate(states):
            if st.length:
                self.stream.on_device_2d(buf.ptr + b * row, n * row, st.arena.ptr, row, row, st.length)
        self.stream.synchronize()
        valid = np.arange(max(lengths, default=0))[None, :] < np.asarray(lengths)[:, None]  # (B, S)
        return TrtBatch(self, buf, valid, lengths)

    def _keep(self, batch: TrtBatch, indices: list[int]) -> None:
        """Compact the batch buffer to sequences `indices` (one 2-D copy each)."""
        n, m, row, s_len = len(batch), len(indices), self.kv.row_bytes, batch.slots
        buf = DeviceBuffer(self.max_context * m * row)
        for j, b in enumerate(indices):
            if s_len:
                self.stream.on_device_2d(buf.ptr + j * row, m * row, batch.buf.ptr + b * row, n * row, row, s_len)
        self.stream.synchronize()
        batch.replace(buf)
        batch.valid = batch.valid[list(indices)]
        batch._lengths = [batch._lengths[i] for i in indices]

    def step_batch(self, embeds: list[np.ndarray], batch: BatchState, probe_rows: int = 1) -> list[StepOutput]:
        if not isinstance(batch, TrtBatch):
            return super().step_batch(embeds, batch, probe_rows)
        check_step_batch(embeds, batch, probe_rows, last_row_only=True)
        lens = [len(e) for e in embeds]  # L_i
        n, l_max, s_len, d, v = len(embeds), max(lens), batch.slots, self.info.hidden_size, self.info.vocab_size
        self.kv.check_room(s_len, l_max)  # slots, not positions: the batch's holes count too
        x = np.zeros((n, l_max, d), np.float32)  # (B, L, D), left-padded: row L - 1 is every last position
        new_valid = np.zeros((n, l_max), bool)  # (B, L)
        pos = np.zeros((n, l_max), np.int64)  # (B, L)
        for b, (e, k) in enumerate(zip(embeds, lens)):
            x[b, l_max - k:], new_valid[b, l_max - k:] = e, True
            pos[b, l_max - k:] = np.arange(batch._lengths[b], batch._lengths[b] + k)
        past_valid = np.ascontiguousarray(batch.valid)  # (B, S)
        for name, host in (("inputs_embeds", x), ("position_ids", pos), ("past_valid", past_valid),
                           ("new_valid", new_valid)):
            self.stream.to_device(self.buf[name].ptr, host)
        new_at = s_len * n * self.kv.row_bytes  # slot S of the batch buffer
        target = batch.buf.ptr + new_at if self.in_place else self.buf["new_kv"].ptr
        addresses = {name: self.buf[name].ptr for name in ("inputs_embeds", "position_ids", "logits", "probe_attn",
                                                            "past_valid", "new_valid")}
        addresses.update(past_kv=batch.buf.ptr, new_kv=target)
        self.decoder.run(self.stream, {"inputs_embeds": x.shape, "position_ids": pos.shape,
                                       "past_kv": (s_len, n, *self.kv.row_shape), "past_valid": past_valid.shape,
                                       "new_valid": new_valid.shape}, addresses,
                         profile=self.decode_profile if l_max == 1 else self.prefill_profile)
        if not self.in_place:
            self.stream.on_device(batch.buf.ptr + new_at, target, l_max * n * self.kv.row_bytes)
        logits = self.stream.to_host(self.host_logits[: n * v], self.buf["logits"].ptr).reshape(n, v)  # (B, V)
        k_all = s_len + l_max
        probe = self.stream.to_host(self.host_probe[: n * k_all], self.buf["probe_attn"].ptr).reshape(n, k_all) \
            if probe_rows else None  # (B, S + L)
        self.stream.synchronize()
        batch.valid = np.concatenate([batch.valid, new_valid], axis=1)  # (B, S + L)
        out = []
        for b, k in enumerate(lens):
            batch._lengths[b] += k
            p = None if probe is None else probe[b][batch.valid[b]][None]  # (1, K_b + L_b): its own keys only
            out.append(StepOutput(logits=logits[b].copy(), probe_attn=p))
        return out

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
