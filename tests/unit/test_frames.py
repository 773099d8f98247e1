"""Decoding, sampling, clipping and preprocessing of video frames (rlivs.runtime.frames, rlivs.runtime.sources.file)
and the sample video."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlivs.edge_app.sample_video import make_sample_video
from rlivs.runtime.frames import (
    Clip,
    Frame,
    FramePreprocessor,
    iter_clips,
)
from rlivs.runtime.sources import resume_time
from rlivs.runtime.sources.file import VideoFileSource

VIDEO_FPS = 8
VIDEO_SECONDS = 6.0
VIDEO_SIZE = (160, 120)  # (width, height)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return make_sample_video(
        tmp_path_factory.mktemp("video") / "sample.mp4", seconds=VIDEO_SECONDS, fps=VIDEO_FPS, size=VIDEO_SIZE
    )


def all_frames(path) -> np.ndarray:
    """Every decoded frame, (N, H, W, 3) uint8 (sampling at the video's own rate)."""
    return np.stack([f.image for f in VideoFileSource(path, fps=VIDEO_FPS)])


# ---------------------------------------------------------------------------------------------------------------------
# Preprocessing parity with transformers' PIL image processor
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(384, 384), (98, 98)])
def test_preprocess_matches_hf_pil_base_patch(size):
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    h, w = size
    hf = LlavaOnevisionImageProcessorPil(size={"height": h, "width": w}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    rng = np.random.default_rng(0)
    images = [  # non-square, both orientations, odd sizes
        rng.integers(0, 256, (240, 320, 3), dtype=np.uint8),
        rng.integers(0, 256, (131, 77, 3), dtype=np.uint8),
        rng.integers(0, 256, (400, 600, 3), dtype=np.uint8),
    ]
    out = hf.preprocess(images, return_tensors="np")
    pv = np.asarray(out["pixel_values"])  # (batch, n_patches, 3, h, w); patch 0 is the whole image resized
    assert pv.ndim == 5 and pv.shape[0] == len(images) and pv.shape[2:] == (3, h, w), pv.shape

    ours = FramePreprocessor(height=h, width=w, image_mean=(0.5,) * 3, image_std=(0.5,) * 3)
    for i, img in enumerate(images):
        x = ours(img)  # (1, 3, h, w)
        assert x.shape == (1, 3, h, w) and x.dtype == np.float32
        assert np.abs(x[0] - pv[i, 0]).max() <= 1e-5

    same_size = [img for img in images if img.shape == images[0].shape]
    batch = ours(np.stack(same_size))  # (T, 3, h, w)
    assert batch.shape == (len(same_size), 3, h, w)
    assert np.abs(batch[0] - pv[0, 0]).max() <= 1e-5


def test_preprocess_matches_hf_with_clip_mean_std():
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    hf = LlavaOnevisionImageProcessorPil(size={"height": 98, "width": 98})  # OPENAI_CLIP mean/std defaults
    cfg = hf.to_dict()
    ours = FramePreprocessor.from_dict(cfg)
    assert (ours.height, ours.width, ours.resample) == (98, 98, 3)
    img = np.random.default_rng(1).integers(0, 256, (90, 200, 3), dtype=np.uint8)
    pv = np.asarray(hf.preprocess([img], return_tensors="np")["pixel_values"])  # (1, n_patches, 3, 98, 98)
    assert np.abs(ours(img)[0] - pv[0, 0]).max() <= 1e-5


def test_preprocessor_config_parsing(tmp_path):
    cfg = {
        "size": {"shortest_edge": 64},
        "resample": 2,
        "rescale_factor": 1 / 255,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_normalize": False,
    }
    p = FramePreprocessor.from_dict(cfg)
    assert (p.height, p.width, p.resample, p.do_normalize, p.do_resize) == (64, 64, 2, False, True)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    assert FramePreprocessor.from_model_dir(tmp_path) == p
    x = p(np.full((10, 20, 3), 255, dtype=np.uint8))  # rescale only
    assert x.shape == (1, 3, 64, 64) and np.allclose(x, 1.0)

    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        FramePreprocessor.from_model_dir(tmp_path / "nope")
    with pytest.raises(ValueError, match="size"):
        FramePreprocessor.from_dict({"image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    with pytest.raises(ValueError, match="image_std"):
        FramePreprocessor.from_dict({"size": {"height": 8, "width": 8}, "image_mean": [0.5] * 3})


def test_preprocess_rejects_bad_input():
    p = FramePreprocessor(height=8, width=8, image_mean=(0.5,) * 3, image_std=(0.5,) * 3)
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        p(np.zeros((4, 10, 10, 3), dtype=np.float32))  # wrong dtype
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        p(np.zeros((4, 3, 10, 10), dtype=np.uint8))  # channels first
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        p(np.zeros((10, 10), dtype=np.uint8))  # grey
    no_resize = FramePreprocessor(height=8, width=8, image_mean=(0.5,) * 3, image_std=(0.5,) * 3, do_resize=False)
    assert no_resize(np.zeros((2, 8, 8, 3), dtype=np.uint8)).shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="do_resize"):
        no_resize(np.zeros((2, 9, 8, 3), dtype=np.uint8))


# ---------------------------------------------------------------------------------------------------------------------
# VideoFileSource
# ---------------------------------------------------------------------------------------------------------------------


def test_source_samples_at_1fps(video):
    src = VideoFileSource(video, fps=1.0)
    assert src.duration == pytest.approx(VIDEO_SECONDS, abs=1 / VIDEO_FPS)
    frames = list(src)
    assert len(frames) == 6
    w, h = VIDEO_SIZE
    for k, f in enumerate(frames):
        assert isinstance(f, Frame)
        assert f.image.shape == (h, w, 3) and f.image.dtype == np.uint8
        assert abs(f.t - k) <= 1 / VIDEO_FPS
    assert list(src) and len(list(src)) == 6  # iterable more than once


def test_source_samples_at_2fps(video):
    times = [f.t for f in VideoFileSource(video, fps=2.0)]
    assert len(times) == 12
    assert np.allclose(times, np.arange(12) / 2, atol=1 / VIDEO_FPS)


def test_source_start_time_seeks_exactly(video):
    full = {round(f.t, 6): f.image for f in VideoFileSource(video, fps=1.0)}
    part = list(VideoFileSource(video, fps=1.0, start_time=3.0))  # 3 s is mid-GOP (keyframes every 2 s)
    assert len(part) == 3
    assert abs(part[0].t - 3.0) <= 1 / VIDEO_FPS
    for f in part:
        assert np.array_equal(f.image, full[round(f.t, 6)])  # same time -> same pixels as without seeking


def test_resumed_stream_gives_the_same_clips(video):
    fps, fpc = 2.0, 3
    straight = list(iter_clips(VideoFileSource(video, fps=fps), fpc, fps))
    for index in (1, 2, 3):
        src = VideoFileSource(video, fps=fps, start_time=resume_time(index, fpc, fps))
        resumed = list(iter_clips(src, fpc, fps, first_index=index))
        assert [c.index for c in resumed] == [c.index for c in straight[index:]]
        for a, b in zip(straight[index:], resumed):
            assert np.array_equal(a.times, b.times) and np.array_equal(a.frames, b.frames)


def test_start_time_past_the_end_yields_nothing(video):
    assert list(VideoFileSource(video, fps=1.0, start_time=VIDEO_SECONDS + 5)) == []


# ---------------------------------------------------------------------------------------------------------------------
# Clips
# ---------------------------------------------------------------------------------------------------------------------


def test_iter_clips_groups_and_keeps_the_short_tail():
    fps = 2.0
    frames = [Frame(image=np.full((4, 6, 3), i, dtype=np.uint8), t=i / fps) for i in range(10)]
    clips = list(iter_clips(frames, frames_per_clip=4, fps=fps, first_index=5))
    assert [len(c) for c in clips] == [4, 4, 2]
    assert [c.index for c in clips] == [5, 6, 7]
    for c, first in zip(clips, (0, 4, 8)):
        assert isinstance(c, Clip)
        assert c.frames.shape == (len(c), 4, 6, 3) and c.frames.dtype == np.uint8
        assert c.times.dtype == np.float64
        assert c.frames[0, 0, 0, 0] == first
        assert c.t_start == pytest.approx(first / fps)
        assert c.t_end == pytest.approx((first + len(c) - 1) / fps + 1 / fps)
    assert clips[1].t_start == pytest.approx(resume_time(1, 4, fps))
    assert list(iter_clips([], 4, fps)) == []
    with pytest.raises(ValueError, match="frames_per_clip"):
        list(iter_clips(frames, 0, fps))


# ---------------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        VideoFileSource(missing)


def test_text_file_renamed_mp4(tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("these are not the frames you are looking for\n" * 50)
    with pytest.raises(ValueError, match="notes.mp4 is not a readable video: .*ffprobe"):
        VideoFileSource(bad)


def test_empty_file(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.mp4 is not a readable video: .*ffprobe"):
        VideoFileSource(empty)


def test_directory_is_not_a_video(tmp_path):
    with pytest.raises(ValueError, match="is not a readable video"):
        VideoFileSource(tmp_path)


@pytest.mark.parametrize("fps", [0, -1.0, float("nan")])
def test_bad_fps(video, fps):
    with pytest.raises(ValueError, match="fps must be"):
        VideoFileSource(video, fps=fps)


def test_bad_start_time(video):
    with pytest.raises(ValueError, match="start_time"):
        VideoFileSource(video, start_time=-1)


# ---------------------------------------------------------------------------------------------------------------------
# Sample video
# ---------------------------------------------------------------------------------------------------------------------


def test_sample_video_is_deterministic_and_changes(tmp_path, video):
    again = make_sample_video(tmp_path / "again.mp4", seconds=VIDEO_SECONDS, fps=VIDEO_FPS, size=VIDEO_SIZE)
    other = make_sample_video(tmp_path / "other.mp4", seconds=VIDEO_SECONDS, fps=VIDEO_FPS, size=VIDEO_SIZE, seed=1)
    a, b, c = all_frames(video), all_frames(again), all_frames(other)  # (N, H, W, 3) uint8 each
    assert a.shape == (int(VIDEO_SECONDS * VIDEO_FPS), VIDEO_SIZE[1], VIDEO_SIZE[0], 3)
    assert np.array_equal(a, b)  # same seed -> same frames
    assert a.shape == c.shape and not np.array_equal(a, c)  # another seed -> another video

    diffs = np.abs(a[1:].astype(np.int16) - a[:-1].astype(np.int16)).mean(axis=(1, 2, 3))  # (N - 1,)
    assert (diffs > 0.1).all()  # every frame differs from the one before
    first, last = a[0].astype(np.int16), a[-1].astype(np.int16)
    assert np.abs(first - last).mean() > 5  # and the scene at the end is not the scene at the start

    def green_pixels(img):  # the bar that appears in the second half
        r, g, b_ = (img[..., i].astype(np.int16) for i in range(3))
        return int(((g > 170) & (r < 100) & (b_ < 110)).sum())

    half = len(a) // 2
    assert green_pixels(a[half - 2]) == 0
    assert green_pixels(a[-1]) > 100
