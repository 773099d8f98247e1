"""The real LLaVA-OneVision-0.5B shapes (random weights) through the same code as tiny. Slow: minutes on 2 cores."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rlivs.runtime.backends.torch import TorchBackend  # noqa: E402
from rlivs.runtime.backends.torch.tiny import real_size_config  # noqa: E402
from rlivs.runtime.config import CaptionConfig, ClipConfig, PipelineConfig  # noqa: E402
from rlivs.runtime.frames import FramePreprocessor  # noqa: E402
from rlivs.runtime.generate import greedy  # noqa: E402
from rlivs.runtime.pipeline import Engine  # noqa: E402
from rlivs.runtime.text import TextCodec  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real(tiny_dir):
    from transformers import LlavaOnevisionForConditionalGeneration

    text = TextCodec(tiny_dir)
    tok = text.tokenizer
    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration(
        real_size_config(tok.token_to_id("<image>"), tok.token_to_id("<video>"))).eval()
    be = TorchBackend(model=model, model_id="random-0.5b")
    pre = FramePreprocessor(384, 384, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    cfg = PipelineConfig(clip=ClipConfig(frames_per_clip=2), caption=CaptionConfig(max_new_tokens=4))
    return Engine(be, text, pre, cfg), model


def test_real_size_shapes_probe_parity_and_generate(real):
    engine, model = real
    be = engine.backend
    assert be.info.tokens_per_frame == 196 and be.info.hidden_size == 896 and be.info.probe_layers == (5, 9, 14, 18)
    frames = np.random.default_rng(0).integers(0, 256, (2, 240, 320, 3), dtype=np.uint8)
    pixels = engine.preprocess(frames)  # (2, 3, 384, 384)
    vis = be.encode_frames(pixels)
    assert vis.shape == (2, 196, 896)
    flat = vis.reshape(-1, 896)
    ctx, cols = engine.caption_context(np.zeros((0, 896), np.float32), flat)
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
    state = be.new_state()
    out = be.step(ctx, state)
    lm = model.model.language_model
    lm.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            r = lm(inputs_embeds=torch.from_numpy(ctx)[None], output_attentions=True)
    finally:
        lm.set_attn_implementation("rlivs_probe")
    want = torch.stack([r.attentions[i][0, :, -1].mean(0) for i in be.info.probe_layers]).mean(0).numpy()
    np.testing.assert_allclose(out.probe_attn[0], want, atol=1e-5, rtol=0)
