"""bench/memory_peers.py's harness, on the parts that need no peer package: the fusion and the relevance it hands
MMR, the store registry's interface, and rlivs' own adapter at tiny scale (its picks are exactly what answer()'s
retrieve() picks; a committed clip is findable, also after a SIGKILL of a committing child)."""

import importlib.util
import inspect
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


peers = _load("bench_memory_peers", BENCH / "memory_peers.py")
N = 240  # clips of the quality set in the tiny memory


def test_rrf_sums_reciprocal_ranks_and_breaks_ties_by_id():
    # a: 1/61 + 1/62; b: 1/62 + 1/61 (tie with a: id order); c: 1/63; d: 1/63 (tie with c); e: 1/64
    assert peers.rrf(["a", "b", "c", "e"], ["b", "a", "d"]) == ["a", "b", "c", "d", "e"]
    assert peers.rrf([3, 1], [], k=1.0) == [3, 1]
    assert peers.rrf() == []


def test_rank_relevance_spans_the_similarity_range_in_rank_order():
    sim = np.array([0.2, 0.9, 0.5])
    np.testing.assert_allclose(peers.rank_relevance(sim), [0.9, 0.55, 0.2])
    np.testing.assert_allclose(peers.rank_relevance(np.array([0.4])), [0.4])


def test_registry_every_store_has_the_same_small_interface():
    assert {"rlivs", "sqlite-vec", "lancedb", "duckdb", "tantivy+faiss"} <= set(peers.STORES)
    for name, cls in peers.STORES.items():
        assert issubclass(cls, peers.Store) and cls.name == name
        assert set(cls.notes) == {"filter", "one_transaction", "hybrid"}, name
        for method in ("build", "open", "commit", "query"):
            assert getattr(cls, method) is not getattr(peers.Store, method), (name, method)
        assert list(inspect.signature(cls.query).parameters) == ["self", "vector", "text", "wall_from", "wall_to",
                                                                "k"], name


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The first N clips of the quality set, embedded, and an rlivs memory built from them by its adapter."""
    tmp = tmp_path_factory.mktemp("peers")
    rows = peers._jsonl(peers.DATA / "caption_log.jsonl")[:N]
    data = peers.dataset(tmp / "data", rows)
    folder = tmp / "rlivs"
    folder.mkdir()
    st = peers.STORES["rlivs"](folder)
    st.build(peers.batches(data, chunk=100))
    return rows, data, folder


def test_dataset_holds_the_rows_and_their_vectors(tiny):
    rows, data, _ = tiny
    got = list(peers.batches(data, chunk=100))
    assert [len(b) for b in got] == [100, 100, 40]
    b = got[1]
    assert b.keys()[0] == rows[100]["id"] and b.caption[5] == rows[105]["caption"]
    np.testing.assert_array_equal(b.vectors[5], peers.random_embedder(peers.D, 0)(rows[105]["caption"]))
    assert b.n_tokens[5] == len(peers.tokens(rows[105]["caption"]))


def test_rlivs_adapter_picks_what_retrieve_picks(tiny):
    from rlivs.runtime.answer import retrieve
    from rlivs.runtime.config import RetrievalConfig
    from rlivs.runtime.memory import Memory

    rows, _, folder = tiny
    questions = peers._jsonl(peers.DATA / "questions.jsonl")[:20]
    texts = peers._query_texts(questions)
    qv = peers.random_embedder(peers.D, 0).batch(texts)
    lo = rows[0]["wall_start"]
    st = peers.STORES["rlivs"](folder)
    st.open()
    try:
        with Memory(folder / "memory.db", readonly=True) as mem:
            for v, t in zip(qv, texts):
                for w in ((None, None), (lo, lo + peers.WINDOW_S)):
                    want = {f"{r.stream}:{r.index}" for r, _ in retrieve(mem, v, t, RetrievalConfig(),
                                                                        wall_from=w[0], wall_to=w[1])}
                    got = peers.picks(st, v, t, *w)
                    assert len(got) == len(set(got)) and set(got) == want
                    assert got  # the questions match captions of this memory
    finally:
        st.close()


def test_recall_counts_a_question_with_an_answer_among_the_picks():
    qs = [{"answers": ["a:1", "a:2"]}, {"answers": ["b:1"]}]
    assert peers._recall([{"a:2", "x:0"}, {"x:1"}], qs) == {"recall@8": 0.5, "answer_recall@8": 0.25, "n": 2}


def test_rlivs_commit_is_findable_and_survives_sigkill(tiny):
    _, _, folder = tiny
    after = 2e9
    live = peers.live_clips("cam-live", 3, after)
    st = peers.STORES["rlivs"](folder)
    st.open()
    try:
        for j in range(3):
            st.commit(live.row(j))
        sl = st.query(live.vectors[2], live.caption[2], after, after + 3 * peers.CLIP_S, 8)
        assert sl.keys[0] == "cam-live:2" and set(sl.keys) == {"cam-live:0", "cam-live:1", "cam-live:2"}
    finally:
        st.close()
    assert peers.in_process("find", name="rlivs", folder=str(folder), stream="cam-live", index=2, after=after) == \
        {"state": "findable"}
    got = peers.crash_trials("rlivs", folder, trials=2, after=after + 1e6, seed=3)
    assert got["counts"] == {"findable": 2}, json.dumps(got)
    assert all(t["acked"] >= 1 for t in got["trials"])


def test_table_has_a_row_per_store_and_size():
    r = {"store": "rlivs", "captions": 1000, "build_s": 1.0, "mb_per_camera_hour": 1.0,
         "latency": {"no_filter": {"p50_ms": 1, "p95_ms": 2}, "window_6h": {"p50_ms": 3, "p95_ms": 4},
                     "open_ms": 5, "cold_ms": 6, "rss_mb_over_empty": 7, "window_shortlist_mean": 64.0},
         "commit": {"p50_ms": 8, "p95_ms": 9}, "crash": {"counts": {"findable": 3}}}
    text = peers.table({"scale": [r], "quality": {"rlivs": {"windows_applied": {"recall@8": 0.6},
                                                           "no_filter": {"recall@8": 0.5},
                                                           "plain": {"recall@8": 0.4}}}})
    lines = text.splitlines()
    assert len(lines) == 3 and lines[2].startswith("| rlivs | 1,000 |")
    assert "findable 3" in lines[2] and "0.6 / 0.5 / 0.4" in lines[2]
