"""Captions on the Foxglove timeline: a memory's captions (and the service's watch matches and thumbnails) as an MCAP
file of Foxglove's published schemas (protobuf, from foxglove-schemas-protobuf), timed by the clips' clock time, so
that opened together with the robot's own recording they line up with its camera topics.

    write_mcap("memory.db", "captions.mcap", streams=None, thumbnails=False, time="log") -> McapExport

Topics, per stream S (every message at the clip's start, UTC):

    /rlivs/S/clips         foxglove.Event             the clip's span [wall_start, wall_end], metadata: stream, clip,
                                                      t_start, t_end (stream time), caption
    /rlivs/S/captions      foxglove.Log               the caption (level INFO, name S) for the Log panel
    /rlivs/S/annotations   foxglove.ImageAnnotations  the caption as a text overlay for an Image panel (any camera)
    /rlivs/S/thumbnail     foxglove.CompressedImage   the clip's JPEG thumbnail (thumbnails=True; `rlivs serve` stores them)
    /rlivs/watches/log     foxglove.Log               each watch match (level WARNING): query, score, caption
    /rlivs/watches/events  foxglove.Event             each watch match's clip span, metadata: watch, query, score ...

Clock time: a clip's `wall_start`/`wall_end` (UTC unix seconds) where the memory records them; for clips without,
the stream's creation time plus the clip's stream time (right for a camera ingested live, a guess otherwise; the
export says how many clips were placed that way).

Which timeline (`time`): a robot recording's clips carry its header stamps, but Foxglove's timeline is log time by
default, and the two differ when the recorder's clock was not the camera's. time="log" (the default) places each
clip of a recording at its header-stamp time plus the log-time offset noted at ingest (`Memory.stream_clocks`: log
time minus stamp at the topic's first message), so captions line up with the recording's images opened next to
them; time="header" keeps the header stamps (Foxglove set to "header timestamp" ordering, or other tools). Streams
that are not recordings have one clock only and are placed by it either way. Every time field of the messages (log
time, Event start/end, Log and annotation timestamps) is on the chosen timeline. The export says which in its own
MCAP Metadata record `rlivs.export`: time (log | header) and, per stream, `STREAM.time` (in words) and
`STREAM.log_offset_ns`.

Foxglove versions: `foxglove.Log`, `foxglove.ImageAnnotations` and `foxglove.CompressedImage` are rendered by every
Foxglove version that opens MCAP (Log and Image panels). `foxglove.Event` is a newer schema (foxglove-sdk schemas,
@foxglove/schemas 2.2.0); a Foxglove version without it still decodes the messages from the protobuf schema the file
carries (Raw Messages panel), and everything an Event says (stream, clip, span, caption) is also in the Log and
annotation messages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from rlivs.runtime.errors import UserError

_INSTALL = "install the robotics extra: pip install 'rlivs[robotics]'"


@dataclass
class McapExport:
    """What `write_mcap` wrote."""

    path: Path
    clips: int = 0  # clips exported
    guessed_times: int = 0  # of them, placed by stream creation time + stream time (no recorded clock time)
    matches: int = 0  # watch matches exported
    thumbnails: int = 0  # thumbnails exported
    topics: dict[str, int] = field(default_factory=dict)  # topic -> messages
    start: float | None = None  # UTC unix seconds of the first message
    end: float | None = None  # UTC unix seconds of the last clip's end
    time: str = "log"  # the timeline: "log" or "header"
    time_notes: dict[str, str] = field(default_factory=dict)  # stream -> which clock placed it, in words


TIMES = ("log", "header")


def _timeline(stream: str, clock: dict | None, time: str) -> tuple[int, str]:
    """(ns added to the stream's clip clock times, what that places them on) for the chosen timeline."""
    if not clock or clock.get("kind") != "recording":
        return 0, "its clips' clock time (not a robot recording: no log time apart from it)"
    topic = clock.get("topic", "?")
    if clock.get("basis") == "log":
        return 0, f"log time of {topic} (its header stamps are zero, so its clips run on log time)"
    offset = int(clock.get("log_offset_ns", 0))
    if time == "header":
        return 0, f"header stamps of {topic} (log time is {offset / 1e9:+.9f} s from them)"
    return offset, (f"log time of {topic}: its header stamps {offset / 1e9:+.9f} s (log time minus stamp at its "
                    f"first message)")


def _stamp(msg_field, seconds: float) -> None:
    """Set a google.protobuf.Timestamp from unix seconds."""
    ns = round(seconds * 1e9)
    msg_field.seconds, msg_field.nanos = ns // 10**9, ns % 10**9


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def write_mcap(memory_path: str | os.PathLike, out_path: str | os.PathLike, streams: list[str] | None = None,
               thumbnails: bool = False, time: str = "log") -> McapExport:
    """Write the captions of `memory_path` (all streams, or `streams`) as Foxglove messages to `out_path` (MCAP),
    on the `time` timeline ("log": lines up with a recording's images in Foxglove; "header": its header stamps)."""
    if time not in TIMES:
        raise UserError(f"time {time!r} is unknown: use log (Foxglove's default timeline: lines up with the "
                        f"recording's images) or header (the header stamps)")
    try:
        from foxglove_schemas_protobuf.Color_pb2 import Color
        from foxglove_schemas_protobuf.CompressedImage_pb2 import CompressedImage
        from foxglove_schemas_protobuf.Event_pb2 import Event
        from foxglove_schemas_protobuf.ImageAnnotations_pb2 import ImageAnnotations
        from foxglove_schemas_protobuf.KeyValuePair_pb2 import KeyValuePair
        from foxglove_schemas_protobuf.Log_pb2 import Log
        from foxglove_schemas_protobuf.Point2_pb2 import Point2
        from foxglove_schemas_protobuf.TextAnnotation_pb2 import TextAnnotation
        from mcap_protobuf.writer import Writer
    except ImportError:
        raise UserError(f"an MCAP export needs mcap-protobuf-support and foxglove-schemas-protobuf: {_INSTALL}") from None
    from rlivs.edge_app.service.store import EdgeStore, edge_db_path
    from rlivs.runtime.memory import Memory

    memory_path, out = Path(memory_path), Path(out_path)
    if not memory_path.is_file():
        raise UserError(f"{memory_path} does not exist: ingest something first (rlivs ingest VIDEO --db {memory_path})")
    with Memory(memory_path, readonly=True) as mem:
        known = {s["name"]: s for s in mem.streams()}
        wanted = list(known) if streams is None else list(streams)
        unknown = [s for s in wanted if s not in known]
        if unknown:
            raise UserError(f"{memory_path} has no stream {unknown[0]!r}; its streams are: "
                            f"{', '.join(known) or 'none'}")
        records = [r for s in wanted for r in mem.clips(s)]
        clocks = mem.stream_clocks()
    edge = edge_db_path(memory_path)
    store = EdgeStore(edge) if edge.is_file() else None  # watches, matches and thumbnails, where serve kept them
    try:
        queries = {w.id: w.query for w in store.watches()} if store else {}
        matches = [m for m in store.matches(None, limit=2**62) if m.stream in wanted] if store else []
        report = McapExport(out, time=time)
        shift: dict[str, int] = {}
        for name in wanted:
            shift[name], report.time_notes[name] = _timeline(name, clocks.get(name), time)
        wall: dict[tuple[str, int], tuple[float, float]] = {}
        messages: list[tuple[float, str, object]] = []  # (unix seconds, topic, message)
        for r in records:
            w0, w1 = getattr(r, "wall_start", None), getattr(r, "wall_end", None)
            if w0 is None:
                origin = float(known[r.stream]["created_at"])
                w0, w1 = origin + r.t_start, origin + r.t_end
                report.guessed_times += 1
            w1 = w0 + (r.t_end - r.t_start) if w1 is None else w1
            w0, w1 = w0 + shift[r.stream] / 1e9, w1 + shift[r.stream] / 1e9  # onto the chosen timeline
            wall[(r.stream, r.index)] = (w0, w1)
            base = f"/rlivs/{r.stream}"
            ev = Event(metadata=[KeyValuePair(key=k, value=str(v)) for k, v in (
                ("stream", r.stream), ("clip", r.index), ("t_start", r.t_start), ("t_end", r.t_end),
                ("caption", r.caption))])
            _stamp(ev.start_time, w0)
            _stamp(ev.end_time, w1)
            log = Log(level=Log.Level.INFO, message=r.caption, name=r.stream, file=f"clip {r.index}")
            _stamp(log.timestamp, w0)
            text = TextAnnotation(text=r.caption, position=Point2(x=8, y=8), font_size=14,
                                  text_color=Color(r=1, g=1, b=1, a=1), background_color=Color(r=0, g=0, b=0, a=0.6))
            _stamp(text.timestamp, w0)
            messages += [(w0, f"{base}/clips", ev), (w0, f"{base}/captions", log),
                         (w0, f"{base}/annotations", ImageAnnotations(texts=[text]))]
            if thumbnails and store is not None:
                jpeg = store.thumbnail(r.stream, r.index)
                if jpeg is not None:
                    img = CompressedImage(frame_id=r.stream, format="jpeg", data=jpeg)
                    _stamp(img.timestamp, w0)
                    messages.append((w0, f"{base}/thumbnail", img))
                    report.thumbnails += 1
        for m in sorted(matches, key=lambda m: m.id):
            if (m.stream, m.clip) not in wall:
                continue  # its clip is not in the memory (e.g. the memory was replaced)
            w0, w1 = wall[(m.stream, m.clip)]
            query = queries.get(m.watch_id, "(a deleted watch)")
            log = Log(level=Log.Level.WARNING, name=f"watch {m.watch_id}",
                      message=f"{query!r} matched {m.stream} clip {m.clip} (score {m.score:.3f}): {m.caption}")
            _stamp(log.timestamp, w0)
            ev = Event(metadata=[KeyValuePair(key=k, value=str(v)) for k, v in (
                ("watch", m.watch_id), ("query", query), ("score", f"{m.score:.6f}"), ("stream", m.stream),
                ("clip", m.clip), ("caption", m.caption))])
            _stamp(ev.start_time, w0)
            _stamp(ev.end_time, w1)
            messages += [(w0, "/rlivs/watches/log", log), (w0, "/rlivs/watches/events", ev)]
            report.matches += 1
    finally:
        if store is not None:
            store.close()
    report.clips = len(records)
    messages.sort(key=lambda x: x[0])  # log-time order (stable: a clip's messages keep their order)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    meta = {"time": time, "clips": str(len(records)), "source": str(memory_path)}
    for name in wanted:
        meta[f"{name}.time"] = report.time_notes[name]
        meta[f"{name}.log_offset_ns"] = str(shift[name])
    with open(tmp, "wb") as f, Writer(f) as writer:
        writer.add_metadata("rlivs.export", meta)  # which timeline, said in the file itself
        for t, topic, msg in messages:
            writer.write_message(topic, msg, log_time=_ns(t), publish_time=_ns(t))
            report.topics[topic] = report.topics.get(topic, 0) + 1
    tmp.replace(out)  # a reader never sees half a file
    if wall:
        report.start = min(w0 for w0, _ in wall.values())
        report.end = max(w1 for _, w1 in wall.values())
    return report
