"""The real LLaVA-OneVision-0.5B shapes (random weights), loaded from a local HF-format directory like real
weights, through the same code as tiny; and its ONNX bundle. Slow: a few minutes on 2 cores."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rlivs.runtime.generate import greedy  # noqa: E402
from rlivs.runtime.engine import load_engine  # noqa: E402
from tests.helpers.configs import small_config  # noqa: E402
from tests.helpers.parity import caption_parity  # noqa: E402


def _config():
    return small_config(frames_per_clip=2, caption_tokens=4)


@pytest.fixture(scope="module")
def engine():
    return load_engine("random-0.5b", config=_config())  # built once into $RLIVS_HOME, then loaded from disk


def _frames(seed=0, n=2):
    return np.random.default_rng(seed).integers(0, 256, (n, 240, 320, 3), dtype=np.uint8)


def test_real_size_shapes_probe_parity_and_generate(engine):
    be = engine.backend
    model = be.model
    assert be.info.tokens_per_frame == 196 and be.info.hidden_size == 896 and be.info.probe_layers == (5, 9, 14, 18)
    pixels = engine.preprocess(_frames())  # (2, 3, 384, 384)
    vis = be.encode_frames(pixels)
    assert vis.shape == (2, 196, 896)
    ctx, cols = engine.caption_context(np.zeros((0, 896), np.float32), vis.reshape(-1, 896))
    gen = greedy(be, ctx, 4, engine.text.eos_ids, cols)
    assert gen.scores.shape == (392,)
    # HF generate on the same inputs, token for token
    prompt = engine.text.caption_prompt(engine.config.caption.prompt)
    ids = np.concatenate([prompt.prefix, np.full(393, be.info.video_token_id), prompt.suffix])
    with torch.no_grad():
        ref = model.generate(input_ids=torch.from_numpy(ids)[None], pixel_values_videos=torch.from_numpy(pixels)[None],
                             max_new_tokens=4, do_sample=False, eos_token_id=sorted(engine.text.eos_ids))
    assert gen.ids == [t for t in ref[0, len(ids):].tolist() if t not in engine.text.eos_ids]
    # probe attention of the last prompt token vs eager output_attentions on the probe layers
    out = be.step(ctx, be.new_state())
    lm = model.model.language_model
    lm.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            r = lm(inputs_embeds=torch.from_numpy(ctx)[None], output_attentions=True)
    finally:
        lm.set_attn_implementation("rlivs_probe")
    want = torch.stack([r.attentions[i][0, :, -1].mean(0) for i in be.info.probe_layers]).mean(0).numpy()
    np.testing.assert_allclose(out.probe_attn[0], want, atol=1e-5, rtol=0)


def test_real_size_onnx_bundle_parity(engine, tmp_path_factory):
    pytest.importorskip("onnxscript")
    from rlivs.export.bundle import ExportConfig, export_bundle

    bundle = tmp_path_factory.mktemp("b05") / "bundle"
    manifest = export_bundle("random-0.5b", bundle, ExportConfig(embed_dtype="float32")).to_dict()
    assert (bundle / "decoder.onnx.data").stat().st_size > 1e9  # external data at full size
    check = manifest["export_check"]
    assert check["logits"] < 1e-3 and check["probe_attn"] < 1e-5 and check["vision"] < 1e-3
    ort_engine = load_engine(bundle, config=_config())
    rng = np.random.default_rng(1)
    fifo = rng.standard_normal((196, 896)).astype(np.float32) * 0.02  # one clip's worth of FIFO in front
    a, b = caption_parity((engine, ort_engine), _frames(2), fifo, 4)
    assert a.ids == b.ids
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-4, rtol=0)
    top = lambda s: set(np.argsort(-s, kind="stable")[:25].tolist())  # noqa: E731
    assert len(top(a.scores) & top(b.scores)) >= 24


def test_real_size_tensorrt_target_bundle(engine, tmp_path_factory):
    """The 0.5B TensorRT-target export: every op in TensorRT's parser table, 24 fusable attentions + 4 probe rows,
    the float16 KV arena with 256-byte-aligned rows and the default profiles; on ORT CPU it keeps the selection."""
    pytest.importorskip("onnxscript")
    from rlivs.export.bundle import ExportConfig, export_bundle
    from rlivs.export.tensorrt_build import profile_specs

    bundle = tmp_path_factory.mktemp("t05") / "bundle"
    written = export_bundle("random-0.5b", bundle, ExportConfig(target="tensorrt", embed_dtype="float32"))
    manifest = written.to_dict()
    assert manifest["tensorrt_check"]["problems"] == []
    assert manifest["tensorrt_check"]["decoder_attention"] == {"fusable": 24, "probe": 4, "other": 0}
    _, kv = written.info(bundle)
    assert (kv.layout, kv.dtype, kv.max_context, kv.row_bytes, kv.row_bytes % 256) == ("arena", "float16", 8192, 12288, 0)
    specs = profile_specs(written)
    assert [p["name"] for p in specs["decoder"]] == ["prefill", "decode"]
    assert specs["decoder"][0]["shapes"]["past_kv"]["max"] == [8191, 24, 2, 2, 64]
    trt_engine = load_engine(bundle, config=_config())
    assert trt_engine.backend.name == "onnxruntime" and trt_engine.backend.pool is not None
    rng = np.random.default_rng(1)
    fifo = rng.standard_normal((196, 896)).astype(np.float32) * 0.02
    a, b = caption_parity((engine, trt_engine), _frames(2), fifo, 4)
    top = lambda s: set(np.argsort(-s, kind="stable")[:25].tolist())  # noqa: E731
    print(f"0.5B TensorRT-target bundle, fp16 arena on ORT CPU: caption {'identical' if a.ids == b.ids else 'differs'}, "
          f"top-25 overlap {len(top(a.scores) & top(b.scores))}/25, export check {manifest['export_check']}")
    assert len(top(a.scores) & top(b.scores)) >= 24
