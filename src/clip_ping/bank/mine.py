"""Top-K neighbour mining over a feature bank: for each row i, the K rows j ≠ i of highest
inner product (the rows are unit vectors, so: cosine similarity).

Backends:

- ``exact``: blocked matmul + top-k in torch. Queries go in blocks of ``block_rows``, the bank
  in blocks of ``DATABASE_BLOCK_ROWS``; a running top-K per query is merged block by block.
  Memory beyond the bank and the outputs is fixed by the two block sizes, whatever N. Runs on
  the GPU when ``device`` is one. Self is excluded by index (an exact duplicate of row i is a
  neighbour of i; row i itself never is).
- ``faiss-flat``: FAISS ``IndexFlatIP`` (exact; a float32 copy of the bank).
- ``faiss-ivf``: FAISS IVF with fp16 storage (lossless for our fp16 banks), ``nlist`` ≈
  4·√N lists, ``nprobe`` probed per query. Approximate: recall@1 and recall@K against exact
  search on a random sample of queries are printed and returned. Rows for which IVF finds
  fewer than K candidates are redone exactly.
- ``auto``: ``exact`` up to ``AUTO_EXACT_MAX_ROWS[device type]`` rows, else ``faiss-ivf``.

Rows listed in ``exclude`` (a bank's skipped bad samples) are never returned as neighbours:
the exact search masks them; FAISS results that contain one are redone exactly.

Examples:
    >>> import numpy as np
    >>> from clip_ping.bank.mine import mine_neighbors
    >>> features = np.eye(3, 4, dtype=np.float16)[[0, 0, 1, 1, 2]]  # rows 0-1 and 2-3 alike
    >>> result = mine_neighbors(features, k=1, backend="exact", device="cpu", progress=False)
    >>> result.neighbors.ravel().tolist(), result.similarities.dtype
    ([1, 0, 3, 2, ...], dtype('float16'))
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..distributed import resolve_device
from .store import Bank, write_neighbor_table

BACKENDS = ("auto", "exact", "faiss-flat", "faiss-ivf")
# Largest N mined exactly by `auto`: on 2 CPU cores 200k rows take a few minutes (N² work).
AUTO_EXACT_MAX_ROWS = {"cpu": 200_000, "cuda": 20_000_000}
QUERY_BLOCK_ROWS = 4096
DATABASE_BLOCK_ROWS = 8192  # scores buffer: 4096 × 8192 float32 = 128 MiB
RECALL_SAMPLE = 1000
GPU_RESIDENT_FRACTION = 0.5  # of free GPU memory a bank may take to be uploaded whole
IVF_TRAIN_POINTS_PER_LIST = 40  # FAISS warns below 39
LOW_RECALL = 0.95  # faiss-ivf recall@1 below this prints a warning with the fix
IVF_KMEANS_ITERATIONS = 10  # FAISS default 25; training is minutes of a 2-core 1M-row run


@dataclass
class NeighborResult:
    neighbors: np.ndarray  # (N, K) int32, most similar first
    similarities: np.ndarray  # (N, K) float16
    backend: str
    seconds: float
    recall: dict = field(default_factory=dict)  # {"recall@1": ..., "recall@K": ...}
    settings: dict = field(default_factory=dict)


def _block(features, start: int, stop: int, device: torch.device) -> torch.Tensor:
    # The bank stays fp16 (memory-mapped, or resident on the GPU); blocks are widened to
    # float32 for the matmul: CPUs have no fast fp16 GEMM, and float32 keeps the ranking exact.
    if isinstance(features, torch.Tensor):
        return features[start:stop].float()
    return torch.from_numpy(np.array(features[start:stop])).to(device).float()


def _resident(features: np.ndarray, device: torch.device):
    """On a GPU with room for it, the whole fp16 bank uploaded once (else re-read per query
    block: N rows over PCIe for every 4,096 queries)."""
    if device.type != "cuda":
        return features
    free, _ = torch.cuda.mem_get_info(device)
    if features.nbytes > GPU_RESIDENT_FRACTION * free:
        return features
    resident = torch.empty(features.shape, dtype=torch.float16, device=device)
    for start in range(0, len(features), 1 << 18):
        resident[start : start + (1 << 18)] = torch.from_numpy(
            np.array(features[start : start + (1 << 18)])
        )
    return resident


def _top_k(
    database,
    num_rows: int,
    query: torch.Tensor,
    query_rows: torch.Tensor,
    k: int,
    device,
    exclude: torch.Tensor | None = None,
):
    """``(q, k)`` similarities and row indices of the top ``k`` database rows for each
    ``(q, D)`` query, its own row ``query_rows[i]`` and the rows ``exclude`` left out;
    database blocks of :data:`DATABASE_BLOCK_ROWS` rows bound the memory."""
    best_sim = torch.full((len(query), k), -math.inf, device=device)
    best_index = torch.full((len(query), k), -1, dtype=torch.long, device=device)
    for d0 in range(0, num_rows, DATABASE_BLOCK_ROWS):
        d1 = min(d0 + DATABASE_BLOCK_ROWS, num_rows)
        scores = query @ _block(database, d0, d1, device).T  # (q, d)
        own = (query_rows >= d0) & (query_rows < d1)  # queries whose own row is here
        if own.any():
            scores[own.nonzero()[:, 0], query_rows[own] - d0] = -math.inf
        if exclude is not None:
            here = exclude[(exclude >= d0) & (exclude < d1)]
            scores[:, here - d0] = -math.inf
        top_sim, top_index = scores.topk(min(k, d1 - d0), dim=1)
        merged_sim = torch.cat([best_sim, top_sim], 1)
        merged_index = torch.cat([best_index, top_index + d0], 1)
        best_sim, order = merged_sim.topk(k, dim=1)
        best_index = merged_index.gather(1, order)
    return best_sim, best_index


def search_vectors(
    features: np.ndarray,
    queries: torch.Tensor,
    exclude: torch.Tensor,
    k: int,
    skipped: np.ndarray | None = None,
) -> torch.Tensor:
    """``(B, k)`` rows of ``features`` ``(N, D)`` most similar to the ``(B, D)`` query
    vectors, row ``exclude[b]`` left out for query ``b`` and the ``skipped`` rows for all
    (online search, on the CPU)."""
    device = torch.device("cpu")
    query = queries.float().to(device)
    never = torch.as_tensor(skipped, dtype=torch.long) if skipped is not None else None
    _, index = _top_k(features, len(features), query, exclude.long().to(device), k, device, never)
    return index


def exact_search(
    features: np.ndarray,
    k: int,
    queries: np.ndarray | None = None,
    device: str | torch.device = "cpu",
    block_rows: int = QUERY_BLOCK_ROWS,
    progress: bool = False,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of each query row among ``features`` ``(N, D)``, excluding itself
    and the rows ``exclude``.

    ``queries``: row indices to search for (default all). Returns ``(Q, k)`` int32 indices
    and float32 similarities, most similar first.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    num_rows = len(features)
    rows = np.arange(num_rows) if queries is None else np.asarray(queries)
    out_index = np.empty((len(rows), k), np.int32)
    out_sim = np.empty((len(rows), k), np.float32)
    database = _resident(features, device)
    never = None if exclude is None else torch.as_tensor(exclude, dtype=torch.long, device=device)
    bar = tqdm(total=len(rows), unit="rows", desc="exact top-k", disable=not progress)
    for q0 in range(0, len(rows), block_rows):
        query_rows = torch.from_numpy(rows[q0 : q0 + block_rows]).to(device)
        query = _gather_rows(features, rows[q0 : q0 + block_rows], device)
        best_sim, best_index = _top_k(database, num_rows, query, query_rows, k, device, never)
        out_index[q0 : q0 + len(query)] = best_index.cpu().numpy()
        out_sim[q0 : q0 + len(query)] = best_sim.cpu().numpy()
        bar.update(len(query))
    bar.close()
    return out_index, out_sim


def _gather_rows(features: np.ndarray, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1:  # contiguous: one slice, no fancy index
        return _block(features, int(rows[0]), int(rows[-1]) + 1, device)
    return torch.from_numpy(np.asarray(features[rows])).to(device).float()


def _faiss_threads() -> None:
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())


def _drop_self(index: np.ndarray, sim: np.ndarray, rows: np.ndarray, k: int):
    """``(Q, k + 1)`` results → ``(Q, k)`` without the query's own row (or, where it was not
    returned, without the last: ties with duplicates may push it out)."""
    is_self = index == rows[:, None]
    is_self[~is_self.any(1), -1] = True
    keep = np.argsort(is_self, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(index, keep, 1), np.take_along_axis(sim, keep, 1)


def _faiss_search(index, features: np.ndarray, k: int, block_rows: int, desc: str, progress):
    num_rows = len(features)
    out_index = np.empty((num_rows, k), np.int32)
    out_sim = np.empty((num_rows, k), np.float32)
    for q0 in tqdm(range(0, num_rows, block_rows), desc=desc, disable=not progress, unit="block"):
        query = np.ascontiguousarray(features[q0 : q0 + block_rows], dtype=np.float32)
        sim, found = index.search(query, k + 1)
        rows = np.arange(q0, q0 + len(query))
        found, sim = _drop_self(found, sim, rows, k)
        out_index[q0 : q0 + len(query)], out_sim[q0 : q0 + len(query)] = found, sim
    return out_index, out_sim


def _add_in_blocks(index, features: np.ndarray, block_rows: int) -> None:
    for start in range(0, len(features), block_rows):
        index.add(np.ascontiguousarray(features[start : start + block_rows], dtype=np.float32))


def faiss_flat_search(features: np.ndarray, k: int, progress: bool = False):
    """Exact search with FAISS ``IndexFlatIP`` → ``(N, k)`` int32 indices, float32 sims."""
    import faiss

    _faiss_threads()
    index = faiss.IndexFlatIP(features.shape[1])
    _add_in_blocks(index, features, 65536)
    return _faiss_search(index, features, k, 16384, "faiss-flat", progress)


def faiss_ivf_search(
    features: np.ndarray,
    k: int,
    nlist: int | None = None,
    nprobe: int = 32,
    seed: int = 0,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Approximate search with FAISS IVF (fp16 codes) → indices, sims, settings used."""
    import faiss

    _faiss_threads()
    num_rows, dim = features.shape
    nlist = nlist or max(1, min(round(4 * math.sqrt(num_rows)), num_rows // 39))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFScalarQuantizer(
        quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
    )
    index.cp.niter = IVF_KMEANS_ITERATIONS
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(num_rows, min(num_rows, IVF_TRAIN_POINTS_PER_LIST * nlist), False))
    index.train(np.asarray(features[sample], dtype=np.float32))
    _add_in_blocks(index, features, 65536)
    index.nprobe = min(nprobe, nlist)
    found, sim = _faiss_search(index, features, k, 16384, "faiss-ivf", progress)
    missing = np.flatnonzero((found < 0).any(1))
    if len(missing):  # probed lists held fewer than k + 1 rows: redo those rows exactly
        print(f"faiss-ivf: {len(missing):,} rows had < {k} candidates; searched them exactly")
        found[missing], sim[missing] = exact_search(features, k, queries=missing)
    return found, sim, {"nlist": nlist, "nprobe": index.nprobe, "exact_fallback_rows": len(missing)}


