"""A tiny random-weight LLaVA-OneVision, built locally and deterministically, saved in HF format.

Its config mirrors llava-onevision-qwen2-0.5b-ov-hf (SigLIP tower, 2-layer GELU projector with bias
and image_newline, Qwen2 decoder with grouped-query attention, tied embeddings, 2x2 bilinear frame
pooling, full feature select from the last layer) at toy widths. The tokenizer is a byte-level BPE
trained here on a generated corpus, with the Qwen2 chat special tokens and a chat template of the
same shape as the real model's. The result is an ordinary HF-format directory, so `tiny` runs
through exactly the code path that real weights do.

`real_size_config()` gives the true 0.5B shapes (random weights) for benchmarks and slow tests;
`tiny_gqa_config()` a second toy shape that differs from `tiny` wherever a shape can break an assumption
(7 query heads per KV head, an untied output layer, a vocabulary padded past the tokenizer's, an even patch
grid at another frame size and vision width), for parity tests and GPU rehearsals. `SIZES` names them.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)
from rlivs.runtime.errors import UserError

log = logging.getLogger("rlivs.tiny")

RECIPE_VERSION = 1  # bump when the recipe changes: cached builds are keyed on it
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]

# Same structure as the real LLaVA-OneVision template: a message's content is a list of
# {"type": "image"|"video"|"text"}; visual placeholders come first, then "\n" + text.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% for item in message['content'] if item['type'] == 'image' %}{{ '<image>' }}{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'video' %}{{ '<video>' }}{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'text' %}{{ '\\n' + item['text'] }}{% endfor %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_WORDS = (
    "a the red blue green yellow white black square circle bar box person hand arm robot door key keys "
    "table floor wall cup bottle phone moves walks picks up puts down opens closes left right top bottom "
    "center toward away from into out of is are was on in at near behind front small large bright dark "
    "video clip scene camera shows frame slowly quickly then after before while appears disappears "
    "where what when did who which question answer describe happening background object shape color"
).split()


def _corpus(seed: int, n: int = 4000) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14))) + "." for _ in range(n)]


def train_tokenizer(seed: int = 0, vocab_size: int = 512, special_tokens: list[str] | None = None) -> Tokenizer:
    """A byte-level BPE trained on a generated corpus (deterministic for a seed); `special_tokens` first
    (default: LLaVA-OneVision's)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens or SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer)
    return tok


def _llava(vision: SiglipVisionConfig, text: Qwen2Config, image_token_id: int,
           video_token_id: int) -> LlavaOnevisionConfig:
    """The LLaVA-OneVision wrapper every shape shares: GELU projector with bias, full features from the last layer,
    anyres grid pinpoints at 1x and 2x the tower's side; ties the output layer as the text config does."""
    side = vision.image_size
    return LlavaOnevisionConfig(
        vision_config=vision.to_dict(), text_config=text.to_dict(),
        image_token_index=image_token_id, video_token_index=video_token_id,
        projector_hidden_act="gelu", vision_feature_select_strategy="full", vision_feature_layer=-1,
        multimodal_projector_bias=True, tie_word_embeddings=text.tie_word_embeddings,
        image_grid_pinpoints=[[side, side], [side, 2 * side], [2 * side, side], [2 * side, 2 * side]],
        vision_aspect_ratio="anyres_max_9",
    )


def tiny_config(vocab_size: int, image_token_id: int, video_token_id: int) -> LlavaOnevisionConfig:
    """Toy widths, real structure: 126 px / 14 = 9x9 patches -> pooled 5x5 = 25 tokens per frame."""
    vision = SiglipVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        image_size=126, patch_size=14, num_channels=3, hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6, vision_use_head=False,
    )
    text = Qwen2Config(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=8,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
        rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
        initializer_range=0.2,  # wide init: attention is peaked and greedy output depends on the input
        use_sliding_window=False,
    )
    return _llava(vision, text, image_token_id, video_token_id)


