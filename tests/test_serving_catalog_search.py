"""The catalog's fast search (one fp16 pass for all queries, exact re-scoring, proof or fallback)
returns exactly what the exhaustive float32 ``IndexFlatIP`` search returns: same ids, same
scores, same order; also after re-encodes and domain moves, and when near-duplicate vectors make
the fp16 pass unprovable."""

from __future__ import annotations

import numpy as np
import pytest

from semirec.core.contracts import Domain
from semirec.core.sequences import Entry, UserState
from semirec.serving.catalog import CatalogIndex
from semirec.serving.popularity import PopularitySnapshot
from semirec.serving.recall import Recall

DIM = 128


def catalog(vectors: np.ndarray, *, fp16_from: int = 0) -> CatalogIndex:
    index = CatalogIndex(DIM, fp16_from=fp16_from)
    index.upsert([f"v{i}" for i in range(len(vectors))], vectors, [Domain.VIDEO] * len(vectors))
    return index


def assert_exact(index: CatalogIndex, queries: np.ndarray, k: int) -> None:
    got = index.search(queries, k)
    scores, rows = index.search_exhaustive(queries, k)
    for hits, ss, rr in zip(got, scores, rows, strict=True):
        assert [i for i, _ in hits] == [index._ids[r] for r in rr]
        assert np.array_equal(np.asarray([s for _, s in hits], np.float32), ss)  # bit for bit


@pytest.mark.parametrize(("nq", "k"), [(1, 10), (2, 250), (3, 400)])
def test_fp16_pass_equals_the_exhaustive_search(nq: int, k: int) -> None:
    rng = np.random.default_rng(nq)
    index = catalog(rng.normal(size=(6000, DIM)).astype(np.float32))
    assert_exact(index, rng.normal(size=(nq, DIM)).astype(np.float32), k)
    assert index.exhaustive_searches == 0  # proven by the fp16 pass, no full scan needed


def test_near_duplicates_fall_back_to_the_full_scan_and_stay_exact() -> None:
    rng = np.random.default_rng(7)
    base = rng.normal(size=(15, DIM)).astype(np.float32)  # 200 near-copies of each
    vectors = np.repeat(base, 200, axis=0) + rng.normal(scale=1e-5, size=(3000, DIM)).astype(np.float32)
    vectors[::7] = vectors[1::7][: len(vectors[::7])]  # exact duplicates too: ties
    index = catalog(vectors)
    queries = base[:2] + rng.normal(scale=0.05, size=(2, DIM)).astype(np.float32)
    assert_exact(index, queries, 25)
    assert index.exhaustive_searches > 0  # the boundary was within the fp16 error: proof failed


def test_both_indexes_follow_re_encodes_and_domain_moves() -> None:
    rng = np.random.default_rng(3)
    index = catalog(rng.normal(size=(4000, DIM)).astype(np.float32))
    moved = [f"v{i}" for i in range(0, 4000, 3)]
    index.upsert(moved, rng.normal(size=(len(moved), DIM)).astype(np.float32),
                 [Domain.PRODUCT if j % 2 else Domain.VIDEO for j in range(len(moved))])
    assert index.video_count == 4000 - len(moved) // 2
    assert_exact(index, rng.normal(size=(2, DIM)).astype(np.float32), 300)


def test_recall_is_the_same_with_and_without_the_fp16_pass() -> None:
    rng = np.random.default_rng(5)
    videos = rng.normal(size=(5000, DIM)).astype(np.float32)
    products = rng.normal(size=(500, DIM)).astype(np.float32)
    got = []
    for fp16_from in (0, 10**9):
        index = catalog(videos, fp16_from=fp16_from)
        index.upsert([f"p{i}" for i in range(500)], products, [Domain.PRODUCT] * 500)
        pop = PopularitySnapshot()
        pop.counts = {f"v{i}": 5000 - i for i in range(0, 5000, 5)}
        pop.ranked = sorted(pop.counts, key=lambda v: -pop.counts[v])
        state = UserState(video=[Entry(i, f"v{i * 97 % 5000}") for i in range(50)],
                          product=[Entry(i, f"p{i * 13 % 500}") for i in range(50)])
        got.append([(c.item_id, c.source, c.similarity) for c in Recall(index, pop).candidates(state)])
        assert len(got[-1]) == 500
    assert got[0] == got[1]


def test_serving_runs_faiss_and_numpy_blas_on_one_thread() -> None:
    import faiss
    from threadpoolctl import threadpool_info

    from semirec.serving.threads import single_threaded_math

    assert single_threaded_math() >= 2  # numpy's OpenBLAS and faiss's OpenMP at least
    assert faiss.omp_get_max_threads() == 1
    pools = threadpool_info()
    assert any(p["user_api"] == "blas" and "numpy" in p["filepath"] for p in pools)
    assert {p["num_threads"] for p in pools} == {1}
