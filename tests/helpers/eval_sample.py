"""A small generated streaming-QA benchmark in both published formats, for tests and for the plumbing check in
docs/evaluation.md:

    python -m tests.helpers.eval_sample DIR        # writes DIR/rvs_ego.json, DIR/rvs_movie.json, DIR/test_qa_movie.json,
                                           # DIR/videos/{ego_a.mp4, m1/, m2.npy} and DIR/elsewhere_b.mp4

- rvs_ego.json: the streaming list (ReKV layout): ego_a (12 s mp4, looked up under --videos by its video_path),
  ego_b (8 s mp4 given by an absolute video_path); 6 questions, two of them before the first clip ends.
- rvs_movie.json + test_qa_movie.json: a VStream-QA clip file and question file: m1 (shot-indexed, a folder of
  12 frames at 1 fps), m2 (seconds, a .npy of 8 frames); 3 questions with answer types.
- rvs_movie_list.json: the streaming list with clip windows whose question times are on the *source* video's axis
  (as in the real RVS-Movie list: every question inside [clip_start_time, clip_end_time], the first starting at
  clip_start_time, the last ending at clip_end_time): mv_a on the uncut 12 s ego_a.mp4 (window [4, 12]) and mv_b on
  m2.npy, a file already cut to its window [100, 108].
- test_qa_movie_original.json: VStream-QA questions for the clips of rvs_movie.json on the source video's axis.
The references are chosen so that the fake judge (tests/helpers/fake_judge.py) answers in each of its formats.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from rlivs.edge_app.eval.runner import NO_CONTEXT_ANSWER as _NO_CONTEXT  # one reference equals it

STREAMING = [
    {"video_id": "ego_a", "video_path": "ego_a.mp4", "duration": 12, "unknown_key": "ignored", "conversations": [
        {"question": "what happened first?", "answer": _NO_CONTEXT, "start_time": 0, "end_time": 2},
        {"question": "what is red?", "answer": "red square", "start_time": 0, "end_time": 6},
        {"question": "where is the blue circle?", "answer": "blue circle top left", "start_time": 2, "end_time": 8},
        {"question": "what grew?", "answer": "green bar", "start_time": 6, "end_time": 30, "note": "x"}]},
    {"video_id": "ego_b", "video_path": "ABSOLUTE", "duration": 8, "conversations": [
        {"question": "what moved?", "answer": "flaky square", "start_time": 0, "end_time": 5},
        {"question": "anything yet?", "answer": "nothing", "start_time": 0, "end_time": 3.9}]},
]
VS_CLIPS = [{"video_id": "m1", "original_video": "tt0001", "start_shot": 10, "end_shot": 22},
            {"video_id": "m2", "original_video": "e582", "start_time": 100, "end_time": 108}]
VS_QUESTIONS = [
    {"id": 1, "video_id": "m1", "question": "who is there?", "answer": "a man", "answer_type": "person",
     "start_time": 0, "end_time": 4},
    {"id": 2, "video_id": "m1", "question": "where are they?", "answer": "kitchen", "answer_type": "place",
     "start_time": 2, "end_time": 12},
    {"id": 3, "video_id": "m2", "question": "what is held?", "answer": "blue cup", "answer_type": "object",
     "start_time": 1, "end_time": 7},
]

# Source-axis stand-ins (the layout of the real RVS-Movie list and of a source-axis VStream-QA question file)
SOURCE_AXIS_LIST = [
    {"video_id": "mv_a", "video_path": "ego_a.mp4", "duration": 12, "clip_start_time": 4, "clip_end_time": 12,
     "conversations": [
         {"question": "what is on screen?", "answer": "red square", "start_time": 4, "end_time": 6},
         {"question": "what moved?", "answer": "blue circle", "start_time": 6, "end_time": 8},
         {"question": "what grew?", "answer": "green bar", "start_time": 8, "end_time": 12}]},
    {"video_id": "mv_b", "video_path": "m2.npy", "duration": 8, "clip_start_time": 100, "clip_end_time": 108,
     "conversations": [
         {"question": "what is held?", "answer": "blue cup", "start_time": 100, "end_time": 103},
         {"question": "who came in?", "answer": "a man", "start_time": 103, "end_time": 108}]},
]
VS_QUESTIONS_ORIGINAL = [
    {"id": 11, "video_id": "m1", "question": "who is there?", "answer": "a man", "start_time": 12, "end_time": 16},
    {"id": 12, "video_id": "m2", "question": "what is held?", "answer": "blue cup", "start_time": 101,
     "end_time": 107},
]


def make_benchmark(root: str | Path) -> Path:
    from rlivs.edge_app.sample_video import make_sample_video

    root = Path(root)
    videos = root / "videos"
    (videos / "m1").mkdir(parents=True, exist_ok=True)
    make_sample_video(videos / "ego_a.mp4", seconds=12.0, size=(160, 120))
    make_sample_video(root / "elsewhere_b.mp4", seconds=8.0, size=(160, 120), seed=1)
    rng = np.random.default_rng(0)
    for i in range(12):  # frame_1 ... frame_12: natural order, not lexical (frame_10 < frame_2)
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(videos / "m1" / f"frame_{i + 1}.png")
    np.save(videos / "m2.npy", rng.integers(0, 256, (8, 60, 80, 3), dtype=np.uint8))  # (N, H, W, 3) uint8
    streaming = json.loads(json.dumps(STREAMING))
    streaming[1]["video_path"] = str((root / "elsewhere_b.mp4").resolve())  # exists as given
    (root / "rvs_ego.json").write_text(json.dumps(streaming, indent=1))
    (root / "rvs_movie.json").write_text(json.dumps(VS_CLIPS, indent=1))
    (root / "test_qa_movie.json").write_text(json.dumps(VS_QUESTIONS, indent=1))
    (root / "rvs_movie_list.json").write_text(json.dumps(SOURCE_AXIS_LIST, indent=1))
    (root / "test_qa_movie_original.json").write_text(json.dumps(VS_QUESTIONS_ORIGINAL, indent=1))
    return root


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.helpers.eval_sample DIR")
    print(make_benchmark(sys.argv[1]))
