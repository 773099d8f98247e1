"""What every clip that enters the memory is checked for (commit_clip, commit_idle, import_clips alike), and how its
small arrays become bytes: pure functions, no database."""

from __future__ import annotations

import math
import operator

import numpy as np

from rlivs.runtime.activity import SceneRef
from rlivs.runtime.errors import UserError

from .records import ClipRecord


def check_wall(record: ClipRecord, index: int) -> tuple[float | None, float | None]:
    """The record's wall-clock span as floats (both or neither), or UserError."""
    w0, w1 = record.wall_start, record.wall_end
    if w0 is None and w1 is None:
        return None, None
    if w0 is None or w1 is None:
        raise UserError(f"clip {index} has wall-clock start {w0} and end {w1}: give both or neither")
    try:
        w0, w1 = float(w0), float(w1)
    except (TypeError, ValueError) as e:
        raise UserError(f"clip {index} wall-clock times must be numbers ({e})") from e
    if not (math.isfinite(w0) and math.isfinite(w1) and w0 <= w1):
        raise UserError(f"clip {index} has wall-clock times [{w0}, {w1}]: they must be finite with start <= end")
    return w0, w1


def check_record(record: ClipRecord) -> tuple[int, float, float, int, tuple[float | None, float | None]]:
    """(index, t_start, t_end, n_tokens, wall span) of a clip record, or UserError: what commit_clip (ingest) and
    import_clips check alike (integers that are not booleans, finite times with start <= end, wall both or neither)."""
    try:
        if isinstance(record.index, bool) or isinstance(record.n_tokens, bool):
            raise TypeError("a boolean is not a clip index or a token count")
        index = operator.index(record.index)
        n_tokens = operator.index(record.n_tokens)
    except TypeError as e:
        raise UserError(f"clip index, n_tokens and evict must be integers ({e})") from e
    try:
        t_start, t_end = float(record.t_start), float(record.t_end)
    except (TypeError, ValueError) as e:
        raise UserError(f"clip {index} times must be numbers ({e})") from e
    if not (math.isfinite(t_start) and math.isfinite(t_end) and t_start <= t_end):
        raise UserError(f"clip {index} has times [{t_start}, {t_end}]: they must be finite with t_start <= t_end")
    if index < 0:
        raise UserError(f"clip index {index} is negative: clip indices start at 0")
    if n_tokens < 0:
        raise UserError(f"clip {index} has n_tokens {n_tokens}: it must be >= 0")
    if not isinstance(record.caption, str):
        raise UserError(f"clip {index} caption must be a string, got {type(record.caption).__name__}")
    return index, t_start, t_end, n_tokens, check_wall(record, index)


def scene_to_row(scene: SceneRef, index: int) -> tuple:
    """(idx, t_end, rows, cols, cells bytes) of a gate reference, or UserError."""
    cells = np.asarray(scene.cells)
    if cells.ndim != 3 or cells.dtype != np.uint8:
        raise UserError(f"clip {index}: the gate reference must be a (rows, cols, channels) uint8 array, got "
                        f"{cells.dtype} {cells.shape}")
    return int(scene.index), float(scene.t_end), int(cells.shape[0]), int(cells.shape[1]), cells.tobytes()


def kept_to_blob(kept: np.ndarray | None, index: int) -> bytes | None:
    """(N,) kept token indices as little-endian int16 bytes (None stays None), or UserError."""
    if kept is None:
        return None
    kept = np.asarray(kept)
    if kept.ndim != 1 or kept.dtype.kind not in "iu" or (kept.size and (kept.min() < 0 or kept.max() > 32767)):
        raise UserError(f"clip {index} kept indices must be a 1-D integer array in [0, 32767]")
    return kept.astype("<i2").tobytes()
