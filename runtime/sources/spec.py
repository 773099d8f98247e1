"""What a video source is: `SourceSpec` (stream name, URL, kind) and its text form `[name=]URL`.

    parse_source("cam0=rtsp://10.0.0.2/stream1") -> SourceSpec("cam0", "rtsp://10.0.0.2/stream1", "network")

The kind of a URL decides how it is opened: "device" (V4L2 /dev/videoN), "network" (rtsp://, http://, ...) or "file".
A source without a name is named after its URL (`derive_name`). Several `--source` values at once (two may not
share a name) are the command line's business: `rlivs.edge_app.source_specs.parse_sources`.

No torch and no transformers here: this module runs on the device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from rlivs.runtime.errors import UserError
from rlivs.runtime.validate import MAX_NAME_CHARS, NAME_RE, NAME_RULE, check_stream_name

NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "rtp")


@dataclass(frozen=True)
class SourceSpec:
    """One video source as named on the command line (`--source [name=]URL`)."""

    name: str  # stream name in the memory
    url: str  # the path, device or URL as given
    kind: str  # "file" (a video file), "device" (V4L2 /dev/videoN) or "network" (rtsp://, http://, ...)
    topic: str | None = None  # the image topic, for a robot recording (a ROS bag or MCAP file; kind "file")

    @property
    def live(self) -> bool:
        """Devices and network streams are live; a file is live only when replayed."""
        return self.kind != "file"


def source_kind(url: str) -> str:
    """"device" for /dev/video*, "network" for a URL with a streaming scheme, else "file"."""
    if url.startswith("/dev/video") or url.startswith("v4l2://"):
        return "device"
    scheme = urlsplit(url).scheme.lower()
    if scheme in NETWORK_SCHEMES:
        return "network"
    if scheme == "file":
        return "file"
    if "://" in url:
        raise UserError(f"source {url!r} has the scheme {scheme!r}, which rlivs does not read: use a file path, "
                        f"/dev/videoN, or one of {', '.join(s + '://' for s in NETWORK_SCHEMES)}")
    return "file"


def derive_name(url: str) -> str:
    """A stream name from a source: the file's stem, the device's name, or the URL's host and last path segment."""
    kind = source_kind(url)
    if kind == "device":
        base = url.removeprefix("v4l2://").partition("?")[0].rstrip("/").split("/")[-1]
    elif kind == "file":
        base = Path(url.removeprefix("file://")).stem
    else:
        parts = urlsplit(url)
        last = [p for p in parts.path.split("/") if p]
        base = (parts.hostname or "stream") + ("-" + Path(last[-1]).stem if last else "")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-.")[:MAX_NAME_CHARS]
    return name or "stream"


def parse_source(spec: str) -> SourceSpec:
    """`[name=]URL` -> SourceSpec. A name is 1-64 of A-Z a-z 0-9 _ . - (not '.' or '..'); without one it is derived
    from the URL."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError("a source is empty: pass --source video.mp4, --source /dev/video0 or --source cam=rtsp://...")
    spec = spec.strip()
    name, url = None, spec
    head, sep, tail = spec.partition("=")
    if sep and head in (".", "..") and tail:
        raise UserError(f"source name {head!r} is not valid: '.' and '..' are path steps in every URL that names the "
                        f"stream (thumbnails); use e.g. --source cam0={tail}")
    if sep and NAME_RE.fullmatch(head) and tail and not Path(spec).exists():
        name, url = check_stream_name(head, "source name"), tail
    elif sep and "/" not in head and ":" not in head and not Path(spec).exists():
        raise UserError(f"source name {head!r} in {spec!r} is not valid: use {NAME_RULE}, e.g. --source cam0={tail}")
    kind = source_kind(url)
    return SourceSpec(name or derive_name(url), url, kind)
