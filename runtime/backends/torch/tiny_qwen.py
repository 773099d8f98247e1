"""Tiny random-weight Qwen2.5-VL models, built locally and deterministically, saved in HF format.

The structure of Qwen2.5-VL-3B/7B-Instruct at toy widths: a ViT over 14 px patches of 2-frame temporal patches with
windowed attention in some blocks and full attention in others, a 2x2 patch merger, a Qwen2 decoder with M-RoPE
(mrope_section over the head dimension), the Qwen chat template with <|vision_start|><|video_pad|><|vision_end|>.
The tokenizer is tiny.py's byte-level BPE with Qwen-VL's special tokens. Nothing comes from a hub.

Qwen3-VL (`tiny-qwen3`, `tiny-qwen3-gqa`; `qwen3_real_config` for the 2B/4B/8B shapes): a ViT over 16 px patches
with a learned, resampled position grid, DeepStack mergers after some blocks, a Qwen3 decoder (QK-norm, head dim set
apart from the width) with interleaved M-RoPE; the same template and tokenizer.

`tiny-qwen`: 4 query heads on 4 KV heads, tied embeddings, 112x112 frames (4x4 = 16 tokens per temporal patch).
`tiny-qwen-gqa`: 6 query heads on 2 KV heads (GQA), an untied lm_head, a padded vocabulary, 168x112 frames
(6 rows x 4 cols = 24 tokens per temporal patch: a non-square grid). `qwen2.5-vl-3b`: the real 3B shapes (random
weights, for shape checks and benchmarks; slow).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (AutoConfig, GenerationConfig, PreTrainedTokenizerFast, Qwen2_5_VLConfig,
                          Qwen2_5_VLForConditionalGeneration, Qwen3VLConfig, Qwen3VLForConditionalGeneration)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]

# The shape of Qwen2.5-VL's template: a default system turn, then content items in order, a video as
# <|vision_start|><|video_pad|><|vision_end|> (the processor expands the pad to one per visual token).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif item['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def _config(ids: dict, *, vision: dict, text: dict, tie: bool) -> Qwen2_5_VLConfig:
    return Qwen2_5_VLConfig(
        vision_config={"hidden_act": "silu", "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2,
                       "temporal_patch_size": 2, "tokens_per_second": 2, **vision},
        text_config={"max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "use_sliding_window": False,
                     "hidden_act": "silu", "tie_word_embeddings": tie, "bos_token_id": ids["<|endoftext|>"],
                     "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"], **text},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tie,
    )


def tiny_qwen_config(vocab: int, ids: dict) -> tuple[Qwen2_5_VLConfig, tuple[int, int]]:
    """-> (config, frame (H, W)). Head dim 16: mrope_section [2, 3, 3] (sums to 16 / 2)."""
    vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64,
                  window_size=56, fullatt_block_indexes=[1], initializer_range=0.2)
    text = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                num_key_value_heads=4, initializer_range=0.2,
                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]})
    return _config(ids, vision=vision, text=text, tie=True), (112, 112)


def tiny_qwen_gqa_config(vocab: int, ids: dict) -> tuple[Qwen2_5_VLConfig, tuple[int, int]]:
    """GQA (6 heads, 2 KV heads), untied lm_head, vocabulary padded past the tokenizer's, 168x112 frames."""
    vision = dict(depth=3, hidden_size=48, intermediate_size=96, num_heads=3, out_hidden_size=96,
                  window_size=56, fullatt_block_indexes=[2], initializer_range=0.2)
    text = dict(vocab_size=(vocab // 64 + 2) * 64, hidden_size=96, intermediate_size=192, num_hidden_layers=5,
                num_attention_heads=6, num_key_value_heads=2, initializer_range=0.2,
                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]})
    return _config(ids, vision=vision, text=text, tie=False), (168, 112)


