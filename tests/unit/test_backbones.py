"""The backbone registry (runtime/backbones): chosen from config.json, and Qwen2.5-VL's M-RoPE positions of the
caption context, FIFO tokens included, against positions written out by hand."""

import numpy as np
import pytest

from rlivs.runtime.backbones import FifoClip, LlavaOneVision, Qwen25VL, Qwen3VL, backbone_for_config
from rlivs.runtime.errors import UserError

QWEN = {"model_type": "qwen2_5_vl", "vision_config": {"tokens_per_second": 2, "patch_size": 14,
                                                     "spatial_merge_size": 2}}


def test_registry_picks_by_model_type_or_architecture_and_names_what_it_runs():
    assert isinstance(backbone_for_config({"model_type": "llava_onevision"}), LlavaOneVision)
    assert isinstance(backbone_for_config(QWEN), Qwen25VL)
    assert isinstance(backbone_for_config({"architectures": ["Qwen2_5_VLForConditionalGeneration"]}), Qwen25VL)
    assert isinstance(backbone_for_config({"architectures": ["Qwen3VLForConditionalGeneration"]}), Qwen3VL)
    with pytest.raises(UserError, match=r"model_type 'gemma3'.*LLaVA-OneVision \(llava_onevision\), Qwen2.5-VL "
                                        r"\(qwen2_5_vl\), Qwen3-VL \(qwen3_vl\)"):
        backbone_for_config({"model_type": "gemma3"})


def test_llava_is_1d_and_takes_any_frame_count():
    b = LlavaOneVision()
    b.check_frames(15)
    assert b.clip_tokens(16, 196) == 3136 and b.newline and b.exportable
    assert b.positions(3, [], 0, 16, (14, 14), 5, fps=1, frames_per_clip=16) is None


def test_qwen_groups_frames_in_pairs():
    b = Qwen25VL(QWEN)
    with pytest.raises(UserError, match="must be even, got 15; use --frames-per-clip 16"):
        b.check_frames(15)
    assert b.groups(16) == 8 and b.groups(3) == 2 and b.clip_tokens(16, 256) == 2048  # 16 frames at 448 px
    assert not b.newline and b.exportable  # ONNX / TensorRT bundles: tests/parity/test_qwen_onnx.py


def _text(start, n):
    return np.broadcast_to(np.arange(start, start + n), (3, n))


def test_qwen_first_clip_positions():
    """A 3-token prefix, 2 temporal patches of a 2x3 grid at 1 fps (temporal ids 4 apart), a 2-token suffix."""
    pos = Qwen25VL(QWEN).positions(3, [], 0, 2, (2, 3), 2, fps=1, frames_per_clip=4)
    t = [3] * 6 + [7] * 6
    h = [3, 3, 3, 4, 4, 4] * 2
    w = [3, 4, 5] * 4
    want = np.concatenate([_text(0, 3), np.array([t, h, w]), _text(8, 2)], axis=1)  # text resumes at max + 1 = 8
    np.testing.assert_array_equal(pos, want)


def test_qwen_fifo_tokens_keep_their_coordinates_on_the_window_time_axis():
    """FIFO: 2 tokens of clip 5 (flat 1 = patch 0 row 0 col 1; flat 10 = patch 1 row 1 col 1) and 1 of clip 7 (a
    clip between was idle: flat 6 = patch 1 row 0 col 0); the current clip 8. Clips of 4 frames = 2 patches, 4
    temporal ids per patch: clip k's patch g sits at 3 + ((k - 5) * 2 + g) * 4."""
    b = Qwen25VL(QWEN)
    fifo = [FifoClip(5, 2, np.array([1, 10])), FifoClip(7, 1, np.array([6]))]
    pos = b.positions(3, fifo, 8, 2, (2, 3), 0, fps=1, frames_per_clip=4)
    np.testing.assert_array_equal(pos[:, 3:6], [[3, 7, 3 + 5 * 4], [3, 4, 3], [4, 4, 3]])
    clip = pos[:, 6:]
    assert clip[0, 0] == 3 + (8 - 5) * 2 * 4 and clip[0, -1] == 3 + ((8 - 5) * 2 + 1) * 4  # after the gap
    np.testing.assert_array_equal(clip[1:], b.positions(3, [], 0, 2, (2, 3), 0, fps=1, frames_per_clip=4)[1:, 3:])


