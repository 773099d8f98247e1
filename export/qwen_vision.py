"""Qwen2.5-VL's and Qwen3-VL's vision encoders as one fixed-grid graph: (T, 3, H, W) frames -> (G, P, D) merged
visual tokens (Qwen3-VL: and its (K, G, P, D) DeepStack features).

transformers' Qwen2_5_VisionTransformerPretrainedModel takes a packed sequence of flattened patches of any number of
images/videos and computes, from `grid_thw` at run time, the window permutation, the rotary position ids and the
per-window / per-temporal-patch sequence boundaries (`cu_seqlens`), then splits q/k/v into those chunks with
`cu_seqlens.tolist()`. None of that is traceable into a graph with dynamic sizes: `.tolist()`, `repeat_interleave`,
`unique_consecutive` and Python loops over the grid. A bundle fixes the frame size, and every one of those quantities
depends only on the grid of one temporal patch, (H / 14, W / 14): windows and "full" attention both stay inside one
temporal patch (the "full" blocks attend over one temporal patch's patches, not across patches). So this graph:

- computes the window permutation, rotary cos/sin and the window layout once, at export, for the bundle's grid
  (constants in the graph), from transformers' own `vision_utils` functions;
- runs the temporal patches as a batch axis G (dynamic: a short last clip has fewer), so nothing depends on T but
  that axis;
- flattens the patches in the graph (Reshape/Transpose of the frames, then one constant Gather that puts them in
  window order: the processor's merge-block order and the window permutation folded together), so the runtime
  hands the graph (T, 3, H, W) model pixels exactly as it does LLaVA-OV's, and at the 3B shape the 38 MB clip is
  never reshuffled on the host (no 9-D numpy transpose on a Jetson's CPU; TensorRT does it on the GPU, in <= 7-D);
- runs each window's attention as a batched attention over (G * windows, heads, window, head_dim) when the windows
  tile the merged grid evenly (448 px at the 3B/7B shapes, both tiny models), else as one attention per temporal patch
  with a constant block-diagonal additive mask (correct for any grid; more work);
- computes the patch embedding (a Conv3d whose kernel equals its stride, i.e. a Linear) as a MatMul with the kernel
  flattened, and every attention as MatMul -> Softmax -> MatMul: plain ops TensorRT's parser reads.

Qwen3-VL (the same class, chosen from the vision config): no windows (every block attends over one temporal patch:
the layout's one "window" is the whole patch, so the batched form runs with no mask and no permutation); a Conv3d
with a bias; a learned (S, S) position table resampled bilinearly to the grid, whose gather indices and weights
(transformers' `get_vision_interpolation_indices_and_weights`) are constants of the grid, the weighted sum of the
table's rows stays in the graph (a Gather of the table, weights traced, not frozen); after each block in
`deepstack_visual_indexes` its own merger (norm after the 2x2 shuffle) gives one DeepStack map, stacked as a second
output `deepstack` (K, G, P, D).

Parity with the torch reference's `Qwen25VLTorch.encode` / `Qwen3VLTorch.encode_deepstack` (transformers' own
forward) is in tests/parity/test_qwen_onnx.py and tests/parity/test_qwen3_onnx.py.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.vision_utils import (get_vision_interpolation_indices_and_weights, get_vision_position_ids,
                                       get_vision_window_index)


def qwen_vision_layout(vc, image_size: tuple[int, int]) -> dict:
    """The fixed layout of one temporal patch of an (H, W) frame: grid, patch order, windows, reverse order.

    -> {"gh", "gw": patches per side; "order": (Np,) raster patch index of each position in window order;
        "pos": (Np, 2) (row, col) rotary ids in that order; "windows": [(start, length)] of the window-attention
        chunks in that order; "reverse": (P,) merged-token gather that restores raster merged order;
        Qwen3-VL only: "interp": ((Np, taps) indices into the learned position table, (Np, taps) weights) in that
        order}. A vision config without windows (Qwen3-VL) has one window: the whole temporal patch."""
    p, m = vc.patch_size, vc.spatial_merge_size
    h, w = image_size
    gh, gw = h // p, w // p
    grid = torch.tensor([[1, gh, gw]])
    if getattr(vc, "window_size", None):
        window_index, cu_windows = get_vision_window_index(grid, spatial_merge_size=m, window_size=vc.window_size,
                                                           patch_size=p)  # merged units in window order; (n + 1,)
    else:  # full attention over the temporal patch: merged units in the processor's order
        window_index, cu_windows = torch.arange(gh * gw // (m * m)), torch.tensor([0, gh * gw])
    # raster patch index of each patch, in the processor's order: merge blocks in raster, patches inside each block
    raster = torch.arange(gh * gw).reshape(gh // m, m, gw // m, m).permute(0, 2, 1, 3).reshape(-1, m * m)  # (P, m*m)
    order = raster[window_index].reshape(-1)  # (Np,)
    pos = get_vision_position_ids(grid, m).reshape(-1, m * m, 2)[window_index].reshape(-1, 2)  # (Np, 2)
    bounds = cu_windows.tolist()
    windows = [(a, b - a) for a, b in zip(bounds[:-1], bounds[1:])]
    out = {"gh": gh, "gw": gw, "order": order, "pos": pos, "windows": windows, "reverse": torch.argsort(window_index)}
    if getattr(vc, "num_position_embeddings", None):  # Qwen3-VL's learned grid, as Qwen3VLVisionModel resamples it
        idx, wts = get_vision_interpolation_indices_and_weights(
            grid, num_grid_per_side=int(vc.num_position_embeddings ** 0.5), mode="bilinear", align_corners=True,
            spatial_merge_size=m)  # (Np, taps) each, processor order
        taps = idx.shape[1]
        out["interp"] = (idx.reshape(-1, m * m, taps)[window_index].reshape(-1, taps),
                         wts.reshape(-1, m * m, taps)[window_index].reshape(-1, taps))
    return out


def _attend(q, k, v, scaling: float, mask=None):
    """(B, H, S, Dh) each -> (B, H, S, Dh): MatMul -> [Add mask] -> Softmax -> MatMul."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scaling
    if mask is not None:
        scores = scores + mask
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class QwenVisionGraph(nn.Module):
    """(T, 3, H, W) model pixels, T = temporal_patch * G -> (G, P, D) visual tokens in the LLM's input space
    (Qwen3-VL: and (K, G, P, D) DeepStack features)."""

    def __init__(self, backend, image_size: tuple[int, int] | None = None):
        super().__init__()
        visual = backend.model.model.visual
        vc = visual.config
        self.visual = visual
        self.patch, self.temporal = vc.patch_size, vc.temporal_patch_size
        self.heads, self.dim = vc.num_heads, vc.hidden_size
        self.head_dim = self.dim // self.heads
        self.fullatt = set(getattr(vc, "fullatt_block_indexes", None) or range(vc.depth))  # Qwen3-VL: every block
        self.deepstack = list(getattr(vc, "deepstack_visual_indexes", None) or [])  # blocks whose maps are features
        self.image_size = tuple(image_size or backend.info.image_size)
        lay = qwen_vision_layout(vc, self.image_size)
        dev = visual.patch_embed.proj.weight.device  # the model's (the meta device in shape checks)
        self.gh, self.gw, self.n_patches = lay["gh"], lay["gw"], lay["gh"] * lay["gw"]
        self.register_buffer("order", lay["order"].to(dev), persistent=False)  # (Np,)
        self.register_buffer("reverse", lay["reverse"].to(dev), persistent=False)  # (P,)
        self.permuted = bool((lay["reverse"] != torch.arange(len(lay["reverse"]))).any())  # windows reorder tokens
        if "interp" in lay:  # Qwen3-VL: the learned position table's taps and weights at this grid
            self.register_buffer("interp_idx", lay["interp"][0].to(dev), persistent=False)  # (Np, taps)
            self.register_buffer("interp_w", lay["interp"][1].float().to(dev), persistent=False)  # (Np, taps)
        with torch.no_grad():
            cos, sin = visual.rotary_pos_emb(torch.zeros(1, device=dev), lay["pos"].to(dev))  # (Np, Dh) each, f32
        self.register_buffer("cos", cos.float()[:, None, :], persistent=False)  # (Np, 1, Dh): broadcast over heads
        self.register_buffer("sin", sin.float()[:, None, :], persistent=False)
        lengths = {n for _, n in lay["windows"]}
        self.window = lengths.pop() if len(lengths) == 1 else None  # uniform windows: a batch axis, no mask
        self.windows = lay["windows"]
        if self.window is None:  # uneven windows: one attention per temporal patch, masked to the windows
            mask = torch.full((self.n_patches, self.n_patches), torch.finfo(torch.float32).min, device=dev)
            for a, n in lay["windows"]:
                mask[a:a + n, a:a + n] = 0.0
            self.register_buffer("window_mask", mask, persistent=False)  # (Np, Np) additive
        self.scaling = self.head_dim ** -0.5

    def patches(self, pixels: torch.Tensor) -> torch.Tensor:
        """(T, C, H, W) -> (G, Np, C * temporal * p * p) flattened patches of each temporal patch, in window order."""
        t, c = pixels.shape[0], pixels.shape[1]
        p, gh, gw = self.patch, self.gh, self.gw
        x = pixels.reshape(t // self.temporal, self.temporal, c, gh, p, gw, p)  # (G, t, C, gh, p, gw, p)
        x = x.permute(0, 3, 5, 2, 1, 4, 6)  # (G, gh, gw, C, t, p, p)
        x = x.reshape(t // self.temporal, gh * gw, c * self.temporal * p * p)  # raster patch order
        return torch.index_select(x, 1, self.order)  # (G, Np, C*t*p*p) window order

    def _attention(self, blk, x: torch.Tensor, full: bool) -> torch.Tensor:
        """One vision block's attention over (G, Np, dim) hidden states."""
        g, n = x.shape[0], x.shape[1]
        qkv = blk.attn.qkv(x).reshape(g, n, 3, self.heads, self.head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (G, Np, H, Dh)
        q = q * self.cos + _rotate_half(q) * self.sin
        k = k * self.cos + _rotate_half(k) * self.sin
        if full or self.window is not None:
            w = n if full else self.window  # tokens per attention: a whole temporal patch, or one window
            split = lambda t: t.reshape(g * (n // w), w, self.heads, self.head_dim).transpose(1, 2)  # noqa: E731
            out = _attend(split(q), split(k), split(v), self.scaling)  # (G * n/w, H, w, Dh)
        else:
            split = lambda t: t.transpose(1, 2)  # noqa: E731  (G, H, Np, Dh)
            out = _attend(split(q), split(k), split(v), self.scaling, self.window_mask)
        out = out.transpose(1, 2).reshape(g, n, self.dim)  # (G, Np, dim)
        return blk.attn.proj(out)

    def _merge(self, merger, h: torch.Tensor) -> torch.Tensor:
        """(G, Np, dim) -> (G, P, D) merged tokens in raster merged order, as the reference."""
        g = h.shape[0]
        if hasattr(merger, "ln_q"):  # Qwen2.5-VL: norm, then the 2x2 shuffle into the MLP
            merged = merger.mlp(merger.ln_q(h).reshape(g, -1, merger.hidden_size))  # (G, P, D) window order
        else:  # Qwen3-VL: the merger takes the patches flat (its norm before or after the shuffle)
            merged = merger(h.reshape(-1, h.shape[-1]))  # (G * P, D)
            merged = merged.reshape(g, -1, merged.shape[-1])
        return torch.index_select(merged, 1, self.reverse) if self.permuted else merged

    def forward(self, pixel_values: torch.Tensor):
        x = self.patches(pixel_values)  # (G, Np, C*t*p*p)
        proj = self.visual.patch_embed.proj  # Conv3d, kernel == stride: a Linear over the flattened patch
        h = torch.matmul(x, proj.weight.reshape(proj.weight.shape[0], -1).t())  # (G, Np, dim)
        if proj.bias is not None:
            h = h + proj.bias
        if hasattr(self, "interp_idx"):  # Qwen3-VL: the resampled learned positions, the same for every patch group
            h = h + (self.visual.pos_embed(self.interp_idx) * self.interp_w[:, :, None]).sum(1)  # (Np, dim)
        deep = []
        for i, blk in enumerate(self.visual.blocks):
            h = h + self._attention(blk, blk.norm1(h), i in self.fullatt)
            h = h + blk.mlp(blk.norm2(h))
            if i in self.deepstack:
                deep.append(self._merge(self.visual.deepstack_merger_list[self.deepstack.index(i)], h))
        tokens = self._merge(self.visual.merger, h)  # (G, P, D)
        return (tokens, torch.stack(deep)) if deep else tokens  # Qwen3-VL: and (K, G, P, D) DeepStack features
