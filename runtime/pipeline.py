"""TEMPORARY: the old import path, kept only until every caller imports from engine/ingest/answer (removed below)."""

from __future__ import annotations

from .answer import ANSWER_SYSTEM, MAX_QUESTION_CHARS, Answer, answer, build_answer_prompt, check_question, format_time  # noqa: F401
from .config import EngineConfig, PipelineConfig
from .engine import ClipOutput, Engine  # noqa: F401
from .engine import load_engine as _load_engine
from .ingest import ClipResult, StreamIngestor  # noqa: F401


def load_engine(model="tiny", *, backend="auto", config: PipelineConfig | None = None, device="cpu", dtype="float32",
                threads=None, kv_cache="auto", max_context=None, bundle=None):
    return _load_engine(EngineConfig(model=str(model), bundle=bundle, backend=backend, device=device, dtype=dtype,
                                     threads=threads, kv_cache=kv_cache, max_context=max_context), config)