def test_qwen_sequential_positions_and_the_fallback_without_indices():
    b = Qwen25VL(QWEN)
    fifo = [FifoClip(5, 2, np.array([1, 10]))]
    seq = b.positions(3, fifo, 6, 2, (2, 3), 1, fps=1, frames_per_clip=4, mode="sequential")
    np.testing.assert_array_equal(seq[:, 3:5], _text(3, 2))  # FIFO like text, then the clip as its own video
    np.testing.assert_array_equal(seq[:, 5:-1], b.positions(5, [], 0, 2, (2, 3), 0, fps=1, frames_per_clip=4)[:, 5:])
    unknown = [FifoClip(5, 2, None)]  # pooled tokens, or a FIFO restored from memory
    np.testing.assert_array_equal(b.positions(3, unknown, 6, 2, (2, 3), 1, fps=1, frames_per_clip=4), seq)
    with pytest.raises(UserError, match="use one of original, sequential"):
        b.positions(3, fifo, 6, 2, (2, 3), 1, fps=1, frames_per_clip=4, mode="shifted")


def test_a_real_qwen_processor_config_gets_the_fixed_frame_size(tmp_path):
    """Qwen2.5-VL's released preprocessor_config.json sizes frames by pixel budget (min/max pixels); rlivs resizes a
    stream's frames to one fixed size: 448x448 unless the file names height and width."""
    import json

    from rlivs.runtime.frames import FramePreprocessor

    (tmp_path / "config.json").write_text(json.dumps(QWEN))
    pre = {"size": {"shortest_edge": 3136, "longest_edge": 12845056}, "min_pixels": 3136, "max_pixels": 12845056,
           "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
           "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(pre))
    p = FramePreprocessor.from_model_dir(tmp_path)
    assert (p.height, p.width) == (448, 448) and p.image_mean == tuple(pre["image_mean"])
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**pre, "size": {"height": 150, "width": 84}}))
    with pytest.raises(UserError, match="multiple of 28 px"):
        FramePreprocessor.from_model_dir(tmp_path)


QWEN3 = {"model_type": "qwen3_vl", "vision_start_token_id": 90, "vision_end_token_id": 91,
         "vision_config": {"patch_size": 16, "spatial_merge_size": 2}}


def _stamp(text: str) -> np.ndarray:
    """A stand-in tokenizer: one id per character (the layout only needs ids and their count)."""
    return np.array([ord(ch) for ch in text], dtype=np.int64)


