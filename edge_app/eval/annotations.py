"""The annotations of `rlivs eval`: both published formats (the RVS streaming list; VStream-QA clip and question
files), detected from their keys, read into benchmarks of videos with their questions.

Times: every question time is converted once, when the annotations are read, to the time axis of the video *file*
as rlivs reads it (seconds from the file's first frame; for frame folders and .npy arrays, frame i is at
i / frames_fps). Questions keep the annotation's own `start_time` / `end_time` beside the converted `stream_end_time`.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from rlivs.runtime.errors import UserError
from rlivs.runtime.sources import open_source
from rlivs.runtime.sources.images import list_images

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".npy")


@dataclass
class Question:
    qid: str  # unique in its benchmark: the VStream `id`, or "<video_id>#<n>" (n-th conversation) in the list format
    video_id: str  # the video it is asked about
    question: str  # question text
    reference: str  # the annotated answer
    start_time: float | None  # annotation start time, as written (seconds, or shots)
    end_time: float  # annotation end time, as written (seconds, or shots)
    stream_end_time: float  # end_time on the video file's time axis (seconds): clips with t_end <= this are visible
    answer_type: str | None = None  # VStream-QA's answer_type, when given
    record: int = 0  # index of the record in its annotation file (for messages)


@dataclass
class VideoTask:
    benchmark: str  # the benchmark (annotation file stem) the video belongs to
    video_id: str  # annotation video id; the memory stream is "<benchmark>/<video_id>"
    path: Path  # resolved video: a file PyAV decodes, a folder of frames, or a .npy (N, H, W, 3) uint8 array
    start: float = 0.0  # file time (s) the stream starts at (clip_start_time when a window applies)
    end: float | None = None  # file time (s) the stream ends at (exclusive); None = end of the file
    window_applied: bool = False  # clip_start_time/clip_end_time used as a window on the file
    questions: list[Question] = field(default_factory=list)  # in annotation order
    duration: float | None = None  # the file's length (s) as probed when the annotations were read; None: unknown

    @property
    def stream(self) -> str:
        return f"{self.benchmark}/{self.video_id}"


@dataclass
class Benchmark:
    name: str  # file stem of the annotation (question) file, e.g. rvs_ego
    format: str  # "streaming" (list of videos with conversations) | "vstream" (clip file + question file)
    files: list[Path]  # the annotation files it was read from
    videos: list[VideoTask]  # in annotation order


@dataclass
class AnnotationConfig:
    videos_dir: Path | None = None  # where video_path / video_id are looked up when they do not exist as given
    frames_fps: float = 1.0  # rate of frame folders and .npy arrays: frame i is at i / frames_fps seconds
    vstream_times: str = "clip"  # VStream question times: "clip" (from the cut clip's start) | "original" (source)
    shot_seconds: float = 1.0  # seconds per shot where a VStream clip is shot-indexed (start_shot/end_shot)
    clip_window: str = "auto"  # list format clip_start_time/clip_end_time: "auto" | "apply" | "ignore"
    max_videos: int | None = None  # only the first N videos of each benchmark (smoke runs)

    def __post_init__(self):
        if self.vstream_times not in ("clip", "original"):
            raise UserError(f"vstream_times must be 'clip' or 'original', got {self.vstream_times!r}")
        if self.clip_window not in ("auto", "apply", "ignore"):
            raise UserError(f"clip_window must be 'auto', 'apply' or 'ignore', got {self.clip_window!r}")
        if not self.frames_fps > 0:
            raise UserError(f"frames_fps must be > 0, got {self.frames_fps}; e.g. --frames-fps 1")
        if not self.shot_seconds > 0:
            raise UserError(f"shot_seconds must be > 0, got {self.shot_seconds}; e.g. --shot-seconds 1")
        if self.max_videos is not None and self.max_videos < 1:
            raise UserError(f"max_videos must be >= 1, got {self.max_videos}")


def read_records(path: Path) -> list:
    """A .json list or a .jsonl file (one record per line) -> list of records. Clear errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"annotation file {path} does not exist; pass an existing .json/.jsonl file to --annotations")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}: line {n} is not valid JSON ({e.msg}); fix or remove it") from None
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                        f"fix the file (RVS/VStream annotation files are JSON lists)") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of records, got a JSON {type(data).__name__}; RVS/VStream "
                        f"annotation files are lists ([{{...}}, ...])")
    return data