def qwen_3b_config(vocab: int = 151936, ids: dict | None = None) -> tuple[Qwen2_5_VLConfig, tuple[int, int]]:
    """Qwen2.5-VL-3B-Instruct's shapes (random weights): 32-block ViT of width 1280, decoder 2048 x 36 layers,
    16 heads on 2 KV heads, mrope_section [16, 24, 24]; 448x448 frames."""
    ids = ids or {"<|image_pad|>": 151655, "<|video_pad|>": 151656, "<|vision_start|>": 151652,
                  "<|vision_end|>": 151653, "<|endoftext|>": 151643, "<|im_end|>": 151645}
    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                  window_size=112, fullatt_block_indexes=[7, 15, 23, 31])
    text = dict(vocab_size=vocab, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                num_attention_heads=16, num_key_value_heads=2,
                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]})
    return _config(ids, vision=vision, text=text, tie=True), (448, 448)


def _config3(ids: dict, *, vision: dict, text: dict, tie: bool) -> Qwen3VLConfig:
    return Qwen3VLConfig(
        vision_config={"hidden_act": "gelu_pytorch_tanh", "in_channels": 3, "patch_size": 16, "spatial_merge_size": 2,
                       "temporal_patch_size": 2, **vision},
        text_config={"max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "hidden_act": "silu",
                     "tie_word_embeddings": tie, "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
                     "pad_token_id": ids["<|endoftext|>"], **text},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tie,
    )


def _rope3(section: list[int]) -> dict:
    """Qwen3-VL's text rope: interleaved M-RoPE (t, h, w frequencies alternate; `mrope_section` sums to head_dim/2)."""
    return {"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": section, "mrope_interleaved": True}


def tiny_qwen3_config(vocab: int, ids: dict) -> tuple[Qwen3VLConfig, tuple[int, int]]:
    """Qwen3-VL at toy widths: a 3-block ViT over 16 px patches (an 8x8 learned position grid, bilinearly resampled),
    DeepStack from blocks 0 and 1 into decoder layers 0 and 1, 4 heads on 4 KV heads, head dim 16, tied
    embeddings; 128x128 frames (4x4 = 16 tokens per temporal patch)."""
    vision = dict(depth=3, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64,
                  num_position_embeddings=64, deepstack_visual_indexes=[0, 1], initializer_range=0.2)
    text = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=4, head_dim=16, initializer_range=0.2, rope_parameters=_rope3([2, 3, 3]))
    return _config3(ids, vision=vision, text=text, tie=True), (128, 128)


