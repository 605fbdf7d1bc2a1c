"""The ranking core: a slow reference, CLIP_benchmark's top-k, ties, and block independence."""

import pytest
import torch

from clip_ping.evaluation.ranking import negatives_outranking, pad_positives


def reference_counts(scores: torch.Tensor, groups: list[list[int]]) -> list[int]:
    """Obviously correct: negatives scoring at least the best positive, query by query."""
    counts = []
    for row, positives in zip(scores.tolist(), groups, strict=True):
        best = max(row[p] for p in positives)
        counts.append(sum(s >= best for t, s in enumerate(row) if t not in positives))
    return counts


def random_problem(seed, queries=37, targets=23, dim=8, max_positives=3):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(queries, dim, generator=gen)
    t = torch.randn(targets, dim, generator=gen)
    groups = [
        torch.randperm(targets, generator=gen)[: int(n)].tolist()
        for n in torch.randint(1, max_positives + 1, (queries,), generator=gen)
    ]
    return q, t, groups


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_counts_match_the_reference_and_clip_benchmark_topk(seed):
    q, t, groups = random_problem(seed)
    counts = negatives_outranking(q, t, pad_positives(groups))
    assert counts.tolist() == reference_counts(q @ t.T, groups)
    # Without ties, "count < k" is CLIP_benchmark's "any positive among the top-k indices".
    topk = (q @ t.T).topk(5, dim=1).indices
    expected = [bool(set(top.tolist()) & set(g)) for top, g in zip(topk, groups, strict=True)]
    assert (counts < 5).tolist() == expected


@pytest.mark.parametrize("block", [1, 5, 23, 24, 10**9])
def test_blocked_result_equals_unblocked(block):
    # block elements 1 and 5 → one query row per block (a row is never split); 10**9 → one block.
    q, t, groups = random_problem(3, queries=50)
    positives = pad_positives(groups)
    unblocked = negatives_outranking(q, t, positives, max_block_elements=10**9)
    assert torch.equal(negatives_outranking(q, t, positives, max_block_elements=block), unblocked)


def test_ties_count_against_the_query():
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # targets 0 and 1 identical
    query = torch.tensor([[1.0, 0.0]])
    # Positive 0 ties with negative 1: rank 2, not 1, whatever the sort order.
    assert negatives_outranking(query, targets, torch.tensor([[0]])).tolist() == [1]
    assert negatives_outranking(query, targets, torch.tensor([[1]])).tolist() == [1]
    # Both tied targets positive: ties among positives are free.
    assert negatives_outranking(query, targets, torch.tensor([[0, 1]])).tolist() == [0]
    # A collapsed model (all scores equal) is never a hit at 1.
    flat = negatives_outranking(
        torch.ones(4, 2), torch.ones(3, 2), torch.tensor([[0], [1], [2], [0]])
    )
    assert flat.tolist() == [2, 2, 2, 2]


def test_padding_and_errors():
    assert pad_positives([[3], [1, 2]]).tolist() == [[3, -1], [1, 2]]
    q, t = torch.eye(2), torch.eye(2)
    with pytest.raises(ValueError, match="query 1 has no positive"):
        negatives_outranking(q, t, torch.tensor([[0], [-1]]))
    with pytest.raises(ValueError, match="out of range for 2 targets"):
        negatives_outranking(q, t, torch.tensor([[0], [2]]))
