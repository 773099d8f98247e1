"""The annotations of `rlivs eval`: both published formats (the RVS streaming list; VStream-QA clip and question
files), detected from their keys, read into benchmarks of videos with their questions.

Times: every question time is converted once, when the annotations are read, to the time axis of the video *file*
as rlivs reads it (seconds from the file's first frame; for frame folders and .npy arrays, frame i is at
i / frames_fps). Questions keep the annotation's own `start_time` / `end_time` beside the converted `stream_end_time`.

Which axis the annotation's own times are on is decided from the data, once per file, and logged with the reason
(`decide_axis`): question times that all lie inside their record's window ([clip_start_time, clip_end_time], or a
VStream-QA clip's [start, end] in the source video) are on the source video's axis; times that all fit the windows'
lengths but not the windows are counted from the window's start. `check_annotations` reads files this way without
looking at any video (`rlivs eval --check`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from rlivs.runtime.errors import UserError
from rlivs.runtime.sources import open_source
from rlivs.runtime.sources.images import list_images
from rlivs.runtime.validate import check_stream_name

log = logging.getLogger("rlivs.eval")

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".npy")
# Slack (s, or shots) when comparing question times with a window's or a clip's bounds.
AXIS_TOL = 1.0


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
    outside: bool | None = None  # its times fall outside its video as the annotation describes it (None: unknown)


@dataclass
class VideoTask:
    benchmark: str  # the benchmark (annotation file stem) the video belongs to
    video_id: str  # annotation video id; the memory stream is "<benchmark>/<video_id>"
    path: Path | None  # resolved video: a file PyAV decodes, a folder of frames, or a .npy (N, H, W, 3) uint8 array
    #                    (None when read without videos: `check_annotations`)
    start: float = 0.0  # file time (s) the stream starts at (clip_start_time when a window applies)
    end: float | None = None  # file time (s) the stream ends at (exclusive); None = end of the file
    window_applied: bool = False  # clip_start_time/clip_end_time used as a window on the file
    time_axis: str = "file"  # the annotation's question times: "file" (no window), "source" (the source video's),
    #                          "window" (from clip_start_time), "clip" / "original" (VStream-QA)
    questions: list[Question] = field(default_factory=list)  # in annotation order
    duration: float | None = None  # the file's length (s) as probed when the annotations were read; None: unknown

    @property
    def stream(self) -> str:
        """This video's stream in the run's memory: benchmark.video_id as a valid stream name (runtime/validate.py);
        where characters were replaced or it was cut to length, a short hash of the original keeps names apart."""
        raw = f"{self.benchmark}.{self.video_id}"
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", raw)
        if name != raw or len(name) > 64:
            name = f"{name[:55]}-{hashlib.sha256(raw.encode()).hexdigest()[:8]}"
        return check_stream_name(name)


@dataclass
class Benchmark:
    name: str  # file stem of the annotation (question) file, e.g. rvs_ego
    format: str  # "streaming" (list of videos with conversations) | "vstream" (clip file + question file)
    files: list[Path]  # the annotation files it was read from
    videos: list[VideoTask]  # in annotation order
    time_axis: str = "file"  # the axis decided for the file's question times (see VideoTask.time_axis)
    axis_reason: str = "no clip window in the records"  # why (logged when read)


@dataclass
class AnnotationConfig:
    videos_dir: Path | None = None  # where video_path / video_id are looked up when they do not exist as given
    frames_fps: float = 1.0  # rate of frame folders and .npy arrays: frame i is at i / frames_fps seconds
    vstream_times: str = "auto"  # VStream question times: "auto" (from the data) | "clip" (from the cut clip's
    #                               start) | "original" (the source video's axis)
    shot_seconds: float = 1.0  # seconds per shot where a VStream clip is shot-indexed (start_shot/end_shot)
    clip_window: str = "auto"  # list format clip_start_time/clip_end_time: "auto" (axis from the data; ReKV's
    #                            protocol for source-axis times) | "apply" (stream only the window) | "ignore"
    max_videos: int | None = None  # only the first N videos of each benchmark (smoke runs)

    def __post_init__(self):
        if self.vstream_times not in ("auto", "clip", "original"):
            raise UserError(f"vstream_times must be 'auto', 'clip' or 'original', got {self.vstream_times!r}")
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


@dataclass
class AxisDecision:
    axis: str  # "source": the times are on the source video's axis | "window": counted from the window's start
    reason: str  # why, in words (logged, and printed by `rlivs eval --check`)


def decide_axis(windows: list[tuple[float, float, list[tuple[float, float]]]], what: str) -> AxisDecision:
    """Which axis a file's question times are on, from the data: `windows` holds, per windowed video, its window
    (w0, w1) in the source video and its questions' (start, end), all in the annotation's units; `what` names the
    window in the reason. Times that all lie inside their window => the source axis; else times that all fit the
    windows' lengths => counted from the window's start; else the reading that leaves fewer questions outside."""
    n = sum(len(qs) for _, _, qs in windows)
    src_out = sum(1 for w0, w1, qs in windows for s, e in qs if s < w0 - AXIS_TOL or e > w1 + AXIS_TOL)
    win_out = sum(1 for w0, w1, qs in windows for _, e in qs if e > (w1 - w0) + AXIS_TOL)
    if all(w0 <= AXIS_TOL for w0, _, _ in windows):
        return AxisDecision("source", f"every {what} starts at 0, so both readings agree")
    if src_out == 0:
        both = (f"; they also fit the windows' lengths, so the source axis is assumed (force the other reading "
                f"with --clip-window apply / --vstream-times clip)") if win_out == 0 else ""
        return AxisDecision("source", f"all {n} question times lie inside their {what}{both}")
    if win_out == 0:
        return AxisDecision("window", f"{src_out} of {n} questions lie outside their {what}, and all {n} fit within "
                                      f"its length: times are counted from its start")
    axis = "source" if src_out <= win_out else "window"
    return AxisDecision(axis, f"no reading holds every question: {src_out} of {n} lie outside their {what} on the "
                              f"source axis, {win_out} beyond its length when counted from its start; the "
                              f"{axis} reading leaves fewer outside")


def _outside(s: float | None, e: float, lo: float, hi: float | None) -> bool | None:
    """A question [s, e] outside a video's extent [lo, hi] (annotation units); None when the extent is unknown."""
    if hi is None:
        return None
    return (s if s is not None else e) < lo - AXIS_TOL or e > hi + AXIS_TOL