def detect_format(path: Path, records: list) -> str:
    """'streaming' | 'vstream-questions' | 'vstream-clips', from the keys of the records."""
    if not records:
        raise UserError(f"{path} holds no records; pass a non-empty annotation file")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise UserError(f"{path}: record {i} is a JSON {type(r).__name__}, not an object; every record must be "
                            f"an object like {{\"video_id\": ..., ...}}")
    keys = set().union(*(r.keys() for r in records))
    if "conversations" in keys:
        return "streaming"
    if "question" in keys:
        return "vstream-questions"
    clip_keys = {"start_shot", "end_shot", "original_video"} & keys or {"start_time", "end_time"} <= keys
    if "video_id" in keys and clip_keys:
        return "vstream-clips"
    raise UserError(
        f"cannot tell the format of {path} (keys seen: {sorted(keys)[:12]}): expected the streaming list (records "
        f"with video_id, video_path, conversations), a VStream-QA question file (id, video_id, question, answer, "
        f"start_time, end_time) or a VStream-QA clip file (video_id, start_time/end_time or start_shot/end_shot)")


def _need(path: Path, where: str, rec: dict, keys: Iterable[str]) -> None:
    missing = [k for k in keys if k not in rec or rec[k] is None]
    if missing:
        have = ", ".join(sorted(rec)) or "none"
        raise UserError(f"{path}: {where} is missing required key(s) {', '.join(map(repr, missing))} "
                        f"(keys present: {have}); add them or fix the record")


def _number(path: Path, where: str, rec: dict, key: str) -> float | None:
    v = rec.get(key)
    if v is None:
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise UserError(f"{path}: {where} has {key}={v!r}, which is not a number of seconds; fix the record") from None
    if not math.isfinite(x) or x < 0:
        raise UserError(f"{path}: {where} has {key}={v!r}; times must be finite and >= 0")
    return x


def _text(path: Path, where: str, rec: dict, key: str) -> str:
    v = rec[key]
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = str(v)  # numeric answers ("3") appear as numbers in some files
    if not isinstance(v, str) or not v.strip():
        raise UserError(f"{path}: {where} has an empty or non-text {key!r} ({v!r}); fix the record")
    return v.strip()


def resolve_video(hint: str | None, video_id: str, videos_dir: Path | None, where: str) -> Path:
    """The video of an annotation: `hint` as given, else under videos_dir (hint, its name, or <video_id>[.ext])."""
    tried: list[Path] = []
    candidates: list[Path] = []
    if hint:
        candidates.append(Path(hint).expanduser())
        if videos_dir is not None:
            if not Path(hint).is_absolute():
                candidates.append(videos_dir / hint)
            candidates.append(videos_dir / Path(hint).name)
    if videos_dir is not None:
        candidates.append(videos_dir / video_id)
        candidates += [videos_dir / f"{video_id}{ext}" for ext in VIDEO_EXTENSIONS]
    for c in candidates:
        if c in tried:
            continue
        tried.append(c)
        if c.is_file() or (c.is_dir() and list_images(c)):
            return c
    if videos_dir is not None and videos_dir.is_dir():
        loose = sorted(p for p in videos_dir.glob(f"{glob_escape(video_id)}.*") if p.is_file())
        if loose:
            return loose[0]
    shown = ", ".join(str(p) for p in tried[:6]) or "(no candidates: give --videos)"
    raise UserError(f"{where}: video {video_id!r} not found (tried {shown}); put it under --videos as "
                    f"<video_id>.mp4, a folder of frames or <video_id>.npy, or fix video_path")


