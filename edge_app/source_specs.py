"""The `--source` values of the command line -> `SourceSpec`s (rlivs serve), and the `--topic` values that pick the
image topics of robot recordings (rlivs ingest and serve).

Each value is `[name=]URL` (`rlivs.runtime.sources.spec.parse_source`); across the values given, two sources may not
end up with the same stream name. A robot recording (ROS bag, MCAP: `rlivs.runtime.sources.bag`) becomes one stream
per image topic: `--topic` picks them (repeatable); without it a recording's only image topic is taken, and a
recording with several is refused with its topics, counts and rates listed.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from rlivs.runtime.errors import UserError
from rlivs.runtime.sources.spec import SourceSpec, parse_source


def parse_sources(specs: list[str], topics: list[str] = ()) -> list[SourceSpec]:
    """Parse several `--source` values (a recording: one source per image topic, `topics` picking them); two sources
    may not share a stream name."""
    out = with_topics([parse_source(s) for s in specs], topics)
    seen: dict[str, str] = {}
    for s in out:
        if s.name in seen:
            raise UserError(f"sources {seen[s.name]!r} and {s.url!r} would both be stream {s.name!r}: name them, "
                            f"e.g. --source {s.name}1={seen[s.name]} --source {s.name}2={s.url}")
        seen[s.name] = s.url
    return out




def topic_names(stream: str, topics: list[str]) -> list[str]:
    """Stream names for a recording's topics: `stream` itself for one topic, `stream.<topic>` for several (with
    /cam/image_raw -> cam.image_raw)."""
    from rlivs.runtime.sources.bag import topic_stream_name

    if len(topics) == 1:
        return [stream]
    return [f"{stream}.{topic_stream_name(t)}"[:64] for t in topics]


def with_topics(specs: list[SourceSpec], topics: list[str] = ()) -> list[SourceSpec]:
    """Each robot recording among `specs` (by its first bytes: a name that disagrees is logged) -> one SourceSpec
    per image topic (`topics`, or its only image topic); other sources unchanged. Refuses `topics` when no source
    is a recording."""
    import logging

    from rlivs.runtime.sources.bag import BagSource, is_recording, name_note

    topics = list(dict.fromkeys(topics))  # repeated --topic values count once
    out: list[SourceSpec] = []
    for s in specs:
        note = name_note(s.url) if s.kind == "file" else None
        if note:
            logging.getLogger("rlivs.sources").warning("%s", note)
        if not (s.kind == "file" and is_recording(s.url)):
            out.append(s)
            continue
        path = Path(s.url.removeprefix("file://"))
        if not path.exists():
            raise UserError(f"recording {path} does not exist: check the path")
        picked = topics or [BagSource(path, None).topic]  # refuses several image topics, listing them
        for t in picked:
            BagSource(path, t)  # an unknown topic or one without decodable images: refused now, naming it
        out += [replace(s, name=n, topic=t) for n, t in zip(topic_names(s.name, picked), picked)]
    if topics and not any(s.topic for s in out):
        raise UserError(f"--topic {topics[0]} given, but no source is a robot recording (a ROS 1 bag, an MCAP file, a "
                        f"ROS 2 .db3 or a rosbag2 folder, by content); leave --topic out for video files, cameras and "
                        f"streams")
    return out
