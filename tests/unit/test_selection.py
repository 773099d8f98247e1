"""Selection strategies, the FIFO, and the planted-attention wiring through a whole clip step."""

import numpy as np
import pytest

from rlivs.runtime.config import FifoConfig, PipelineConfig, SelectionConfig
from rlivs.runtime.fifo import TokenFifo
from rlivs.runtime.selection import STRATEGIES, get_strategy, select_attention, select_meanpool

from tests.helpers.fakes import PlantedBackend

RNG = np.random.default_rng(0)


def test_attention_picks_top_scores_in_temporal_order():
    tokens = RNG.standard_normal((2, 5, 3)).astype(np.float32)  # (T, P, D)
    scores = np.zeros(10, np.float32)
    scores[[7, 2, 9]] = [0.9, 0.5, 0.7]
    sel = select_attention(tokens, scores, 3, RNG)
    np.testing.assert_array_equal(sel.indices, [2, 7, 9])  # temporal, not score, order
    np.testing.assert_array_equal(sel.tokens, tokens.reshape(-1, 3)[[2, 7, 9]])


def test_attention_ties_prefer_earlier_tokens():
    sel = select_attention(np.zeros((1, 6, 2), np.float32), np.ones(6, np.float32), 2, RNG)
    np.testing.assert_array_equal(sel.indices, [0, 1])


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_returns_n_tokens(name):
    tokens = RNG.standard_normal((4, 25, 6)).astype(np.float32)
    scores = RNG.random(100).astype(np.float32)
    sel = get_strategy(name)(tokens, scores, 7, np.random.default_rng(1))
    assert sel.tokens.shape == (7, 6)
    if sel.indices is not None:
        assert len(set(sel.indices.tolist())) == 7 and np.all(np.diff(sel.indices) > 0)
        np.testing.assert_array_equal(sel.tokens, tokens.reshape(-1, 6)[sel.indices])


def test_uniform_is_evenly_spaced():
    sel = get_strategy("uniform")(np.zeros((2, 8, 1), np.float32), None, 4, RNG)
    np.testing.assert_array_equal(sel.indices, [2, 6, 10, 14])


def test_meanpool_means_contiguous_regions_per_frame():
    tokens = np.arange(2 * 4 * 1, dtype=np.float32).reshape(2, 4, 1)  # frame 0: 0..3, frame 1: 4..7
    sel = select_meanpool(tokens, None, 4, RNG)
    np.testing.assert_allclose(sel.tokens[:, 0], [0.5, 2.5, 4.5, 6.5])
    assert sel.indices is None


def test_kmeans_recovers_clusters():
    centers = np.array([[10, 0], [0, 10], [-10, -10]], np.float32)
    pts = np.concatenate([c + 0.1 * RNG.standard_normal((5, 2)) for c in centers]).astype(np.float32)
    sel = get_strategy("kmeans")(pts.reshape(1, 15, 2), None, 3, np.random.default_rng(0))
    assert sorted(int(i) // 5 for i in sel.indices) == [0, 1, 2]  # one representative per cluster


def test_unknown_strategy_and_bad_keep():
    with pytest.raises(ValueError, match="unknown selection strategy 'best'"):
        get_strategy("best")
    with pytest.raises(ValueError, match="cannot keep 500 tokens per clip"):
        SelectionConfig(keep=500).validate(400)
    assert SelectionConfig().n_keep(3136) == 196
    assert SelectionConfig(keep=196).n_keep(50) == 50  # a short last clip keeps what it has


def test_fifo_order_and_eviction_by_clips():
    fifo = TokenFifo(FifoConfig(capacity_clips=2), dim=2)
    assert fifo.push(0, np.full((2, 2), 0.0)) == []
    assert fifo.push(1, np.full((3, 2), 1.0)) == []
    assert fifo.evictions(1) == [0]
    assert fifo.push(2, np.full((1, 2), 2.0)) == [0]
    assert fifo.clip_indices == [1, 2]
    np.testing.assert_array_equal(fifo.tokens()[:, 0], [1, 1, 1, 2])  # oldest first


def test_fifo_eviction_by_tokens_and_no_recurrence():
    fifo = TokenFifo(FifoConfig(capacity_clips=None, capacity_tokens=5), dim=1)
    fifo.push(0, np.zeros((3, 1)))
    fifo.push(1, np.zeros((2, 1)))
    assert fifo.push(2, np.zeros((2, 1))) == [0] and fifo.n_tokens == 4
    off = TokenFifo(FifoConfig(capacity_clips=0), dim=1)
    assert off.push(0, np.zeros((3, 1))) == [] and len(off) == 0 and off.tokens().shape == (0, 1)


def test_planted_tokens_are_selected_through_a_clip_step(tmp_path, tiny_dir):
    """A backend whose attention favours planted tokens: the clip step must keep exactly those,
    even when the (more salient) FIFO tokens sit in front of the clip in the context."""
    from rlivs.runtime.memory import Memory
    from rlivs.runtime.frames import Clip
    from rlivs.runtime.engine import Engine
    from rlivs.runtime.ingest import StreamIngestor
    from rlivs.runtime.text import TextCodec

    text = TextCodec(tiny_dir)
    be = PlantedBackend(vocab=512, eos=min(text.eos_ids))
    cfg = PipelineConfig(selection=SelectionConfig(keep=2), fifo=FifoConfig(capacity_clips=1))
    engine = Engine(be, text, lambda f: f.astype(np.float32).transpose(0, 3, 1, 2), cfg)

    def clip(index, planted, salience):
        frames = np.zeros((2, 1, 4, 3), np.float32)  # (T, H, W, 3): 2 frames x 4 tokens
        frames[..., 0] = index  # token content
        for flat in planted:
            frames[flat // 4, 0, flat % 4, 1] = salience
        return Clip(index=index, frames=frames, times=np.array([2.0 * index, 2.0 * index + 1]), fps=1.0)

    with Memory(tmp_path / "m.db") as mem:
        ing = StreamIngestor(engine, mem, "s")
        r0 = ing.step(clip(0, [6, 3], salience=3.0))
        np.testing.assert_array_equal(r0.kept, [3, 6])
        r1 = ing.step(clip(1, [1, 4], salience=1.0))  # less salient than the FIFO's tokens
        np.testing.assert_array_equal(r1.kept, [1, 4])
        assert ing.fifo.clip_indices == [1]
        np.testing.assert_array_equal(ing.fifo.tokens()[:, 0], [1.0, 1.0])
        assert r1.caption and mem.clips("s")[1].caption == r1.caption
