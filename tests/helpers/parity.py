"""The parity loops, one home each: a stream through two engines (captions and selections compared) and two backends
driven step by step (prefill, then greedy decode steps: logits and probe rows compared within given tolerances).

`step_parity` is the general form of production's `rlivs.export.bundle.compare_with_reference`: the same drive (a
context, then the reference's greedy token fed to both), the same measure (max abs difference of logits and probe
rows over the steps, `worst`), plus per-step tolerances a test asserts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np


def run_stream(engine, db, video, *, stream: str = "cam", max_clips: int | None = None,
               after: Callable | None = None):
    """Ingest `video` through `engine` into the memory at `db` -> the clip results; with `after`, (results,
    after(engine, mem, ingestor)) computed while the memory is still open."""
    from rlivs.runtime.ingest import StreamIngestor
    from rlivs.runtime.memory import Memory

    with Memory(db, model_fingerprint=engine.model_fingerprint) as mem:
        ing = StreamIngestor(engine, mem, stream, str(video))
        results = ing.run(ing.clips_from_file(video), max_clips=max_clips)
        return results if after is None else (results, after(engine, mem, ing))


@dataclass
class StreamParity:
    """Two runs of the same stream, clip by clip: `ref` (the reference) and `got`."""

    ref: list
    got: list
    extra: tuple = ()  # what `after` returned per run: (ref's, got's)

    @property
    def same_captions(self) -> int:
        return sum(a.caption == b.caption for a, b in zip(self.got, self.ref))

    @property
    def captions_equal(self) -> bool:
        return [r.caption for r in self.got] == [r.caption for r in self.ref]

    @property
    def kept_equal(self) -> bool:
        return all(np.array_equal(a.kept, b.kept) for a, b in zip(self.got, self.ref))

    @property
    def overlap(self) -> list[float]:
        """Per clip: the fraction of the reference's kept tokens that `got` keeps too."""
        return [len(set(a.kept.tolist()) & set(b.kept.tolist())) / len(b.kept) for a, b in zip(self.got, self.ref)]


def stream_parity(ref_engine, got_engine, tmp_path: Path, video, *, dbs=("ref.db", "got.db"), **run) -> StreamParity:
    """The same stream through two engines (each into its own memory under tmp_path); `run`: run_stream's options."""
    out = [run_stream(e, Path(tmp_path) / db, video, **run) for e, db in zip((ref_engine, got_engine), dbs)]
    if run.get("after") is None:
        return StreamParity(*out)
    (ref, ref_extra), (got, got_extra) = out
    return StreamParity(ref, got, (ref_extra, got_extra))


def _atol(tol, want: np.ndarray) -> float:
    return tol(want) if callable(tol) else tol


def assert_step_close(got, want, *, logits_atol, probe_atol, argmax: bool = False, msg: str = "") -> None:
    """One step's outputs (StepOutput) within tolerances; probe rows absent on both or equal in shape and close.
    `logits_atol` may be a function of the reference logits (a tolerance relative to their scale)."""
    np.testing.assert_allclose(got.logits, want.logits, atol=_atol(logits_atol, want.logits), rtol=0, err_msg=msg)
    if argmax:
        assert int(np.argmax(got.logits)) == int(np.argmax(want.logits)), msg
    if want.probe_attn is None:
        assert got.probe_attn is None, msg
    else:
        assert got.probe_attn.shape == want.probe_attn.shape, msg
        np.testing.assert_allclose(got.probe_attn, want.probe_attn, atol=probe_atol, rtol=0, err_msg=msg)


def assert_steps_close(got: list, want: list, **tol) -> None:
    """Step lists (see run_steps) pairwise (zip), with assert_step_close's tolerances and "step k" in each message."""
    for k, (g, w) in enumerate(zip(got, want)):
        assert_step_close(g, w, msg=f"step {k}", **tol)


def run_steps(backend, steps) -> list:
    """steps: [(embeds (L, D), probe_rows)] on one fresh state -> [StepOutput]."""
    state = backend.new_state()
    return [backend.step(x, state, probe_rows=r) for x, r in steps]


@dataclass
class StepParity:
    ref_state: object
    state: object
    next_input: np.ndarray  # the embedding the next step would feed (the reference's last greedy token)
    worst: dict = field(default_factory=dict)  # compare_with_reference's keys: logits, probe_attn, logit_scale