def _streaming(path: Path, records: list, cfg: AnnotationConfig, with_videos: bool = True) -> Benchmark:
    # pass 1: every record and conversation checked; no file is looked at
    parsed, seen = [], set()
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
        c0, c1 = _number(path, where, rec, "clip_start_time"), _number(path, where, rec, "clip_end_time")
        if c0 is not None and c1 is not None and c1 <= c0:
            raise UserError(f"{path}: {where} has clip_end_time {c1} <= clip_start_time {c0}")
        qs = []
        for j, conv in enumerate(convs):
            cw = f"{where} conversation {j}"
            if not isinstance(conv, dict):
                raise UserError(f"{path}: {cw} is not an object")
            _need(path, cw, conv, ("question", "answer", "end_time"))
            s, e = _number(path, cw, conv, "start_time"), _number(path, cw, conv, "end_time")
            if s is not None and e < s:
                raise UserError(f"{path}: {cw} has end_time {e} < start_time {s}; fix the record")
            qs.append(Question(f"{vid}#{j}", vid, _text(path, cw, conv, "question"), _text(path, cw, conv, "answer"),
                               s, e, e, conv.get("answer_type"), i))
        windowed = cfg.clip_window != "ignore" and (c0 is not None or c1 is not None)
        parsed.append((i, rec, vid, where, c0, c1, windowed, qs))
    # the file's time axis, from its windowed records
    windows = [(c0 or 0.0, c1 if c1 is not None else math.inf, [(q.start_time if q.start_time is not None
                                                                 else q.end_time, q.end_time) for q in qs])
               for _, _, _, _, c0, c1, windowed, qs in parsed if windowed]
    if windows:
        d = decide_axis(windows, "[clip_start_time, clip_end_time]")
        axis, reason = d.axis, f"{d.reason} ({len(windows)} of {len(parsed)} records have a window)"
    elif cfg.clip_window == "ignore":
        axis, reason = "file", "--clip-window ignore: clip_start_time/clip_end_time are not read"
    else:
        axis, reason = "file", "no record has clip_start_time/clip_end_time: times are on the file's axis"
    log.info("%s: question times on the %s axis: %s", path.name, axis, reason)
    # pass 2: each video found and probed (unless reading without videos), its times put on the file's axis
    videos = []
    for i, rec, vid, where, c0, c1, windowed, qs in parsed:
        video, dur = None, _number(path, where, rec, "duration")
        if with_videos:
            video = resolve_video(str(rec["video_path"]), vid, cfg.videos_dir, f"{path}: {where}")
            dur = _check_source(video, cfg.frames_fps)
        task = VideoTask(path.stem, vid, video, duration=dur, time_axis=axis if windowed else "file")
        w0 = c0 or 0.0
        if not windowed:
            shift, extent = 0.0, (0.0, dur)
        else:
            # is the file the uncut source video (it can hold the window) or a file already cut to the window?
            # (None: unknown, no duration)
            last = c1 if c1 is not None else w0
            uncut = None if dur is None else (last <= dur + AXIS_TOL and w0 < dur)
            source_times = axis == "source"
            if cfg.clip_window == "apply" or (not source_times and uncut):
                task.window_applied, task.start, task.end = True, w0, c1  # stream only the window
            # file time = annotation time + shift. Source-axis times on an uncut file are the file's own axis (ReKV's
            # protocol: stream from the file's start up to each end_time); a cut file starts at clip_start_time.
            # Window-relative times are shifted onto an uncut file; a cut (or unprobed) file already starts there.
            if source_times:
                shift = -w0 if uncut is False and cfg.clip_window != "apply" else 0.0
            else:
                shift = w0 if task.window_applied else 0.0
            extent = (w0, c1) if source_times else (0.0, None if c1 is None else c1 - w0)
        for q in qs:
            q.stream_end_time = q.end_time + shift
            q.outside = _outside(q.start_time, q.end_time, *extent)
        task.questions = qs
        videos.append(task)
    return Benchmark(path.stem, "streaming", [path], videos, axis, reason)


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