def test_qwen3_layout_first_clip_by_hand():
    """A 3-token prefix, 2 temporal patches (4 frames at 2 fps) of a 2x3 grid, a 2-token suffix. Each patch is a block
    "<t seconds>" <vs> [6 tokens] <ve>; the block's tokens sit at (s, s + row, s + col) for its start s, and the
    position then advances by max(rows, cols) = 3 (Qwen3-VL's get_rope_index)."""
    b = Qwen3VL(QWEN3)
    segs, pos = b.layout(3, [], 0, 2, (2, 3), 2, fps=2, frames_per_clip=4, n_frames=4, encode=_stamp)
    stamps = ["<0.2 seconds>", "<1.2 seconds>"]  # mean of frames (0, 1) and (2, 3) at 2 fps: 0.25, 1.25 s
    assert [s.source for s in segs] == ["clip", "clip"]
    for s, st, g in zip(segs, stamps, range(2)):
        np.testing.assert_array_equal(s.before, np.r_[_stamp(st), 90])
        np.testing.assert_array_equal(s.after, [91])
        np.testing.assert_array_equal(s.idx, np.arange(6 * g, 6 * g + 6))
    n = len(stamps[0]) + 1  # 14 text positions before the first block's tokens
    s0 = 3 + n
    block0 = [[s0] * 6, [s0, s0, s0, s0 + 1, s0 + 1, s0 + 1], [s0, s0 + 1, s0 + 2] * 2]
    s1 = s0 + 3 + 1 + n  # + max(rows, cols), then <ve> and the next stamp
    block1 = [[s1] * 6, [s1, s1, s1, s1 + 1, s1 + 1, s1 + 1], [s1, s1 + 1, s1 + 2] * 2]
    want = np.concatenate([_text(0, 3), _text(3, n), block0, _text(s0 + 3, 1), _text(s0 + 4, n), block1,
                           _text(s1 + 3, 1), _text(s1 + 4, 2)], axis=1)
    np.testing.assert_array_equal(pos, want)


def test_qwen3_layout_fifo_blocks_keep_their_stamp_and_cell():
    """FIFO "original": clip 5's kept tokens 1 (patch 0, row 0 col 1) and 10 (patch 1, row 1 col 1) each in a block
    of its own patch's timestamp; a patch with nothing kept has no block. "sequential": one bare run, no stamps."""
    b = Qwen3VL(QWEN3)
    fifo = [FifoClip(5, 2, np.array([1, 10]))]
    segs, pos = b.layout(0, fifo, 6, 1, (2, 3), 0, fps=2, frames_per_clip=4, n_frames=2, encode=_stamp)
    assert [(s.source, s.idx.tolist()) for s in segs] == [("fifo", [0]), ("fifo", [1]), ("clip", list(range(6)))]
    assert bytes(segs[0].before[:-1].tolist()).decode() == "<10.2 seconds>"  # frames 20, 21 at 2 fps
    assert bytes(segs[1].before[:-1].tolist()).decode() == "<11.2 seconds>"
    assert bytes(segs[2].before[:-1].tolist()).decode() == "<12.2 seconds>"  # clip 6: frames 24, 25
    s = len(segs[0].before)
    np.testing.assert_array_equal(pos[:, s], [s, s, s + 1])  # row 0, col 1 of its block
    col = s + 1 + 1 + len(segs[1].before)  # its column: block 0 took s + 1 + 1 (stamp, token, <ve>)
    s2 = s + 3 + 1 + len(segs[1].before)  # its block's start: positions advanced by max(rows, cols) = 3, then <ve>
    np.testing.assert_array_equal(pos[:, col], [s2, s2 + 1, s2 + 1])  # row 1, col 1
    segs, pos = b.layout(0, fifo, 6, 1, (2, 3), 0, fps=2, frames_per_clip=4, n_frames=2, encode=_stamp,
                         mode="sequential")
    assert segs[0].source == "fifo" and len(segs[0].before) == 0 and segs[0].idx.tolist() == [0, 1]
    np.testing.assert_array_equal(pos[:, :2], _text(0, 2))


def test_qwen3_short_clip_stamp_repeats_the_last_frame():
    b = Qwen3VL(QWEN3)
    assert b.timestamp(0, 1, fps=2, frames_per_clip=4, n_frames=3) == "<1.0 seconds>"  # frames (2, 2): 1.0 s
    assert b.timestamp(0, 1, fps=2, frames_per_clip=4, n_frames=4) == "<1.2 seconds>"  # frames (2, 3): 1.25 s
    assert b.deepstack and b.text_in_video and b.exportable  # tests/parity/test_qwen3_onnx.py, test_qwen3_tensorrt.py
    assert b.frame_size(QWEN3, {}) == (512, 512)
    with pytest.raises(UserError, match="multiple of 32 px"):
        b.frame_size(QWEN3, {"size": {"height": 500, "width": 512}})
