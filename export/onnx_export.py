"""Create ONNX: the vision graph and the decoder graph with reduced probe attention as an output.

Both graphs trace the torch reference backend's own modules (transformers' SigLIP, projector,
pooling, Qwen2 layers, and the backend's registered "rlivs_probe" attention), so an exported graph
computes what the parity tests already pin for the reference. Qwen2.5-VL's vision graph is qwen_vision.py's
(its window attention at the bundle's fixed frame size).

  vision.onnx   pixel_values (F, 3, H, W) f32 -> visual_tokens (F, P, D) f32           F dynamic
                Qwen2.5-VL: pixel_values (2*groups, 3, H, W) -> visual_tokens (groups, P, D): temporal patches of 2
                Qwen3-VL: the same, and deepstack (K, groups, P, D) f32: the DeepStack features of every token
  decoder.onnx  inputs_embeds (1, L, D) f32, position_ids (1, L) i64 (M-RoPE backbones: (3, L), the (t, h, w) ids
                the runtime's backbone computes), and the past, in one of two layouts:
    stacked     past_keys / past_values (N, H_kv, K_past, Dh) f32                     L >= 1, K_past >= 0
             -> logits (1, V) f32 (last position only),
                present_keys / present_values (N, H_kv, K_past + L, Dh) f32,
                probe_attn (1, K_past + L) f32: the last query row's attention, mean over heads and probe layers
    arena       past_kv (K_past, N, 2, H_kv, Dh) f16|f32: position-major, so the cache of K positions is the
                first K rows of one preallocated (K_max, N, 2, H_kv, Dh) buffer
             -> logits, probe_attn as above, new_kv (L, N, 2, H_kv, Dh): only the new positions, which the
                runtime binds to rows [K_past, K_past + L) of the same buffer (the cache is appended in place)
    DeepStack   (Qwen3-VL) two more inputs after the past: visual_rows (n,) i64, the inputs that are visual tokens
                (ascending), and deepstack (K, n, D) f32, their features; after decoder layer k < K the graph adds
                deepstack[k] to those rows' hidden states, as Qwen3VLTextModel does (n = 0: nothing is added)
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from transformers import AttentionInterface
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from rlivs.runtime.backends.torch import TorchBackend
from rlivs.runtime.backends.torch.backend import PROBE_ATTN, probe_rows, probe_rows_batch
from rlivs.runtime.backends.torch.hf_compat import layer_cache_kwargs
from rlivs.runtime.errors import UserError

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
        if getattr(rec, "batched", False):  # (B, R, K): a batched decoder graph
            rec.add(probe_rows_batch(module, query, key, attention_mask, scaling, rec.rows))
        else:
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


class _ConcatLayer(CacheLayerMixin):
    """One layer of an explicit past: `update` returns past ++ new (what the exported graph computes) and keeps
    the new rows for the graph's outputs. transformers' per-layer cache contract (`CacheLayerMixin`)."""

    def __init__(self, past_keys: torch.Tensor, past_values: torch.Tensor):  # (1, H_kv, K_past, Dh) each
        super().__init__()
        self.past_keys, self.past_values = past_keys, past_values
        self.new_keys: torch.Tensor | None = None  # (1, H_kv, L, Dh) after update
        self.new_values: torch.Tensor | None = None
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        return None  # the past is given

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.new_keys, self.new_values = key_states, value_states  # (1, H_kv, L, Dh)
        self.keys = torch.cat([self.past_keys.to(key_states.dtype), key_states], dim=2)  # (1, H_kv, K, Dh)
        self.values = torch.cat([self.past_values.to(value_states.dtype), value_states], dim=2)
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.past_keys.shape[2] + query_length, 0

    def get_seq_length(self) -> int:
        return self.past_keys.shape[2]

    def get_max_length(self) -> int:
        return -1


class _ExplicitCache(Cache):
    """A transformers `Cache` over explicit stacked past tensors (N, H_kv, K_past, Dh), or with a batch axis
    (N, B, H_kv, K_past, Dh) when `batched`."""

    def __init__(self, past_keys: torch.Tensor, past_values: torch.Tensor, batched: bool = False):
        self.batched = batched
        pick = (lambda t, i: t[i]) if batched else (lambda t, i: t[i][None])  # -> (B or 1, H_kv, K_past, Dh)
        super().__init__(layers=[_ConcatLayer(pick(past_keys, i), pick(past_values, i))
                                 for i in range(past_keys.shape[0])])

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every layer's full keys and values: (N, H_kv, K, Dh) each ((N, B, H_kv, K, Dh) when batched)."""
        if self.batched:
            return torch.stack([l.keys for l in self.layers]), torch.stack([l.values for l in self.layers])
        return torch.stack([l.keys[0] for l in self.layers]), torch.stack([l.values[0] for l in self.layers])


