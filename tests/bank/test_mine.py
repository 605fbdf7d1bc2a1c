"""Neighbour mining: every backend against a brute-force numpy reference."""

import numpy as np
import pytest

from clip_ping.bank import exact_search, mine_neighbors
from clip_ping.bank import mine as nb

K = 5


def clustered(num_rows: int, dim: int, clusters: int, seed: int = 0) -> np.ndarray:
    """Unit rows around random centres, float16: a small stand-in for a teacher bank."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    rows = centres[rng.integers(clusters, size=num_rows)] + 0.6 * rng.normal(size=(num_rows, dim))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float16)


def brute_force(features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Obviously correct: all similarities in float64, self set to -inf, full sort."""
    x = features.astype(np.float64)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, 1)


def assert_matches_reference(found, sims, ref_index, ref_sims):
    np.testing.assert_allclose(sims.astype(np.float64), ref_sims, atol=2e-3)
    # Indices must agree except between neighbours tied to float32 precision.
    gaps = np.diff(ref_sims, axis=1, prepend=np.inf, append=-np.inf)
    clear = (np.abs(gaps[:, :-1]) > 1e-5) & (np.abs(gaps[:, 1:]) > 1e-5)
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(found[clear], ref_index[clear])


@pytest.fixture(scope="module")
def bank():
    return clustered(3000, 48, clusters=40)


@pytest.fixture(scope="module")
def reference(bank):
    return brute_force(bank, K)


@pytest.mark.parametrize("backend", ["exact", "faiss-flat"])
def test_exact_backends_equal_brute_force(bank, reference, backend, monkeypatch):
    monkeypatch.setattr(nb, "DATABASE_BLOCK_ROWS", 700)  # several blocks, a ragged last one
    result = mine_neighbors(bank, K, backend=backend, device="cpu", progress=False)
    assert result.neighbors.dtype == np.int32 and result.similarities.dtype == np.float16
    assert result.neighbors.shape == (len(bank), K) and result.backend == backend
    assert_matches_reference(result.neighbors, result.similarities, *reference)


def test_exact_query_blocks_and_subsets(bank, reference, monkeypatch):
    monkeypatch.setattr(nb, "DATABASE_BLOCK_ROWS", 512)
    found, sims = exact_search(bank, K, block_rows=333)
    assert_matches_reference(found, sims, *reference)
    rows = np.array([2999, 5, 1700, 6])  # unsorted, non-contiguous queries
    sub_index, _ = exact_search(bank, K, queries=rows, block_rows=3)
    np.testing.assert_array_equal(sub_index, found[rows])


def test_ivf_recall_above_095(bank, reference, capsys):
    result = mine_neighbors(bank, K, backend="faiss-ivf", nprobe=8, recall_sample=500)
    assert result.settings["nlist"] == 3000 // 39  # 4·√N capped by the training points
    printed = capsys.readouterr().out
    assert "recall@1" in printed and f"recall@{K}" in printed
    ref_index, ref_sims = reference
    recall_1 = np.mean(result.neighbors[:, 0] == ref_index[:, 0])
    recall_k = np.mean(
        [len(set(a) & set(b)) / K for a, b in zip(result.neighbors, ref_index, strict=True)]
    )
    assert recall_1 >= 0.95 and recall_k >= 0.9, (recall_1, recall_k)
    # The printed estimate (500 random queries) agrees with the full measurement.
    assert abs(result.recall["recall@1"] - recall_1) < 0.05
    assert abs(result.recall[f"recall@{K}"] - recall_k) < 0.05


def test_ivf_rows_with_too_few_candidates_are_searched_exactly(bank):
    k = 60  # more than one IVF list holds: with nprobe=1 many rows come back short
    result = mine_neighbors(bank, k, backend="faiss-ivf", nlist=70, nprobe=1, recall_sample=0)
    fallback = result.settings["exact_fallback_rows"]
    assert fallback > 0 and (result.neighbors >= 0).all()
    exact_index, _ = exact_search(bank, k)
    short = (result.neighbors != exact_index).any(1)
    assert short.sum() <= len(bank) - fallback  # the fallback rows are exact (ties aside)


