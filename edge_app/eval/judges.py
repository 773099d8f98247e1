"""The pinned judges of `rlivs eval`: the judge prompt (versioned, hashed), reading a verdict from a judge's output,
and the judges themselves (none, a local model run by rlivs' backends, an OpenAI-compatible endpoint).

The judge prompt is pinned: changing a single character changes JUDGE_PROMPT_SHA256, which every result records;
scores made under different prompts (or judge models) must not be compared.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rlivs.runtime.config import EngineConfig
from rlivs.runtime.errors import UserError

if TYPE_CHECKING:
    from rlivs.edge_app.eval.runner import EvalConfig

JUDGE_PROMPT_VERSION = "rlivs-judge-v1"
JUDGE_SYSTEM = (
    "You grade answers to questions about videos. You are given a question, the correct answer and a predicted "
    "answer. Decide whether the predicted answer is correct. Judge the meaning, not the wording: paraphrases and "
    "synonyms are correct. A prediction that contradicts the correct answer, leaves out what the question asks "
    "for, or names a different object, person, place, count or time is not correct."
)
JUDGE_USER = (
    "Question: {question}\n"
    "Correct answer: {reference}\n"
    "Predicted answer: {prediction}\n\n"
    "Reply with one JSON object and nothing else. It has two keys: \"pred\", which is \"yes\" if the predicted "
    "answer is correct and \"no\" if it is not, and \"score\", an integer from 0 to 5 for how well the predicted "
    "answer matches the correct answer (5 = the same meaning, 0 = unrelated). "
    "For example: {{\"pred\": \"yes\", \"score\": 4}}"
)
JUDGE_PROMPT_SHA256 = hashlib.sha256(
    "\n\x00\n".join([JUDGE_PROMPT_VERSION, JUDGE_SYSTEM, JUDGE_USER]).encode()).hexdigest()


def judge_messages(question: str, reference: str, prediction: str) -> tuple[str, str]:
    """(system, user) texts of one judgment."""
    return JUDGE_SYSTEM, JUDGE_USER.format(question=question, reference=reference, prediction=prediction)


@dataclass
class Verdict:
    pred: str | None  # "yes" | "no" | None (no verdict could be read)
    score: float | None  # 0..5, or None (no score could be read)
    raw: str  # the judge's output text
    error: str | None = None  # why the output (or the call) failed; None when both pred and score were read


_YES = {"yes", "true", "correct", "y"}
_NO = {"no", "false", "incorrect", "wrong", "n"}
_PRED_KEYS = ("pred", "prediction", "verdict", "correct", "judgement", "judgment", "answer", "result")
_SCORE_KEYS = ("score", "rating", "points")


def _as_verdict(v) -> str | None:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, str):
        w = v.strip().strip(".!").lower()
        return "yes" if w in _YES else "no" if w in _NO else None
    return None


def _as_score(v) -> float | None:
    if isinstance(v, bool):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if 0.0 <= x <= 5.0 else None


def parse_verdict(text: str) -> Verdict:
    """Read a yes/no verdict and a 0-5 score from a judge's output: a JSON object (possibly inside code fences or
    prose, with single quotes), else labelled text ("Verdict: no. Score: 2"), else a lone yes/no word and a lone
    0-5 number. Anything missing or ambiguous is an error, never a guess."""
    raw = text if isinstance(text, str) else str(text)
    pred = score = None
    for m in re.finditer(r"\{[^{}]*\}", raw, flags=re.S):
        chunk = m.group(0)
        for attempt in (chunk, chunk.replace("'", '"')):
            try:
                obj = json.loads(attempt)
            except json.JSONDecodeError:
                continue
            low = {str(k).lower(): v for k, v in obj.items()}
            pred = next((p for p in (_as_verdict(low.get(k)) for k in _PRED_KEYS if k in low) if p), None)
            score = next((s for s in (_as_score(low.get(k)) for k in _SCORE_KEYS if k in low) if s is not None), None)
            break
        if pred is not None or score is not None:
            break
    if pred is None:
        m = re.search(r"\b(?:pred|prediction|verdict|correct|judge?ment|answer)\b\W{0,4}(yes|no)\b", raw, re.I)
        if m:
            pred = m.group(1).lower()
        else:
            words = {w.lower() for w in re.findall(r"\b(yes|no)\b", raw, re.I)}
            pred = words.pop() if len(words) == 1 else None
    if score is None:
        m = re.search(r"\b(?:score|rating)\b\W{0,4}(\d+(?:\.\d+)?)", raw, re.I)
        if m:
            score = _as_score(m.group(1))
        else:
            nums = {x for x in re.findall(r"(?<![\w.])(\d+(?:\.\d+)?)(?![\w.])", raw) if _as_score(x) is not None}
            score = float(nums.pop()) if len(nums) == 1 else None
    missing = [n for n, v in (("yes/no verdict", pred), ("0-5 score", score)) if v is None]
    return Verdict(pred, score, raw, f"no {' and no '.join(missing)} in the judge output" if missing else None)


class NoJudge:
    """Judge-free run: only exact match and token F1."""

    kind = "none"

    def identity(self) -> dict:
        return {"kind": "none"}

    def judge(self, question: str, reference: str, prediction: str) -> Verdict | None:
        return None

    def close(self) -> None:
        pass


class LocalJudge:
    """A model run by rlivs' own backends (`load_engine`), prompted with the pinned judge prompt, greedy."""

    kind = "local"

    def __init__(self, engine, model: str, max_new_tokens: int = 64):
        self.engine, self.model, self.max_new_tokens = engine, model, max_new_tokens

    def identity(self) -> dict:
        info = self.engine.backend.info
        return {"kind": "local", "model": self.model, "model_id": info.model_id,
                "backend": getattr(self.engine.backend, "name", type(self.engine.backend).__name__),
                "fingerprint": self.engine.model_fingerprint, "weights": _weights_digest(self.model),
                "decoding": "greedy", "max_new_tokens": self.max_new_tokens}

    def judge(self, question: str, reference: str, prediction: str) -> Verdict:
        from rlivs.runtime.generate import greedy

        system, user = judge_messages(question, reference, prediction)
        ids = self.engine.text.chat_ids(system, user)  # (L,)
        gen = greedy(self.engine.backend, self.engine.backend.embed_tokens(ids), self.max_new_tokens,
                     self.engine.text.eos_ids)
        return parse_verdict(self.engine.text.decode(gen.ids))

    def close(self) -> None:
        pass