class _ArenaCache(Cache):
    """The same over a position-major past (K_past, N, 2, H_kv, Dh); the graph outputs only the new rows.
    batched: a slot-major past (S, B, N, 2, H_kv, Dh) and new rows (L, B, N, 2, H_kv, Dh)."""

    def __init__(self, past_kv: torch.Tensor, batched: bool = False):
        self.batched = batched
        if batched:
            past = past_kv.permute(2, 3, 1, 4, 0, 5)  # (N, 2, B, H_kv, S, Dh)
            layers = [_ConcatLayer(past[i, 0], past[i, 1]) for i in range(past.shape[0])]
        else:
            past = past_kv.permute(1, 2, 3, 0, 4)  # (N, 2, H_kv, K_past, Dh)
            layers = [_ConcatLayer(past[i, 0][None], past[i, 1][None]) for i in range(past.shape[0])]
        super().__init__(layers=layers)

    def new_rows(self, dtype: torch.dtype) -> torch.Tensor:
        if self.batched:  # new keys (B, H_kv, L, Dh) per layer
            keys = torch.stack([l.new_keys.permute(2, 0, 1, 3) for l in self.layers], 2)  # (L, B, N, H_kv, Dh)
            values = torch.stack([l.new_values.permute(2, 0, 1, 3) for l in self.layers], 2)
            return torch.stack([keys, values], 3).to(dtype)  # (L, B, N, 2, H_kv, Dh)
        keys = torch.stack([l.new_keys[0].transpose(0, 1) for l in self.layers], 1)  # (L, N, H_kv, Dh)
        values = torch.stack([l.new_values[0].transpose(0, 1) for l in self.layers], 1)
        return torch.stack([keys, values], 2).to(dtype)  # (L, N, 2, H_kv, Dh)


