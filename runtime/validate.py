"""The rules for what enters the memory from outside, in one home, and text made safe for a terminal.

    check_stream_name("cam0")         stream names: 1-64 of A-Z a-z 0-9 _ . - (not "." or ".."), wherever a name enters
                                      (`--source NAME=URL`, `rlivs ingest --stream`, a new stream in the memory,
                                      `rlivs memory import`)
    check_caption(text)               a caption: text, at most MAX_CAPTION_CHARS, valid UTF-8, no control characters
                                      but newline and tab
    check_clip_row(row)               one clip of `rlivs memory import` (a decoded JSON object) -> CheckedRow
    terminal_safe(text)               text with control and escape characters, C1 and bidi controls removed: what
                                      the CLI prints of captions (a caption is the model's text or an imported one)

Every refusal is a UserError naming the field and the rule. Pure: no numpy, no SQLite, no torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone

from .errors import UserError
from .timeq import MAX_YEAR

MAX_NAME_CHARS = 64
NAME_RULE = f"1-{MAX_NAME_CHARS} letters, digits, '_', '.' or '-' (not '.' or '..')"
NAME_RE = re.compile(rf"[A-Za-z0-9_.-]{{1,{MAX_NAME_CHARS}}}")
# A caption is at most this many characters. The model writes at most --max-caption-tokens tokens (128 by default,
# a few characters each); 8192 leaves room for long captions from a bigger bound and refuses absurd imported ones.
MAX_CAPTION_CHARS = 8192
# A clip's JSON line (`rlivs memory import`): the longest caption with every character \u-escaped as a surrogate pair
# (12 bytes), plus the other fields. Longer lines are refused after reading this many bytes, never read whole.
MAX_ROW_BYTES = 12 * MAX_CAPTION_CHARS + 4096
MAX_INDEX = 2**63 - 1  # clip indices are SQLite INTEGERs
MAX_STREAM_SECONDS = 1e9  # stream time of a clip (about 31.7 years of video)
# Wall-clock times (UTC unix seconds) of imported clips: from 1970-01-01 to the end of timeq.MAX_YEAR, the range
# rlivs reads times in (3000-01-01T00:00Z with MAX_YEAR 2999).
MAX_WALL = datetime(MAX_YEAR + 1, 1, 1, tzinfo=timezone.utc).timestamp()

# Characters a caption may not hold: C0 controls but tab and newline, DEL, C1 controls.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# What the terminal must not receive: the above (ESC starts every escape sequence; once ESC is gone the rest of a
# sequence is plain text) plus the bidi embedding, override and isolate controls (they reorder what is shown), the
# line/paragraph separators and lone surrogates (not printable text).
_TERMINAL_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _describe_char(c: str) -> str:
    names = {"\x00": "NUL", "\x1b": "ESC", "\r": "carriage return", "\x7f": "DEL"}
    return f"U+{ord(c):04X}" + (f" ({names[c]})" if c in names else "")


def check_stream_name(name: object, what: str = "stream name") -> str:
    """`name` if it is a valid stream name, else UserError saying the rule. Every place a new stream name enters
    rlivs calls this (names are also path segments of the API's thumbnail URLs and file names of exports)."""
    if not isinstance(name, str):
        raise UserError(f"{what} must be a string, got {type(name).__name__}: use {NAME_RULE}, e.g. cam0")
    if NAME_RE.fullmatch(name) and name not in (".", ".."):
        return name
    shown = repr(name[:40]) + (f" ... ({len(name)} characters)" if len(name) > 40 else "")
    raise UserError(f"{what} {shown} is not valid: use {NAME_RULE}, e.g. cam0")


def check_text(text: object, what: str, max_chars: int) -> str:
    """`text` if it is a string of at most `max_chars` characters, valid UTF-8 (no lone surrogates) and free of
    control characters but newline and tab; else UserError naming `what`."""
    if not isinstance(text, str):
        raise UserError(f"{what} must be a string, got {type(text).__name__}")
    if len(text) > max_chars:
        raise UserError(f"{what} is {len(text)} characters long; at most {max_chars} are accepted")
    m = _CONTROL.search(text)
    if m:
        raise UserError(f"{what} holds the control character {_describe_char(m[0])} at character {m.start()}: "
                        f"only newline and tab are accepted")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(f"{what} is not valid UTF-8 text (a lone surrogate U+{ord(text[e.start]):04X} at character "
                        f"{e.start})") from None
    return text


def check_caption(text: object) -> str:
    """A caption from outside (`rlivs memory import`): see check_text, at most MAX_CAPTION_CHARS."""
    return check_text(text, "caption", MAX_CAPTION_CHARS)


def terminal_safe(text: str) -> str:
    """`text` without control characters (but newline and tab), escape sequences' ESC, C1 and bidi controls, and
    lone surrogates: safe to print to a terminal. The one helper every CLI printing of captions uses."""
    return _TERMINAL_UNSAFE.sub("", text)


def _number(row: dict, key: str, lo: float, hi: float, unit: str) -> float:
    v = row[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise UserError(f"{key} must be a number ({unit}), got {type(v).__name__}")
    v = float(v) if not isinstance(v, int) or abs(v) < 2**1023 else math.inf
    if not math.isfinite(v):
        raise UserError(f"{key} must be a finite number ({unit}), got {_short(row[key])}")
    if not lo <= v <= hi:
        raise UserError(f"{key} {_short(row[key])} is out of range: it must be between {lo:g} and {hi:g} ({unit})")
    return v


@dataclass(frozen=True)
class CheckedRow:
    """One clip row that passed check_clip_row."""

    stream: str
    index: int
    t_start: float
    t_end: float
    wall_start: float | None
    wall_end: float | None
    caption: str


ROW_KEYS = ("stream", "index", "t_start", "t_end", "caption")  # needed; wall_start/wall_end optional


def check_clip_row(row: object) -> CheckedRow:
    """One clip of `rlivs memory import` (a decoded JSON object) -> CheckedRow, or UserError with the first problem:
    an object with stream (check_stream_name), index (an integer >= 0, not a boolean), t_start <= t_end (finite,
    0..MAX_STREAM_SECONDS stream seconds), wall_start <= wall_end (both null/absent or both finite UTC unix seconds
    0..MAX_WALL), caption (check_caption). Other keys are ignored (n_tokens, written by export, is recomputed)."""
    if not isinstance(row, dict):
        raise UserError(f"a clip must be a JSON object, got a JSON {_json_type(row)}")
    missing = [k for k in ROW_KEYS if k not in row]
    if missing:
        raise UserError(f"the clip lacks {', '.join(missing)}: each line needs stream, index, t_start, t_end and "
                        f"caption (wall_start/wall_end optional)")
    stream = check_stream_name(row["stream"])
    index = row["index"]
    if isinstance(index, bool) or not isinstance(index, int):
        raise UserError(f"index must be an integer, got {_json_type(index)}")
    if not 0 <= index <= MAX_INDEX:
        raise UserError(f"index {_short(index)} is out of range: it must be between 0 and {MAX_INDEX}")
    t0 = _number(row, "t_start", 0.0, MAX_STREAM_SECONDS, "stream seconds")
    t1 = _number(row, "t_end", 0.0, MAX_STREAM_SECONDS, "stream seconds")
    if t0 > t1:
        raise UserError(f"t_start {t0!r} is after t_end {t1!r}: a clip ends after it starts")
    w0, w1 = row.get("wall_start"), row.get("wall_end")
    if (w0 is None) != (w1 is None):
        raise UserError(f"wall_start is {_short(w0)} and wall_end {_short(w1)}: give both or neither (null without a "
                        f"clock)")
    if w0 is not None:
        w0 = _number(row, "wall_start", 0.0, MAX_WALL, "UTC unix seconds")
        w1 = _number(row, "wall_end", 0.0, MAX_WALL, "UTC unix seconds")
        if w0 > w1:
            raise UserError(f"wall_start {w0!r} is after wall_end {w1!r}: a clip ends after it starts")
    return CheckedRow(stream, index, t0, t1, w0, w1, check_caption(row["caption"]))


def _json_type(v: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(v), type(v).__name__)


def _short(v: object) -> str:
    """A value for a message: its repr, cut to 40 characters (a refused value may be huge)."""
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10**40:
        return f"of {len(str(abs(v)))} digits" if abs(v) < 10**4000 else "of thousands of digits"
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."
