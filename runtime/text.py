"""Tokenizer and chat template of a model directory, without transformers.

The tokenizer is `tokenizer.json` read by `tokenizers`; the chat template (Jinja, as HF ships it in
chat_template.jinja, chat_template.json or tokenizer_config.json) is rendered with a sandboxed
jinja2 environment. The `{% generation %}` tag some HF templates use is accepted and ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer
from rlivs.runtime.errors import UserError


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; render the body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _find_chat_template(model_dir: Path) -> str:
    if (model_dir / "chat_template.jinja").exists():
        return (model_dir / "chat_template.jinja").read_text()
    for name in ("chat_template.json", "processor_config.json", "tokenizer_config.json"):
        tpl = _read_json(model_dir / name).get("chat_template")
        if isinstance(tpl, str):
            return tpl
    raise UserError(
        f"{model_dir} has no chat template (looked for chat_template.jinja, chat_template.json, "
        f"tokenizer_config.json): copy the model's chat template into the directory"
    )


@dataclass
class CaptionPrompt:
    prefix: np.ndarray  # (A,) ids before the video placeholder
    suffix: np.ndarray  # (B,) ids after it, ending with the assistant header


class TextCodec:
    """Encode/decode text and build the caption and answer prompts for one model directory."""

    def __init__(self, model_dir: str | Path):
        model_dir = Path(model_dir)
        if not (model_dir / "tokenizer.json").exists():
            raise UserError(f"{model_dir} has no tokenizer.json: rlivs needs the fast tokenizer file next to the weights")
        try:
            self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        except Exception as e:  # tokenizers raises a bare Exception for a file it cannot parse
            raise UserError(f"{model_dir}/tokenizer.json cannot be read ({str(e)[:200]}): it is damaged or truncated; "
                            f"copy the model directory (or bundle) again") from None
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag])
        self.template = env.from_string(_find_chat_template(model_dir))
        config = _read_json(model_dir / "config.json")
        self.video_token_id = config.get("video_token_id", config.get("video_token_index"))
        if self.video_token_id is None:
            raise UserError(f"{model_dir}/config.json has no video_token_id: is this a LLaVA-OneVision or Qwen2.5-VL "
                            f"model?")
        self.eos_ids = self._eos_ids(model_dir)

    def _eos_ids(self, model_dir: Path) -> frozenset[int]:
        eos = _read_json(model_dir / "generation_config.json").get("eos_token_id")
        if eos is None:
            tok = _read_json(model_dir / "tokenizer_config.json").get("eos_token")
            tok = tok.get("content") if isinstance(tok, dict) else tok
            eos = self.tokenizer.token_to_id(tok) if tok else None
        if eos is None:
            raise UserError(f"{model_dir}: no eos token in generation_config.json or tokenizer_config.json")
        ids = set(eos if isinstance(eos, list) else [eos])
        for extra in ("<|im_end|>", "<|endoftext|>"):  # chat turns end here even where the config names one only
            tid = self.tokenizer.token_to_id(extra)
            if tid is not None:
                ids.add(tid)
        return frozenset(ids)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)  # (L,)

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True).strip()

    def stream_decoder(self):
        """A function for text that streams: give it each generated token id in turn, it returns the text that id
        completes ('' while a multi-byte character is split across ids). Joined, the pieces are `decode(ids)` (leading
        and trailing whitespace dropped, as `decode` strips). tokenizers' own DecodeStream does the incremental work."""
        from tokenizers.decoders import DecodeStream

        ds, started, held = DecodeStream(skip_special_tokens=True), [False], [""]

        def step(token_id: int) -> str:
            piece = held[0] + (ds.step(self.tokenizer, int(token_id)) or "")
            if not started[0]:
                piece = piece.lstrip()
                started[0] = bool(piece)
            text = piece.rstrip()  # trailing whitespace waits for the next piece (`decode` strips it at the end)
            held[0] = piece[len(text):]
            return text

        return step

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt)

    def caption_prompt(self, prompt: str) -> CaptionPrompt:
        """The chat prompt around one video placeholder, split at it."""
        text = self.render([{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}])
        ids = self.encode(text)
        where = np.flatnonzero(ids == self.video_token_id)
        if len(where) != 1:
            raise UserError(f"the chat template produced {len(where)} video placeholders, expected 1")
        return CaptionPrompt(prefix=ids[: where[0]], suffix=ids[where[0] + 1 :])

    def chat_ids(self, system: str | None, user: str) -> np.ndarray:
        """A text-only chat prompt ending with the assistant header: (L,) ids."""
        messages = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
        messages.append({"role": "user", "content": [{"type": "text", "text": user}]})
        return self.encode(self.render(messages))
