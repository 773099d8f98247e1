"""How the torch backend loads and runs each backbone (runtime/backbones), on transformers' own modules.

One adapter per family, keyed by the backbone's name: the model class, where its decoder is, how (T, 3, H, W)
frames become (G, P, D) visual tokens, the learned newline (LLaVA-OV only) and the ModelInfo facts. The decoder
step itself (probe attention, KV caches) is shared by every family in backend.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from transformers import (LlavaOnevisionForConditionalGeneration, Qwen2_5_VLForConditionalGeneration,
                          Qwen3VLForConditionalGeneration)

from ...backbones import Backbone, REGISTRY as BACKBONES
from ...errors import UserError


class TorchAdapter:
    model_class: type

    def __init__(self, backbone: Backbone):
        self.backbone = backbone

    def load(self, model_dir: Path, dtype: torch.dtype):
        return self.model_class.from_pretrained(str(model_dir), dtype=dtype, attn_implementation="sdpa")

    def language_model(self, model):
        return model.model.language_model  # the decoder (Qwen2Model / Qwen2_5_VLTextModel)

    def info_fields(self, model, model_dir: Path | None) -> dict:
        """tokens_per_frame (P per token group), image_size, grid, temporal_patch, video_token_id."""
        raise NotImplementedError

    def encode(self, model, pixels: torch.Tensor) -> torch.Tensor:
        """(T, 3, H, W) model pixels -> (G, P, D) visual tokens in the LLM's input space."""
        raise NotImplementedError

    def encode_deepstack(self, model, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(T, 3, H, W) -> ((G, P, D) visual tokens, (K, G, P, D) DeepStack features or None)."""
        return self.encode(model, pixels), None

    def newline(self, model) -> torch.Tensor:
        raise UserError(f"{self.backbone.label} has no learned newline after the clip")


class LlavaOneVisionTorch(TorchAdapter):
    model_class = LlavaOnevisionForConditionalGeneration

    def info_fields(self, model, model_dir: Path | None) -> dict:
        vc = model.config.vision_config
        side = math.ceil(vc.image_size // vc.patch_size / 2)  # 2x2 bilinear pooling, ceil
        return dict(tokens_per_frame=side * side, image_size=(vc.image_size, vc.image_size),
                    video_token_id=model.config.video_token_id, grid=(side, side), temporal_patch=1)

    def encode(self, model, pixels: torch.Tensor) -> torch.Tensor:
        pooled = model.model.get_video_features(pixel_values_videos=pixels[None]).pooler_output  # (1, T*P + 1, D)
        return pooled[0, :-1].reshape(pixels.shape[0], -1, pooled.shape[-1])  # (T, P, D): the newline dropped

    def newline(self, model) -> torch.Tensor:
        return model.model.image_newline  # (D,)


def qwen_patches(pixels: torch.Tensor, patch: int, temporal: int, merge: int) -> tuple[torch.Tensor, list[int]]:
    """(T, C, H, W) frames -> ((G*gh*gw, C*temporal*patch*patch) flattened patches, [G, gh, gw]), in the order
    Qwen2-VL's processors emit them: groups of `temporal` frames (a short last group repeats its last frame), then
    merge x merge blocks of patches in raster order, each block's patches in raster order."""
    t, c, h, w = pixels.shape
    if t % temporal:  # pad with copies of the last frame, as the Qwen-VL processors do
        pixels = torch.cat([pixels, pixels[-1:].expand(temporal - t % temporal, -1, -1, -1)])
    g, gh, gw = pixels.shape[0] // temporal, h // patch, w // patch
    x = pixels.reshape(g, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (G, gh/m, gw/m, m, m, C, temporal, p, p)
    return x.reshape(g * gh * gw, c * temporal * patch * patch), [g, gh, gw]


class Qwen25VLTorch(TorchAdapter):
    model_class = Qwen2_5_VLForConditionalGeneration

    def info_fields(self, model, model_dir: Path | None) -> dict:
        cfg, vc = model.config, model.config.vision_config
        pre = {}
        if model_dir is not None and (Path(model_dir) / "preprocessor_config.json").is_file():
            pre = json.loads((Path(model_dir) / "preprocessor_config.json").read_text())
        h, w = self.backbone.frame_size(cfg.to_dict(), pre)
        unit = vc.patch_size * vc.spatial_merge_size
        rows, cols = h // unit, w // unit
        return dict(tokens_per_frame=rows * cols, image_size=(h, w), video_token_id=cfg.video_token_id,
                    grid=(rows, cols), temporal_patch=vc.temporal_patch_size)

    def encode(self, model, pixels: torch.Tensor) -> torch.Tensor:
        vc = model.config.vision_config
        flat, grid = qwen_patches(pixels, vc.patch_size, vc.temporal_patch_size, vc.spatial_merge_size)
        thw = torch.tensor([grid], device=pixels.device)
        out = model.model.get_video_features(pixel_values_videos=flat, video_grid_thw=thw).pooler_output
        tokens = torch.cat(list(out)) if isinstance(out, (list, tuple)) else out  # (G*P, D)
        return tokens.reshape(grid[0], -1, tokens.shape[-1])  # (G, P, D)


class Qwen3VLTorch(Qwen25VLTorch):
    """Qwen3-VL: the same patches (16 px), and DeepStack: the vision tower's feature maps after blocks
    deepstack_visual_indexes, each through its own merger, are what the first K decoder layers add to the visual
    positions' hidden states (Qwen3VLTextModel._deepstack_process)."""

    model_class = Qwen3VLForConditionalGeneration

    def encode(self, model, pixels: torch.Tensor) -> torch.Tensor:
        return self.encode_deepstack(model, pixels)[0]

    def encode_deepstack(self, model, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vc = model.config.vision_config
        flat, grid = qwen_patches(pixels, vc.patch_size, vc.temporal_patch_size, vc.spatial_merge_size)
        out = model.model.get_video_features(pixel_values_videos=flat, video_grid_thw=torch.tensor([grid],
                                             device=pixels.device))
        tokens = torch.cat(list(out.pooler_output))  # (G*P, D)
        deep = torch.stack([torch.cat(list(f)) for f in out.deepstack_features])  # (K, G*P, D)
        return tokens.reshape(grid[0], -1, tokens.shape[-1]), deep.reshape(len(deep), grid[0], -1, deep.shape[-1])


ADAPTERS: dict[str, type[TorchAdapter]] = {"llava_onevision": LlavaOneVisionTorch, "qwen2_5_vl": Qwen25VLTorch,
                                           "qwen3_vl": Qwen3VLTorch}
assert set(ADAPTERS) == set(BACKBONES), "every backbone needs a torch adapter"


def adapter_for(backbone: Backbone) -> TorchAdapter:
    return ADAPTERS[backbone.name](backbone)
