"""ONNX Runtime execution of a bundle. The KV cache stays in ONNX Runtime values between steps (IOBinding):
the present keys/values of one step are bound as the past of the next without passing through numpy.

A bundle exported with a batched decoder (`ExportConfig(batch=True)`: a dynamic batch axis, past_valid/new_valid
inputs; export/onnx_export.py) steps B sequences as one run (`batch` + `step_batch`); a single `step` is its B = 1
run with every slot valid. Other bundles step batches sequence by sequence (the base contract).

A Qwen3-VL bundle's vision graph also returns the DeepStack features (`encode_video`), and its decoder takes the
visual rows of the input and their features (`step(..., deepstack=)`), split with the prefill chunks."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..base import Backend, BatchState, DecodeState, MergedBatch, StepOutput, check_step_batch
from ..bundle import (Manifest, bundle_backbone, damaged, deepstack_feed, group_frames, load_manifest, load_tables,
                      installed_onnxruntime, onnxruntime_gap, step_positions)
from ..kv_arena import Arena, ArenaPool
from rlivs.runtime.errors import UserError

log = logging.getLogger("rlivs.backend.onnxruntime")

PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
# Memory bounds (docs/benchmarks.md, "Memory at the paper's context"): ONNX Runtime's CPU arena keeps every session's
# largest intermediates for good, so a run's working set is bounded here instead. A prefill of L positions runs as
# chunks of at most PREFILL_CHUNK through the KV cache (attention scores then take H x chunk x K floats instead of
# H x L x L: 45 MB instead of 2.2 GB per tensor for the 0.5B model at 6.3K positions); frames go through the vision
# graph VISION_CHUNK at a time. Both give the same numbers as one run (tests/parity/test_onnx.py).
PREFILL_CHUNK = 128  # positions
VISION_CHUNK = 2  # frames
# Without ORT's arena every intermediate is a malloc. glibc serves blocks above its mmap threshold with mmap and gives
# them back on free, but raises that threshold (up to 32 MiB) each time such a block is freed, after which the
# prefill's 10-50 MB intermediates stay in the heap, fragmented, for the process's life: +1.25 GB at a 3,000-token
# prefill of the 0.5B opset-20 bundle (+0.51 GB with the threshold fixed at 4 MiB; opset 23's fused attention: +0.47 GB;
# docs/benchmarks.md). Fixing the threshold (mallopt M_MMAP_THRESHOLD) also stops glibc moving it.
MMAP_THRESHOLD = 4 << 20  # bytes; the environment's MALLOC_MMAP_THRESHOLD_ wins when set


def fix_mmap_threshold(nbytes: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at `nbytes` for this process (see MMAP_THRESHOLD). True when set; False where the C
    library is not glibc, or MALLOC_MMAP_THRESHOLD_ already chose."""
    import ctypes
    import os
    import platform

    if "MALLOC_MMAP_THRESHOLD_" in os.environ or platform.libc_ver()[0] != "glibc":
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, int(nbytes)))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


@dataclass
class OrtState(DecodeState):
    keys: ort.OrtValue | None = None  # stacked: (N, H_kv, K, Dh) float32, on the session's device
    values: ort.OrtValue | None = None  # stacked: (N, H_kv, K, Dh)
    arena: Arena | None = None  # arena: (K_max, N, 2, H_kv, Dh) buffer whose first K rows are the cache
    length: int = 0  # K
    rope_delta: int = 0  # M-RoPE: position id of cache slot k is k + rope_delta after a positioned step


class OrtBatch(MergedBatch):
    """B sequences' caches as one batched past: keys/values (N, B, H_kv, S, Dh) slots, valid (B, S) which slots hold
    a sequence's keys (its own, in position order; padding elsewhere), as in the torch backend's TorchBatch."""

    def __init__(self, keys: ort.OrtValue, values: ort.OrtValue, valid: np.ndarray, lengths: list[int], device: str):
        super().__init__(lengths)
        self.keys, self.values = keys, values  # (N, B, H_kv, S, Dh) float32 on the session's device
        self.valid = valid  # (B, S) bool
        self.device = device

    def keep(self, indices: list[int]) -> None:
        idx = list(indices)  # a copy through the host, once per sequence that ends
        self.keys = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(self.keys.numpy()[:, idx]), self.device)
        self.values = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(self.values.numpy()[:, idx]), self.device)
        self.valid = self.valid[idx]
        super().keep(idx)


