"""Caption vectors, relevance and MMR against hand-computed cases."""

import numpy as np
import pytest

from rlivs.runtime.retrieval import mmr, similarity, text_vector


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


def test_mmr_hand_computed():
    """Unit vectors. q = (1, 0); d0 = (1, 0); d1 = (cos 10deg, sin 10deg) = (.985, .174); d2 = (.6, .8).
    rel = 1, .985, .6; sim(d1, d0) = .985, sim(d2, d0) = .6. First pick d0 for any lambda. Then
    lam .7: d1 .7*.985 - .3*.985 = .394 > d2 .7*.6 - .3*.6 = .24 -> d1;
    lam .3: d1 .3*.985 - .7*.985 = -.394 < d2 .3*.6 - .7*.6 = -.24 -> d2 (diversity wins)."""
    q = np.array([1.0, 0.0])
    a = np.deg2rad(10)
    docs = np.array([[1.0, 0.0], [np.cos(a), np.sin(a)], [0.6, 0.8]])
    assert mmr(q, docs, 3, lam=1.0) == [0, 1, 2]
    assert mmr(q, docs, 2, lam=0.7) == [0, 1]
    assert mmr(q, docs, 2, lam=0.3) == [0, 2]
    assert mmr(q, docs, 3, lam=0.3) == [0, 2, 1]


def test_relevance_is_mean_pairwise_cosine_not_cosine_of_means():
    """Relevance is the mean pairwise token cosine (the dot of mean unit vectors): a caption whose mean vector
    is (.5, 0) scores .5 against q = (1, 0) although the cosine of the means would be 1 (and .71 for (.6, .6))."""
    q = np.array([1.0, 0.0])
    docs = np.array([[0.5, 0.0], [0.6, 0.6]])
    np.testing.assert_allclose(similarity(q, docs), [0.5, 0.6])
    assert mmr(q, docs, 1, lam=1.0) == [1]


def test_mmr_budget_skips_what_does_not_fit():
    q = np.array([1.0, 0.0])
    docs = np.array([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    costs = np.array([50.0, 10.0, 60.0])
    # relevance order 0 (1.0), 2 (.8), 1 (0): 0 fits (50), 2 would make 110 > 100 so it is skipped, 1 fits
    assert mmr(q, docs, 3, lam=1.0, costs=costs, budget=100) == [0, 1]
    assert mmr(q, np.zeros((0, 2)), 3) == []
