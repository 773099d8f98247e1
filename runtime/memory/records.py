"""What the memory stores, as Python values: clip and stream records, arrays as bytes, storage errors explained."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field

import numpy as np

from rlivs.runtime.errors import UserError

SQLITE_HEADER = b"SQLite format 3\x00"
_DTYPES = ("float32", "float16")  # dtypes an array may be stored in


def storage_problem(e: BaseException) -> tuple[str, str] | None:
    """(what is wrong, what to do) for an SQLite error caused by the storage or another process, else None.

    Classified by SQLite's own error name (sqlite3 errors carry it since Python 3.11), falling back to its text.
    Constraint errors and programming errors are not storage problems: they return None and propagate as they are.
    """
    if not isinstance(e, sqlite3.Error) or isinstance(e, (sqlite3.IntegrityError, sqlite3.ProgrammingError)):
        return None
    name = getattr(e, "sqlite_errorname", None) or ""
    text = str(e).lower()
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return ("the disk is full", "free space on the device (or pass a --db on another disk)")
    if name.startswith("SQLITE_READONLY") or "readonly database" in text:
        return ("the file or its folder is read-only",
                "make both writable (SQLite creates NAME-wal and NAME-shm beside the file) or pass a --db on a "
                "writable disk")
    if name.startswith("SQLITE_IOERR") or "disk i/o error" in text:
        return ("the disk reported an I/O error", "check the storage device (dmesg) and its free space")
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text:
        return ("the database file is damaged",
                "keep a copy of it, then recover what it holds with `sqlite3 FILE .recover` or use a new --db")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return ("another process holds the write lock (is another `rlivs ingest` using this --db?)",
                "wait for it or use a new --db")
    if name.startswith("SQLITE_CANTOPEN") or "unable to open" in text:
        return ("SQLite cannot open the file or create its -wal/-shm files beside it",
                "check that the folder exists and is writable")
    return None


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-exact equality: same dtype, same shape, same bytes."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@dataclass(eq=False)
class ClipRecord:
    """One captioned clip of a stream. Equality is bit-exact on the vector."""

    stream: str  # stream name
    index: int  # 0-based clip index within the stream
    t_start: float  # seconds, stream time
    t_end: float  # seconds, stream time
    caption: str  # the clip's caption text
    n_tokens: int  # caption length in tokens
    vector: np.ndarray  # (D,) float32 (or float16) retrieval vector
    committed_at: float = 0.0  # unix time, set by commit_clip
    wall_start: float | None = None  # UTC unix seconds of the clip's first sample; None: the stream has no clock
    wall_end: float | None = None  # UTC unix seconds of its end
    kept: np.ndarray | None = None  # (N,) int16 flat indices of the clip tokens that selection kept (None: not stored)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClipRecord):
            return NotImplemented
        scalars = ("stream", "index", "t_start", "t_end", "caption", "n_tokens", "committed_at", "wall_start",
                   "wall_end")
        kept_same = (self.kept is None) == (other.kept is None) and (
            self.kept is None or _same_array(self.kept, other.kept))
        return (all(getattr(self, k) == getattr(other, k) for k in scalars) and kept_same
                and _same_array(self.vector, other.vector))


@dataclass
class IdleSpan:
    """A run of consecutive clips of a stream that the activity gate left uncaptioned: watched, nothing new since
    the captioned clip `scene_idx` (None: it was forgotten or the stream began idle)."""

    stream: str
    first: int  # first clip index of the run
    last: int  # last clip index of the run (inclusive)
    t_start: float  # seconds, stream time
    t_end: float
    wall_start: float | None = None  # UTC unix seconds, None without a clock
    wall_end: float | None = None
    scene_idx: int | None = None  # the captioned clip whose scene the run still shows
    score: float = 0.0  # the highest gate score in the run (below the threshold)

    @property
    def clips(self) -> int:
        return self.last - self.first + 1


@dataclass(eq=False)
class StreamState:
    """What a (re)opened stream resumes from. Equality is bit-exact on the FIFO tokens."""

    stream: str  # stream name
    source: str  # where the video came from (path/url)
    model_id: str  # model that ingested the stream
    config_hash: str  # hash of the ingest settings
    next_index: int  # index of the next clip to ingest (last committed + 1, or 0)
    fifo: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (clip index, (n_i, D) float32), oldest first

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StreamState):
            return NotImplemented
        return (
            (self.stream, self.source, self.model_id, self.config_hash, self.next_index)
            == (other.stream, other.source, other.model_id, other.config_hash, other.next_index)
            and len(self.fifo) == len(other.fifo)
            and all(i == j and _same_array(a, b) for (i, a), (j, b) in zip(self.fifo, other.fifo))
        )


def to_blob(arr: np.ndarray, what: str, ndim: int) -> tuple[bytes, str]:
    """Validate an array and return (little-endian bytes, dtype name)."""
    if not isinstance(arr, np.ndarray):
        raise UserError(
            f"{what} must be a numpy array, got {type(arr).__name__}: pass np.asarray(x, dtype=np.float32)"
        )
    if arr.ndim != ndim:
        want = "(D,)" if ndim == 1 else "(n, D)"
        raise UserError(f"{what} must be {ndim}-D {want}, got shape {arr.shape}: reshape it to {want}")
    name = arr.dtype.name
    if arr.dtype.kind != "f" or name not in _DTYPES:
        raise UserError(
            f"{what} has dtype {arr.dtype}; memory stores float32 or float16 only: convert with .astype(np.float32)"
        )
    little = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    return little.tobytes(), name


def from_blob(blob: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of _to_blob: a fresh, writable, native-endian array."""
    little = np.dtype(dtype).newbyteorder("<")
    return np.frombuffer(blob, dtype=little).reshape(shape).astype(np.dtype(dtype))


def normalize_fingerprint(fp: dict | None) -> dict | None:
    if fp is None:
        return None
    if not isinstance(fp, dict):
        raise UserError(f"model_fingerprint must be a dict or None, got {type(fp).__name__}")
    try:
        return json.loads(json.dumps(fp, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise UserError(
            f"model_fingerprint must be JSON-serializable ({e}): use str/int/float/list/dict values"
        ) from e


def same_model(stored: dict, given: dict) -> bool:
    """Whether a memory written by the model with fingerprint `stored` may take `given`'s captions and vectors: every
    key equal. A memory written before rlivs recorded the model family ("backbone") is compared on the rest."""
    keys = set(stored) | set(given)
    if "backbone" not in stored or "backbone" not in given:
        keys.discard("backbone")
    return all(stored.get(k) == given.get(k) for k in keys)


def model_mismatch(path, stored: dict, given: dict) -> str:
    """Why a memory refuses a model, naming both model families when they differ, and the fix."""
    fix = (f"use a new --db or the same model (rlivs memory info --db {path} names the model that wrote it; rlivs ask "
           f"takes it from the memory when --model is left out)")
    a, b = stored.get("backbone"), given.get("backbone")
    if a and b and a != b:
        from ..backbones import REGISTRY

        label = lambda n: REGISTRY[n].label if n in REGISTRY else n  # noqa: E731
        return (f"{path} was written by a {label(a)} model; this model is {label(b)}: captions and retrieval vectors of "
                f"two model families cannot share a memory (written by a model with {stored}; this model has "
                f"{given}): {fix}")
    return f"{path} was written by a model with {stored}; this model has {given}: {fix}"
