"""Create ONNX: the vision graph and the decoder graph with reduced probe attention as an output.

Both graphs trace the torch reference backend's own modules (transformers' SigLIP, projector,
pooling, Qwen2 layers, and the backend's registered "rlivs_probe" attention), so an exported graph
computes what the parity tests already pin for the reference.

  vision.onnx   pixel_values (F, 3, H, W) f32 -> visual_tokens (F, P, D) f32           F dynamic
  decoder.onnx  inputs_embeds (1, L, D) f32, position_ids (1, L) i64,
                past_keys / past_values (N, H_kv, K_past, Dh) f32                     L >= 1, K_past >= 0
             -> logits (1, V) f32 (last position only),
                present_keys / present_values (N, H_kv, K_past + L, Dh) f32,
                probe_attn (1, K_past + L) f32: the last query row's attention, mean over heads and probe layers
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from rlivs.runtime.backends.torch import TorchBackend
from rlivs.runtime.backends.torch.backend import PROBE_ATTN, probe_rows

log = logging.getLogger("rlivs.export")
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)  # "torchvision missing" noise


TRT_ATTN = "rlivs_trt"


def plain_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """MatMul -> Add(mask) -> Softmax -> MatMul, the pattern TensorRT fuses into one attention kernel
    (SDPA's decomposition puts IsNaN/Where between Softmax and MatMul). A probe layer also computes
    its last-row probabilities beside it, as in the reference backend. query (1, H, Q, Dh)."""
    k = repeat_kv(key, module.num_key_value_groups)  # (1, H, K, Dh)
    v = repeat_kv(value, module.num_key_value_groups)
    probs = torch.softmax(torch.matmul(query, k.transpose(2, 3)) * scaling + attention_mask, dim=-1)  # (1, H, Q, K)
    out = torch.matmul(probs, v).transpose(1, 2).contiguous()  # (1, Q, H, Dh)
    rec = getattr(module, "_rlivs_probe", None)
    if rec is not None and rec.rows > 0:
        rec.add(probe_rows(module, query, key, attention_mask, scaling, rec.rows))
    return out, None


AttentionInterface.register(TRT_ATTN, plain_attention)
AttentionMaskInterface.register(TRT_ATTN, eager_mask)


class VisionGraph(nn.Module):
    """SigLIP tower + projector + 2x2 pooling, as LlavaOnevisionModel.get_video_features, without the newline."""

    def __init__(self, backend: TorchBackend):
        super().__init__()
        self.model = backend.model.model
        self.tokens_per_frame = backend.info.tokens_per_frame

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # (F, 3, H, W)
        pooled = self.model.get_video_features(pixel_values_videos=pixel_values[None]).pooler_output  # (1, F*P + 1, D)
        return pooled[0, :-1].reshape(pixel_values.shape[0], self.tokens_per_frame, -1)  # (F, P, D)


class _ExplicitCache:
    """The `update` contract Qwen2Attention uses, over explicit stacked past tensors."""

    def __init__(self, past_keys: torch.Tensor, past_values: torch.Tensor):
        self.past_keys, self.past_values = past_keys, past_values  # (N, H_kv, K_past, Dh)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):  # (1, H_kv, L, Dh)
        k = torch.cat([self.past_keys[layer_idx][None], key], dim=2)  # (1, H_kv, K, Dh)
        v = torch.cat([self.past_values[layer_idx][None], value], dim=2)
        self.keys.append(k[0])
        self.values.append(v[0])
        return k, v


class DecoderGraph(nn.Module):
    """The Qwen2 decoder stack with an explicit cache; last-position logits; the probe row as an output."""

    def __init__(self, backend: TorchBackend, probe: bool = True, additive_mask: bool = False):
        super().__init__()
        self.additive_mask = additive_mask  # float 0/-inf-like mask (plain attention) instead of bool (SDPA)
        self.lm = backend.model.model.language_model  # Qwen2Model, probe layers already hooked
        self.lm_head = backend.model.lm_head
        self.recorder = backend.recorder
        self.probe = probe  # False: no probe output (to measure what the probe rows cost)

    def forward(self, inputs_embeds, position_ids, past_keys, past_values):
        n_new, n_past = inputs_embeds.shape[1], past_keys.shape[2]
        qpos = n_past + torch.arange(n_new, device=inputs_embeds.device)  # (L,) absolute query positions
        kpos = torch.arange(n_past + n_new, device=inputs_embeds.device)  # (K,)
        mask = (kpos[None, :] <= qpos[:, None])[None, None]  # (1, 1, L, K) True = attend
        if self.additive_mask:
            zero = torch.zeros((), dtype=inputs_embeds.dtype)
            mask = torch.where(mask, zero, torch.finfo(inputs_embeds.dtype).min)  # (1, 1, L, K) additive
        cache = _ExplicitCache(past_keys, past_values)
        hidden = inputs_embeds  # (1, L, D)
        rope = self.lm.rotary_emb(hidden, position_ids)
        self.recorder.begin(1 if self.probe else 0)
        for layer in self.lm.layers[: self.lm.config.num_hidden_layers]:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=rope, position_ids=position_ids,
                           past_key_values=cache, use_cache=True)
        logits = self.lm_head(self.lm.norm(hidden[:, -1]))  # (1, V)
        if not self.probe:
            return logits, torch.stack(cache.keys), torch.stack(cache.values)
        probe = self.recorder.total / self.recorder.n_layers  # (1, K) mean over probe layers (heads already)
        self.recorder.begin(0)
        return logits, torch.stack(cache.keys), torch.stack(cache.values), probe


def _save(program, path: Path, external: bool) -> None:
    program.save(str(path), external_data=external)


def export_vision(backend: TorchBackend, path: Path, opset: int) -> None:
    h, w = backend.info.image_size
    example = torch.randn(2, 3, h, w)
    frames = torch.export.Dim("frames", min=1, max=256)
    program = torch.onnx.export(VisionGraph(backend).eval(), (example,), dynamo=True, opset_version=opset,
                                input_names=["pixel_values"], output_names=["visual_tokens"],
                                dynamic_shapes=({0: frames},), optimize=True, verbose=False)
    _save(program, path, external=_large(backend))


def decoder_shapes(backend: TorchBackend) -> tuple[int, int, int]:
    """(N layers, H_kv, Dh) of the KV cache."""
    tc = backend.model.config.text_config
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    return tc.num_hidden_layers, tc.num_key_value_heads, head_dim


def export_decoder(backend: TorchBackend, path: Path, opset: int, probe: bool = True, plain: bool = False) -> None:
    """plain=True: every layer's attention as MatMul -> Add -> Softmax -> MatMul (the TensorRT target)."""
    n, hkv, dh = decoder_shapes(backend)
    d = backend.info.hidden_size
    seq, past = torch.export.Dim("seq", min=1, max=65536), torch.export.Dim("past", min=0, max=65536)
    example = (torch.randn(1, 3, d), torch.arange(5, 8)[None], torch.randn(n, hkv, 5, dh), torch.randn(n, hkv, 5, dh))
    lm = backend.model.model.language_model
    lm.set_attn_implementation(TRT_ATTN if plain else PROBE_ATTN)
    try:
        program = torch.onnx.export(
            DecoderGraph(backend, probe, additive_mask=plain).eval(), example, dynamo=True, opset_version=opset,
            input_names=["inputs_embeds", "position_ids", "past_keys", "past_values"],
            output_names=["logits", "present_keys", "present_values"] + (["probe_attn"] if probe else []),
            dynamic_shapes=({1: seq}, {1: seq}, {2: past}, {2: past}), optimize=True, verbose=False)
    finally:
        lm.set_attn_implementation(PROBE_ATTN)
    _save(program, path, external=_large(backend))


def _large(backend: TorchBackend) -> bool:
    """Graphs over 2 GB must keep weights outside the protobuf; use external data past ~100 M parameters."""
    return sum(p.numel() for p in backend.model.parameters()) > 100_000_000
