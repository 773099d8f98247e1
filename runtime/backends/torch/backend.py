"""The PyTorch reference backend, built on transformers' own LLaVA-OneVision modules.

Every layer runs transformers' SDPA attention. The probe layers run through an attention function
registered under the name "rlivs_probe" (with the SDPA mask): it calls SDPA for the layer output
and, beside it, computes the softmax probabilities of only the last R query rows (R = 1 at a
decode step and for the last prompt token), averaged over heads into a small recorder. Nothing
materialises a full attention matrix; non-probe layers dispatch straight to SDPA.

Two KV caches (`cache=`): "dynamic", the reference (transformers' DynamicCache, the default on CPU), and
"static" (`static.py`: a preallocated arena of `max_context` positions per live sequence, the default on
CUDA). With the static cache a prefill runs eagerly over exactly the real keys, and a decode step (L = 1) runs
on fixed buffers over all `max_context` positions with an explicit 4-D boolean mask (masked keys get probability
0), so on CUDA it is captured once per arena as a CUDA graph and replayed for every later token; the probe row
is summed in place into the arena's (1, max_context) buffer inside the graph and sliced to (1, K) afterwards.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.utils import logging as hf_logging

from ...backbones import backbone_for_config, backbone_for_dir
from ...config import ProbeConfig
from ..base import Backend, BatchState, DecodeState, MergedBatch, ModelInfo, StepOutput, check_step_batch
from ..kv_arena import ArenaPool
from .backbones import adapter_for
from .hf_compat import cache_kwargs
from .static import StaticArena, StaticKV, StaticState
from rlivs.runtime.errors import UserError

log = logging.getLogger("rlivs.backend.torch")

PROBE_ATTN = "rlivs_probe"
CACHES = ("dynamic", "static")
DEFAULT_MAX_CONTEXT = 8192  # static cache positions per sequence: a full 0.5B clip step (~6.4K) fits, as does an answer
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ProbeRecorder:
    """Accumulates the head-mean attention rows of the probe layers during one step.

    Reference (dynamic cache) steps sum into a fresh tensor; static-cache decode steps sum in place into a
    preallocated (1, M) `out` buffer, so the accumulation can sit inside a captured CUDA graph.
    """

    def __init__(self, n_layers: int):
        self.n_layers = n_layers  # probe layers that add to the sum each step
        self.rows = 0  # query rows to record this step (0 = record nothing)
        self.total: torch.Tensor | None = None  # (R, K) float32 sum over probe layers
        self.out: torch.Tensor | None = None  # (1, M) float32 static buffer (static-cache decode only)
        self.batched = False  # a batched step: rows are (B, R, K), one block per sequence

    def begin(self, rows: int, out: torch.Tensor | None = None, batched: bool = False) -> None:
        self.rows, self.total, self.out, self.batched = rows, None, out, batched
        if out is not None and rows:
            out.zero_()

    def add(self, rows: torch.Tensor) -> None:  # (R, K) float32 (batched: (B, R, K)), mean over heads of one layer
        if self.out is not None:
            self.out.add_(rows)  # (1, M) in place: fixed address, capture-safe
        else:
            self.total = rows if self.total is None else self.total + rows

    def end(self) -> np.ndarray | None:
        if self.rows == 0 or self.total is None:
            self.rows, self.total, self.out, self.batched = 0, None, None, False
            return None
        out = (self.total / self.n_layers).cpu().numpy()  # (R, K) (batched: (B, R, K)) mean over probe layers
        self.rows, self.total, self.batched = 0, None, False
        return out

    def reset(self) -> None:
        self.rows, self.total, self.out, self.batched = 0, None, None, False


def probe_rows_batch(module, query, key, attention_mask, scaling: float, rows: int) -> torch.Tensor:
    """Softmax attention of the last `rows` queries over all keys, mean over heads: (B, rows, K) float32.

    query (B, H, Q, Dh); key (B, H_kv, K, Dh) before GQA repetition; attention_mask is what the
    SDPA mask function produced (None: pure causal, bool: True = attend, or additive float), or a batched
    step's (B, 1, Q, K) bool mask (padding and other sequences' holes False: their probability is exactly 0).
    """
    q_len, k_len = query.shape[2], key.shape[2]
    r = min(rows, q_len)
    q = query[:, :, q_len - r :, :].float()  # (B, H, R, Dh)
    k = repeat_kv(key, module.num_key_value_groups).float()  # (B, H, K, Dh)
    scores = torch.matmul(q, k.transpose(2, 3)) * scaling  # (B, H, R, K)
    if attention_mask is None:
        # query row i sits at absolute position k_len - r + i and sees keys 0..k_len - r + i
        qpos = torch.arange(k_len - r, k_len, device=q.device)[:, None]  # (R, 1)
        kpos = torch.arange(k_len, device=q.device)[None, :]  # (1, K)
        scores = scores.masked_fill(kpos > qpos, float("-inf"))
    else:
        m = attention_mask[..., q_len - r :, :k_len]  # (B or 1, 1, R, K)
        scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.float()
    probs = torch.softmax(scores, dim=-1)  # (B, H, R, K)
    return probs.mean(dim=1)  # (B, R, K)


def probe_rows(module, query, key, attention_mask, scaling: float, rows: int) -> torch.Tensor:
    """One sequence (B = 1): probe_rows_batch's rows as (R, K) float32."""
    return probe_rows_batch(module, query, key, attention_mask, scaling, rows)[0]