class OrtBackend(Backend):
    name = "onnxruntime"

    def __init__(self, bundle: str | Path, *, providers: list[str] | None = None, threads: int | None = None,
                 manifest: Manifest | None = None, prefill_chunk: int = PREFILL_CHUNK, vision_chunk: int = VISION_CHUNK):
        self.bundle = Path(bundle)
        self.prefill_chunk, self.vision_chunk = prefill_chunk, vision_chunk
        m = manifest or load_manifest(self.bundle)
        dist = (installed_onnxruntime() or ("onnxruntime",))[0]
        gap = onnxruntime_gap(self.bundle, m, (dist, ort.__version__))
        if gap:  # an opset this runtime cannot read: say so before ORT's own load error
            raise UserError(gap)
        available = ort.get_available_providers()
        if providers:
            missing = [p for p in providers if p not in available]
            if missing:
                raise UserError(f"ONNX Runtime providers {missing} are not available here (have {available}); "
                                "install onnxruntime-gpu for CUDA/TensorRT")
        else:
            providers = [p for p in PREFERRED_PROVIDERS if p in available]
        opts = ort.SessionOptions()
        # no CPU arena: it keeps every freed block (each prefill chunk's larger present KV, the vision run's
        # intermediates) for the session's life; plain allocations return them (docs/benchmarks.md)
        opts.enable_cpu_mem_arena = False
        fix_mmap_threshold()  # ... and freed large blocks go back to the system (MMAP_THRESHOLD)
        if threads:
            opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.info, self.kv = m.info(self.bundle)
        self.backbone = bundle_backbone(self.bundle, m)  # positions (M-RoPE) and frame grouping (engine.backbone_of)
        self.kv_shape = (self.kv.layers, self.kv.kv_heads, self.kv.head_dim)  # (N, H_kv, Dh)
        self.vision = self._session("vision.onnx", opts, providers)
        self.decoder = self._session("decoder.onnx", opts, providers)
        self.has_probe = "probe_attn" in {o.name for o in self.decoder.get_outputs()}  # False only in benchmarks
        self.batched = "new_valid" in {i.name for i in self.decoder.get_inputs()}  # a batch axis: past (N, B, ...)
        deep_in = [i for i in self.decoder.get_inputs() if i.name == "deepstack"]  # (K, n, D): DeepStack (Qwen3-VL)
        self.deepstack_maps = deep_in[0].shape[0] if deep_in else 0  # K
        self.vision_outputs = [o.name for o in self.vision.get_outputs()]  # visual_tokens[, deepstack]
        self.device = "cuda" if self.decoder.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self._check_graphs()
        self.table, self.newline = load_tables(self.bundle, self.info)  # (V, D) memory-mapped, (D,)
        self.pool = ArenaPool(lambda: Arena.allocate(self._alloc_arena, self.kv.arena_bytes)) \
            if self.kv.layout == "arena" else None
        log.info("onnxruntime backend: bundle %s (%s), providers %s, probe layers %s, KV cache %s",
                 self.bundle, self.info.model_id, self.decoder.get_providers(), self.info.probe_layers,
                 f"arena of {self.kv.max_context} x {self.kv.dtype}" if self.pool else "stacked")

    def _alloc_arena(self, nbytes: int) -> tuple[ort.OrtValue, int]:
        value = ort.OrtValue.ortvalue_from_shape_and_type([nbytes], np.uint8, self.device, 0)
        return value, value.data_ptr()

    def _session(self, name: str, opts, providers) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(str(self.bundle / name), opts, providers=providers)
        except Exception as e:  # ORT raises its own pybind exceptions (InvalidProtobuf, Fail, ...) for a bad file
            raise damaged(self.bundle, name, e) from None

    def _check_graphs(self) -> None:
        """The graphs' fixed dimensions must be the manifest's: graphs from another model's export fail here."""
        n, h_kv, dh = self.kv_shape
        d, v = self.info.hidden_size, self.info.vocab_size
        (h, w), p = self.info.image_size, self.info.tokens_per_frame
        past = {("decoder.onnx", "past_kv"): {1: n, 2: 2, 3: h_kv, 4: dh}} if self.kv.layout == "arena" else \
            {("decoder.onnx", "past_keys"): {0: n, 2: h_kv, 4: dh}} if self.batched else \
            {("decoder.onnx", "past_keys"): {0: n, 1: h_kv, 3: dh}}
        want = {("vision.onnx", "pixel_values"): {2: h, 3: w}, ("vision.onnx", "visual_tokens"): {1: p, 2: d},
                ("decoder.onnx", "inputs_embeds"): {2: d}, ("decoder.onnx", "logits"): {1: v}, **past}
        if self.deepstack_maps:  # the vision graph's features are what the decoder takes
            want.update({("vision.onnx", "deepstack"): {0: self.deepstack_maps, 2: p, 3: d},
                         ("decoder.onnx", "deepstack"): {2: d}})
        elif self.backbone.deepstack:
            raise UserError(f"{self.bundle}/decoder.onnx has no deepstack input but the manifest names "
                            f"{self.backbone.label}: re-export the bundle with this rlivs")
        for (name, io), dims in want.items():
            sess = self.vision if name == "vision.onnx" else self.decoder
            values = {x.name: x for x in [*sess.get_inputs(), *sess.get_outputs()]}
            if io not in values:
                raise UserError(f"{self.bundle}/{name} has no {io!r} input or output: it is not an rlivs bundle "
                                f"graph of the manifest's kind; copy the whole bundle directory from one export or "
                                f"re-export it")
            shape = values[io].shape
            for axis, size in dims.items():
                got = shape[axis] if axis < len(shape) else None
                if isinstance(got, int) and got != size:
                    raise UserError(f"{self.bundle}/{name} {io} has size {got} on axis {axis} but the manifest says "
                                    f"{size}: the graph is from another model; copy the whole bundle directory "
                                    f"from one export or re-export it")

    def encode_frames(self, pixels: np.ndarray) -> np.ndarray:
        return self._vision(pixels, ["visual_tokens"])[0]  # (G, P, D): G = T for LLaVA-OV

    def encode_video(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Backend.encode_video: (G, P, D) tokens and, from a DeepStack bundle, (K, G, P, D) features."""
        if "deepstack" not in self.vision_outputs:
            return self.encode_frames(pixels), None
        tokens, deep = self._vision(pixels, ["visual_tokens", "deepstack"])
        return tokens, deep

    def _vision(self, pixels: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
        """The vision graph over whole token groups, vision_chunk groups per run; outputs joined on their group
        axis (visual_tokens (G, P, D): axis 0; deepstack (K, G, P, D): axis 1)."""
        x = group_frames(pixels, self.info.temporal_patch)  # (T, 3, H, W), T a whole number of token groups
        step = self.vision_chunk * self.info.temporal_patch  # frames per run: whole groups
        runs = [self.vision.run(outputs, {"pixel_values": x[i:i + step]}) for i in range(0, len(x), step)]
        if len(runs) == 1:
            return runs[0]
        return [np.concatenate([run[j] for run in runs], axis=int(name == "deepstack")) for j, name in enumerate(outputs)]

    def image_newline(self) -> np.ndarray:
        return self.newline

    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.table[np.asarray(ids, dtype=np.int64)], dtype=np.float32)  # (L, D)

    def new_state(self) -> OrtState:
        state = OrtState()
        if self.pool is not None:
            state.arena = self.pool.acquire(state)
        else:
            n, h_kv, dh = self.kv_shape
            empty = np.zeros((n, 1, h_kv, 0, dh) if self.batched else (n, h_kv, 0, dh), np.float32)  # (N, [1,] H_kv, 0, Dh)
            state.keys = ort.OrtValue.ortvalue_from_numpy(empty, self.device)
            state.values = ort.OrtValue.ortvalue_from_numpy(empty, self.device)
        return state

    def step(self, embeds: np.ndarray, state: OrtState, probe_rows: int = 1,
             positions: np.ndarray | None = None, deepstack: tuple[np.ndarray, np.ndarray] | None = None
             ) -> StepOutput:
        """Backend.step; `positions`: (3, L) M-RoPE ids of these inputs (M-RoPE bundles; default: the next L
        positions after the offset the last positioned step left, on every axis), as the torch backend's.
        `deepstack` (DeepStack bundles): ((n,) ascending input rows that are visual tokens, (K, n, D) their
        features), added after decoder layers 0..K-1, as the torch backend's."""
        if probe_rows > 1:
            raise UserError("exported decoders return the probe attention of the last query row only (probe_rows <= 1)")
        self.kv.check_room(state.length, len(embeds))  # before anything is written
        pos, state.rope_delta = step_positions(self.backbone, state.length, state.rope_delta, len(embeds), positions)
        rows, feats = self._deepstack_inputs(deepstack)
        starts = range(0, max(len(embeds), 1), self.prefill_chunk)

        def chunk(i: int, n: int):  # the DeepStack rows inside [i, i + n), relative to i, and their features
            if rows is None:
                return None
            sel = (rows >= i) & (rows < i + n)
            return rows[sel] - i, np.ascontiguousarray(feats[:, sel])

        for i in starts[:-1]:  # every chunk but the last only extends the cache
            n = self.prefill_chunk
            self._run(embeds[i:i + n], pos[:, i:i + n], state, 0, chunk(i, n))
        i = starts[-1]  # the last: logits and probe row of the last position
        return self._run(embeds[i:], pos[:, i:], state, probe_rows, chunk(i, len(embeds) - i))

    def _deepstack_inputs(self, deepstack) -> tuple[np.ndarray | None, np.ndarray | None]:
        return deepstack_feed(deepstack, self.deepstack_maps, self.info.hidden_size, self.bundle, self.backbone.label)

    def _run(self, embeds: np.ndarray, pos: np.ndarray, state: OrtState, probe_rows: int,
             deep: tuple[np.ndarray, np.ndarray] | None = None) -> StepOutput:
        """One decoder run over L new positions (L <= prefill_chunk, or a decode step); pos (1, L) or (3, L);
        deep: this run's DeepStack rows and features (a DeepStack bundle; None: no features this run)."""
        x = np.ascontiguousarray(embeds, dtype=np.float32)[None]  # (1, L, D)
        n_new = x.shape[1]
        self.kv.check_room(state.length, n_new)
        pos = np.ascontiguousarray(pos)
        io = self.decoder.io_binding()
        io.bind_cpu_input("inputs_embeds", x)
        io.bind_cpu_input("position_ids", pos)
        if self.batched:  # B = 1: every slot is this sequence's
            io.bind_cpu_input("past_valid", np.ones((1, state.length), bool))
            io.bind_cpu_input("new_valid", np.ones((1, n_new), bool))
        if self.deepstack_maps:
            rows, feats = deep if deep is not None else self._deepstack_inputs(None)
            io.bind_cpu_input("visual_rows", np.ascontiguousarray(rows))
            io.bind_cpu_input("deepstack", np.ascontiguousarray(feats))
        io.bind_output("logits", "cpu")
        if state.arena is not None:  # past = arena rows [0, K), new rows written to [K, K + L): in place
            past_at, new_at = self.kv.offsets(state.length)
            dtype = np.dtype(self.kv.dtype)
            io.bind_input("past_kv", self.device, 0, dtype, [state.length, *self.kv.row_shape], state.arena.ptr + past_at)
            io.bind_output("new_kv", self.device, 0, dtype, [n_new, *self.kv.row_shape], state.arena.ptr + new_at)
        else:  # the present of one step becomes the past of the next, without leaving ORT
            io.bind_ortvalue_input("past_keys", state.keys)
            io.bind_ortvalue_input("past_values", state.values)
            io.bind_output("present_keys", self.device)
            io.bind_output("present_values", self.device)
        if self.has_probe:
            io.bind_output("probe_attn", "cpu")
        self.decoder.run_with_iobinding(io)
        logits, *rest = io.get_outputs()
        if state.arena is None:
            state.keys, state.values, *rest = rest
        else:
            rest = rest[1:]  # new_kv is already in the arena
        state.length += n_new
        return StepOutput(logits=logits.numpy()[0], probe_attn=rest[0].numpy() if rest and probe_rows else None)

    # ---- batched steps (a bundle with a batched decoder) ------------------------------------------------------

    def batch(self, states: list) -> BatchState:
        """Merge B stacked states into one batched past (right-padded to the longest); through the host, once."""
        if not self.batched:
            return super().batch(states)
        n, h_kv, dh = self.kv_shape
        lengths = [s.length for s in states]  # K_i
        s_max = max(lengths, default=0)
        keys = np.zeros((n, len(states), h_kv, s_max, dh), np.float32)  # (N, B, H_kv, S, Dh)
        values = np.zeros_like(keys)
        for b, st in enumerate(states):
            if st.length:
                keys[:, b, :, : st.length] = st.keys.numpy()[:, 0]
                values[:, b, :, : st.length] = st.values.numpy()[:, 0]
        valid = np.arange(s_max)[None, :] < np.asarray(lengths)[:, None]  # (B, S)
        return OrtBatch(ort.OrtValue.ortvalue_from_numpy(keys, self.device),
                        ort.OrtValue.ortvalue_from_numpy(values, self.device), valid, lengths, self.device)

    def step_batch(self, embeds: list[np.ndarray], batch: BatchState, probe_rows: int = 1) -> list[StepOutput]:
        if not isinstance(batch, OrtBatch):
            return super().step_batch(embeds, batch, probe_rows)
        check_step_batch(embeds, batch, probe_rows, last_row_only=True)
        lens = [len(e) for e in embeds]  # L_i
        n_seq, l_max, d = len(embeds), max(lens), self.info.hidden_size
        x = np.zeros((n_seq, l_max, d), np.float32)  # (B, L_max, D), left-padded: row L_max - 1 is every last position
        new_valid = np.zeros((n_seq, l_max), bool)  # (B, L_max)
        pos = np.zeros((n_seq, l_max), np.int64)  # (B, L_max) absolute positions (padding: 0)
        for b, (e, n) in enumerate(zip(embeds, lens)):
            x[b, l_max - n:], new_valid[b, l_max - n:] = e, True
            pos[b, l_max - n:] = np.arange(batch._lengths[b], batch._lengths[b] + n)
        starts = range(0, l_max, self.prefill_chunk)
        for a in starts[:-1]:  # every chunk but the last only extends the caches
            self._run_batch(x[:, a:a + self.prefill_chunk], pos[:, a:a + self.prefill_chunk],
                            new_valid[:, a:a + self.prefill_chunk], batch, 0)
        a = starts[-1]
        logits, probe = self._run_batch(x[:, a:], pos[:, a:], new_valid[:, a:], batch, probe_rows)  # (B, V), (B, S)
        out = []
        for b, n in enumerate(lens):
            batch._lengths[b] += n
            p = None if probe is None else probe[b][batch.valid[b]][None]  # (1, K_b + L_b): its own keys only
            out.append(StepOutput(logits=logits[b], probe_attn=p))
        return out

    def _run_batch(self, x: np.ndarray, pos: np.ndarray, new_valid: np.ndarray, batch: OrtBatch, probe_rows: int):
        """One batched decoder run over L new slots: x (B, L, D), pos (B, L), new_valid (B, L) -> logits (B, V) and
        probe (B, S + L) or None; batch's keys/values/valid grow by L slots."""
        io = self.decoder.io_binding()
        io.bind_cpu_input("inputs_embeds", np.ascontiguousarray(x))
        io.bind_cpu_input("position_ids", np.ascontiguousarray(pos))
        io.bind_cpu_input("past_valid", np.ascontiguousarray(batch.valid))
        io.bind_cpu_input("new_valid", np.ascontiguousarray(new_valid))
        io.bind_ortvalue_input("past_keys", batch.keys)
        io.bind_ortvalue_input("past_values", batch.values)
        io.bind_output("logits", "cpu")
        io.bind_output("present_keys", self.device)
        io.bind_output("present_values", self.device)
        if self.has_probe:
            io.bind_output("probe_attn", "cpu")
        self.decoder.run_with_iobinding(io)
        logits, batch.keys, batch.values, *rest = io.get_outputs()
        batch.valid = np.concatenate([batch.valid, new_valid], axis=1)  # (B, S + L)
        return logits.numpy(), (rest[0].numpy() if rest and probe_rows else None)

    def past_feed(self, state: OrtState, upto: int | None = None) -> dict[str, np.ndarray]:
        """The decoder's past inputs for the first `upto` cached positions as numpy (calibration feeds)."""
        k = state.length if upto is None else upto
        if state.arena is None:
            keys, values = state.keys.numpy(), state.values.numpy()  # (N, H_kv, K, Dh)
            return {"past_keys": np.ascontiguousarray(keys[..., :k, :]), "past_values": np.ascontiguousarray(values[..., :k, :])}
        return {"past_kv": self.arena_rows(state)[:k].copy()}

    def arena_rows(self, state: OrtState) -> np.ndarray:
        """(K, N, 2, H_kv, Dh) view of a CPU arena's filled rows (tests and calibration)."""
        if state.arena is None or self.device != "cpu":
            raise UserError("arena_rows reads a CPU arena cache; this state has none")
        flat = state.arena.handle.numpy()  # (bytes,) uint8, the arena's memory
        return flat.view(self.kv.dtype).reshape(self.kv.max_context, *self.kv.row_shape)[: state.length]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