def recall_at(
    features: np.ndarray, found: np.ndarray, k: int, sample: np.ndarray, device="cpu"
) -> dict:
    """Recall of ``found`` ``(N, ≥k)`` against exact search for the ``sample`` rows.

    A neighbour counts as found when its true similarity reaches the exact k-th (or first)
    similarity minus 1e-6, so an equally close duplicate is not a miss.
    """
    _, exact_sim = exact_search(features, k, queries=sample, device=device)
    query = np.asarray(features[sample], dtype=np.float32)  # (S, D)
    neighbours = np.asarray(features[found[sample, :k].ravel()], dtype=np.float32)
    true_sim = np.einsum("sd,skd->sk", query, neighbours.reshape(len(sample), k, -1))
    hit1 = true_sim[:, 0] >= exact_sim[:, 0] - 1e-6
    hit_k = true_sim >= exact_sim[:, -1:] - 1e-6
    return {"recall@1": float(hit1.mean()), f"recall@{k}": float(hit_k.mean())}


def mine_neighbors(
    features: np.ndarray,
    k: int,
    backend: str = "auto",
    device: str = "auto",
    nlist: int | None = None,
    nprobe: int = 32,
    recall_sample: int = RECALL_SAMPLE,
    seed: int = 0,
    progress: bool = True,
    exclude: np.ndarray | None = None,
) -> NeighborResult:
    """Top-``k`` neighbours of each row of ``features`` (N, D), not itself or rows ``exclude``."""
    num_rows = len(features)
    exclude = None if exclude is None or len(exclude) == 0 else np.asarray(exclude, np.int64)
    usable = num_rows - (0 if exclude is None else len(exclude))
    if not 1 <= k < usable:
        skipped = f", {num_rows - usable:,} skipped as bad" if exclude is not None else ""
        raise ValueError(f"--k {k}: need 1 <= k < number of rows ({num_rows:,}{skipped})")
    if nlist is not None and nlist > num_rows:  # a FAISS RuntimeError otherwise
        raise ValueError(f"--nlist {nlist} exceeds the bank's {num_rows:,} rows: use at most that")
    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    resolved = resolve_device(device)
    if backend == "auto":
        exact_max = AUTO_EXACT_MAX_ROWS.get(resolved.type, AUTO_EXACT_MAX_ROWS["cpu"])
        backend = "exact" if num_rows <= exact_max else "faiss-ivf"
    started, settings, recall = time.perf_counter(), {}, {}
    if backend == "exact":
        found, sim = exact_search(features, k, device=resolved, progress=progress, exclude=exclude)
    elif backend == "faiss-flat":
        found, sim = faiss_flat_search(features, k, progress)
    else:
        found, sim, settings = faiss_ivf_search(features, k, nlist, nprobe, seed, progress)
    if exclude is not None and backend != "exact":  # FAISS saw every row: redo those hit
        redo = np.flatnonzero(np.isin(found, exclude).any(1))
        if len(redo):
            found[redo], sim[redo] = exact_search(
                features, k, queries=redo, device=resolved, exclude=exclude
            )
    seconds = time.perf_counter() - started
    if backend == "faiss-ivf" and recall_sample > 0:
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(num_rows, min(recall_sample, num_rows), replace=False))
        recall = recall_at(features, found, k, sample, resolved)
        print(
            f"{backend}: recall@1 {recall['recall@1']:.4f}, recall@{k} {recall[f'recall@{k}']:.4f} "
            f"against exact search on {len(sample):,} random queries ({settings})"
        )
        if recall["recall@1"] < LOW_RECALL:
            print(
                f"warning: faiss-ivf recall@1 {recall['recall@1']:.2f} is below {LOW_RECALL}: "
                f"raise --nlist (now {settings['nlist']}; more lists than the bank has clusters "
                f"of neighbours) and --nprobe (now {settings['nprobe']}), or mine with "
                "--backend exact on a GPU"
            )
    return NeighborResult(found, sim.astype(np.float16), backend, seconds, recall, settings)


