"""The one place that knows how transformers names its KV-cache argument.

transformers 5.24 renamed the cache argument of the model and layer `forward`s from `past_key_values` to `cache`
(the old name is deprecated until 5.40, and outputs carry `.cache`). rlivs passes the cache by whichever name the
installed version declares, read from the public signature, so both sides of the rename work without warnings.
"""

from __future__ import annotations

import inspect

from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2Model


def _cache_arg(fn) -> str:
    return "cache" if "cache" in inspect.signature(fn).parameters else "past_key_values"


MODEL_CACHE_ARG = _cache_arg(Qwen2Model.forward)  # Qwen2Model(..., <name>=cache)
LAYER_CACHE_ARG = _cache_arg(Qwen2DecoderLayer.forward)  # Qwen2DecoderLayer(..., <name>=cache)


def cache_kwargs(cache) -> dict:
    """{name: cache} for a Qwen2Model / LLaVA-OneVision language-model call."""
    return {MODEL_CACHE_ARG: cache}


def layer_cache_kwargs(cache) -> dict:
    """{name: cache} for a Qwen2DecoderLayer call."""
    return {LAYER_CACHE_ARG: cache}


def output_cache(output):
    """The cache a model call returned (`.cache` from 5.24 on, `.past_key_values` before)."""
    return output.cache if MODEL_CACHE_ARG == "cache" else output.past_key_values
