"""Text embedders for retrieval benchmarks: text -> (D,) float32 vector, comparable by dot product.

- `random_embedder(dim, seed)`: what rlivs' random-weight LLMs give: every token gets a fixed random unit vector
  (seeded by a hash of the token, so it is the same in every process), and a text's vector is the mean of its tokens'
  unit vectors (runtime.retrieval.text_vector: the paper's mean pairwise token cosine is then a dot product).
  Tokens are words and punctuation, case kept (a stand-in for the LLM's BPE tokens). Similarity is bag-of-words
  overlap: it knows no synonym.
- `wordllama_embedder()`: WordLlama 0.4 (MIT), a static token-embedding model distilled from LLM embedding tables
  (l2_supercat, 256 dims); its weights and tokenizer ship inside its wheel, so it runs offline with numpy and
  tokenizers. Its text vector is a unit-norm mean of token embeddings, so it slots into the same dot-product
  ranking. `pip install wordllama==0.4.0.post1` (the `embed` extra).

Both also embed many texts at once (`.batch(texts) -> (N, D)`), which building large memories needs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

_TOKEN = re.compile(r"\w+|[^\w\s]")


class Embedder:
    """A callable text -> (D,) float32 with a batch form; `dim` and `name` describe it."""

    def __init__(self, name: str, dim: int, batch: Callable[[Sequence[str]], np.ndarray]):
        self.name, self.dim, self._batch = name, dim, batch

    def __call__(self, text: str) -> np.ndarray:
        return self._batch([text])[0]  # (D,)

    def batch(self, texts: Sequence[str]) -> np.ndarray:
        return self._batch(list(texts))  # (N, D)

    def __repr__(self) -> str:
        return f"Embedder({self.name!r}, dim={self.dim})"


def tokens(text: str) -> list[str]:
    """Words and punctuation marks, case kept."""
    return _TOKEN.findall(text)


def random_embedder(dim: int = 896, seed: int = 0) -> Embedder:
    """Mean of fixed random unit token vectors (hashed tokens): a random-weight LLM's retrieval vectors."""
    vocab: dict[str, int] = {}
    table = np.zeros((0, dim), dtype=np.float64)  # (V, D) unit rows, grown as tokens appear

    def ids(text: str) -> list[int]:
        nonlocal table
        out, new = [], []
        for t in tokens(text):
            i = vocab.get(t)
            if i is None:
                i = vocab[t] = len(vocab)
                new.append(t)
            out.append(i)
        if new:
            rows = np.empty((len(new), dim), dtype=np.float64)
            for r, t in enumerate(new):
                h = int.from_bytes(hashlib.blake2b(f"{seed}\x00{t}".encode(), digest_size=8).digest(), "little")
                v = np.random.default_rng(h).standard_normal(dim)
                rows[r] = v / np.linalg.norm(v)
            table = np.concatenate([table, rows])
        return out

    def batch(texts: Sequence[str], chunk: int = 2048) -> np.ndarray:
        lists = [ids(t) for t in texts]
        out = np.zeros((len(texts), dim), dtype=np.float32)  # (N, D): zeros for an empty text
        for a in range(0, len(lists), chunk):
            part = lists[a:a + chunk]
            rows = np.repeat(np.arange(len(part)), [len(x) for x in part])
            flat = np.fromiter((i for x in part for i in x), dtype=np.int64, count=len(rows))
            counts = np.bincount(rows * len(table) + flat, minlength=len(part) * len(table))
            counts = counts.reshape(len(part), len(table)).astype(np.float64)  # (n, V) token counts
            counts /= np.maximum(counts.sum(axis=1, keepdims=True), 1.0)  # mean over the text's tokens
            out[a:a + chunk] = (counts @ table).astype(np.float32)  # (n, D)
        return out

    return Embedder(f"random-{dim}-seed{seed}", dim, batch)


def wordllama_embedder(dim: int = 256) -> Embedder:
    """WordLlama l2_supercat from its wheel, offline. Its `load()` looks for the bundled tokenizer under `tokenizer/`
    while the wheel ships it under `tokenizers/`, and would then download it; its cache lookup is
    `cache_dir/tokenizers/...`, so the package folder itself is a cache that holds it (`disable_download=True`
    makes a missing file an error instead of a download)."""
    try:
        import wordllama
        from wordllama import WordLlama
    except ImportError as e:
        raise ImportError("wordllama is not installed: pip install wordllama==0.4.0.post1 "
                          "(or pip install -e '.[embed]')") from e
    wl = WordLlama.load(cache_dir=Path(wordllama.__file__).parent, dim=dim, disable_download=True)

    def batch(texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, dim), dtype=np.float32)
        return np.asarray(wl.embed(list(texts), norm=True, batch_size=256), dtype=np.float32)  # (N, D) unit rows

    return Embedder(f"wordllama-l2_supercat-{dim}", dim, batch)


EMBEDDERS = {"random": lambda: random_embedder(896, 0), "wordllama": wordllama_embedder}
