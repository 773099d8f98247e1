"""What a clip and a watch match look like outside the service (the HTTP API, server-sent events, MQTT, webhooks),
and their thumbnails: pure functions, shared by the API and the bus listeners.

A clip's and a match's `time` follow one rule (`runtime.answer.span_label`): the local wall-clock span when the
stream has a clock, else stream time.
"""

from __future__ import annotations

import io
from urllib.parse import quote

import numpy as np
from PIL import Image

from rlivs.runtime.answer import clip_json, clip_label, span_label, wall_iso


def make_thumbnail(image: np.ndarray, width: int = 160, quality: int = 70) -> tuple[bytes, int, int]:
    """(H, W, 3) uint8 RGB -> (JPEG bytes, width, height), scaled to `width` with the aspect ratio kept."""
    img = Image.fromarray(np.ascontiguousarray(image))
    w = min(width, img.width)
    h = max(1, round(img.height * w / img.width))
    if (w, h) != img.size:
        img = img.resize((w, h), resample=Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue(), w, h


def thumbnail_url(stream: str, clip: int) -> str:
    return f"/v1/thumbnails/{quote(stream, safe='')}/{int(clip)}.jpg"


def caption_json(r, has_thumbnail: bool) -> dict:
    """A clip in the API: stream and wall-clock times (ISO 8601 with the device's offset, null without a clock),
    `time` as people read it (local wall-clock time, else stream time), the caption and its thumbnail."""
    return {**clip_json(r), "time": clip_label(r), "committed_at": r.committed_at,
            "thumbnail": thumbnail_url(r.stream, r.index) if has_thumbnail else None}


def match_json(m, watch=None, wall: tuple[float | None, float | None] = (None, None),
               has_thumbnail: bool = False) -> dict:
    """A watch match (store.Match) in the API, its times as its caption's: `wall` is the clip's wall-clock span."""
    ws, we = wall
    d = m.as_dict()
    d["time"] = span_label(m.t_start, m.t_end, ws, we)
    d["wall_start"], d["wall_end"] = wall_iso(ws), wall_iso(we)
    d["thumbnail"] = thumbnail_url(m.stream, m.clip) if has_thumbnail else None
    if watch is not None:
        d["query"] = watch.query
        d["threshold"] = watch.threshold
    return d