class DecoderGraph(nn.Module):
    """The Qwen2 decoder stack with an explicit cache; last-position logits; the probe row as an output."""

    def __init__(self, backend: TorchBackend, probe: bool = True, additive_mask: bool = False,
                 arena: bool = False, batch: bool = False):
        super().__init__()
        self.arena = arena  # past as one position-major past_kv input, new rows as new_kv (see the module doc)
        self.batch = batch  # B sequences, key_valid input (the module doc's "batched"); stacked layout only
        self.additive_mask = additive_mask  # float 0/-inf-like mask (plain attention) instead of bool (SDPA)
        self.lm = backend.model.model.language_model  # Qwen2Model, probe layers already hooked
        self.lm_head = backend.model.lm_head
        self.recorder = backend.recorder
        self.probe = probe  # False: no probe output (to measure what the probe rows cost)
        self.mrope = backend.backbone.mrope  # position_ids (3, L): M-RoPE (t, h, w) ids

    def forward(self, inputs_embeds, position_ids, past_keys, past_values=None, past_valid=None, new_valid=None):
        if self.batch:
            key_valid = torch.cat([past_valid, new_valid], dim=1)  # (B, K_past + L)
            return self._forward_batch(inputs_embeds, position_ids, key_valid, past_keys, past_values)
        return self._forward_one(inputs_embeds, position_ids, past_keys, past_values)

    def _forward_one(self, inputs_embeds, position_ids, past_keys, past_values=None, deepstack=None):
        """One sequence; deepstack: ((n,) visual rows, (K, n, D) features) added after layers 0..K-1."""
        n_new = inputs_embeds.shape[1]
        n_past = past_keys.shape[0] if self.arena else past_keys.shape[2]  # arena: past_keys is past_kv
        qpos = n_past + torch.arange(n_new, device=inputs_embeds.device)  # (L,) absolute query positions
        kpos = torch.arange(n_past + n_new, device=inputs_embeds.device)  # (K,)
        mask = (kpos[None, :] <= qpos[:, None])[None, None]  # (1, 1, L, K) True = attend
        if self.additive_mask:
            zero = torch.zeros((), dtype=inputs_embeds.dtype)
            mask = torch.where(mask, zero, torch.finfo(inputs_embeds.dtype).min)  # (1, 1, L, K) additive
        cache = _ArenaCache(past_keys) if self.arena else _ExplicitCache(past_keys, past_values)
        hidden = inputs_embeds  # (1, L, D)
        if self.mrope:  # (3, L) -> (3, 1, L): Qwen2.5-VL's rotary embedding takes (3, B, L); layers take no ids
            rope, position_ids = self.lm.rotary_emb(hidden, position_ids[:, None, :]), None
        else:
            rope = self.lm.rotary_emb(hidden, position_ids)
        self.recorder.begin(1 if self.probe else 0)
        for i, layer in enumerate(self.lm.layers[: self.lm.config.num_hidden_layers]):
            hidden = layer(hidden, attention_mask=mask, position_embeddings=rope, position_ids=position_ids,
                           **layer_cache_kwargs(cache), use_cache=True)
            if deepstack is not None and i < deepstack[1].shape[0]:
                hidden = _add_rows(hidden, deepstack[0], deepstack[1][i])
        logits = self.lm_head(self.lm.norm(hidden[:, -1]))  # (1, V)
        kv = (cache.new_rows(past_keys.dtype),) if self.arena else cache.stacked()
        if not self.probe:
            return logits, *kv
        probe = self.recorder.total / self.recorder.n_layers  # (1, K) mean over probe layers (heads already)
        self.recorder.begin(0)
        return logits, *kv, probe


    def _forward_batch(self, inputs_embeds, position_ids, key_valid, past_keys, past_values):
        """(B, L, D), (B, L), (B, K) bool, (N, B, H_kv, K_past, Dh) x 2 -> logits (B, V), present keys/values
        (N, B, H_kv, K, Dh), probe (B, K); arena: past_keys is past_kv (S, B, N, 2, H_kv, Dh) -> logits, new_kv
        (L, B, N, 2, H_kv, Dh), probe. Mask by slot: causal, on the sequence's own keys, and a row always sees
        itself (a padded row has no other key; its output is never read)."""
        n_new, n_past = inputs_embeds.shape[1], past_keys.shape[0 if self.arena else 3]
        qslot = n_past + torch.arange(n_new, device=inputs_embeds.device)  # (L,)
        kslot = torch.arange(n_past + n_new, device=inputs_embeds.device)  # (K,)
        causal = kslot[None, :] <= qslot[:, None]  # (L, K)
        own = kslot[None, :] == qslot[:, None]  # (L, K)
        mask = ((causal[None] & key_valid[:, None, :]) | own[None])[:, None]  # (B, 1, L, K) True = attend
        if self.additive_mask:
            zero = torch.zeros((), dtype=inputs_embeds.dtype)
            mask = torch.where(mask, zero, torch.finfo(inputs_embeds.dtype).min)  # (B, 1, L, K) additive
        cache = _ArenaCache(past_keys, batched=True) if self.arena else \
            _ExplicitCache(past_keys, past_values, batched=True)
        hidden = inputs_embeds  # (B, L, D)
        rope = self.lm.rotary_emb(hidden, position_ids)
        self.recorder.begin(1 if self.probe else 0, batched=True)
        for layer in self.lm.layers[: self.lm.config.num_hidden_layers]:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=rope, position_ids=position_ids,
                           **layer_cache_kwargs(cache), use_cache=True)
        logits = self.lm_head(self.lm.norm(hidden[:, -1]))  # (B, V)
        kv = (cache.new_rows(past_keys.dtype),) if self.arena else cache.stacked()
        if not self.probe:
            self.recorder.begin(0)
            return logits, *kv
        probe = self.recorder.total[:, 0] / self.recorder.n_layers  # (B, K) mean over probe layers (heads already)
        self.recorder.begin(0)
        return logits, *kv, probe