def _weights_digest(model: str) -> str | None:
    """A cheap identity of a model directory's weights: sha256 over file names, sizes and config.json (not the
    gigabytes of weights themselves)."""
    from rlivs.runtime.models import resolve_model

    try:
        d, _ = resolve_model(model)
    except ValueError:
        return None
    h = hashlib.sha256()
    for p in sorted(Path(d).iterdir()):
        if p.is_file():
            h.update(f"{p.name}\0{p.stat().st_size}\0".encode())
            if p.name == "config.json":
                h.update(p.read_bytes())
    return h.hexdigest()[:16]


class OpenAIJudge:
    """An OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp server, TGI, a hosted API), temperature 0."""

    kind = "openai"

    def __init__(self, url: str, model: str, api_key: str | None = None, max_tokens: int = 64,
                 timeout_s: float = 60.0, retries: int = 3):
        try:
            import httpx
        except ImportError as e:
            raise UserError(f"the endpoint judge needs httpx ({e}); install it with: pip install httpx") from e
        if not url.startswith(("http://", "https://")):
            raise UserError(f"--judge-url {url!r} is not an http(s) URL; e.g. http://127.0.0.1:8000/v1")
        if not model:
            raise UserError("the endpoint judge needs a model name: pass --judge-model (e.g. the name vLLM serves)")
        base = url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else (
            base + "/chat/completions" if base.endswith("/v1") else base + "/v1/chat/completions")
        self.model, self.max_tokens, self.retries = model, max_tokens, max(1, retries)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=timeout_s, headers=headers)
        self._httpx = httpx
        self.served_model: str | None = None  # the "model" the server reports in its replies

    def identity(self) -> dict:
        return {"kind": "openai", "url": self.url, "model": self.model, "served_model": self.served_model,
                "temperature": 0, "max_tokens": self.max_tokens}

    def _call(self, system: str, user: str) -> str:
        body = {"model": self.model, "temperature": 0, "max_tokens": self.max_tokens,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
        last = ""
        for attempt in range(self.retries):
            try:
                r = self._http.post(self.url, json=body)
            except self._httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}"
            else:
                if r.status_code == 200:
                    try:
                        data = r.json()
                        self.served_model = self.served_model or data.get("model")
                        return str(data["choices"][0]["message"]["content"] or "")
                    except (ValueError, KeyError, IndexError, TypeError) as e:
                        raise RuntimeError(f"the endpoint's reply is not a chat completion ({type(e).__name__}: "
                                           f"{r.text[:200]!r})") from None
                last = f"HTTP {r.status_code}: {r.text[:200]}"
                if 400 <= r.status_code < 500 and r.status_code != 429:
                    break  # a client error does not go away by retrying
            time.sleep(min(4.0, 0.25 * 2**attempt))
        raise RuntimeError(last)

    def check(self) -> None:
        """Fail early, with the fix, when the endpoint cannot be reached at all."""
        try:
            self._call(*judge_messages("What colour is a clear daytime sky?", "blue", "blue"))
        except RuntimeError as e:
            raise UserError(f"the judge endpoint {self.url} did not answer ({e}); start the server or fix "
                            f"--judge-url / --judge-model") from None

    def judge(self, question: str, reference: str, prediction: str) -> Verdict:
        try:
            text = self._call(*judge_messages(question, reference, prediction))
        except RuntimeError as e:
            return Verdict(None, None, "", f"judge call failed: {e}")
        return parse_verdict(text)

    def close(self) -> None:
        self._http.close()


