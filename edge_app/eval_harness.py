"""Streaming video QA evaluation (RVS-Ego / RVS-Movie protocol): annotations, frame sources, the causal runner,
metrics, pinned judges, outputs and resume. Library code: no argv here (`rlivs eval` lives in `evaluate.py`).

Protocol (docs/evaluation.md): each video is ingested once, in time order, into a per-run memory (one stream per
video). A clip covers [t_start, t_end). A question with end time E is answered as soon as the next clip would end
after E, i.e. after the last clip with t_end <= E has been committed and before any later clip is ingested; a clip
that straddles E is ingested only after the question was answered, so it is never seen by it. Answers retrieve only
captions with t_end <= E (`CausalView`), which also keeps a resumed run causal.

Times: every question time is converted once, when the annotations are read, to the time axis of the video *file*
as rlivs reads it (seconds from the file's first frame; for frame folders and .npy arrays, frame i is at
i / frames_fps). Rows keep the annotation's own `start_time` / `end_time` beside the converted `stream_end_time`.

No torch here: the torch backend is loaded by `load_engine` only when the model needs it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import re
import string
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from rlivs.runtime.config import PipelineConfig
from rlivs.runtime.frames import Frame, VideoFileSource, clip_start_time, iter_clips
from rlivs.runtime.memory import ClipRecord, Memory
from rlivs.runtime.errors import UserError

log = logging.getLogger("rlivs.eval")

# A float tolerance (seconds) for comparing clip ends with question end times.
TIME_EPS = 1e-6
# The answer recorded (and judged) when a question comes before the first clip has ended: nothing was seen yet.
NO_CONTEXT_ANSWER = "No information yet: nothing of the video has been seen before this question."
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".npy")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
PREDICTIONS = "predictions.jsonl"
SUMMARY = "summary.json"
TABLE = "results.md"
RUN = "run.json"
MEMORY = "memory.db"

# ---------------------------------------------------------------------------------------------------------------------
# The judge prompt, pinned. Changing a single character changes JUDGE_PROMPT_SHA256, which every result records:
# scores made under different prompts (or judge models) must not be compared.
# ---------------------------------------------------------------------------------------------------------------------

JUDGE_PROMPT_VERSION = "rlivs-judge-v1"
JUDGE_SYSTEM = (
    "You grade answers to questions about videos. You are given a question, the correct answer and a predicted "
    "answer. Decide whether the predicted answer is correct. Judge the meaning, not the wording: paraphrases and "
    "synonyms are correct. A prediction that contradicts the correct answer, leaves out what the question asks "
    "for, or names a different object, person, place, count or time is not correct."
)
JUDGE_USER = (
    "Question: {question}\n"
    "Correct answer: {reference}\n"
    "Predicted answer: {prediction}\n\n"
    "Reply with one JSON object and nothing else. It has two keys: \"pred\", which is \"yes\" if the predicted "
    "answer is correct and \"no\" if it is not, and \"score\", an integer from 0 to 5 for how well the predicted "
    "answer matches the correct answer (5 = the same meaning, 0 = unrelated). "
    "For example: {{\"pred\": \"yes\", \"score\": 4}}"
)
JUDGE_PROMPT_SHA256 = hashlib.sha256(
    "\n\x00\n".join([JUDGE_PROMPT_VERSION, JUDGE_SYSTEM, JUDGE_USER]).encode()).hexdigest()


def judge_messages(question: str, reference: str, prediction: str) -> tuple[str, str]:
    """(system, user) texts of one judgment."""
    return JUDGE_SYSTEM, JUDGE_USER.format(question=question, reference=reference, prediction=prediction)


# ---------------------------------------------------------------------------------------------------------------------
# Annotations
# ---------------------------------------------------------------------------------------------------------------------


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
        if c.is_file() or (c.is_dir() and _list_images(c)):
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
        _check_source(video, cfg.frames_fps)
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
                dur = _duration(video, cfg.frames_fps)
                last = c1 if c1 is not None else c0
                apply = dur is not None and last <= dur + 1.0 and (c0 or 0.0) < dur
        shift = (c0 or 0.0) if apply else 0.0
        task = VideoTask(path.stem, vid, video, start=shift, end=c1 if apply else None, window_applied=apply)
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
            _check_source(video, cfg.frames_fps)
            by_video[vid] = VideoTask(path.stem, vid, video)
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


# ---------------------------------------------------------------------------------------------------------------------
# Frame sources: video file, folder of frames, .npy array
# ---------------------------------------------------------------------------------------------------------------------


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def _list_images(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                  key=_natural_key)


def _sampled(n: int, native_fps: float, fps: float, start: float, end: float | None,
             get: Callable[[int], np.ndarray]) -> Iterator[Frame]:
    """Frames of an indexed source (frame i at i / native_fps s), sampled at `fps` from `start`: sample k is the
    first source frame at or after start + k / fps (VideoFileSource's rule); stops before `end` or the last frame."""
    k = 0
    while True:
        target = start + k / fps
        if end is not None and target >= end - TIME_EPS:
            return
        i = max(0, math.ceil((target - TIME_EPS) * native_fps))
        if i >= n:
            return
        yield Frame(image=get(i), t=i / native_fps)
        k += 1


class ImageFolderSource:
    """A folder of frames (jpg/png/...), natural filename order, frame i at i / frames_fps seconds."""

    def __init__(self, folder: Path, fps: float, start_time: float = 0.0, end_time: float | None = None,
                 frames_fps: float = 1.0):
        self.folder, self.fps, self.start, self.end, self.native = Path(folder), fps, start_time, end_time, frames_fps
        self.files = _list_images(self.folder)
        if not self.files:
            raise UserError(f"{folder} holds no frames ({', '.join(IMAGE_EXTENSIONS)}); give a video file, a folder "
                            f"of frames or a .npy array")

    @property
    def duration(self) -> float:
        return len(self.files) / self.native

    def _get(self, i: int) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(self.files[i]) as img:
                return np.asarray(img.convert("RGB"))  # (H, W, 3) uint8
        except OSError as e:
            raise UserError(f"{self.files[i]} is not a readable image ({e}); replace or remove it") from None

    def __iter__(self) -> Iterator[Frame]:
        return _sampled(len(self.files), self.native, self.fps, self.start, self.end, self._get)


class NpyFrameSource:
    """A .npy (N, H, W, 3) uint8 frame array (memory-mapped), frame i at i / frames_fps seconds."""

    def __init__(self, path: Path, fps: float, start_time: float = 0.0, end_time: float | None = None,
                 frames_fps: float = 1.0):
        self.path, self.fps, self.start, self.end, self.native = Path(path), fps, start_time, end_time, frames_fps
        try:
            self.array = np.load(self.path, mmap_mode="r")  # (N, H, W, 3) uint8
        except (ValueError, OSError) as e:
            raise UserError(f"{path} is not a readable .npy array ({e}); save frames with np.save") from None
        a = self.array
        if a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8 or len(a) == 0:
            raise UserError(f"{path} holds an array of shape {a.shape} dtype {a.dtype}; expected (N, H, W, 3) uint8 "
                            f"RGB frames with N >= 1")

    @property
    def duration(self) -> float:
        return len(self.array) / self.native

    def __iter__(self) -> Iterator[Frame]:
        return _sampled(len(self.array), self.native, self.fps, self.start, self.end,
                        lambda i: np.ascontiguousarray(self.array[i]))  # (H, W, 3) uint8


def open_frames(path: Path, fps: float, start_time: float = 0.0, end_time: float | None = None,
                frames_fps: float = 1.0):
    """A frame source for a video file, a folder of frames or a .npy array; yields `Frame`s with t < end_time."""
    path = Path(path)
    if path.is_dir():
        return ImageFolderSource(path, fps, start_time, end_time, frames_fps)
    if path.suffix.lower() == ".npy":
        return NpyFrameSource(path, fps, start_time, end_time, frames_fps)
    src = VideoFileSource(path, fps=fps, start_time=start_time)
    if end_time is None:
        return src
    return _Until(src, end_time)


class _Until:
    def __init__(self, src: VideoFileSource, end: float):
        self.src, self.end = src, end
        self.duration = src.duration

    def __iter__(self) -> Iterator[Frame]:
        for f in self.src:
            if f.t >= self.end - TIME_EPS:
                return
            yield f


def _check_source(path: Path, frames_fps: float) -> None:
    """Open (probe) a video source once, so a bad file fails before any model is loaded."""
    open_frames(path, 1.0, frames_fps=frames_fps)


def _duration(path: Path, frames_fps: float) -> float | None:
    try:
        return open_frames(path, 1.0, frames_fps=frames_fps).duration
    except (ValueError, FileNotFoundError):
        return None


# ---------------------------------------------------------------------------------------------------------------------
# Judge-free metrics
# ---------------------------------------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalize_answer(text: str) -> str:
    """Lower case, punctuation -> spaces, articles (a, an, the) dropped, whitespace collapsed."""
    return " ".join(_ARTICLES.sub(" ", str(text).lower().translate(_PUNCT)).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall over the normalised texts' bags of tokens."""
    p, r = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------------------------------------------------------------
# Judges
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Verdict:
    pred: str | None  # "yes" | "no" | None (no verdict could be read)
    score: float | None  # 0..5, or None (no score could be read)
    raw: str  # the judge's output text
    error: str | None = None  # why the output (or the call) failed; None when both pred and score were read


_YES = {"yes", "true", "correct", "y"}
_NO = {"no", "false", "incorrect", "wrong", "n"}
_PRED_KEYS = ("pred", "prediction", "verdict", "correct", "judgement", "judgment", "answer", "result")
_SCORE_KEYS = ("score", "rating", "points")


def _as_verdict(v) -> str | None:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, str):
        w = v.strip().strip(".!").lower()
        return "yes" if w in _YES else "no" if w in _NO else None
    return None


def _as_score(v) -> float | None:
    if isinstance(v, bool):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if 0.0 <= x <= 5.0 else None


def parse_verdict(text: str) -> Verdict:
    """Read a yes/no verdict and a 0-5 score from a judge's output: a JSON object (possibly inside code fences or
    prose, with single quotes), else labelled text ("Verdict: no. Score: 2"), else a lone yes/no word and a lone
    0-5 number. Anything missing or ambiguous is an error, never a guess."""
    raw = text if isinstance(text, str) else str(text)
    pred = score = None
    for m in re.finditer(r"\{[^{}]*\}", raw, flags=re.S):
        chunk = m.group(0)
        for attempt in (chunk, chunk.replace("'", '"')):
            try:
                obj = json.loads(attempt)
            except json.JSONDecodeError:
                continue
            low = {str(k).lower(): v for k, v in obj.items()}
            pred = next((p for p in (_as_verdict(low.get(k)) for k in _PRED_KEYS if k in low) if p), None)
            score = next((s for s in (_as_score(low.get(k)) for k in _SCORE_KEYS if k in low) if s is not None), None)
            break
        if pred is not None or score is not None:
            break
    if pred is None:
        m = re.search(r"\b(?:pred|prediction|verdict|correct|judge?ment|answer)\b\W{0,4}(yes|no)\b", raw, re.I)
        if m:
            pred = m.group(1).lower()
        else:
            words = {w.lower() for w in re.findall(r"\b(yes|no)\b", raw, re.I)}
            pred = words.pop() if len(words) == 1 else None
    if score is None:
        m = re.search(r"\b(?:score|rating)\b\W{0,4}(\d+(?:\.\d+)?)", raw, re.I)
        if m:
            score = _as_score(m.group(1))
        else:
            nums = {x for x in re.findall(r"(?<![\w.])(\d+(?:\.\d+)?)(?![\w.])", raw) if _as_score(x) is not None}
            score = float(nums.pop()) if len(nums) == 1 else None
    missing = [n for n, v in (("yes/no verdict", pred), ("0-5 score", score)) if v is None]
    return Verdict(pred, score, raw, f"no {' and no '.join(missing)} in the judge output" if missing else None)


class NoJudge:
    """Judge-free run: only exact match and token F1."""

    kind = "none"

    def identity(self) -> dict:
        return {"kind": "none"}

    def judge(self, question: str, reference: str, prediction: str) -> Verdict | None:
        return None

    def close(self) -> None:
        pass


class LocalJudge:
    """A model run by rlivs' own backends (`load_engine`), prompted with the pinned judge prompt, greedy."""

    kind = "local"

    def __init__(self, engine, model: str, max_new_tokens: int = 64):
        self.engine, self.model, self.max_new_tokens = engine, model, max_new_tokens

    def identity(self) -> dict:
        info = self.engine.backend.info
        return {"kind": "local", "model": self.model, "model_id": info.model_id,
                "backend": getattr(self.engine.backend, "name", type(self.engine.backend).__name__),
                "fingerprint": self.engine.model_fingerprint, "weights": _weights_digest(self.model),
                "decoding": "greedy", "max_new_tokens": self.max_new_tokens}

    def judge(self, question: str, reference: str, prediction: str) -> Verdict:
        from rlivs.runtime.generate import greedy

        system, user = judge_messages(question, reference, prediction)
        ids = self.engine.text.chat_ids(system, user)  # (L,)
        gen = greedy(self.engine.backend, self.engine.backend.embed_tokens(ids), self.max_new_tokens,
                     self.engine.text.eos_ids)
        return parse_verdict(self.engine.text.decode(gen.ids))

    def close(self) -> None:
        pass


def _weights_digest(model: str) -> str | None:
    """A cheap identity of a model directory's weights: sha256 over file names, sizes and config.json (not the
    gigabytes of weights themselves)."""
    from rlivs.runtime.models import resolve_model

    try:
        d, _ = resolve_model(model)
    except ValueError:
        return None
    h = hashlib.sha256()
    for p in sorted(Path(d).iterdir()):
        if p.is_file():
            h.update(f"{p.name}\0{p.stat().st_size}\0".encode())
            if p.name == "config.json":
                h.update(p.read_bytes())
    return h.hexdigest()[:16]


class OpenAIJudge:
    """An OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp server, TGI, a hosted API), temperature 0."""

    kind = "openai"

    def __init__(self, url: str, model: str, api_key: str | None = None, max_tokens: int = 64,
                 timeout_s: float = 60.0, retries: int = 3):
        try:
            import httpx
        except ImportError as e:
            raise UserError(f"the endpoint judge needs httpx ({e}); install it with: pip install httpx") from e
        if not url.startswith(("http://", "https://")):
            raise UserError(f"--judge-url {url!r} is not an http(s) URL; e.g. http://127.0.0.1:8000/v1")
        if not model:
            raise UserError("the endpoint judge needs a model name: pass --judge-model (e.g. the name vLLM serves)")
        base = url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else (
            base + "/chat/completions" if base.endswith("/v1") else base + "/v1/chat/completions")
        self.model, self.max_tokens, self.retries = model, max_tokens, max(1, retries)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=timeout_s, headers=headers)
        self._httpx = httpx
        self.served_model: str | None = None  # the "model" the server reports in its replies

    def identity(self) -> dict:
        return {"kind": "openai", "url": self.url, "model": self.model, "served_model": self.served_model,
                "temperature": 0, "max_tokens": self.max_tokens}

    def _call(self, system: str, user: str) -> str:
        body = {"model": self.model, "temperature": 0, "max_tokens": self.max_tokens,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
        last = ""
        for attempt in range(self.retries):
            try:
                r = self._http.post(self.url, json=body)
            except self._httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}"
            else:
                if r.status_code == 200:
                    try:
                        data = r.json()
                        self.served_model = self.served_model or data.get("model")
                        return str(data["choices"][0]["message"]["content"] or "")
                    except (ValueError, KeyError, IndexError, TypeError) as e:
                        raise RuntimeError(f"the endpoint's reply is not a chat completion ({type(e).__name__}: "
                                           f"{r.text[:200]!r})") from None
                last = f"HTTP {r.status_code}: {r.text[:200]}"
                if 400 <= r.status_code < 500 and r.status_code != 429:
                    break  # a client error does not go away by retrying
            time.sleep(min(4.0, 0.25 * 2**attempt))
        raise RuntimeError(last)

    def check(self) -> None:
        """Fail early, with the fix, when the endpoint cannot be reached at all."""
        try:
            self._call(*judge_messages("What colour is a clear daytime sky?", "blue", "blue"))
        except RuntimeError as e:
            raise UserError(f"the judge endpoint {self.url} did not answer ({e}); start the server or fix "
                            f"--judge-url / --judge-model") from None

    def judge(self, question: str, reference: str, prediction: str) -> Verdict:
        try:
            text = self._call(*judge_messages(question, reference, prediction))
        except RuntimeError as e:
            return Verdict(None, None, "", f"judge call failed: {e}")
        return parse_verdict(text)

    def close(self) -> None:
        self._http.close()