def _add_rows(hidden: torch.Tensor, rows: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """(1, L, D) hidden states with (n, D) feats added at rows (n,): Qwen3VLTextModel._deepstack_process's
    `h[mask] = h[mask] + feats` as Gather -> Add -> ScatterND (the same sums; rows untouched stay bit-equal)."""
    h = hidden[0]
    return h.index_put((rows,), h[rows] + feats)[None]


class DeepStackDecoderGraph(DecoderGraph):
    """The stacked-cache decoder with the DeepStack inputs of the module doc (Qwen3-VL)."""

    def forward(self, inputs_embeds, position_ids, past_keys, past_values, visual_rows, deepstack):
        return self._forward_one(inputs_embeds, position_ids, past_keys, past_values, (visual_rows, deepstack))


class DeepStackArenaDecoderGraph(DecoderGraph):
    """The arena-cache decoder with the DeepStack inputs (no past_values)."""

    def forward(self, inputs_embeds, position_ids, past_kv, visual_rows, deepstack):
        return self._forward_one(inputs_embeds, position_ids, past_kv, None, (visual_rows, deepstack))


class ArenaBatchDecoderGraph(DecoderGraph):
    """The batched arena graph: its inputs in order (no past_values), module paths as DecoderGraph's ("lm....", which
    the TensorRT builder's probe-row pinning and fusion report read)."""

    def forward(self, inputs_embeds, position_ids, past_kv, past_valid, new_valid):
        key_valid = torch.cat([past_valid, new_valid], dim=1)  # (B, S + L)
        return self._forward_batch(inputs_embeds, position_ids, key_valid, past_kv, None)


def _save(program, path: Path, external: bool) -> None:
    program.save(str(path), external_data=external)


def export_vision(backend: TorchBackend, path: Path, opset: int) -> None:
    h, w = backend.info.image_size
    if backend.backbone.name in ("qwen2_5_vl", "qwen3_vl"):
        return _export_qwen_vision(backend, path, opset)
    example = torch.randn(2, 3, h, w)
    frames = torch.export.Dim("frames", min=1, max=256)
    program = torch.onnx.export(VisionGraph(backend).eval(), (example,), dynamo=True, opset_version=opset,
                                input_names=["pixel_values"], output_names=["visual_tokens"],
                                dynamic_shapes=({0: frames},), optimize=True, verbose=False)
    _save(program, path, external=_large(backend))


def _export_qwen_vision(backend: TorchBackend, path: Path, opset: int) -> None:
    """(2*groups, 3, H, W) -> (groups, P, D): whole temporal patches in, merged tokens out (qwen_vision.py); Qwen3-VL
    also -> deepstack (K, groups, P, D)."""
    import onnx

    from .qwen_vision import QwenVisionGraph

    h, w = backend.info.image_size
    tp = backend.info.temporal_patch
    groups = torch.export.Dim("groups", min=1, max=128)
    graph = QwenVisionGraph(backend).eval()
    outs = ["visual_tokens"] + (["deepstack"] if graph.deepstack else [])
    program = torch.onnx.export(graph, (torch.randn(2 * tp, 3, h, w),), dynamo=True,
                                opset_version=opset, input_names=["pixel_values"], output_names=outs,
                                dynamic_shapes=({0: tp * groups},), optimize=True, verbose=False)
    _save(program, path, external=_large(backend))
    model = onnx.load(str(path), load_external_data=False)  # name the outputs' group axis as the input's
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "groups"
    if graph.deepstack:
        model.graph.output[1].type.tensor_type.shape.dim[1].dim_param = "groups"
    onnx.save(model, str(path))


def decoder_shapes(backend: TorchBackend) -> tuple[int, int, int]:
    """(N layers, H_kv, Dh) of the KV cache."""
    tc = backend.model.config.text_config
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    return tc.num_hidden_layers, tc.num_key_value_heads, head_dim


def export_decoder(backend: TorchBackend, path: Path, opset: int, probe: bool = True, plain: bool = False,
                   kv_layout: str = "stacked", kv_dtype: str = "float32", batch: bool = False) -> None:
    """plain=True: every layer's attention as MatMul -> Add -> Softmax -> MatMul (the TensorRT target).
    kv_layout "arena": the position-major past_kv -> new_kv cache of the module doc, stored as kv_dtype.
    batch=True: the batched decoder of the module doc (stacked or slot-major arena), B a dynamic axis."""
    n, hkv, dh = decoder_shapes(backend)
    d = backend.info.hidden_size
    if backend.backbone.mrope and batch:
        raise UserError(f"a batched decoder (--batch) takes (B, L) 1-D positions; {backend.backbone.label} uses 3-D "
                        f"M-RoPE positions: export it without --batch")
    seq, past = torch.export.Dim("seq", min=1, max=65536), torch.export.Dim("past", min=0, max=65536)
    if batch and kv_layout == "arena":  # example B = 2 (a batch axis traced at 1 would be specialised away)
        bsz, kpast = torch.export.Dim("batch", min=1, max=256), 5
        example = (torch.randn(2, 3, d), torch.arange(kpast, kpast + 3)[None].repeat(2, 1),
                   torch.randn(kpast, 2, n, 2, hkv, dh).to(getattr(torch, kv_dtype)),
                   torch.ones(2, kpast, dtype=torch.bool), torch.ones(2, 3, dtype=torch.bool))
        names = ["inputs_embeds", "position_ids", "past_kv", "past_valid", "new_valid"]
        outs = ["logits", "new_kv"]
        dyn = ({0: bsz, 1: seq}, {0: bsz, 1: seq}, {0: past, 1: bsz}, {0: bsz, 1: past}, {0: bsz, 1: seq})
    elif batch:
        bsz, kpast = torch.export.Dim("batch", min=1, max=256), 5
        example = (torch.randn(2, 3, d), torch.arange(kpast, kpast + 3)[None].repeat(2, 1),
                   torch.randn(n, 2, hkv, kpast, dh), torch.randn(n, 2, hkv, kpast, dh),
                   torch.ones(2, kpast, dtype=torch.bool), torch.ones(2, 3, dtype=torch.bool))
        names = ["inputs_embeds", "position_ids", "past_keys", "past_values", "past_valid", "new_valid"]
        outs = ["logits", "present_keys", "present_values"]
        dyn = ({0: bsz, 1: seq}, {0: bsz, 1: seq}, {1: bsz, 3: past}, {1: bsz, 3: past}, {0: bsz, 1: past},
               {0: bsz, 1: seq})
    elif kv_layout == "arena":
        example = (torch.randn(1, 3, d), torch.arange(5, 8)[None],
                   torch.randn(5, n, 2, hkv, dh).to(getattr(torch, kv_dtype)))
        names, outs, dyn = ["inputs_embeds", "position_ids", "past_kv"], ["logits", "new_kv"], ({1: seq}, {1: seq}, {0: past})
    else:
        example = (torch.randn(1, 3, d), torch.arange(5, 8)[None], torch.randn(n, hkv, 5, dh), torch.randn(n, hkv, 5, dh))
        names = ["inputs_embeds", "position_ids", "past_keys", "past_values"]
        outs, dyn = ["logits", "present_keys", "present_values"], ({1: seq}, {1: seq}, {2: past}, {2: past})
    if backend.backbone.mrope:  # (3, L) (t, h, w) ids instead of (1, L)
        example = (example[0], torch.stack([example[1][0], example[1][0] - 1, example[1][0] - 2]), *example[2:])
    kind = ArenaBatchDecoderGraph if batch and kv_layout == "arena" else DecoderGraph
    if backend.backbone.deepstack:  # (n,) visual rows and their (K, n, D) features after the past (module doc)
        n_deep = len(backend.model.config.vision_config.deepstack_visual_indexes)
        visual = torch.export.Dim("visual", min=0, max=65536)
        example = (*example, torch.tensor([0, 2]), torch.randn(n_deep, 2, d))
        names, dyn = names + ["visual_rows", "deepstack"], (*dyn, {0: visual}, {1: visual})
        kind = DeepStackArenaDecoderGraph if kv_layout == "arena" else DeepStackDecoderGraph
    lm = backend.model.model.language_model
    lm.set_attn_implementation(TRT_ATTN if plain else PROBE_ATTN)
    graph = kind(backend, probe, additive_mask=plain, arena=kv_layout == "arena", batch=batch)
    try:
        program = torch.onnx.export(
            graph.eval(), example, dynamo=True,
            opset_version=opset, input_names=names, output_names=outs + (["probe_attn"] if probe else []),
            dynamic_shapes=dyn, optimize=True, verbose=False)
    finally:
        lm.set_attn_implementation(PROBE_ATTN)
    _save(program, path, external=_large(backend))


def _large(backend: TorchBackend) -> bool:
    """Graphs over 2 GB must keep weights outside the protobuf; use external data past ~100 M parameters."""
    return sum(p.numel() for p in backend.model.parameters()) > 100_000_000
