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
        self.vision = ort.InferenceSession(str(self.bundle / "vision.onnx"), opts, providers=providers)
        self.decoder = ort.InferenceSession(str(self.bundle / "decoder.onnx"), opts, providers=providers)
        self.has_probe = "probe_attn" in {o.name for o in self.decoder.get_outputs()}  # False only in benchmarks
        self.device = "cuda" if self.decoder.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.table = np.load(self.bundle / "embeddings.npy", mmap_mode="r")  # (V, D) float16|float32
        self.newline = np.load(self.bundle / "image_newline.npy").astype(np.float32)  # (D,)
        kv = m["kv_cache"]
        self.kv_shape = (kv["layers"], kv["kv_heads"], kv["head_dim"])
        self.info = ModelInfo(
            model_id=m["model_id"], hidden_size=m["hidden_size"], vocab_size=m["vocab_size"],
            num_layers=m["num_layers"], probe_layers=tuple(m["probe_layers"]),
            tokens_per_frame=m["tokens_per_frame"], image_size=tuple(m["image_size"]),
            video_token_id=m["video_token_id"],
        )
        if self.table.shape != (self.info.vocab_size, self.info.hidden_size):
            raise ValueError(f"{self.bundle}/embeddings.npy has shape {self.table.shape}, the manifest says "
                             f"{(self.info.vocab_size, self.info.hidden_size)}: the bundle is damaged, re-export it")
        log.info("onnxruntime backend: bundle %s (%s), providers %s, probe layers %s",
                 self.bundle, self.info.model_id, self.decoder.get_providers(), self.info.probe_layers)

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