def _vstream_questions(path: Path, records: list, cfg: AnnotationConfig, clips: dict[str, _ClipInfo],
                       with_videos: bool = True) -> Benchmark:
    parsed: list[Question] = []
    seen: set[str] = set()
    for i, rec in enumerate(records):
        qid = str(rec.get("id", "")).strip()
        where = f"record {i}" + (f" (id {qid!r})" if qid else "")
        _need(path, where, rec, ("id", "video_id", "question", "answer", "end_time"))
        if qid in seen:
            raise UserError(f"{path}: {where} repeats id {qid!r}; question ids must be unique")
        seen.add(qid)
        s, e = _number(path, where, rec, "start_time"), _number(path, where, rec, "end_time")
        if s is not None and e < s:
            raise UserError(f"{path}: {where} has end_time {e} < start_time {s}; fix the record")
        vid = str(rec["video_id"]).strip()
        parsed.append(Question(qid, vid, _text(path, where, rec, "question"), _text(path, where, rec, "answer"),
                               s, e, e, rec.get("answer_type"), i))
    # the file's time axis: "original" (the source video's) or "clip" (from the cut clip's start)
    known = {}
    for q in parsed:
        if q.video_id in clips:
            known.setdefault(q.video_id, []).append((q.start_time if q.start_time is not None else q.end_time,
                                                     q.end_time))
    if cfg.vstream_times != "auto":
        axis, reason = cfg.vstream_times, f"--vstream-times {cfg.vstream_times}"
    elif not known:
        axis, reason = "clip", "no clip file describes these videos: times are taken as seconds from the file's start"
    else:
        d = decide_axis([(clips[v].origin, clips[v].origin + clips[v].length, qs) for v, qs in known.items()],
                        "clip's [start, end] in the source video")
        axis, reason = {"source": "original", "window": "clip"}[d.axis], d.reason
    log.info("%s: question times on the %s axis: %s", path.name, axis, reason)
    by_video: dict[str, VideoTask] = {}
    for q in parsed:
        where = f"record {q.record} (id {q.qid!r})"
        info = clips.get(q.video_id)
        origin = info.origin if (info and axis == "original") else 0.0
        unit = info.unit if info else 1.0
        if q.end_time < origin:
            raise UserError(f"{path}: {where} has end_time {q.end_time:g}, before its clip starts ({origin:g} in the "
                            f"source video): on the original axis the times must be on the source video's axis")
        if info is not None and q.end_time - origin > info.length + AXIS_TOL:
            hint = ("pass --vstream-times original if the times are on the source video's axis"
                    if axis == "clip" else "check the clip file and the question file belong together")
            raise UserError(f"{path}: {where} has end_time {q.end_time:g}, beyond its clip's length {info.length:g} "
                            f"(from {info.file}); {hint}")
        q.stream_end_time = (q.end_time - origin) * unit
        q.outside = None if info is None else _outside(q.start_time, q.end_time, origin, origin + info.length)
        if q.video_id not in by_video:
            video = dur = None
            if with_videos:
                video = resolve_video(None, q.video_id, cfg.videos_dir, f"{path}: {where}")
                dur = _check_source(video, cfg.frames_fps)
            by_video[q.video_id] = VideoTask(path.stem, q.video_id, video, duration=dur, time_axis=axis)
        by_video[q.video_id].questions.append(q)
    return Benchmark(path.stem, "vstream", [path] + sorted({c.file for c in clips.values()}), list(by_video.values()),
                     axis, reason)


