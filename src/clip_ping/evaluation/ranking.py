"""The one ranking primitive behind zero-shot top-k and retrieval recall@k, in bounded memory.

For each query we count the **negatives that score at least as high as its best positive**.
A query is a hit at ``k`` when that count is below ``k``: its best positive is in the top
``k`` even if every tied negative is placed above it. Ties therefore count *against* the
query (pessimistic), which makes every metric independent of sort order and gives a
collapsed model (all scores equal) 0, not the share of whichever item sorts first.
Positives tied with each other do not matter: only negatives are counted.

Memory: queries are scored in blocks of ``rows`` against all targets, with
``rows = max(1, max_block_elements // num_targets)``. A block is one ``(rows, N)`` float32
score matrix, compared in place, so the transient memory is about
``4 * max(max_block_elements, N)`` bytes whatever the number of queries (the default
``2**23`` elements: 32 MiB). The full ``(Q, N)`` score matrix is never built.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

DEFAULT_MAX_BLOCK_ELEMENTS = 2**23  # scores in one block: 32 MiB of float32
MAX_TARGETS = 2**24  # float32 counts 0/1 exactly up to here


@torch.no_grad()
def negatives_outranking(
    queries: torch.Tensor,
    targets: torch.Tensor,
    positives: torch.Tensor,
    max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
) -> torch.Tensor:
    """Per query, the number of negative targets scoring ``>=`` its best positive.

    Args:
        queries: ``(Q, D)`` embeddings; the score is the dot product (cosine when normalised).
        targets: ``(N, D)`` embeddings.
        positives: ``(Q, P)`` long indices into ``targets``, padded with ``-1``; each query
            needs at least one positive.
        max_block_elements: query rows per block are chosen so a block's score matrix holds
            at most this many elements (at least one row).

    Returns:
        ``(Q,)`` long counts; the query is a hit at ``k`` iff its count is ``< k``.
    """
    if queries.shape[0] != positives.shape[0]:
        raise ValueError(
            f"{queries.shape[0]} queries but positives for {positives.shape[0]}; "
            "give one row of positive indices per query"
        )
    if positives.numel() and (positives.max() >= targets.shape[0]):
        raise ValueError(
            f"positive index {int(positives.max())} out of range for {targets.shape[0]} targets"
        )
    if targets.shape[0] > MAX_TARGETS:
        raise ValueError(
            f"{targets.shape[0]:,} targets: exact counting supports up to {MAX_TARGETS:,}; "
            "score against a subset or shard the targets"
        )
    valid = positives >= 0
    if not bool(valid.any(dim=1).all()):
        missing = int((~valid.any(dim=1)).nonzero()[0])
        raise ValueError(f"query {missing} has no positive target; every query needs one")
    queries, targets = queries.float(), targets.float()  # exact 0/1 sums below; no-op for fp32
    rows = max(1, max_block_elements // max(1, targets.shape[0]))
    counts = []
    for start in range(0, queries.shape[0], rows):
        stop = start + rows
        scores = queries[start:stop] @ targets.T  # (rows, N)
        # Positives' scores are read from the same matrix, so a tie is a tie bit for bit.
        block_valid = valid[start:stop]
        positive_scores = scores.gather(1, positives[start:stop].clamp(min=0))
        positive_scores = positive_scores.masked_fill(~block_valid, float("-inf"))
        best = positive_scores.amax(dim=1, keepdim=True)  # (rows, 1)
        # In place and summed as float: a bool mask's sum() would materialise an int64 copy,
        # 3x the block (measured); 0/1 float sums are exact below 2**24 per row.
        at_least_best = scores.ge_(best).sum(dim=1).long()
        positives_at_best = ((positive_scores >= best) & block_valid).sum(dim=1)
        counts.append(at_least_best - positives_at_best)
    return torch.cat(counts) if counts else torch.zeros(0, dtype=torch.long)


def hits_at(counts: torch.Tensor, k: int) -> torch.Tensor:
    """``(Q,)`` bool: the best positive is within the top ``k`` (ties counted against it)."""
    return counts < k


def recall_at(counts: torch.Tensor, ks: Iterable[int]) -> dict[int, float]:
    """Fraction of queries that are hits at each ``k``."""
    return {k: hits_at(counts, k).float().mean().item() for k in ks}


def pad_positives(groups: list[list[int]]) -> torch.Tensor:
    """``(Q, max group size)`` long matrix of each query's positive indices, ``-1``-padded."""
    width = max((len(g) for g in groups), default=0)
    out = torch.full((len(groups), max(1, width)), -1, dtype=torch.long)
    for row, group in enumerate(groups):
        out[row, : len(group)] = torch.as_tensor(group, dtype=torch.long)
    return out