@pytest.mark.parametrize("backend", ["exact", "faiss-flat", "faiss-ivf"])
def test_no_row_lists_itself_even_among_duplicates(backend):
    features = clustered(400, 16, clusters=5, seed=3)
    features[:12] = features[0]  # 12 identical rows: more than K + 1 perfect matches
    result = mine_neighbors(features, K, backend=backend, device="cpu", progress=False)
    rows = np.arange(len(features))[:, None]
    assert not (result.neighbors == rows).any()
    assert all(len(set(r)) == K for r in result.neighbors)  # K distinct neighbours
    assert ((result.neighbors >= 0) & (result.neighbors < len(features))).all()
    duplicates = result.neighbors[:12]
    assert (duplicates < 12).all()  # a duplicate's neighbours are the other duplicates
    np.testing.assert_allclose(result.similarities[:12].astype(np.float32), 1.0, atol=2e-3)


def test_auto_picks_by_size_and_device(bank, monkeypatch):
    assert mine_neighbors(bank, K, device="cpu", progress=False).backend == "exact"
    monkeypatch.setitem(nb.AUTO_EXACT_MAX_ROWS, "cpu", 1000)
    assert mine_neighbors(bank, K, device="cpu", recall_sample=0).backend == "faiss-ivf"


def test_bad_arguments():
    features = clustered(10, 4, clusters=2)
    with pytest.raises(ValueError, match="need 1 <= k < number of rows"):
        mine_neighbors(features, 10)
    with pytest.raises(ValueError, match="--backend 'annoy'"):
        mine_neighbors(features, 2, backend="annoy")


def test_excluded_groups_match_a_reference_without_them(bank):
    """Dropping same-group rows equals brute force with those rows set to -inf."""
    rng = np.random.default_rng(1)
    groups = rng.integers(0, len(bank) // 3, size=len(bank))  # groups of ~3 rows
    largest = int(np.bincount(groups).max())
    result = mine_neighbors(bank, K + largest - 1, backend="exact", progress=False)
    kept = nb.drop_same_group(result, groups, K)
    x = bank.astype(np.float64)
    sims = x @ x.T
    sims[groups[:, None] == groups[None, :]] = -np.inf  # self and its group
    ref_index = np.argsort(-sims, axis=1, kind="stable")[:, :K]
    assert_matches_reference(
        kept.neighbors, kept.similarities, ref_index, np.take_along_axis(sims, ref_index, 1)
    )
    assert not (groups[kept.neighbors] == groups[:, None]).any()
    with pytest.raises(ValueError, match="fewer than 5 neighbours outside its group"):
        nb.drop_same_group(result, np.zeros(len(bank), dtype=int), K)


def test_cli_excludes_same_caption_neighbours(shapes_banks, small_corpus, tmp_path):
    import shutil

    from clip_ping.bank import Bank
    from clip_ping.cli import main
    from clip_ping.data.loader import DataSpec, read_captions

    bank_dir = tmp_path / "text"
    bank_dir.mkdir()
    for name in ("features.npy", "meta.json"):
        shutil.copy(shapes_banks / "text" / name, bank_dir / name)
    train = str(small_corpus / "train.csv")
    captions = np.asarray(read_captions(DataSpec(train)))
    original, _ = Bank(shapes_banks / "text").neighbors()
    assert (captions[np.asarray(original)] == captions[:, None]).any()  # shapes repeat captions
    args = ["bank", "neighbors", str(bank_dir), "--k", "3", "--exclude-same-caption", train]
    assert main(args) == 0
    found, _ = Bank(bank_dir).neighbors()
    assert not (captions[np.asarray(found)] == captions[:, None]).any()
    other = str(tmp_path / "other.csv")
    (tmp_path / "other.csv").write_text("filepath,title\na.png,a red circle\n")
    assert main([*args[:-1], other]) == 2  # another dataset: a clear error, exit 2