def step_parity(ref, other, context: np.ndarray, *, steps: int = 4, logits_atol=None, probe_atol=None,
                argmax: bool = False, on_step: Callable | None = None,
                positions: np.ndarray | None = None, deepstack: tuple | None = None) -> StepParity:
    """Prefill `context` on both backends, then steps-1 decode steps, each feeding the reference's greedy token to
    both. With tolerances, each step's logits / probe rows are asserted within them (argmax: same greedy token);
    on_step(i, ref_out, out, x, ref_state, state) runs after each step's checks for what a test adds.
    `positions`: the context's (3, S) M-RoPE ids, given to the prefill (decode steps continue after their maximum);
    `deepstack`: ((n,) visual rows, (K, n, D) features), given to the prefill (DeepStack backbones)."""
    s_ref, s = ref.new_state(), other.new_state()
    worst = {"logits": 0.0, "probe_attn": 0.0}
    x, extra = context, ({} if positions is None else {"positions": positions})
    if deepstack is not None:
        extra["deepstack"] = deepstack
    for i in range(steps):
        a, b = ref.step(x, s_ref, **extra), other.step(x, s, **extra)
        extra = {}
        worst["logits"] = max(worst["logits"], float(np.abs(a.logits - b.logits).max()))
        worst["probe_attn"] = max(worst["probe_attn"], float(np.abs(a.probe_attn - b.probe_attn).max()))
        if logits_atol is not None:
            np.testing.assert_allclose(b.logits, a.logits, atol=logits_atol, rtol=0)
        if probe_atol is not None:
            np.testing.assert_allclose(b.probe_attn, a.probe_attn, atol=probe_atol, rtol=0)
        if argmax:
            assert int(np.argmax(b.logits)) == int(np.argmax(a.logits))
        if on_step is not None:
            on_step(i, a, b, x, s_ref, s)
        x = ref.embed_tokens(np.array([int(np.argmax(a.logits))]))
    worst["logit_scale"] = float(np.abs(a.logits).max())
    return StepParity(s_ref, s, x, worst)


def caption_parity(engines, frames: np.ndarray, fifo: np.ndarray, max_new_tokens: int) -> list:
    """The same clip (uint8 frames, a FIFO prefix) captioned greedily by each engine through its own preprocessing and
    vision tower -> [Generation] in the engines' order."""
    from rlivs.runtime.generate import greedy

    out = []
    for e in engines:
        d = e.backend.info.hidden_size
        vis = e.backend.encode_frames(e.preprocess(frames))
        ctx, cols = e.caption_context(fifo, vis.reshape(-1, d))
        out.append(greedy(e.backend, ctx, max_new_tokens, e.text.eos_ids, cols))
    return out


def hf_greedy_ids(hf_model, engine, max_new_tokens: int, *, embeds: np.ndarray | None = None,
                  frames: np.ndarray | None = None) -> list[int]:
    """transformers' own `generate` (greedy) -> ids without EOS: on `embeds` (S, D), or, for a first clip (no FIFO),
    end to end from uint8 `frames` through HF's video placeholder expansion and vision tower."""
    import torch

    eos = sorted(engine.text.eos_ids)
    with torch.no_grad():
        if frames is not None:
            pixels = engine.preprocess(frames)  # (T, 3, H, W)
            prompt = engine.text.caption_prompt(engine.config.caption.prompt)
            info = engine.backend.info
            n_video = len(frames) * info.tokens_per_frame + 1  # + image_newline
            ids = np.concatenate([prompt.prefix, np.full(n_video, info.video_token_id), prompt.suffix])
            out = hf_model.generate(input_ids=torch.from_numpy(ids)[None],
                                    pixel_values_videos=torch.from_numpy(pixels)[None],
                                    max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos)[0, len(ids):]
        else:
            out = hf_model.generate(inputs_embeds=torch.from_numpy(embeds)[None], max_new_tokens=max_new_tokens,
                                    do_sample=False, eos_token_id=eos)[0]
    return [t for t in out.tolist() if t not in engine.text.eos_ids]


def eager_caption_scores(eager_model, backend, context: np.ndarray, columns: slice, caption_ids: list[int],
                         max_new_tokens: int) -> np.ndarray:
    """The method's clip scores from transformers' eager `output_attentions`: the attention of the last prompt row and
    of each fed caption token to the clip's columns, averaged over heads and the probe layers, summed over rows
    -> (N_V,). The final greedy token is never fed back (unless the caption stopped at EOS)."""
    import torch

    fed = caption_ids[:-1] if len(caption_ids) == max_new_tokens else caption_ids
    full = np.concatenate([context, backend.embed_tokens(np.array(fed, dtype=np.int64))])
    with torch.no_grad():
        ref = eager_model.model.language_model(inputs_embeds=torch.from_numpy(full)[None], output_attentions=True)
    attn = eager_probe(ref.attentions, backend.info.probe_layers)  # (S', S')
    return attn[len(context) - 1:, columns].sum(0)


def eager_probe(attentions, layers) -> np.ndarray:
    """transformers' eager attentions (per layer (1, H, Q, K)) -> the probe: mean over heads, then over `layers`
    -> (Q, K)."""
    import torch

    return torch.stack([attentions[i][0].mean(0) for i in layers]).mean(0).numpy()


def engine_and_eager(name: str, hf_class, *, frames: int, tokens: int, fps: float):
    """A random model built locally (by name), loaded twice: rlivs' engine on the torch reference backend and the
    unmodified transformers model (`hf_class`) with eager attention, the reference the parity tests compare with."""
    from rlivs.runtime.backends.torch.tiny import ensure_random_model
    from rlivs.runtime.engine import load_engine
    from tests.helpers.configs import small_config

    model_dir = ensure_random_model(name)
    engine = load_engine(str(model_dir), small_config(frames, tokens, fps=fps))
    return engine, hf_class.from_pretrained(model_dir, attn_implementation="eager").eval()


def random_frames(seed: int, n: int = 4, height: int = 90, width: int = 120) -> np.ndarray:
    """(n, height, width, 3) uint8 frames of seeded noise."""
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), dtype=np.uint8)