def rlivs_probe_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """SDPA for the output; for a probe layer also the reduced probabilities of the recorded rows."""
    out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    rec: ProbeRecorder | None = getattr(module, "_rlivs_probe", None)
    if rec is not None and rec.rows > 0:
        scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
        if getattr(rec, "batched", False):  # a batched step: (B, R, K), one block per sequence
            rec.add(probe_rows_batch(module, query, key, attention_mask, scale, rec.rows))
        else:
            rec.add(probe_rows(module, query, key, attention_mask, scale, rec.rows))  # (R, K)
    return out, None


AttentionInterface.register(PROBE_ATTN, rlivs_probe_attention)
AttentionMaskInterface.register(PROBE_ATTN, sdpa_mask)  # without it the causal mask is dropped at prefill


@dataclass
class TorchState(DecodeState):
    cache: DynamicCache  # per-layer keys/values, (1, H_kv, K, Dh) each
    length: int = 0  # K: positions in the cache
    rope_delta: int = 0  # position id of cache slot k is k + rope_delta (M-RoPE: set by a step given positions)


class TorchBatch(MergedBatch):
    """B sequences' KV caches as one batched DynamicCache, each row with its own holes.

    Slots: every layer's keys are (B, H_kv, S, Dh); sequence i's real keys sit at the slots where valid[i] is True,
    in position order, and padding (a shorter past, a shorter new input) elsewhere. A step appends L_max slots to
    every row, so the holes of a row stay where they are; the attention mask keeps every query off them.
    """

    def __init__(self, cache: DynamicCache, valid: torch.Tensor, lengths: list[int]):
        super().__init__(lengths)  # K_i real positions per sequence
        self.cache = cache  # per layer (B, H_kv, S, Dh) keys and values
        self.valid = valid  # (B, S) bool: slot holds one of that sequence's keys

    def keep(self, indices: list[int]) -> None:
        idx = torch.as_tensor(list(indices), dtype=torch.long, device=self.valid.device)
        self.cache.batch_select_indices(idx)
        self.valid = self.valid[idx]
        super().keep(indices)


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model_dir: str | Path | None = None, *, model: PreTrainedModel | None = None,
                 model_id: str | None = None, probe: ProbeConfig | None = None,
                 device: str = "cpu", dtype: str = "float32", threads: int | None = None,
                 cache: str | None = None, max_context: int = DEFAULT_MAX_CONTEXT, cuda_graph: bool | None = None):
        """Load from an HF-format `model_dir`, or wrap an already-built `model` (random-weight benchmarks).

        cache: "dynamic" (the reference: transformers' DynamicCache, grows per step) or "static" (a preallocated
        arena of `max_context` positions per live sequence; decode steps attend over all of it with a mask).
        Default: static on CUDA, dynamic elsewhere. cuda_graph: capture the static decode step (L = 1) as a CUDA
        graph per arena and replay it (default: on when the cache is static and the device is CUDA).
        """
        if dtype not in _DTYPES:
            raise UserError(f"dtype {dtype!r} is not supported by the torch backend: use one of {sorted(_DTYPES)}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"device {device!r} asked for but CUDA is not available: use --device cpu")
        on_cuda = device.startswith("cuda")
        if (model_dir is None) == (model is None):
            raise UserError("give the torch backend either model_dir or model")
        self.backbone = backbone_for_dir(model_dir) if model is None else backbone_for_config(model.config.to_dict())
        self.family = adapter_for(self.backbone)  # how this backbone loads and encodes (backbones.py)
        if self.backbone.mrope and cache == "static":
            raise UserError(f"the static KV cache runs 1-D positions only; {self.backbone.label} uses M-RoPE: "
                            f"use --kv-cache dynamic")
        cache = cache or ("static" if on_cuda and not self.backbone.mrope else "dynamic")
        if cache not in CACHES:
            raise UserError(f"cache {cache!r} is not a torch backend KV cache: use one of {', '.join(CACHES)}")
        if cache == "static" and not (isinstance(max_context, int) and max_context >= 1):
            raise UserError(f"max_context must be a positive number of positions, got {max_context!r}: "
                            f"use e.g. --max-context {DEFAULT_MAX_CONTEXT}")
        cuda_graph = (cache == "static" and on_cuda) if cuda_graph is None else cuda_graph
        if cuda_graph and not (cache == "static" and on_cuda):
            raise UserError("CUDA graphs replay the static-cache decode step on a CUDA device: use --device cuda "
                            "with the static cache, or turn CUDA graphs off")
        self.cache, self.max_context, self.cuda_graph = cache, max_context, cuda_graph
        self.graph_error: str | None = None  # why CUDA graph capture failed, if it did (decode then runs eagerly)
        if threads:
            torch.set_num_threads(threads)
        self.device, self.dtype = torch.device(device), _DTYPES[dtype]
        hf_logging.disable_progress_bar()
        if model is None:
            model = self.family.load(model_dir, self.dtype)
        else:
            model.set_attn_implementation("sdpa")
        self.model = model.to(self.device, self.dtype).eval()
        cfg = self.model.config
        self.lm = self.family.language_model(self.model)  # Qwen2Model / Qwen2_5_VLTextModel
        n_layers = cfg.text_config.num_hidden_layers
        layers = (probe or ProbeConfig()).resolve(n_layers)
        self.recorder = ProbeRecorder(len(layers))
        self.lm.set_attn_implementation(PROBE_ATTN)
        for i in layers:
            self.lm.layers[i].self_attn._rlivs_probe = self.recorder
        self._own_probes = self._probe_signature()  # the probe attachment a captured graph bakes in
        self.info = ModelInfo(
            model_id=model_id or str(model_dir or 'in-memory'), hidden_size=cfg.text_config.hidden_size,
            vocab_size=cfg.text_config.vocab_size, num_layers=n_layers, probe_layers=layers,
            backbone=self.backbone.name, **self.family.info_fields(self.model, model_dir),
        )
        self._pool: ArenaPool | None = None
        if cache == "static":
            if getattr(self.lm, "has_sliding_layers", False):
                raise UserError("the static KV cache supports full-attention decoders only; this model has "
                                "sliding-window layers: use the dynamic cache")
            self._pool = ArenaPool(self._new_arena)
            self._kpos = torch.arange(max_context, device=self.device)  # (M,) key positions, for decode masks
            self._graph_pool = torch.cuda.graph_pool_handle() if cuda_graph else None
        log.info("torch backend: %s on %s/%s, probe layers %s, %s KV cache%s", self.info.model_id, device, dtype,
                 layers, cache, f" ({max_context} positions, CUDA graph: {cuda_graph})" if cache == "static" else "")

    @torch.inference_mode()
    def encode_frames(self, pixels: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, self.dtype)  # (T, 3, H, W)
        return self.family.encode(self.model, t).float().cpu().numpy()  # (G, P, D): G = T for LLaVA-OV

    @torch.inference_mode()
    def encode_video(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Backend.encode_video: (G, P, D) tokens and, for a DeepStack backbone, (K, G, P, D) features."""
        t = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, self.dtype)  # (T, 3, H, W)
        tokens, deep = self.family.encode_deepstack(self.model, t)
        return tokens.float().cpu().numpy(), None if deep is None else deep.float().cpu().numpy()

    @torch.inference_mode()
    def image_newline(self) -> np.ndarray:
        return self.family.newline(self.model).float().cpu().numpy()  # (D,)

    @torch.inference_mode()
    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        t = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=self.device)  # (L,)
        return self.lm.embed_tokens(t).float().cpu().numpy()  # (L, D)

    def new_state(self) -> TorchState | StaticState:
        if self._pool is None:
            return TorchState(cache=DynamicCache(config=self.model.config.text_config))
        # The arena is taken at the state's first step: new_state runs outside SharedBackend's lock, and a CUDA
        # allocation there could meet another thread's graph capture.
        return StaticState(arena=None)

    @torch.inference_mode()
    def step(self, embeds: np.ndarray, state: TorchState | StaticState, probe_rows: int = 1,
             positions: np.ndarray | None = None, deepstack: tuple[np.ndarray, np.ndarray] | None = None
             ) -> StepOutput:
        """Backend.step; `positions`: (3, L) M-RoPE position ids of these inputs (default: the next L positions,
        after the offset the last positioned step left, on every axis). `deepstack` (DeepStack backbones):
        ((n,) input rows that are visual tokens, (K, n, D) their features), added to those rows' hidden states
        after decoder layers 0..K-1, as Qwen3VLTextModel does for the visual positions of its input."""
        if self._pool is not None:
            if not isinstance(state, StaticState):
                raise UserError("this torch backend runs a static KV cache: pass a state from its own new_state()")
            if positions is not None or deepstack is not None:
                raise UserError("the static KV cache runs 1-D positions only: use --kv-cache dynamic")
            return self._step_static(embeds, state, probe_rows)
        x = torch.from_numpy(np.ascontiguousarray(embeds, dtype=np.float32)).to(self.device, self.dtype)[None]  # (1, L, D)
        n_new = x.shape[1]
        position_ids = self._positions(state, n_new, positions)  # (1, L), or (3, 1, L) given M-RoPE positions
        extra = {}
        if deepstack is not None:
            rows, feats = deepstack
            mask = torch.zeros((1, n_new), dtype=torch.bool, device=self.device)
            mask[0, torch.as_tensor(np.asarray(rows, dtype=np.int64), device=self.device)] = True
            if len(rows) and not bool((torch.diff(torch.as_tensor(np.asarray(rows))) > 0).all()):
                raise UserError("DeepStack rows must ascend (the features are added in input order)")
            extra = dict(visual_pos_masks=mask, deepstack_visual_embeds=[
                torch.from_numpy(np.ascontiguousarray(f, dtype=np.float32)).to(self.device, self.dtype) for f in feats])
        self.recorder.begin(probe_rows)
        hidden = self.lm(inputs_embeds=x, **cache_kwargs(state.cache), use_cache=True,
                         position_ids=position_ids, **extra).last_hidden_state  # (1, L, D)
        logits = self.model.lm_head(hidden[:, -1])[0]  # (V,) only the last position is ever needed
        state.length += n_new
        return StepOutput(logits=logits.float().cpu().numpy(), probe_attn=self.recorder.end())

    def _positions(self, state: TorchState, n_new: int, positions: np.ndarray | None) -> torch.Tensor:
        if positions is None:
            start = state.length + state.rope_delta
            return torch.arange(start, start + n_new, device=self.device)[None]  # (1, L)
        pos = np.asarray(positions, dtype=np.int64)
        if pos.shape != (3, n_new):
            raise UserError(f"positions must be (3, {n_new}) M-RoPE ids, got {pos.shape}")
        state.rope_delta = int(pos.max()) + 1 - (state.length + n_new)  # later tokens continue after the max
        return torch.from_numpy(pos).to(self.device)[:, None]  # (3, 1, L)

    # ---- batched steps (dynamic cache) ----------------------------------------------------------------------

    @torch.inference_mode()
    def batch(self, states: list) -> BatchState:
        """Merge B dynamic-cache states into one batched cache (their keys right-padded to the longest past).
        The static cache and sliding-window decoders step the sequences one by one (the base contract)."""
        if self._pool is not None or getattr(self.lm, "has_sliding_layers", False) or self.backbone.mrope or \
                not all(isinstance(s, TorchState) for s in states):  # (M-RoPE: 3-D positions step one by one)
            return super().batch(states)
        tc = self.model.config.text_config
        lengths = [s.length for s in states]  # K_i
        s_max = max(lengths, default=0)
        cache = DynamicCache(config=tc)
        valid = torch.arange(s_max, device=self.device)[None, :] < torch.tensor(lengths, device=self.device)[:, None]
        if s_max:
            for layer in range(tc.num_hidden_layers):
                parts = []
                for which in ("keys", "values"):
                    src = [getattr(s.cache.layers[layer], which) if s.length else None for s in states]
                    ref = next(t for t in src if t is not None)  # (1, H_kv, K_i, Dh)
                    out = ref.new_zeros((len(states), ref.shape[1], s_max, ref.shape[3]))  # (B, H_kv, S, Dh)
                    for b, t in enumerate(src):
                        if t is not None:
                            out[b, :, : t.shape[2]] = t[0]
                    parts.append(out)
                cache.update(parts[0], parts[1], layer)
        return TorchBatch(cache, valid, lengths)

    @torch.inference_mode()
    def step_batch(self, embeds: list[np.ndarray], batch: BatchState, probe_rows: int = 1) -> list[StepOutput]:
        if not isinstance(batch, TorchBatch):
            return super().step_batch(embeds, batch, probe_rows)
        check_step_batch(embeds, batch, probe_rows)
        n_seq, lens = len(embeds), [len(x) for x in embeds]  # B, L_i
        l_max, s_past = max(lens), batch.valid.shape[1]  # L_max, S slots already cached
        dev, d = self.device, self.info.hidden_size
        # new inputs left-padded: every sequence's last new position is row L_max - 1 (logits and probe rows)
        x = torch.zeros((n_seq, l_max, d), dtype=self.dtype, device=dev)  # (B, L_max, D)
        new_valid = torch.zeros((n_seq, l_max), dtype=torch.bool, device=dev)  # (B, L_max)
        pos = torch.zeros((n_seq, l_max), dtype=torch.long, device=dev)  # (B, L_max) absolute positions
        for b, (e, n) in enumerate(zip(embeds, lens)):
            x[b, l_max - n:] = torch.from_numpy(np.ascontiguousarray(e, dtype=np.float32)).to(dev, self.dtype)
            new_valid[b, l_max - n:] = True
            k = batch._lengths[b]
            pos[b, l_max - n:] = torch.arange(k, k + n, device=dev)
        valid = torch.cat([batch.valid, new_valid], dim=1)  # (B, S + L_max)
        qslot = s_past + torch.arange(l_max, device=dev)  # (L_max,)
        kslot = torch.arange(s_past + l_max, device=dev)  # (S + L_max,)
        causal = kslot[None, :] <= qslot[:, None]  # (L_max, S + L_max)
        own = kslot[None, :] == qslot[:, None]  # a padded query row sees itself: never a row with no key at all
        mask = ((causal[None] & valid[:, None, :]) | own[None])[:, None]  # (B, 1, L_max, S + L_max) True = attend
        self.recorder.begin(probe_rows, batched=True)
        hidden = self.lm(inputs_embeds=x, attention_mask={"full_attention": mask}, position_ids=pos,
                         **cache_kwargs(batch.cache), use_cache=True).last_hidden_state  # (B, L_max, D)
        logits = self.model.lm_head(hidden[:, -1]).float().cpu().numpy()  # (B, V)
        probe = self.recorder.end()  # (B, R', S + L_max) or None
        batch.valid = valid
        keep = valid.cpu().numpy()  # (B, S + L_max)
        out = []
        for b, n in enumerate(lens):
            batch._lengths[b] += n
            p = None
            if probe is not None:  # sequence b's own keys only, its last min(R, L_b) rows: (R_b, K_b + L_b)
                p = probe[b][-min(probe_rows, n):][:, keep[b]]
            out.append(StepOutput(logits=logits[b], probe_attn=p))
        return out

    # ---- static KV cache ------------------------------------------------------------------------------------

    @torch.inference_mode()
    def _new_arena(self) -> StaticArena:
        tc = self.model.config.text_config
        head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
        kv = StaticKV(tc.num_hidden_layers, tc.num_key_value_heads, head_dim, self.max_context, self.dtype, self.device)
        log.info("static KV cache: arena %d allocated (%.1f MiB)", self._pool.allocated,
                 kv.kv.numel() * kv.kv.element_size() / 2**20)
        return StaticArena(kv=kv, x=torch.zeros((1, 1, tc.hidden_size), dtype=self.dtype, device=self.device),
                     pos=torch.zeros(1, dtype=torch.long, device=self.device),
                     probe=torch.zeros((1, self.max_context), dtype=torch.float32, device=self.device))

    def _probe_signature(self) -> tuple:
        """Which recorder each layer reports to. A CUDA graph replays what was attached when it was captured,
        so graphs are used only while the backend's own probes are attached (calibration swaps in others)."""
        return tuple(id(getattr(layer.self_attn, "_rlivs_probe", None)) for layer in self.lm.layers)

    def _forward(self, x: torch.Tensor, kv: StaticKV, mask: torch.Tensor | None, position_ids: torch.Tensor):
        """(1, L, D) -> (V,) float32 logits of the last position. mask: (1, 1, L, K) bool (True = attend) or None
        (pure causal, keys = exactly these L positions). A dict mask reaches every layer as-is: transformers'
        mask creation (data-dependent, not capture-safe) never runs."""
        masks = {"full_attention": mask}
        hidden = self.lm(inputs_embeds=x, attention_mask=masks, position_ids=position_ids, **cache_kwargs(kv),
                         use_cache=True).last_hidden_state  # (1, L, D)
        return self.model.lm_head(hidden[:, -1])[0].float()  # (V,)

    def _decode_core(self, arena: StaticArena, rows: int) -> torch.Tensor:
        """The L = 1 step on the arena's static buffers (what a CUDA graph captures): reads arena.x (1, 1, D) and
        arena.pos (1,); writes the arena's keys/values at pos and, when rows > 0, arena.probe (1, M); -> (V,)."""
        mask = (self._kpos <= arena.pos).view(1, 1, 1, -1)  # (1, 1, 1, M): keys 0..pos
        arena.kv.write_at, arena.kv.read_len = arena.pos, None
        self.recorder.begin(rows, out=arena.probe if rows else None)
        try:
            return self._forward(arena.x, arena.kv, mask, arena.pos.view(1, 1))
        finally:
            self.recorder.reset()

    def _capture(self, arena: StaticArena, rows: int):
        """Capture the decode step on this arena. Warm-up runs execute the very step about to be replayed (same
        inputs, same position), so what they write is what the replay writes."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # lazy library initialisation must not happen inside the capture
                self._decode_core(arena, rows)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            # One memory pool for all of this backend's graphs: replays never overlap (steps run one at a time)
            # and each output is read before the next replay, so graphs may share scratch memory.
            with torch.cuda.graph(graph, pool=self._graph_pool):
                logits = self._decode_core(arena, rows)  # (V,) float32, a fixed address replayed into
        except RuntimeError as e:  # an op that cannot be captured: keep serving, eagerly, and say so
            log.warning("CUDA graph capture of the decode step failed (%s): decode steps run eagerly on the "
                        "static cache from now on", e)
            self.cuda_graph, self.graph_error = False, str(e)
            return None
        arena.graphs[rows] = (graph, logits)
        log.info("captured a CUDA graph for the decode step (probe rows %d)", rows)
        return arena.graphs[rows]

    def _step_static(self, embeds: np.ndarray, state: StaticState, probe_rows: int) -> StepOutput:
        n_new, start = len(embeds), state.length
        end = start + n_new  # K after this step
        if end > self.max_context:
            raise UserError(f"this sequence needs {end} cache positions but the static KV cache holds "
                            f"max_context={self.max_context}: raise --max-context to at least {end} (TorchBackend "
                            f"max_context), lower the FIFO (--fifo-clips / --fifo-tokens) or the caption/answer "
                            f"length, or use the dynamic cache")
        if state.arena is None:
            state.arena = self._pool.acquire(state)  # back to the pool when `state` is garbage-collected
        arena = state.arena
        x = torch.from_numpy(np.ascontiguousarray(embeds, dtype=np.float32))  # (L, D) on the host
        rows = 1 if probe_rows > 0 else 0
        if n_new == 1:  # decode: the fixed-shape step (a CUDA graph replay on CUDA)
            arena.x.copy_(x.view(1, 1, -1))
            arena.pos.fill_(start)
            graphable = self.cuda_graph and self._probe_signature() == self._own_probes
            entry = (arena.graphs.get(rows) or self._capture(arena, rows)) if graphable else None
            if entry is not None:
                graph, logits = entry
                graph.replay()  # after the input copies on the same stream; writes logits and arena.probe
            else:
                logits = self._decode_core(arena, rows)
            probe = (arena.probe[:, :end] / self.recorder.n_layers).cpu().numpy() if rows else None  # (1, K)
        else:  # prefill: eager, over exactly the K = end real keys
            pos = torch.arange(start, end, device=self.device)  # (L,)
            arena.kv.write_at, arena.kv.read_len = pos, end
            mask = None if start == 0 else (self._kpos[:end][None, :] <= pos[:, None]).view(1, 1, n_new, end)
            self.recorder.begin(probe_rows)
            logits = self._forward(x.to(self.device, self.dtype)[None], arena.kv, mask, pos[None])
            probe = self.recorder.end()  # (R, K)
        state.length = end
        return StepOutput(logits=logits.cpu().numpy(), probe_attn=probe)

    def close(self) -> None:
        """Drop idle arenas and captured graphs (a live state keeps its own arena until it is dropped)."""
        if self._pool is not None:
            self._pool.close()