# ---------------------------------------------------------------------------------------------------------------------
# The causal runner
# ---------------------------------------------------------------------------------------------------------------------


class CausalView:
    """What a question may see: the stream's clips with t_end <= its end time. Stands in for `Memory` in
    `pipeline.answer`, which reads captions only through `vectors(stream)`; any other use fails loudly."""

    def __init__(self, memory: Memory, t_max: float):
        self.memory, self.t_max = memory, t_max

    def vectors(self, stream: str | None = None) -> tuple[list[ClipRecord], np.ndarray]:
        records, matrix = self.memory.vectors(stream)  # (N, D)
        keep = [i for i, r in enumerate(records) if r.t_end <= self.t_max + TIME_EPS]
        return [records[i] for i in keep], matrix[keep]  # (N', D)


@dataclass
class JudgeConfig:
    kind: str = "none"  # "none" | "local" (a model directory run by rlivs' backends) | "openai" (an endpoint)
    model: str | None = None  # local: model dir / hub id / "tiny"; openai: the model name sent to the endpoint
    url: str | None = None  # openai: base URL (…/v1) or the full …/chat/completions URL
    api_key_env: str = "OPENAI_API_KEY"  # openai: environment variable holding the key (sent only when set)
    max_new_tokens: int = 64  # judge output length bound
    timeout_s: float = 60.0  # openai: per-request timeout

    def __post_init__(self):
        if self.kind not in ("none", "local", "openai"):
            raise UserError(f"judge kind must be none, local or openai, got {self.kind!r}")
        if self.kind == "local" and not self.model:
            raise UserError("the local judge needs a model: pass --judge-local DIR")
        if self.kind == "openai" and not (self.url and self.model):
            raise UserError("the endpoint judge needs --judge-url URL and --judge-model NAME")
        if self.max_new_tokens < 1:
            raise UserError(f"judge max tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class EvalConfig:
    annotations: list[Path]  # annotation files (streaming lists, VStream-QA clip + question files)
    out: Path  # results folder: predictions.jsonl, summary.json, results.md, run.json, memory.db
    model: str = "tiny"  # the system under test: HF id (local cache), HF-format directory, or "tiny"
    backend: str = "auto"  # backend of the model (and of a local judge)
    device: str = "cpu"  # cpu | cuda
    dtype: str = "float32"  # float32 | float16 | bfloat16
    threads: int | None = None  # CPU threads for the backend (None = its default)
    kv_cache: str = "auto"  # torch backend KV cache: auto (static + CUDA graph on cuda) | dynamic | static
    max_context: int | None = None  # positions of the torch static KV cache (None = the backend's default)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)  # every method setting (the ablation flags)
    data: AnnotationConfig = field(default_factory=AnnotationConfig)  # how annotations and videos are read
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # the pinned judge
    resume: bool = False  # continue the run in `out` (skip finished questions, resume ingested streams)
    rescore: bool = False  # only re-judge the rows in `out` with `judge` and rewrite the summary
    max_questions: int | None = None  # stop after answering this many questions in this run (resume later)

    def identity(self, model_id: str) -> dict:
        """What must not change between an interrupted run and its resume."""
        return {"model": self.model, "model_id": model_id, "backend": self.backend, "device": self.device,
                "dtype": self.dtype, "pipeline": self.pipeline.to_dict(),
                "data": {k: v for k, v in asdict(self.data).items() if k != "videos_dir"},
                "annotations": [{"file": str(Path(a)), "sha256": _sha256(Path(a))} for a in self.annotations]}


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class _Stop(Exception):
    """max_questions reached."""


ProgressFn = Callable[[dict], None]


class Runner:
    """Runs the benchmarks of one EvalConfig into its `out` folder."""

    def __init__(self, cfg: EvalConfig, progress: ProgressFn | None = None):
        self.cfg = cfg
        self.progress = progress or (lambda event: None)
        self.out = Path(cfg.out)
        self.engine = None
        self.judge = NoJudge()

    # -- set-up ----------------------------------------------------------------------------------------------------

    def _load(self) -> None:
        from rlivs.runtime.pipeline import load_engine

        c = self.cfg
        self.engine = load_engine(c.model, backend=c.backend, config=c.pipeline, device=c.device, dtype=c.dtype,
                                  threads=c.threads, kv_cache=c.kv_cache, max_context=c.max_context)
        self.judge = make_judge(c.judge, c, self.engine)

    def _existing_rows(self) -> list[dict]:
        return read_predictions(self.out / PREDICTIONS)

    # -- main ------------------------------------------------------------------------------------------------------

    def run(self) -> dict:
        c = self.cfg
        benches = read_annotations(c.annotations, c.data)  # fails before any model is loaded
        prior = self._existing_rows()
        if c.rescore:
            return self.rescore(benches, prior)
        if prior and not c.resume:
            raise UserError(f"{self.out} already holds {len(prior)} answered questions: pass --resume to continue "
                            f"that run, --rescore to re-judge it, or choose a new --out")
        self.out.mkdir(parents=True, exist_ok=True)
        if not c.resume and (self.out / MEMORY).exists():
            raise UserError(f"{self.out / MEMORY} exists from an earlier run: pass --resume or choose a new --out")
        t0 = time.perf_counter()
        self._load()
        ident = json.loads(json.dumps({**c.identity(self.engine.backend.info.model_id), "judge": self.judge.identity(),
                                       "judge_prompt_sha256": JUDGE_PROMPT_SHA256}))  # tuples -> lists, as stored
        self._check_identity(ident)
        done = {(r["benchmark"], r["qid"]) for r in prior}
        plan = [(b, v, [q for q in v.questions if (b.name, q.qid) not in done]) for b in benches for v in b.videos]
        total_q = sum(len(v.questions) for b in benches for v in b.videos)
        answered, complete = 0, True
        try:
            with Memory(self.out / MEMORY, model_fingerprint=self.engine.model_fingerprint) as memory, \
                    open(self.out / PREDICTIONS, "a", encoding="utf-8") as sink:
                spans = [self._stream_span(memory, v, pending) for _, v, pending in plan if pending]
                self.progress({"kind": "start", "questions": total_q, "done": len(done),
                               "stream_seconds": sum(s for s, _ in spans),
                               "stream_seconds_done": sum(d for _, d in spans)})
                for bench, video, pending in plan:
                    if pending:
                        answered += self._run_video(memory, sink, bench, video, pending, answered)
        except _Stop:
            complete = False
        finally:
            self.judge.close()
        rows = self._existing_rows()
        complete = complete and len(rows) >= total_q
        summary = summarize(rows, benches, ident, wall_s=time.perf_counter() - t0, complete=complete,
                            judge=self.judge.identity())
        write_outputs(self.out, summary)
        self.progress({"kind": "end", "answered": answered, "complete": complete})
        return summary

    def _check_identity(self, ident: dict) -> None:
        path = self.out / RUN
        if path.exists() and self.cfg.resume:
            old = json.loads(path.read_text())
            diff = sorted(k for k in set(old) | set(ident) if k != "judge" and old.get(k) != ident.get(k))
            if old.get("judge", {}).get("kind") != ident["judge"]["kind"] or any(
                    old.get("judge", {}).get(k) != ident["judge"].get(k) for k in ("model", "url", "fingerprint")):
                diff.append("judge")
            if diff:
                raise UserError(f"--resume with other settings than the run in {self.out} (differs in: "
                                f"{', '.join(diff)}); use the same flags, --rescore to change only the judge, "
                                f"or a new --out")
            return
        path.write_text(json.dumps(ident, indent=2, sort_keys=True))

    def _stream_span(self, memory: Memory, video: VideoTask, pending: list[Question]) -> tuple[float, float]:
        """(video seconds this video will be streamed for, seconds of them already ingested): for the progress bar."""
        dur = _duration(video.path, self.cfg.data.frames_fps)
        end = max(q.stream_end_time for q in pending)
        if dur is not None:
            end = min(end, dur)
        if video.end is not None:
            end = min(end, video.end)
        total = max(0.0, end - video.start)
        committed = memory.clips(video.stream)
        done = min(total, max(0.0, committed[-1].t_end - video.start)) if committed else 0.0
        return total, done

    # -- one video -------------------------------------------------------------------------------------------------

    def _run_video(self, memory: Memory, sink, bench: Benchmark, video: VideoTask, pending: list[Question],
                   answered_before: int) -> int:
        from rlivs.runtime.pipeline import StreamIngestor

        e = self.engine
        cc = e.config.clip
        ing = StreamIngestor(e, memory, stream=video.stream, source=str(video.path))
        committed = memory.clips(video.stream)
        stream_t = committed[-1].t_end if committed else None  # end of the latest committed clip (file time)
        start = video.start + clip_start_time(ing.next_index, cc.frames_per_clip, cc.fps)
        frames = open_frames(video.path, cc.fps, start, video.end, self.cfg.data.frames_fps)
        queue = deque(sorted(pending, key=lambda q: (q.stream_end_time, q.record, q.qid)))
        n = 0

        def answer_next():
            nonlocal n
            if self.cfg.max_questions is not None and answered_before + n >= self.cfg.max_questions:
                raise _Stop()
            row = self._answer(memory, bench, video, queue.popleft(), stream_t)
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
            sink.flush()
            os.fsync(sink.fileno())
            n += 1
            self.progress({"kind": "answer", "row": row})

        self.progress({"kind": "video", "benchmark": bench.name, "video_id": video.video_id})
        for clip in iter_clips(frames, cc.frames_per_clip, cc.fps, first_index=ing.next_index):
            # every question that this clip would reach past is answered before the clip is ingested
            while queue and clip.t_end > queue[0].stream_end_time + TIME_EPS:
                answer_next()
            if not queue:
                break  # nothing left to ask about this video: stop streaming it
            r = ing.step(clip)
            stream_t = r.t_end
            self.progress({"kind": "clip", "seconds": r.t_end - r.t_start, "video_id": video.video_id})
        while queue:  # the stream ended (or the window closed) before these end times
            answer_next()
        return n

    def _answer(self, memory: Memory, bench: Benchmark, video: VideoTask, q: Question, stream_t: float | None) -> dict:
        from rlivs.runtime.pipeline import answer

        view = CausalView(memory, q.stream_end_time)
        records, _ = view.vectors(video.stream)
        t0 = time.perf_counter()
        if records:
            a = answer(self.engine, view, q.question, stream=video.stream)
            text, used, latency, prompt_tokens = a.text, a.used, a.latency_s, a.prompt_tokens
        else:
            text, used, latency, prompt_tokens = NO_CONTEXT_ANSWER, [], time.perf_counter() - t0, 0
        v = self.judge.judge(q.question, q.reference, text)
        return {
            "benchmark": bench.name, "format": bench.format, "qid": q.qid, "video_id": q.video_id,
            "question": q.question, "reference": q.reference, "answer": text, "answer_type": q.answer_type,
            "start_time": q.start_time, "end_time": q.end_time, "stream_end_time": q.stream_end_time,
            "stream_t": stream_t, "visible_clips": len(records), "no_context": not records,
            "window_applied": video.window_applied,
            "captions": [{"clip": r.index, "t_start": r.t_start, "t_end": r.t_end, "caption": r.caption,
                          "relevance": round(float(s), 6)} for r, s in used],
            "latency_s": latency, "prompt_tokens": prompt_tokens,
            "em": exact_match(text, q.reference), "f1": token_f1(text, q.reference),
            "judge": None if v is None else asdict(v), "answered_at": time.time(),
        }

    # -- re-judging --------------------------------------------------------------------------------------------------

    def rescore(self, benches: list[Benchmark], rows: list[dict]) -> dict:
        if not rows:
            raise UserError(f"{self.out} holds no answered questions to re-judge; run rlivs eval first")
        if self.cfg.judge.kind == "none":
            raise UserError("--rescore needs a judge: pass --judge-url/--judge-model or --judge-local")
        t0 = time.perf_counter()
        engine = None
        if self.cfg.judge.kind == "local":
            from rlivs.runtime.pipeline import load_engine

            engine = load_engine(self.cfg.judge.model, backend=self.cfg.backend, device=self.cfg.device,
                                 dtype=self.cfg.dtype, threads=self.cfg.threads)
        self.judge = make_judge(self.cfg.judge, self.cfg, engine)
        self.progress({"kind": "start", "questions": len(rows), "done": 0, "stream_seconds": 0.0})
        try:
            for r in rows:
                v = self.judge.judge(r["question"], r["reference"], r["answer"])
                r["judge"] = asdict(v)
                self.progress({"kind": "answer", "row": r})
        finally:
            self.judge.close()
        tmp = self.out / (PREDICTIONS + ".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        os.replace(tmp, self.out / PREDICTIONS)
        run_path = self.out / RUN
        ident = json.loads(run_path.read_text()) if run_path.exists() else {}
        ident["judge"], ident["judge_prompt_sha256"] = self.judge.identity(), JUDGE_PROMPT_SHA256
        run_path.write_text(json.dumps(ident, indent=2, sort_keys=True))
        total_q = sum(len(v.questions) for b in benches for v in b.videos)
        summary = summarize(rows, benches, ident, wall_s=time.perf_counter() - t0, complete=len(rows) >= total_q,
                            judge=self.judge.identity())
        write_outputs(self.out, summary)
        self.progress({"kind": "end", "answered": 0, "complete": summary["complete"]})
        return summary


def make_judge(jc: JudgeConfig, cfg: EvalConfig, engine=None):
    """The judge of a run; a local judge on the same model as the system under test shares its engine."""
    if jc.kind == "none":
        return NoJudge()
    if jc.kind == "openai":
        j = OpenAIJudge(jc.url, jc.model, os.environ.get(jc.api_key_env) or None, jc.max_new_tokens, jc.timeout_s)
        j.check()
        return j
    if engine is None or jc.model != cfg.model:
        from rlivs.runtime.pipeline import load_engine

        engine = load_engine(jc.model, backend=cfg.backend, device=cfg.device, dtype=cfg.dtype, threads=cfg.threads)
    return LocalJudge(engine, jc.model, jc.max_new_tokens)


def read_predictions(path: Path) -> list[dict]:
    """Rows of predictions.jsonl. A last line cut short by a crash (no final newline, not valid JSON) is dropped and
    the file truncated to the last complete row, so that question is answered again on resume; a bad line anywhere
    else means a damaged file and is an error."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1  # start of the unterminated last line
        try:
            json.loads(data[cut:])
            repair = data + b"\n"  # a complete row whose newline was lost: keep it
        except json.JSONDecodeError:
            log.warning("%s: dropping an incomplete last row (an interrupted write); it will be redone", path)
            repair = data[:cut]
        with open(path, "wb") as f:
            f.write(repair)
        data = repair
    rows = []
    for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise UserError(f"{path}: line {n} is not valid JSON; the results file is damaged (restore it or start "
                            f"a new --out)") from None
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Summary and outputs
# ---------------------------------------------------------------------------------------------------------------------


def _mean(xs: list[float]) -> float | None:
    return float(np.mean(xs)) if xs else None


def aggregate(rows: list[dict]) -> dict:
    """Metrics of a set of rows. Accuracy = yes / (yes + no) over readable verdicts; score = mean readable score."""
    judged = [r["judge"] for r in rows if r.get("judge")]
    yes = sum(1 for j in judged if j.get("pred") == "yes")
    no = sum(1 for j in judged if j.get("pred") == "no")
    scores = [float(j["score"]) for j in judged if j.get("score") is not None]
    lat = [float(r["latency_s"]) for r in rows if not r.get("no_context")]
    return {
        "questions": len(rows),
        "no_context": sum(1 for r in rows if r.get("no_context")),
        "exact_match": _mean([r["em"] for r in rows]),
        "token_f1": _mean([r["f1"] for r in rows]),
        "judged": len(judged),
        "judge_yes": yes,
        "judge_no": no,
        "judge_accuracy": yes / (yes + no) if yes + no else None,
        "judge_score": _mean(scores),
        "judge_scored": len(scores),
        "judge_errors": sum(1 for j in judged if j.get("error")),
        "latency_s_mean": _mean(lat),
        "latency_s_p50": float(np.percentile(lat, 50)) if lat else None,
        "latency_s_p90": float(np.percentile(lat, 90)) if lat else None,
    }


def summarize(rows: list[dict], benches: list[Benchmark], ident: dict, wall_s: float, complete: bool,
              judge: dict) -> dict:
    import rlivs

    per = {}
    for b in benches:
        mine = [r for r in rows if r["benchmark"] == b.name]
        entry = aggregate(mine)
        entry["expected_questions"] = sum(len(v.questions) for v in b.videos)
        entry["videos"] = len(b.videos)
        entry["format"] = b.format
        types = sorted({str(r.get("answer_type")) for r in mine if r.get("answer_type") is not None})
        if types:
            entry["by_answer_type"] = {t: aggregate([r for r in mine if str(r.get("answer_type")) == t]) for t in types}
        per[b.name] = entry
    return {
        "complete": complete,
        "benchmarks": per,
        "all": aggregate(rows),
        "model": ident.get("model"), "model_id": ident.get("model_id"),
        "backend": ident.get("backend"), "device": ident.get("device"), "dtype": ident.get("dtype"),
        "pipeline": ident.get("pipeline"), "data": ident.get("data"), "annotations": ident.get("annotations"),
        "judge": judge, "judge_prompt_version": JUDGE_PROMPT_VERSION, "judge_prompt_sha256": JUDGE_PROMPT_SHA256,
        "wall_s_this_run": wall_s,
        "versions": {"rlivs": getattr(rlivs, "__version__", None), "python": platform.python_version(),
                     "numpy": np.__version__},
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _num(x, nd=2) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def settings_line(p: dict) -> str:
    s, f, pr, r, c = p["selection"], p["fifo"], p["probe"], p["retrieval"], p["clip"]
    keep = f"keep {s['keep']}" if s.get("keep") is not None else f"keep ratio {s['keep_ratio']:g}"
    layers = ",".join(map(str, pr["layers"])) if pr.get("layers") else f"auto({pr['num_layers']})"
    fifo = f"{f['capacity_clips']} clips" + (f" / {f['capacity_tokens']} tokens" if f.get("capacity_tokens") else "")
    return (f"strategy {s['strategy']}, {keep}, FIFO {fifo}, probe layers {layers}, {c['frames_per_clip']} frames "
            f"per clip at {c['fps']:g} fps, top-k {r['top_k']}, token budget {r['token_budget']}, MMR lambda "
            f"{r['mmr_lambda']:g}, caption tokens {p['caption']['max_new_tokens']}, answer tokens "
            f"{p['answer']['max_new_tokens']}")


def judge_line(j: dict) -> str:
    if j.get("kind") == "openai":
        served = f" (served as {j['served_model']})" if j.get("served_model") else ""
        return f"endpoint {j['url']}, model {j['model']}{served}"
    if j.get("kind") == "local":
        return f"local {j['model']} (rlivs {j.get('backend')} backend, weights {j.get('weights')}), greedy"
    return "none (judge-free metrics only)"


def markdown_table(summary: dict) -> str:
    head = ("| benchmark | questions | no context | EM % | token F1 % | judge acc % | judge score (0-5) | "
            "judge errors | latency s (mean) |\n|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for name, m in summary["benchmarks"].items():
        q = f"{m['questions']}" + ("" if m["questions"] == m["expected_questions"] else f"/{m['expected_questions']}")
        lines.append(f"| {name} | {q} | {m['no_context']} | {_pct(m['exact_match'])} | {_pct(m['token_f1'])} | "
                     f"{_pct(m['judge_accuracy'])} | {_num(m['judge_score'])} | "
                     f"{m['judge_errors'] if m['judged'] else '–'} | {_num(m['latency_s_mean'], 3)} |")
    text = [
        f"# rlivs eval results{'' if summary['complete'] else ' (INCOMPLETE: resume with --resume)'}",
        "",
        f"- model: `{summary['model']}` ({summary['backend']}, {summary['device']}, {summary['dtype']})",
        f"- settings: {settings_line(summary['pipeline'])}",
        f"- judge: {judge_line(summary['judge'])}; prompt {summary['judge_prompt_version']} "
        f"sha256 `{summary['judge_prompt_sha256'][:16]}`",
        "",
        head + "\n".join(lines),
        "",
        "Accuracy = yes / (yes + no) over readable verdicts; score = mean of readable 0-5 scores; judge errors = "
        "outputs without a readable verdict or score. Compare systems only under the same judge and prompt hash.",
    ]
    return "\n".join(text) + "\n"


def write_outputs(out: Path, summary: dict) -> None:
    out = Path(out)
    for name, text in ((SUMMARY, json.dumps(summary, indent=2, sort_keys=True)), (TABLE, markdown_table(summary))):
        tmp = out / (name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out / name)


def run_eval(cfg: EvalConfig, progress: ProgressFn | None = None) -> dict:
    """Run (or resume, or re-judge) an evaluation; returns the summary written to cfg.out/summary.json."""
    return Runner(cfg, progress).run()
