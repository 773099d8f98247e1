"""One dataclass per calibration step. Defaults and their reasons are in docs/calibration.md."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from rlivs.runtime.errors import UserError

PRECISIONS = ("int8", "int4")
TOOLS = ("ort", "modelopt")


@dataclass
class CollectConfig:
    n_calib: int = 16  # clips used to calibrate (probe-layer search, quantization ranges)
    n_heldout: int = 4  # clips held back for the fidelity report (never used to calibrate)
    dedup_threshold: float = 0.005  # clips whose signatures differ by less (mean |diff| of 0..1 grey) are duplicates
    warmup_clips: int | None = 16  # clips run before a sampled clip to build its FIFO; None = from the video's start
    seed: int = 0  # order in which candidates inside a time stratum are tried
    thumb_side: int = 16  # side of the grey thumbnails that clip signatures are made of
    thumb_segments: int = 4  # a clip signature = mean thumbnail of this many equal time segments

    def __post_init__(self):
        if self.n_calib < 1:
            raise UserError(f"n_calib must be >= 1 clip, got {self.n_calib}; e.g. --clips 16")
        if self.n_heldout < 0:
            raise UserError(f"n_heldout must be >= 0, got {self.n_heldout}; e.g. --heldout 4")
        if not 0.0 <= self.dedup_threshold < 1.0:
            raise UserError(f"dedup_threshold must be in [0, 1), got {self.dedup_threshold}; e.g. --dedup 0.005")
        if self.warmup_clips is not None and self.warmup_clips < 0:
            raise UserError(f"warmup_clips must be >= 0 (or None for the whole video), got {self.warmup_clips}")
        if self.thumb_side < 2 or self.thumb_segments < 1:
            raise UserError(f"thumb_side must be >= 2 and thumb_segments >= 1, got {self.thumb_side}, {self.thumb_segments}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LayerSearchConfig:
    num_layers: int = 4  # K: probe layers to choose (the paper uses 4)
    max_exhaustive: int = 50_000  # search every K-subset when C(L, K) is at most this; greedy + swaps above
    tie_tol: float = 1e-9  # overlap differences below this are ties, broken by Spearman

    def __post_init__(self):
        if self.num_layers < 1:
            raise UserError(f"num_layers must be >= 1, got {self.num_layers}; e.g. --num-layers 4")
        if self.max_exhaustive < 1:
            raise UserError(f"max_exhaustive must be >= 1, got {self.max_exhaustive}")


@dataclass
class QuantizeConfig:
    precision: str = "int8"  # int8: static QDQ (activations + weights); int4: weight-only, block-wise
    tool: str = "ort"  # ort: onnxruntime.quantization (int4 = MatMulNBits RTN); modelopt: NVIDIA ModelOpt ONNX PTQ (int4 = AWQ-lite)
    format: str = "qdq"  # int8 (ort): qdq (Q/DQ pairs, what TensorRT/CUDA EPs fuse) | qoperator (QLinearMatMul, uint8 activations: ORT's fast x64 CPU kernels)
    per_channel: bool = True  # int8: one weight scale per output channel
    calibrate_method: str = "minmax"  # int8 activation ranges: minmax | entropy | percentile
    decode_steps: int = 3  # decode steps per calibration clip fed to the calibrator (beside the prefill)
    keep_probe_qk: bool = True  # probe layers' q/k projections stay float32 too (their score MatMul and Softmax always do)
    quantize_lm_head: bool = True  # also quantize the LM head (the largest single matrix of the 0.5B)
    block_size: int = 32  # int4: weights per quantization block along the input dimension
    symmetric: bool = True  # int4 (ort): symmetric blocks (no zero point)
    mha_int8: bool = True  # int8 (modelopt): also put the other layers' attention BMMs in int8 (TensorRT fuses them)
    awq_chunk: int = 32  # int4 (modelopt): tokens per calibration feed (AWQ needs feeds of one length)
    awq_chunks_per_clip: int = 4  # int4 (modelopt): feeds per clip, at evenly spaced offsets of its context

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.tool not in TOOLS:
            raise UserError(f"tool must be one of {', '.join(TOOLS)}, got {self.tool!r}")
        if self.format not in ("qdq", "qoperator"):
            raise UserError(f"format must be qdq or qoperator, got {self.format!r}")
        if self.calibrate_method not in ("minmax", "entropy", "percentile"):
            raise UserError(f"calibrate_method must be minmax, entropy or percentile, got {self.calibrate_method!r}")
        if self.decode_steps < 0:
            raise UserError(f"decode_steps must be >= 0, got {self.decode_steps}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise UserError(f"block_size must be a power of two >= 16, got {self.block_size}; e.g. --block-size 32")
        if self.awq_chunk < 1 or self.awq_chunks_per_clip < 1:
            raise UserError(f"awq_chunk and awq_chunks_per_clip must be >= 1, got {self.awq_chunk}, {self.awq_chunks_per_clip}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ReportConfig:
    threads: int | None = 2  # ONNX Runtime intra-op threads while timing (None: ORT's default)
    retrieval_k: int = 3  # captions retrieved per query when comparing retrieval (capped at held-out clips - 1)
    isolate: bool = True  # run each precision in its own process, so peak memory is its own

    def __post_init__(self):
        if self.retrieval_k < 1:
            raise UserError(f"retrieval_k must be >= 1, got {self.retrieval_k}")
