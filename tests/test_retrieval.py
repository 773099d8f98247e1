"""Caption vectors, cosine and MMR against hand-computed cases."""

import numpy as np
import pytest

from rlivs.runtime.retrieval import cosine, mmr, text_vector


def test_mean_of_unit_vectors_identity():
    """Mean pairwise cosine between two texts' tokens == dot product of their mean unit vectors."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 16)), rng.standard_normal((9, 16))
    ua = a / np.linalg.norm(a, axis=1, keepdims=True)
    ub = b / np.linalg.norm(b, axis=1, keepdims=True)
    pairwise = (ua @ ub.T).mean()
    assert float(text_vector(a) @ text_vector(b)) == pytest.approx(pairwise, abs=1e-6)


def test_text_vector_ignores_token_norms_and_handles_empty():
    e = np.array([[3.0, 0.0], [0.0, 0.5]])
    np.testing.assert_allclose(text_vector(e), [0.5, 0.5])
    np.testing.assert_array_equal(text_vector(np.zeros((0, 4))), np.zeros(4))


def test_cosine():
    np.testing.assert_allclose(cosine(np.array([1.0, 0]), np.array([[2.0, 0], [0, 3.0], [1, 1], [0, 0]])),
                               [1.0, 0.0, np.sqrt(0.5), 0.0], atol=1e-12)


def test_mmr_hand_computed():
    """q = (1, 0). d0 = (1, 0) rel 1; d1 = (0.9, 0.1) rel .994, sim(d0) .994; d2 = (0.6, 0.8) rel .6, sim(d0) .6.
    lam .5: pick d0 (.5*1). Then d1: .5*.994 - .5*.994 = 0; d2: .5*.6 - .5*.6 = 0 -> tie, first index wins (d1).
    lam .7: d1: .7*.994 - .3*.994 = .398; d2: .7*.6 - .3*.6 = .24 -> d1. Relevance only: d0, d1, d2."""
    q = np.array([1.0, 0.0])
    docs = np.array([[1.0, 0.0], [0.9, 0.1], [0.6, 0.8]])
    assert mmr(q, docs, 3, lam=1.0) == [0, 1, 2]
    assert mmr(q, docs, 2, lam=0.7) == [0, 1]
    # a near-duplicate is pushed behind a diverse document when diversity weighs more
    docs2 = np.array([[1.0, 0.0], [0.99, 0.01], [0.7, 0.7]])
    # lam .3 after d0: d1 .3*.99995 - .7*.99995 = -.4; d2 .3*.7071 - .7*.7071 = -.283 -> d2
    assert mmr(q, docs2, 2, lam=0.3) == [0, 2]


def test_mmr_budget_skips_what_does_not_fit():
    q = np.array([1.0, 0.0])
    docs = np.array([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    costs = np.array([50.0, 10.0, 60.0])
    # relevance order 0 (1.0), 2 (.8), 1 (0): 0 fits (50), 2 would make 110 > 100 so it is skipped, 1 fits
    assert mmr(q, docs, 3, lam=1.0, costs=costs, budget=100) == [0, 1]
    assert mmr(q, np.zeros((0, 2)), 3) == []
