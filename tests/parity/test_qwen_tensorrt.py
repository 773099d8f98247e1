"""Qwen2.5-VL's TensorRT-target graphs (opset 20, plain attention, the in-place KV arena) on CPU: every op in
TensorRT's parser table, every decoder layer's attention in the fusable pattern, the engines' optimization profiles
over temporal patches, and the TensorRT backend's own code driven through tests/helpers/trt_emulator.py (ONNX Runtime
playing TensorRT's runtime API) equal to the torch reference in fp32: decoder steps on (3, L) M-RoPE ids, the arena
written in place, and a stream with a FIFO (identical captions and selections). This proves rlivs' side of the
boundary only: no TensorRT builds or runs these graphs here (it cannot be installed on our machines)."""

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

pytestmark = pytest.mark.slow  # one TensorRT-target export per module (~30 s); the ONNX Runtime parity of the same
# backbone stays in the default tier (test_qwen*_onnx.py)

from rlivs.runtime.backends.bundle import load_manifest  # noqa: E402
from rlivs.runtime.backends.torch.tiny import ensure_random_model  # noqa: E402
from rlivs.runtime.errors import UserError  # noqa: E402
from tests.helpers.configs import QWEN_FPS as FPS, qwen_config  # noqa: E402
from tests.helpers import trt_emulator  # noqa: E402
from tests.helpers.parity import step_parity, stream_parity  # noqa: E402

SCORE_TOL = 1e-5  # summed probe attention over a caption's steps (as tests/parity/test_qwen_onnx.py)


@pytest.fixture(scope="module")
def trt_qwen(tmp_path_factory):
    return trt_emulator.export_fp32_bundle(tmp_path_factory, "tiny-qwen")


emulated = trt_emulator.emulated_fixture("trt_qwen")


def test_graphs_parse_and_fuse_as_tensorrt_needs(trt_qwen):
    from rlivs.export.tensorrt_ops import attention_patterns, check_tensorrt_graph

    m = load_manifest(trt_qwen)
    n_layers, n_probe = m.num_layers, len(m.probe_layers)
    assert m.extra["tensorrt_check"]["problems"] == [] and m.opset == 20
    assert check_tensorrt_graph(trt_qwen / "vision.onnx") == [] == check_tensorrt_graph(trt_qwen / "decoder.onnx")
    assert attention_patterns(trt_qwen / "decoder.onnx") == {"fusable": n_layers, "probe": n_probe, "other": 0}
    dec = {v["name"]: v["shape"] for v in m.graphs["decoder"]["inputs"]}
    assert dec["position_ids"] == [3, "seq"] and dec["past_kv"] == ["past", n_layers, 2, 4, 16]


def test_profiles_range_over_temporal_patches(trt_qwen):
    from rlivs.export.tensorrt_build import EngineBuildConfig, profile_specs
    from rlivs.runtime.config import ClipConfig, PipelineConfig

    m = load_manifest(trt_qwen)
    specs = profile_specs(m, EngineBuildConfig(max_frames=8, pipeline=PipelineConfig(clip=ClipConfig(frames_per_clip=4))))
    (vision,) = specs["vision"]
    assert vision["dims"] == {"groups": [1, 2, 4]}
    assert vision["shapes"]["pixel_values"] == {"min": [2, 3, 112, 112], "opt": [4, 3, 112, 112],
                                                "max": [8, 3, 112, 112]}
    assert specs["budget"]["clip_tokens"] == 2 * 16  # 4 frames = 2 temporal patches of 4x4 merged tokens
    prefill = specs["decoder"][0]["shapes"]["position_ids"]
    assert prefill["min"] == [3, 1] and prefill["max"] == [3, specs["max_context"]]
    with pytest.raises(UserError, match="multiple of 2, got 7; use --max-frames 8"):
        profile_specs(m, EngineBuildConfig(max_frames=7))


def test_emulated_backend_steps_equal_the_reference(emulated):
    from rlivs.runtime.backends.tensorrt import TrtBackend
    from rlivs.runtime.backends.torch import TorchBackend

    ref, be = TorchBackend(ensure_random_model("tiny-qwen")), TrtBackend(emulated)
    info = ref.info
    rng = np.random.default_rng(0)
    pixels = rng.uniform(-1, 1, (5, 3, *info.image_size)).astype(np.float32)  # 3 groups, the last one short
    vis = ref.encode_frames(pixels)
    np.testing.assert_allclose(be.encode_frames(pixels), vis, atol=1e-4, rtol=0)
    text = ref.embed_tokens(np.arange(3, 9))
    ctx = np.concatenate([text, vis.reshape(-1, info.hidden_size), text])
    pos = ref.backbone.positions(6, [], 0, 3, info.grid, 6, fps=FPS, frames_per_clip=6)  # (3, S)
    context = be.decoder.context

    def positions_bound(i, a, b, x, st, s):
        profile, shapes = context.log[-1]
        assert profile == (0 if i == 0 else 1) and shapes["position_ids"] == (3, len(x))

    run = step_parity(ref, be, ctx, steps=4, logits_atol=1e-4, probe_atol=1e-5, argmax=True, positions=pos,
                      on_step=positions_bound)
    rows = be.arena_rows(run.state)  # (K, N, 2, H_kv, Dh): appended in place by every step
    keys = run.ref_state.cache.layers[2].keys[0].numpy().transpose(1, 0, 2)  # (K, H_kv, Dh)
    np.testing.assert_allclose(rows[:, 2, 0], keys, atol=5e-5, rtol=0)


def test_emulated_stream_with_a_fifo_equals_the_reference(emulated, sample_video, tmp_path):
    from rlivs.runtime.engine import load_engine

    engines = [load_engine(str(where), qwen_config()) for where in (ensure_random_model("tiny-qwen"), emulated)]
    assert [e.backend.name for e in engines] == ["torch", "tensorrt"]
    run = stream_parity(*engines, tmp_path, sample_video, max_clips=3)
    assert run.ref[2].fifo_tokens > 0 and all(r.caption for r in run.ref)
    assert run.captions_equal and run.kept_equal
    for a, b in zip(run.got, run.ref):
        np.testing.assert_allclose(a.scores, b.scores, atol=SCORE_TOL, rtol=0)
