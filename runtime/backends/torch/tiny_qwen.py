"""Tiny random-weight Qwen2.5-VL models, built locally and deterministically, saved in HF format.

The structure of Qwen2.5-VL-3B/7B-Instruct at toy widths: a ViT over 14 px patches of 2-frame temporal patches with
windowed attention in some blocks and full attention in others, a 2x2 patch merger, a Qwen2 decoder with M-RoPE
(mrope_section over the head dimension), the Qwen chat template with <|vision_start|><|video_pad|><|vision_end|>.
The tokenizer is tiny.py's byte-level BPE with Qwen-VL's special tokens. Nothing comes from a hub.

`tiny-qwen`: 4 query heads on 4 KV heads, tied embeddings, 112x112 frames (4x4 = 16 tokens per temporal patch).
`tiny-qwen-gqa`: 6 query heads on 2 KV heads (GQA), an untied lm_head, a padded vocabulary, 168x112 frames
(6 rows x 4 cols = 24 tokens per temporal patch: a non-square grid). `qwen2.5-vl-3b`: the real 3B shapes (random
weights, for shape checks and benchmarks; slow).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

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


SIZES = {"tiny-qwen": (tiny_qwen_config, True), "tiny-qwen-gqa": (tiny_qwen_gqa_config, True),
         "qwen2.5-vl-3b": (lambda vocab, ids: qwen_3b_config(ids=ids), False)}


def build_qwen_model_dir(out: Path, seed: int, size: str, recipe: int) -> Path:
    """Write an HF-format Qwen2.5-VL directory with random weights (`size`: one of SIZES)."""
    from .tiny import train_tokenizer

    make_config, toy = SIZES[size]
    tok = train_tokenizer(seed, special_tokens=SPECIAL_TOKENS)
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    config, (h, w) = make_config(tok.get_vocab_size(), ids)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                            unk_token=None).save_pretrained(out)
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Qwen2VLImageProcessor", "size": {"height": h, "width": w},
        "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2, "resample": 3, "rescale_factor": 1 / 255,
        "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "do_resize": True, "do_rescale": True,
        "do_normalize": True, "do_convert_rgb": True,
    }, indent=2))
    (out / "rlivs_random_model.json").write_text(json.dumps({"recipe": recipe, "seed": seed, "size": size}))
    return out