def read_annotations(files: list[Path], cfg: AnnotationConfig, with_videos: bool = True) -> list[Benchmark]:
    """Read annotation files in either published format. VStream-QA clip files are merged into one table that
    the VStream question files look their videos up in (by video_id); each question file or streaming list is a
    benchmark named after its file stem. `with_videos=False` checks the annotations alone: no video is looked up
    or opened (VideoTask.path is None; durations come from the records' `duration` keys)."""
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
            benches.append(_streaming(f, recs, cfg, with_videos))
        elif kind == "vstream-questions":
            benches.append(_vstream_questions(f, recs, cfg, clips, with_videos))
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


def check_annotations(files: list[Path], cfg: AnnotationConfig) -> list[dict]:
    """`rlivs eval --check`: every record of every file validated, without a model or videos -> one row per file:
    its format, videos, questions, the question times' axis (and why), and the questions outside their video
    (times outside the video as the annotation describes it: its window, clip or `duration`; unknown extents are
    counted apart). Raises UserError on the first invalid record, naming the file and the record."""
    cfg = AnnotationConfig(**{**cfg.__dict__, "max_videos": None})
    benches = read_annotations(files, cfg, with_videos=False)
    rows = []
    for f in files:
        f = Path(f)
        b = next((b for b in benches if b.files[0] == f), None)
        if b is None:  # a VStream-QA clip file: its clips are counted, its questions are in the question file
            recs = read_records(f)
            rows.append({"file": str(f), "format": "vstream-clips", "videos": len(recs), "questions": 0,
                         "time_axis": None, "reason": "clip file (questions are in the question file)",
                         "outside": 0, "unknown_extent": 0})
            continue
        qs = [q for v in b.videos for q in v.questions]
        rows.append({"file": str(f), "format": b.format, "videos": len(b.videos), "questions": len(qs),
                     "time_axis": b.time_axis, "reason": b.axis_reason,
                     "outside": sum(1 for q in qs if q.outside), "unknown_extent": sum(1 for q in qs
                                                                                      if q.outside is None),
                     "outside_qids": [q.qid for q in qs if q.outside][:10]})
    return rows
