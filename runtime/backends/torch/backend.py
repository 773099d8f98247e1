"""The PyTorch reference backend, built on transformers' own LLaVA-OneVision modules.

Every layer runs transformers' SDPA attention. The probe layers run through an attention function
registered under the name "rlivs_probe" (with the SDPA mask): it calls SDPA for the layer output
and, beside it, computes the softmax probabilities of only the last R query rows (R = 1 at a
decode step and for the last prompt token), averaged over heads into a small recorder. Nothing
materialises a full attention matrix; non-probe layers dispatch straight to SDPA.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AttentionInterface, LlavaOnevisionForConditionalGeneration
from transformers.utils import logging as hf_logging
from transformers.cache_utils import DynamicCache
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ...config import ProbeConfig
from ..base import Backend, DecodeState, ModelInfo, StepOutput

log = logging.getLogger("rlivs.backend.torch")

PROBE_ATTN = "rlivs_probe"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ProbeRecorder:
    """Accumulates the head-mean attention rows of the probe layers during one step."""

    def __init__(self, n_layers: int):
        self.n_layers = n_layers  # probe layers that add to the sum each step
        self.rows = 0  # query rows to record this step (0 = record nothing)
        self.total: torch.Tensor | None = None  # (R, K) float32 sum over probe layers

    def begin(self, rows: int) -> None:
        self.rows, self.total = rows, None

    def add(self, rows: torch.Tensor) -> None:  # (R, K) float32, mean over heads of one layer
        self.total = rows if self.total is None else self.total + rows

    def end(self) -> np.ndarray | None:
        if self.rows == 0 or self.total is None:
            return None
        out = (self.total / self.n_layers).cpu().numpy()  # (R, K) mean over probe layers
        self.rows, self.total = 0, None
        return out


def probe_rows(module, query, key, attention_mask, scaling: float, rows: int) -> torch.Tensor:
    """Softmax attention of the last `rows` queries over all keys, mean over heads: (rows, K) float32.

    query (B=1, H, Q, Dh); key (1, H_kv, K, Dh) before GQA repetition; attention_mask is what the
    SDPA mask function produced: None (pure causal), bool (True = attend) or additive float.
    """
    q_len, k_len = query.shape[2], key.shape[2]
    r = min(rows, q_len)
    q = query[:, :, q_len - r :, :].float()  # (1, H, R, Dh)
    k = repeat_kv(key, module.num_key_value_groups).float()  # (1, H, K, Dh)
    scores = torch.matmul(q, k.transpose(2, 3)) * scaling  # (1, H, R, K)
    if attention_mask is None:
        # query row i sits at absolute position k_len - r + i and sees keys 0..k_len - r + i
        qpos = torch.arange(k_len - r, k_len, device=q.device)[:, None]  # (R, 1)
        kpos = torch.arange(k_len, device=q.device)[None, :]  # (1, K)
        scores = scores.masked_fill(kpos > qpos, float("-inf"))
    else:
        m = attention_mask[..., q_len - r :, :k_len]  # (1, 1, R, K)
        scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.float()
    probs = torch.softmax(scores, dim=-1)  # (1, H, R, K)
    return probs.mean(dim=1)[0]  # (R, K)


def rlivs_probe_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """SDPA for the output; for a probe layer also the reduced probabilities of the recorded rows."""
    out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    rec: ProbeRecorder | None = getattr(module, "_rlivs_probe", None)
    if rec is not None and rec.rows > 0:
        scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
        rec.add(probe_rows(module, query, key, attention_mask, scale, rec.rows))
    return out, None


AttentionInterface.register(PROBE_ATTN, rlivs_probe_attention)
AttentionMaskInterface.register(PROBE_ATTN, sdpa_mask)  # without it the causal mask is dropped at prefill


@dataclass
class TorchState(DecodeState):
    cache: DynamicCache  # per-layer keys/values, (1, H_kv, K, Dh) each
    length: int = 0  # K: positions in the cache


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model_dir: str | Path | None = None, *, model: LlavaOnevisionForConditionalGeneration | None = None,
                 model_id: str | None = None, probe: ProbeConfig | None = None,
                 device: str = "cpu", dtype: str = "float32", threads: int | None = None):
        """Load from an HF-format `model_dir`, or wrap an already-built `model` (random-weight benchmarks)."""
        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r} is not supported by the torch backend: use one of {sorted(_DTYPES)}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for but CUDA is not available: use --device cpu")
        if threads:
            torch.set_num_threads(threads)
        self.device, self.dtype = torch.device(device), _DTYPES[dtype]
        hf_logging.disable_progress_bar()
        if (model_dir is None) == (model is None):
            raise ValueError("give the torch backend either model_dir or model")
        if model is None:
            model = LlavaOnevisionForConditionalGeneration.from_pretrained(
                str(model_dir), dtype=self.dtype, attn_implementation="sdpa")
        else:
            model.set_attn_implementation("sdpa")
        self.model = model.to(self.device, self.dtype).eval()
        cfg = self.model.config
        self.lm = self.model.model.language_model  # Qwen2Model
        n_layers = cfg.text_config.num_hidden_layers
        layers = (probe or ProbeConfig()).resolve(n_layers)
        self.recorder = ProbeRecorder(len(layers))
        self.lm.set_attn_implementation(PROBE_ATTN)
        for i in layers:
            self.lm.layers[i].self_attn._rlivs_probe = self.recorder
        vc = cfg.vision_config
        side = math.ceil(vc.image_size // vc.patch_size / 2)  # 2x2 bilinear pooling, ceil
        self.info = ModelInfo(
            model_id=model_id or str(model_dir or 'in-memory'), hidden_size=cfg.text_config.hidden_size,
            vocab_size=cfg.text_config.vocab_size, num_layers=n_layers, probe_layers=layers,
            tokens_per_frame=side * side, image_size=(vc.image_size, vc.image_size),
            video_token_id=cfg.video_token_id,
        )
        log.info("torch backend: %s on %s/%s, probe layers %s", self.info.model_id, device, dtype, layers)

    @torch.inference_mode()
    def encode_frames(self, pixels: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, self.dtype)[None]  # (1, T, 3, H, W)
        pooled = self.model.model.get_video_features(pixel_values_videos=t).pooler_output  # (1, T*P + 1, D)
        n_frames = pixels.shape[0]
        return pooled[0, :-1].float().cpu().numpy().reshape(n_frames, -1, self.info.hidden_size)  # (T, P, D)

    @torch.inference_mode()
    def image_newline(self) -> np.ndarray:
        return self.model.model.image_newline.float().cpu().numpy()  # (D,)

    @torch.inference_mode()
    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        t = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=self.device)  # (L,)
        return self.lm.embed_tokens(t).float().cpu().numpy()  # (L, D)

    def new_state(self) -> TorchState:
        return TorchState(cache=DynamicCache(config=self.model.config.text_config))

    @torch.inference_mode()
    def step(self, embeds: np.ndarray, state: TorchState, probe_rows: int = 1) -> StepOutput:
        x = torch.from_numpy(np.ascontiguousarray(embeds, dtype=np.float32)).to(self.device, self.dtype)[None]  # (1, L, D)
        n_new = x.shape[1]
        position_ids = torch.arange(state.length, state.length + n_new, device=self.device)[None]  # (1, L)
        self.recorder.begin(probe_rows)
        hidden = self.lm(inputs_embeds=x, past_key_values=state.cache, use_cache=True,
                         position_ids=position_ids).last_hidden_state  # (1, L, D)
        logits = self.model.lm_head(hidden[:, -1])[0]  # (V,) only the last position is ever needed
        state.length += n_new
        return StepOutput(logits=logits.float().cpu().numpy(), probe_attn=self.recorder.end())
