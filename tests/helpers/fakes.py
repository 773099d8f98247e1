"""A numpy backend whose attention is known in closed form, to test selection wiring without a model.

Attention logits of every query to key j are `SALIENCE * embeds[j, 0]`: tokens whose first feature
is large draw the attention, so a planted token set must be selected exactly.
"""

import numpy as np

from rlivs.runtime.backends.base import Backend, DecodeState, ModelInfo, StepOutput

SALIENCE = 8.0


class FakeState(DecodeState):
    def __init__(self, dim):
        self.keys = np.zeros((0, dim), np.float32)  # (K, D)
        self.length = 0


class PlantedBackend(Backend):
    name = "planted"

    def __init__(self, dim=8, tokens_per_frame=4, vocab=32, eos=1):
        self.info = ModelInfo("planted", dim, vocab, 4, (1, 2), tokens_per_frame, (8, 8), video_token_id=2)
        self.eos = eos
        self.caption_len = 3
        self._table = np.random.default_rng(0).standard_normal((vocab, dim)).astype(np.float32) * 0.1
        self._table[:, 0] = 0.0  # text tokens are never salient

    def encode_frames(self, pixels):  # (T, 3, H, W) -> (T, P, D): frame pixel means + salience from pixel [0,0,0]
        t = pixels.shape[0]
        out = np.zeros((t, self.info.tokens_per_frame, self.info.hidden_size), np.float32)
        for f in range(t):
            for p in range(self.info.tokens_per_frame):
                out[f, p, 1:] = pixels[f, 0, 0, p] + np.arange(1, self.info.hidden_size)
                out[f, p, 0] = pixels[f, 1, 0, p]  # channel 1 row 0 carries the planted salience
        return out

    def image_newline(self):
        return np.zeros(self.info.hidden_size, np.float32)

    def embed_tokens(self, ids):
        return self._table[np.asarray(ids, dtype=np.int64)]

    def new_state(self):
        return FakeState(self.info.hidden_size)

    def step(self, embeds, state, probe_rows=1):
        state.keys = np.concatenate([state.keys, embeds])
        state.length = len(state.keys)
        logits = np.zeros(self.info.vocab_size, np.float32)
        generated = getattr(state, "generated", 0)
        logits[self.eos if generated >= self.caption_len else 5 + generated] = 1.0
        state.generated = generated + 1
        attn = None
        if probe_rows:
            w = np.exp(SALIENCE * state.keys[:, 0] - SALIENCE * state.keys[:, 0].max())
            attn = np.repeat((w / w.sum())[None], probe_rows, axis=0).astype(np.float32)  # (R, K)
        return StepOutput(logits, attn)