@dataclass
class JudgeConfig:
    kind: str = "none"  # "none" | "local" (a model directory run by rlivs' backends) | "openai" (an endpoint)
    model: str | None = None  # local: model dir / hub id / "tiny"; openai: the model name sent to the endpoint
    url: str | None = None  # openai: base URL (…/v1) or the full …/chat/completions URL
    api_key_env: str = "OPENAI_API_KEY"  # openai: environment variable holding the key (sent only when set)
    max_new_tokens: int = 64  # judge output length bound
    timeout_s: float = 60.0  # openai: per-request timeout

    def __post_init__(self):
        if self.kind not in ("none", "local", "openai"):
            raise UserError(f"judge kind must be none, local or openai, got {self.kind!r}")
        if self.kind == "local" and not self.model:
            raise UserError("the local judge needs a model: pass --judge-local DIR")
        if self.kind == "openai" and not (self.url and self.model):
            raise UserError("the endpoint judge needs --judge-url URL and --judge-model NAME")
        if self.max_new_tokens < 1:
            raise UserError(f"judge max tokens must be >= 1, got {self.max_new_tokens}")


def judge_engine(jc: JudgeConfig, system: EngineConfig) -> EngineConfig:
    """A local judge runs on the system under test's backend, device, dtype and threads (default KV cache)."""
    return EngineConfig(model=jc.model, backend=system.backend, device=system.device, dtype=system.dtype,
                        threads=system.threads)


def make_judge(jc: JudgeConfig, cfg: EvalConfig, engine=None):
    """The judge of a run; a local judge on the same model as the system under test shares its engine."""
    if jc.kind == "none":
        return NoJudge()
    if jc.kind == "openai":
        j = OpenAIJudge(jc.url, jc.model, os.environ.get(jc.api_key_env) or None, jc.max_new_tokens, jc.timeout_s)
        j.check()
        return j
    if engine is None or jc.model != cfg.engine.source:
        from rlivs.runtime.engine import load_engine

        engine = load_engine(judge_engine(jc, cfg.engine))
    return LocalJudge(engine, jc.model, jc.max_new_tokens)
