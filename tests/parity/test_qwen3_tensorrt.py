"""Qwen3-VL's TensorRT-target graphs (opset 20, plain attention, the in-place KV arena, DeepStack inputs) on CPU: every
op in TensorRT's parser table, every decoder layer's attention in the fusable pattern, the decoder profiles' range of
DeepStack rows (n = 0 at decode), and the TensorRT backend's own code driven through tests/helpers/trt_emulator.py
(ONNX Runtime playing TensorRT's runtime API) equal to the torch reference in fp32: the vision engine's DeepStack
output, decoder steps with features bound, and a stream whose FIFO tokens are fed again with their features
(identical captions and selections). This proves rlivs' side of the boundary only: no TensorRT builds or runs these
graphs here (it cannot be installed on our machines); whether TensorRT accepts the empty (n = 0) DeepStack inputs of
the decode profile is unproven."""

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

pytestmark = pytest.mark.slow  # one TensorRT-target export per module (~30 s); the ONNX Runtime parity of the same
# backbone stays in the default tier (test_qwen*_onnx.py)

from rlivs.runtime.backends.bundle import load_manifest  # noqa: E402
from rlivs.runtime.backends.torch.tiny import ensure_random_model  # noqa: E402
from tests.helpers.configs import qwen_config  # noqa: E402
from tests.helpers import trt_emulator  # noqa: E402
from tests.helpers.parity import step_parity, stream_parity  # noqa: E402
from tests.parity.test_qwen_tensorrt import SCORE_TOL  # noqa: E402


@pytest.fixture(scope="module")
def trt_qwen3(tmp_path_factory):
    return trt_emulator.export_fp32_bundle(tmp_path_factory, "tiny-qwen3")


emulated = trt_emulator.emulated_fixture("trt_qwen3")


def test_graphs_parse_and_fuse_and_profiles_range_over_deepstack_rows(trt_qwen3):
    from rlivs.export.tensorrt_build import EngineBuildConfig, profile_specs
    from rlivs.export.tensorrt_ops import attention_patterns, check_tensorrt_graph
    from rlivs.runtime.config import ClipConfig, PipelineConfig

    m = load_manifest(trt_qwen3)
    assert m.extra["tensorrt_check"]["problems"] == [] and m.opset == 20
    assert check_tensorrt_graph(trt_qwen3 / "vision.onnx") == [] == check_tensorrt_graph(trt_qwen3 / "decoder.onnx")
    assert attention_patterns(trt_qwen3 / "decoder.onnx") == {"fusable": m.num_layers, "probe": len(m.probe_layers),
                                                              "other": 0}
    specs = profile_specs(m, EngineBuildConfig(max_frames=4, pipeline=PipelineConfig(clip=ClipConfig(frames_per_clip=4))))
    prefill, decode = specs["decoder"]
    clip = specs["budget"]["clip_tokens"]
    assert clip == 2 * 16 and prefill["dims"]["visual"] == [0, specs["budget"]["fifo_tokens"] + clip, specs["max_context"]]
    assert decode["dims"]["visual"] == [0, 0, 0]
    assert prefill["shapes"]["deepstack"]["max"] == [2, specs["max_context"], 64]
    assert decode["shapes"]["visual_rows"] == {"min": [0], "opt": [0], "max": [0]}


def test_emulated_backend_equals_the_reference(emulated):
    from rlivs.runtime.backends.tensorrt import TrtBackend
    from rlivs.runtime.backends.torch import TorchBackend

    ref, be = TorchBackend(ensure_random_model("tiny-qwen3")), TrtBackend(emulated)
    info = ref.info
    pixels = np.random.default_rng(0).uniform(-1, 1, (5, 3, *info.image_size)).astype(np.float32)  # 3 groups
    vis, deep = ref.encode_video(pixels)
    got, got_deep = be.encode_video(pixels)  # max_frames 4: two vision runs, features joined on the group axis
    np.testing.assert_allclose(got, vis, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got_deep, deep, atol=1e-4, rtol=0)
    d = info.hidden_size
    text = ref.embed_tokens(np.arange(3, 9))
    ctx = np.concatenate([text, vis.reshape(-1, d), text])
    rows = np.arange(len(text), len(text) + vis.shape[0] * vis.shape[1])
    a = np.arange(len(ctx), dtype=np.int64)
    pos = np.stack([a, a + a % 3, a + a % 5])
    context = be.decoder.context

    def bound(i, r, b, x, st, s):
        profile, shapes = context.log[-1]
        assert shapes["deepstack"] == ((2, len(rows), d) if i == 0 else (2, 0, d)) and profile == (0 if i == 0 else 1)

    step_parity(ref, be, ctx, steps=4, logits_atol=1e-4, probe_atol=1e-5, argmax=True, positions=pos,
                deepstack=(rows, deep.reshape(2, -1, d)), on_step=bound)


def test_emulated_stream_with_a_fifo_equals_the_reference(emulated, sample_video, tmp_path):
    from rlivs.runtime.engine import load_engine

    engines = [load_engine(str(where), qwen_config()) for where in (ensure_random_model("tiny-qwen3"), emulated)]
    assert [e.backend.name for e in engines] == ["torch", "tensorrt"]
    run = stream_parity(*engines, tmp_path, sample_video, max_clips=3, after=lambda e, mem, ing: ing.fifo.clips())
    assert run.ref[2].fifo_tokens > 0 and all(r.caption for r in run.ref)
    assert run.captions_equal and run.kept_equal
    for a, b in zip(run.got, run.ref):
        np.testing.assert_allclose(a.scores, b.scores, atol=SCORE_TOL, rtol=0)
    assert all(c.deepstack is not None for c in run.extra[1])  # the FIFO carried (and re-fed) its features