def tiny_qwen3_gqa_config(vocab: int, ids: dict) -> tuple[Qwen3VLConfig, tuple[int, int]]:
    """GQA (6 heads on 2 KV heads), three DeepStack maps (blocks 1, 2, 3 into layers 0-2), an untied lm_head, a
    padded vocabulary, 192x128 frames (6 rows x 4 cols = 24 tokens per temporal patch)."""
    vision = dict(depth=4, hidden_size=48, intermediate_size=96, num_heads=3, out_hidden_size=96,
                  num_position_embeddings=36, deepstack_visual_indexes=[1, 2, 3], initializer_range=0.2)
    text = dict(vocab_size=(vocab // 64 + 2) * 64, hidden_size=96, intermediate_size=192, num_hidden_layers=5,
                num_attention_heads=6, num_key_value_heads=2, head_dim=16, initializer_range=0.2,
                rope_parameters=_rope3([2, 3, 3]))
    return _config3(ids, vision=vision, text=text, tie=False), (192, 128)


QWEN3_IDS = {"<|image_pad|>": 151655, "<|video_pad|>": 151656, "<|vision_start|>": 151652, "<|vision_end|>": 151653,
             "<|endoftext|>": 151643, "<|im_end|>": 151645}
# The released Qwen3-VL-{2B,4B,8B}-Instruct shapes (config.json): ViT (depth, width, MLP, DeepStack blocks, out),
# decoder (width, MLP, layers, heads, KV heads), tied embeddings; head dim 128, mrope_section [24, 20, 20]
QWEN3_SHAPES = {
    "2b": ((24, 1024, 4096, [5, 11, 17], 2048), (2048, 6144, 28, 16, 8), True),
    "4b": ((24, 1024, 4096, [5, 11, 17], 2560), (2560, 9728, 36, 32, 8), True),
    "8b": ((27, 1152, 4304, [8, 16, 24], 4096), (4096, 12288, 36, 32, 8), False),
}


def qwen3_real_config(size: str = "2b") -> tuple[Qwen3VLConfig, tuple[int, int]]:
    """Qwen3-VL-2B/4B/8B-Instruct's shapes (random weights; shape checks); 512x512 frames (16x16 tokens / group)."""
    (depth, width, mlp, deep, out), (hidden, inter, layers, heads, kv), tie = QWEN3_SHAPES[size]
    vision = dict(depth=depth, hidden_size=width, intermediate_size=mlp, num_heads=16, out_hidden_size=out,
                  num_position_embeddings=2304, deepstack_visual_indexes=deep)
    text = dict(vocab_size=151936, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, head_dim=128, rope_parameters=_rope3([24, 20, 20]),
                max_position_embeddings=262144)
    return _config3(QWEN3_IDS, vision=vision, text=text, tie=tie), (512, 512)


MODEL_CLASS = {Qwen2_5_VLConfig: Qwen2_5_VLForConditionalGeneration, Qwen3VLConfig: Qwen3VLForConditionalGeneration}
SIZES = {"tiny-qwen": (tiny_qwen_config, True), "tiny-qwen-gqa": (tiny_qwen_gqa_config, True),
         "qwen2.5-vl-3b": (lambda vocab, ids: qwen_3b_config(ids=ids), False),
         "tiny-qwen3": (tiny_qwen3_config, True), "tiny-qwen3-gqa": (tiny_qwen3_gqa_config, True)}


def build_qwen_model_dir(out: Path, seed: int, size: str, recipe: int, weights: bool = True) -> Path:
    """Write an HF-format Qwen2.5-VL directory with random weights (`size`: one of SIZES). weights=False: everything
    but the weights (config, tokenizer, template, preprocessor), for `random_model_in_memory`."""
    from .tiny import train_tokenizer

    make_config, toy = SIZES[size]
    tok = train_tokenizer(seed, special_tokens=SPECIAL_TOKENS)
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    config, (h, w) = make_config(tok.get_vocab_size(), ids)
    out.mkdir(parents=True, exist_ok=True)
    if weights:
        torch.manual_seed(seed)
        model = MODEL_CLASS[type(config)](config).eval()
        gen = model.generation_config
    else:
        gen = GenerationConfig.from_model_config(config)
    gen.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    gen.pad_token_id = ids["<|endoftext|>"]
    if weights:
        model.save_pretrained(out)
    else:
        config.save_pretrained(out)
        gen.save_pretrained(out)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                            unk_token=None).save_pretrained(out)
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    qwen3 = isinstance(config, Qwen3VLConfig)  # Qwen3-VL: 16 px patches, mean = std = 0.5
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Qwen2VLImageProcessor", "size": {"height": h, "width": w},
        "patch_size": 16 if qwen3 else 14, "temporal_patch_size": 2, "merge_size": 2, "resample": 3,
        "rescale_factor": 1 / 255, "image_mean": [0.5] * 3 if qwen3 else CLIP_MEAN,
        "image_std": [0.5] * 3 if qwen3 else CLIP_STD, "do_resize": True, "do_rescale": True,
        "do_normalize": True, "do_convert_rgb": True,
    }, indent=2))
    (out / "rlivs_random_model.json").write_text(json.dumps({"recipe": recipe, "seed": seed, "size": size,
                                                             "weights": weights}))
    return out


def random_model_in_memory(size: str, dtype: torch.dtype = torch.bfloat16, seed: int = 0, device: str = "cpu"):
    """(weight-free model directory, random-weight model built in memory in `dtype`) for a real-size Qwen shape
    (e.g. qwen2.5-vl-3b: 3.75 B parameters, 15 GB in float32 on disk; built straight in bfloat16 it needs 7.5 GB
    of memory and nothing on disk; `device`: where the weights are created and initialised, e.g. straight on the
    GPU). The directory (config, tokenizer, template, preprocessor) is cached."""
    from .tiny import RECIPE_VERSION, default_cache_dir

    target = default_cache_dir() / "models" / f"{size}-noweights-r{RECIPE_VERSION}-s{seed}"
    if not (target / "rlivs_random_model.json").exists():
        build_qwen_model_dir(target, seed, size, RECIPE_VERSION, weights=False)
    config = AutoConfig.from_pretrained(target)
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created (and initialised) in dtype: no float32 copy
    try:
        with torch.device(device):
            model = MODEL_CLASS[type(config)](config).eval()
    finally:
        torch.set_default_dtype(old)
    return target, model