def caption_groups(captions: list[str]) -> np.ndarray:
    """``(N,)`` group ids for :func:`drop_same_group`: rows with identical captions share one."""
    _, groups = np.unique(np.asarray(captions, dtype=object), return_inverse=True)
    return groups.reshape(-1)


def drop_same_group(result: NeighborResult, groups: np.ndarray, k: int) -> NeighborResult:
    """Keep each row's first ``k`` neighbours from another group than its own.

    ``groups`` ``(N,)`` labels rows that must not guide each other (e.g. identical captions:
    the same concept drawn in two styles). ``result`` must hold at least ``k + g - 1``
    neighbours per row, ``g`` the largest group size, so ``k`` remain after dropping.
    """
    groups = np.asarray(groups)
    keep = groups[result.neighbors] != groups[:, None]
    short = np.flatnonzero(keep.sum(axis=1) < k)
    if len(short):
        raise ValueError(
            f"row {short[0]} has fewer than {k} neighbours outside its group; mine more "
            "neighbours before dropping same-group rows"
        )
    # Stable order: the kept columns of each row, most similar first.
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    neighbors = np.take_along_axis(result.neighbors, order, axis=1)
    similarities = np.take_along_axis(result.similarities, order, axis=1)
    settings = {**result.settings, "excluded_groups": int(len(np.unique(groups)))}
    return NeighborResult(
        neighbors, similarities, result.backend, result.seconds, result.recall, settings
    )