def tiny_gqa_config(vocab_size: int, image_token_id: int, video_token_id: int) -> LlavaOnevisionConfig:
    """The second toy shape: Qwen2 with 7 query heads per KV head (7 heads, 1 KV head, head dim 16, D = 112),
    an untied lm_head, the vocabulary padded to the next multiple of 64 above the tokenizer's plus 64 (as Qwen2
    pads 151,646 tokens to 152,000 rows), and SigLIP at 112 px / 14 = 8x8 patches (an even grid: pooled 4x4 = 16
    tokens per frame), width 48 with 3 heads."""
    vision = SiglipVisionConfig(
        hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=3,
        image_size=112, patch_size=14, num_channels=3, hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6, vision_use_head=False,
    )
    padded = (vocab_size // 64 + 2) * 64  # 512 tokens -> 640 rows
    text = Qwen2Config(
        vocab_size=padded, hidden_size=112, intermediate_size=224, num_hidden_layers=6,
        num_attention_heads=7, num_key_value_heads=1, max_position_embeddings=32768,
        rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
        initializer_range=0.2, use_sliding_window=False,
    )
    return _llava(vision, text, image_token_id, video_token_id)


def real_size_config(image_token_id: int = 151646, video_token_id: int = 151647) -> LlavaOnevisionConfig:
    """llava-onevision-qwen2-0.5b-ov-hf shapes (facts.md): for random-weight benchmarks and slow tests."""
    vision = SiglipVisionConfig(
        hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16,
        image_size=384, patch_size=14, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
        vision_use_head=False,
    )
    text = Qwen2Config(
        vocab_size=152000, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
        rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
    )
    return _llava(vision, text, image_token_id, video_token_id)


def _real_size(vocab_size: int, image_token_id: int, video_token_id: int) -> LlavaOnevisionConfig:
    return real_size_config(image_token_id, video_token_id)  # the real vocabulary (152000), whatever the tokenizer


# size -> (config from (tokenizer vocabulary, <image> id, <video> id), toy: wide-init image_newline)
SIZES = {"tiny": (tiny_config, True), "tiny-gqa": (tiny_gqa_config, True), "0.5b": (_real_size, False)}


def default_cache_dir() -> Path:
    return Path(os.environ.get("RLIVS_HOME", Path.home() / ".cache" / "rlivs"))


def build_model_dir(out: Path, seed: int = 0, size: str = "tiny") -> Path:
    """Write an HF-format LLaVA-OneVision (or, for a tiny_qwen size, Qwen2.5-VL) directory with random weights
    (`size`: one of SIZES or tiny_qwen.SIZES)."""
    from .tiny_qwen import SIZES as QWEN_SIZES, build_qwen_model_dir

    if size in QWEN_SIZES:
        return build_qwen_model_dir(out, seed, size, RECIPE_VERSION)
    if size not in SIZES:
        raise UserError(f"unknown random model size {size!r}: use one of {', '.join([*SIZES, *QWEN_SIZES])}")
    make_config, toy = SIZES[size]
    tok = train_tokenizer(seed)
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    config = make_config(tok.get_vocab_size(), ids["<image>"], ids["<video>"])
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    if toy:  # the real newline is O(1); the default init is tiny
        with torch.no_grad():
            model.model.image_newline.normal_(0.0, 1.0)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
    )
    fast.save_pretrained(out)
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    side = config.vision_config.image_size
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "LlavaOnevisionImageProcessor",
        "size": {"height": side, "width": side}, "resample": 3, "rescale_factor": 1 / 255,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True,
        "image_grid_pinpoints": config.image_grid_pinpoints,
    }, indent=2))
    (out / "rlivs_random_model.json").write_text(json.dumps({"recipe": RECIPE_VERSION, "seed": seed, "size": size}))
    return out


def ensure_random_model(size: str = "tiny", seed: int = 0, cache_dir: Path | None = None) -> Path:
    """A cached random-weight model directory (`tiny`, or `0.5b` = the real 0.5B shapes), built on first
    use, atomically: a crash leaves no half model."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / "models" / f"{size}-r{RECIPE_VERSION}-s{seed}"
    if (target / "rlivs_random_model.json").exists():
        return target
    root.joinpath("models").mkdir(parents=True, exist_ok=True)
    log.info("building the random-weight %s model into %s", size, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{size}-", dir=root / "models"))
    try:
        build_model_dir(tmp, seed=seed, size=size)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race
            if not (target / "rlivs_random_model.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_tiny_model(seed: int = 0, cache_dir: Path | None = None) -> Path:
    """The cached tiny model directory."""
    return ensure_random_model("tiny", seed, cache_dir)
