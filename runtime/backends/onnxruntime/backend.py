"""ONNX Runtime execution of a bundle. The KV cache stays in ONNX Runtime values between steps (IOBinding):
the present keys/values of one step are bound as the past of the next without passing through numpy."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..base import Backend, DecodeState, ModelInfo, StepOutput
from ..bundle import load_manifest

log = logging.getLogger("rlivs.backend.onnxruntime")

PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


@dataclass
class OrtState(DecodeState):
    keys: ort.OrtValue  # (N, H_kv, K, Dh) float32, on the session's device
    values: ort.OrtValue  # (N, H_kv, K, Dh)
    length: int = 0  # K


class OrtBackend(Backend):
    name = "onnxruntime"

    def __init__(self, bundle: str | Path, *, providers: list[str] | None = None, threads: int | None = None,
                 manifest: dict | None = None):
        self.bundle = Path(bundle)
        m = manifest or load_manifest(self.bundle)
        available = ort.get_available_providers()
        if providers:
            missing = [p for p in providers if p not in available]
            if missing:
                raise ValueError(f"ONNX Runtime providers {missing} are not available here (have {available}); "
                                 "install onnxruntime-gpu for CUDA/TensorRT")
        else:
            providers = [p for p in PREFERRED_PROVIDERS if p in available]
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            kv = m["kv_cache"]
            self.kv_shape = (int(kv["layers"]), int(kv["kv_heads"]), int(kv["head_dim"]))
            self.info = ModelInfo(
                model_id=m["model_id"], hidden_size=int(m["hidden_size"]), vocab_size=int(m["vocab_size"]),
                num_layers=int(m["num_layers"]), probe_layers=tuple(m["probe_layers"]),
                tokens_per_frame=int(m["tokens_per_frame"]), image_size=tuple(m["image_size"]),
                video_token_id=int(m["video_token_id"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{self.bundle}/manifest.json lacks or garbles {e}: the bundle is damaged; copy the "
                             f"whole bundle directory again or re-export it") from None
        self.vision = self._session("vision.onnx", opts, providers)
        self.decoder = self._session("decoder.onnx", opts, providers)
        self.has_probe = "probe_attn" in {o.name for o in self.decoder.get_outputs()}  # False only in benchmarks
        self.device = "cuda" if self.decoder.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self._check_graphs()
        self.table = self._npy("embeddings.npy", mmap_mode="r")  # (V, D) float16|float32
        self.newline = self._npy("image_newline.npy").astype(np.float32)  # (D,)
        if self.table.shape != (self.info.vocab_size, self.info.hidden_size):
            raise ValueError(f"{self.bundle}/embeddings.npy has shape {self.table.shape}, the manifest says "
                             f"{(self.info.vocab_size, self.info.hidden_size)}: the bundle is damaged, re-export it")
        if self.newline.shape != (self.info.hidden_size,):
            raise ValueError(f"{self.bundle}/image_newline.npy has shape {self.newline.shape}, the manifest says "
                             f"({self.info.hidden_size},): it is from another model; copy the whole bundle directory "
                             f"from one export or re-export it")
        log.info("onnxruntime backend: bundle %s (%s), providers %s, probe layers %s",
                 self.bundle, self.info.model_id, self.decoder.get_providers(), self.info.probe_layers)

    def _damaged(self, name: str, e: BaseException) -> ValueError:
        return ValueError(f"{self.bundle}/{name} cannot be loaded ({type(e).__name__}: {str(e)[:300]}): the file is "
                          f"damaged or truncated; copy the whole bundle directory again or re-export it")

    def _session(self, name: str, opts, providers) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(str(self.bundle / name), opts, providers=providers)
        except Exception as e:  # ORT raises its own pybind exceptions (InvalidProtobuf, Fail, ...) for a bad file
            raise self._damaged(name, e) from None

    def _npy(self, name: str, **kw) -> np.ndarray:
        try:
            return np.load(self.bundle / name, **kw)
        except (ValueError, OSError, EOFError) as e:  # a truncated header or data
            raise self._damaged(name, e) from None

    def _check_graphs(self) -> None:
        """The graphs' fixed dimensions must be the manifest's: graphs from another model's export fail here."""
        n, h_kv, dh = self.kv_shape
        d, v = self.info.hidden_size, self.info.vocab_size
        (h, w), p = self.info.image_size, self.info.tokens_per_frame
        want = {("vision.onnx", "pixel_values"): {2: h, 3: w}, ("vision.onnx", "visual_tokens"): {1: p, 2: d},
                ("decoder.onnx", "inputs_embeds"): {2: d}, ("decoder.onnx", "logits"): {1: v},
                ("decoder.onnx", "past_keys"): {0: n, 1: h_kv, 3: dh}}
        for (name, io), dims in want.items():
            sess = self.vision if name == "vision.onnx" else self.decoder
            values = {x.name: x for x in [*sess.get_inputs(), *sess.get_outputs()]}
            if io not in values:
                raise ValueError(f"{self.bundle}/{name} has no {io!r} input or output: it is not an rlivs bundle "
                                 f"graph; copy the whole bundle directory from one export or re-export it")
            shape = values[io].shape
            for axis, size in dims.items():
                got = shape[axis] if axis < len(shape) else None
                if isinstance(got, int) and got != size:
                    raise ValueError(f"{self.bundle}/{name} {io} has size {got} on axis {axis} but the manifest says "
                                     f"{size}: the graph is from another model; copy the whole bundle directory "
                                     f"from one export or re-export it")

    def encode_frames(self, pixels: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(pixels, dtype=np.float32)  # (T, 3, H, W)
        return self.vision.run(["visual_tokens"], {"pixel_values": x})[0]  # (T, P, D)

    def image_newline(self) -> np.ndarray:
        return self.newline

    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.table[np.asarray(ids, dtype=np.int64)], dtype=np.float32)  # (L, D)

    def new_state(self) -> OrtState:
        empty = np.zeros((*self.kv_shape[:2], 0, self.kv_shape[2]), np.float32)  # (N, H_kv, 0, Dh)
        return OrtState(ort.OrtValue.ortvalue_from_numpy(empty, self.device),
                        ort.OrtValue.ortvalue_from_numpy(empty, self.device))

    def step(self, embeds: np.ndarray, state: OrtState, probe_rows: int = 1) -> StepOutput:
        if probe_rows > 1:
            raise ValueError("exported decoders return the probe attention of the last query row only (probe_rows <= 1)")
        x = np.ascontiguousarray(embeds, dtype=np.float32)[None]  # (1, L, D)
        pos = np.arange(state.length, state.length + x.shape[1], dtype=np.int64)[None]  # (1, L)
        io = self.decoder.io_binding()
        io.bind_cpu_input("inputs_embeds", x)
        io.bind_cpu_input("position_ids", pos)
        io.bind_ortvalue_input("past_keys", state.keys)
        io.bind_ortvalue_input("past_values", state.values)
        io.bind_output("logits", "cpu")
        io.bind_output("present_keys", self.device)  # stays where the session runs
        io.bind_output("present_values", self.device)
        if self.has_probe:
            io.bind_output("probe_attn", "cpu")
        self.decoder.run_with_iobinding(io)
        logits, keys, values, *probe = io.get_outputs()
        state.keys, state.values = keys, values
        state.length += x.shape[1]
        return StepOutput(logits=logits.numpy()[0], probe_attn=probe[0].numpy() if probe and probe_rows else None)