def mine_bank(
    bank_dir: str | Path,
    k: int,
    exclude_groups: np.ndarray | None = None,
    paired_bank: str | Path | None = None,
    **options,
) -> NeighborResult:
    """Mine the bank in ``bank_dir`` and write its neighbour table (:mod:`.store`).

    The bank's skipped rows are never neighbours; with ``paired_bank`` (the other modality's
    bank of the same data) its skipped rows are not either: a sample with a bad image but a
    good caption must not become a caption neighbour whose image-side target is a zero row.
    With ``exclude_groups`` ``(N,)``, rows of the anchor's own group are not neighbours
    (:func:`drop_same_group`); the search then asks for as many more as the largest group.
    """
    bank = Bank(bank_dir)
    excluded = bank.skipped
    if paired_bank is not None:
        paired = Bank(paired_bank)
        if paired.num_rows != bank.num_rows:
            raise ValueError(
                f"--exclude-skipped-of {paired.path} has {paired.num_rows:,} rows but "
                f"{bank.path} has {bank.num_rows:,}; pass the other bank of the same data"
            )
        excluded = np.union1d(excluded, paired.skipped)
    options.setdefault("exclude", excluded)
    if exclude_groups is None:
        result = mine_neighbors(bank.features, k, **options)
    else:
        if len(exclude_groups) != bank.num_rows:
            raise ValueError(
                f"{len(exclude_groups):,} group ids for a bank of {bank.num_rows:,} rows in "
                f"{bank.path}; pass the captions of the data the bank was built from"
            )
        largest = int(np.unique(exclude_groups, return_counts=True)[1].max())
        result = mine_neighbors(bank.features, k + largest - 1, **options)
        result = drop_same_group(result, exclude_groups, k)
    details = {"backend": result.backend, "seconds": round(result.seconds, 2)}
    details.update(recall=result.recall, settings=result.settings, excluded_rows=len(excluded))
    write_neighbor_table(bank, result.neighbors, result.similarities, **details)
    return result