def glob_escape(s: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", s)


def _streaming(path: Path, records: list, cfg: AnnotationConfig) -> Benchmark:
    videos, seen = [], set()
    for i, rec in enumerate(records):
        vid = str(rec.get("video_id", "")).strip()
        where = f"record {i}" + (f" (video_id {vid!r})" if vid else "")
        _need(path, where, rec, ("video_id", "video_path", "conversations"))
        if vid in seen:
            raise UserError(f"{path}: {where} repeats video_id {vid!r}; give each video one record")
        seen.add(vid)
        convs = rec["conversations"]
        if not isinstance(convs, list) or not convs:
            raise UserError(f"{path}: {where} has 'conversations' = {type(convs).__name__}; expected a non-empty "
                            f"list of {{question, answer, start_time, end_time}}")
        video = resolve_video(str(rec["video_path"]), vid, cfg.videos_dir, f"{path}: {where}")
        dur = _check_source(video, cfg.frames_fps)
        c0, c1 = _number(path, where, rec, "clip_start_time"), _number(path, where, rec, "clip_end_time")
        if c0 is not None and c1 is not None and c1 <= c0:
            raise UserError(f"{path}: {where} has clip_end_time {c1} <= clip_start_time {c0}")
        apply = False
        if c0 is not None or c1 is not None:
            if cfg.clip_window == "apply":
                apply = True
            elif cfg.clip_window == "auto":
                # a window on the file only when the file can hold it (an uncut source video); a file already cut
                # to the clip is shorter than clip_end_time, and its own time 0 is the clip's start
                last = c1 if c1 is not None else c0
                apply = dur is not None and last <= dur + 1.0 and (c0 or 0.0) < dur
        shift = (c0 or 0.0) if apply else 0.0
        task = VideoTask(path.stem, vid, video, start=shift, end=c1 if apply else None, window_applied=apply,
                         duration=dur)
        for j, conv in enumerate(convs):
            cw = f"{where} conversation {j}"
            if not isinstance(conv, dict):
                raise UserError(f"{path}: {cw} is not an object")
            _need(path, cw, conv, ("question", "answer", "end_time"))
            s, e = _number(path, cw, conv, "start_time"), _number(path, cw, conv, "end_time")
            if s is not None and e < s:
                raise UserError(f"{path}: {cw} has end_time {e} < start_time {s}; fix the record")
            task.questions.append(Question(f"{vid}#{j}", vid, _text(path, cw, conv, "question"),
                                           _text(path, cw, conv, "answer"), s, e, shift + e,
                                           conv.get("answer_type"), i))
        videos.append(task)
    return Benchmark(path.stem, "streaming", [path], videos)


@dataclass
class _ClipInfo:
    origin: float  # start in the source video (seconds, or shot index)
    length: float  # length (seconds, or shots)
    unit: float  # seconds per annotation time unit (1, or shot_seconds for shot-indexed clips)
    file: Path  # the clip file that described it


def _vstream_clips(path: Path, records: list, cfg: AnnotationConfig, table: dict[str, _ClipInfo]) -> None:
    for i, rec in enumerate(records):
        vid = str(rec.get("video_id", "")).strip()
        where = f"record {i}" + (f" (video_id {vid!r})" if vid else "")
        _need(path, where, rec, ("video_id",))
        if "start_shot" in rec or "end_shot" in rec:
            _need(path, where, rec, ("start_shot", "end_shot"))
            a, b = _number(path, where, rec, "start_shot"), _number(path, where, rec, "end_shot")
            unit = cfg.shot_seconds
        else:
            _need(path, where, rec, ("start_time", "end_time"))
            a, b, unit = _number(path, where, rec, "start_time"), _number(path, where, rec, "end_time"), 1.0
        if b < a:
            raise UserError(f"{path}: {where} ends before it starts ({a} > {b}); fix the record")
        info = _ClipInfo(a, b - a, unit, path)
        old = table.get(vid)
        if old is not None and (old.origin, old.length, old.unit) != (info.origin, info.length, info.unit):
            raise UserError(f"{path}: {where}: video_id {vid!r} is also described, differently, in {old.file}")
        table[vid] = info


def _vstream_questions(path: Path, records: list, cfg: AnnotationConfig, clips: dict[str, _ClipInfo]) -> Benchmark:
    by_video: dict[str, VideoTask] = {}
    seen: set[str] = set()
    for i, rec in enumerate(records):
        qid = str(rec.get("id", "")).strip()
        where = f"record {i}" + (f" (id {qid!r})" if qid else "")
        _need(path, where, rec, ("id", "video_id", "question", "answer", "end_time"))
        if qid in seen:
            raise UserError(f"{path}: {where} repeats id {qid!r}; question ids must be unique")
        seen.add(qid)
        vid = str(rec["video_id"]).strip()
        s, e = _number(path, where, rec, "start_time"), _number(path, where, rec, "end_time")
        if s is not None and e < s:
            raise UserError(f"{path}: {where} has end_time {e} < start_time {s}; fix the record")
        info = clips.get(vid)
        origin = info.origin if (info and cfg.vstream_times == "original") else 0.0
        unit = info.unit if info else 1.0
        if e < origin:
            raise UserError(f"{path}: {where} has end_time {e}, before its clip starts ({origin} in the source "
                            f"video): with --vstream-times original the times must be on the source video's axis")
        if info is not None and e - origin > info.length + 1.0:
            hint = ("pass --vstream-times original if the times are on the source video's axis"
                    if cfg.vstream_times == "clip" else "check the clip file and the question file belong together")
            raise UserError(f"{path}: {where} has end_time {e}, beyond its clip's length {info.length:g} "
                            f"(from {info.file}); {hint}")
        if vid not in by_video:
            video = resolve_video(None, vid, cfg.videos_dir, f"{path}: {where}")
            by_video[vid] = VideoTask(path.stem, vid, video, duration=_check_source(video, cfg.frames_fps))
        by_video[vid].questions.append(Question(qid, vid, _text(path, where, rec, "question"),
                                                _text(path, where, rec, "answer"), s, e, (e - origin) * unit,
                                                rec.get("answer_type"), i))
    return Benchmark(path.stem, "vstream", [path] + sorted({c.file for c in clips.values()}), list(by_video.values()))


def read_annotations(files: list[Path], cfg: AnnotationConfig) -> list[Benchmark]:
    """Read annotation files in either published format. VStream-QA clip files are merged into one table that
    the VStream question files look their videos up in (by video_id); each question file or streaming list is a
    benchmark named after its file stem."""
    if not files:
        raise UserError("no annotation files: pass --annotations FILE (a streaming list, or a VStream-QA clip file "
                        "and question file)")
    parsed = []
    for f in files:
        f = Path(f)
        recs = read_records(f)
        parsed.append((f, recs, detect_format(f, recs)))
    clips: dict[str, _ClipInfo] = {}
    for f, recs, kind in parsed:
        if kind == "vstream-clips":
            _vstream_clips(f, recs, cfg, clips)
    benches: list[Benchmark] = []
    for f, recs, kind in parsed:
        if kind == "streaming":
            benches.append(_streaming(f, recs, cfg))
        elif kind == "vstream-questions":
            benches.append(_vstream_questions(f, recs, cfg, clips))
    if not benches:
        raise UserError(f"{', '.join(str(f) for f, _, _ in parsed)}: only VStream-QA clip files were given; add "
                        f"the question file (e.g. test_qa_ego4d.json) to --annotations")
    names = Counter(b.name for b in benches)
    dup = [n for n, c in names.items() if c > 1]
    if dup:
        raise UserError(f"two annotation files are both named {dup[0]!r}; rename one (benchmarks are named after "
                        f"their file stem)")
    if cfg.max_videos is not None:
        for b in benches:
            b.videos = b.videos[: cfg.max_videos]
    return benches


def _check_source(path: Path, frames_fps: float) -> float | None:
    """Open (probe) a video source once, so a bad file fails before any model is loaded; -> its duration (s)."""
    return open_source(path, 1.0, frames_fps=frames_fps).duration
