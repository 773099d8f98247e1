"""The torch backend on CUDA against the CPU reference. Skipped without a CUDA device (CI has none)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rlivs.runtime.backends.torch import TorchBackend  # noqa: E402
from rlivs.runtime.config import PipelineConfig  # noqa: E402
from rlivs.runtime.frames import FramePreprocessor  # noqa: E402
from rlivs.runtime.generate import greedy  # noqa: E402
from rlivs.runtime.pipeline import Engine  # noqa: E402
from rlivs.runtime.text import TextCodec  # noqa: E402

pytestmark = pytest.mark.gpu


def _caption(tiny_dir, device, dtype, frames):
    be = TorchBackend(tiny_dir, device=device, dtype=dtype)
    engine = Engine(be, TextCodec(tiny_dir), FramePreprocessor.from_model_dir(tiny_dir), PipelineConfig())
    vis = be.encode_frames(engine.preprocess(frames)).reshape(-1, be.info.hidden_size)
    ctx, cols = engine.caption_context(np.zeros((0, be.info.hidden_size), np.float32), vis)
    return greedy(be, ctx, 16, engine.text.eos_ids, cols)


@pytest.mark.parametrize("dtype, same_caption, min_overlap", [("float32", True, 0.99), ("bfloat16", False, 0.8)])
def test_cuda_matches_cpu_reference(tiny_dir, dtype, same_caption, min_overlap):
    frames = np.random.default_rng(0).integers(0, 256, (16, 120, 160, 3), dtype=np.uint8)
    ref = _caption(tiny_dir, "cpu", "float32", frames)
    got = _caption(tiny_dir, "cuda", dtype, frames)
    if same_caption:
        assert got.ids == ref.ids
        np.testing.assert_allclose(got.scores, ref.scores, atol=1e-4)
    n = 25  # tokens kept at 6.25% of 400
    top = lambda s: set(np.argsort(-s, kind="stable")[:n].tolist())  # noqa: E731
    if same_caption or got.ids == ref.ids:
        assert len(top(got.scores) & top(ref.scores)) / n >= min_overlap
