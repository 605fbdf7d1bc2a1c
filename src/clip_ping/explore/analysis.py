"""What the explorer shows, computed from embeddings alone: top-k lists, the rank of each
caption's correct image, the queries the runs disagree on, and zero-shot confusions.

Ranks follow :mod:`clip_ping.evaluation.ranking`: a caption's correct image has rank
``1 + the negatives scoring at least as high as it``, so a caption is "right" (rank 1)
exactly when ``clip-ping eval`` counts it as a text-to-image hit at 1.

Examples:
    >>> import torch
    >>> images = torch.eye(3)
    >>> texts = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]])
    >>> correct_ranks(images, texts, [0, 1, 2]).tolist()  # caption 1: images 0 and 2 tie or win
    [1, 3, 1]
    >>> top_k(torch.tensor([0.1, 0.9, 0.5]), 2)
    [[1, 0.9], [2, 0.5]]
    >>> counts = disagreement_counts({"a": torch.tensor([1, 2, 1]), "b": torch.tensor([1, 1, 3])})
    >>> counts["right"], counts["pairs"]
    ({'a': 2, 'b': 2}, [{'right': 'a', 'wrong': 'b', 'count': 1}, {'right': 'b', 'wrong': 'a', 'count': 1}])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from ..evaluation.ranking import negatives_outranking, pad_positives

RECALL_KS = (1, 5, 10)


def top_k(scores: torch.Tensor, k: int) -> list[list]:
    """``[[index, score], ...]`` of the ``k`` highest of the ``(N,)`` ``scores``, best first
    (scores rounded to 4 places for display)."""
    k = min(k, scores.shape[0])
    values, indices = torch.topk(scores.float(), k)
    return [[int(i), round(float(v), 4)] for i, v in zip(indices, values, strict=True)]


def positives_of_texts(captions: Sequence[str], caption_image: Sequence[int]) -> list[list[int]]:
    """For each caption row, the images of every row with the same text (identical texts
    cannot be told apart, so each is a correct answer)."""
    images_of: dict[str, set[int]] = {}
    for text, image in zip(captions, caption_image, strict=True):
        images_of.setdefault(text, set()).add(int(image))
    return [sorted(images_of[text]) for text in captions]


def correct_ranks(
    images: torch.Tensor, texts: torch.Tensor, positives: Sequence[int] | Sequence[list[int]]
) -> torch.Tensor:
    """``(T,)`` rank of each text's best correct image among ``(N, D)`` ``images`` (1 is
    first; ties count against it). ``positives``: one image index, or a list, per text."""
    groups = [[int(p)] if isinstance(p, int) else list(p) for p in positives]
    counts = negatives_outranking(texts, images, pad_positives(groups))
    return counts + 1


def recalls(ranks: torch.Tensor, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """``text_to_image_R@k`` of ``ranks``, as :func:`clip_ping.evaluation.retrieval_metrics`."""
    return {f"text_to_image_R@{k}": round(float((ranks <= k).float().mean()), 4) for k in ks}


def disagreement_order(ranks: Mapping[str, torch.Tensor]) -> list[int]:
    """Query indices, the ones whose correct answer the runs rank most differently first:
    by the spread of ``log(rank)`` across runs, then by the best rank (stable)."""
    stacked = torch.stack([r.double() for r in ranks.values()])  # (R, T)
    spread = stacked.log().amax(0) - stacked.log().amin(0)
    best = stacked.amin(0)
    order = sorted(range(stacked.shape[1]), key=lambda q: (-float(spread[q]), float(best[q]), q))
    return order


def disagreement_counts(ranks: Mapping[str, torch.Tensor]) -> dict:
    """How many queries each run gets right (rank 1), and for every ordered pair of runs how
    many the first gets right and the second wrong; ``total`` queries."""
    right = {name: int((r == 1).sum()) for name, r in ranks.items()}
    pairs = [
        {"right": a, "wrong": b, "count": int(((ranks[a] == 1) & (ranks[b] > 1)).sum())}
        for a in ranks
        for b in ranks
        if a != b
    ]
    total = len(next(iter(ranks.values()))) if ranks else 0
    return {"right": right, "pairs": pairs, "total": total}


def spread(ranks: Sequence[int]) -> float:
    """The spread of ``log(rank)`` of one query across runs (0: they agree)."""
    logs = [math.log(r) for r in ranks]
    return round(max(logs) - min(logs), 4)


def zeroshot_tables(
    images: torch.Tensor,
    classes: torch.Tensor,
    labels: Sequence[int],
    classnames: Sequence[str],
    max_pairs: int = 10,
    max_examples: int = 4,
) -> dict:
    """Per-class top-1 accuracy (argmax prediction) and the most confused pairs
    ``(true class, predicted class)``, each with up to ``max_examples`` image indices.

    Examples:
        >>> import torch
        >>> t = zeroshot_tables(torch.eye(2)[[0, 0, 1]], torch.eye(2), [0, 1, 1], ["a", "b"])
        >>> t["accuracy"], t["confused"]
        ([1.0, 0.5], [{'true': 1, 'predicted': 0, 'count': 1, 'examples': [1]}])
    """
    labels_t = torch.as_tensor(list(labels), dtype=torch.long)
    predicted = (images.float() @ classes.float().T).argmax(dim=1)
    accuracy = []
    for c in range(len(classnames)):
        mask = labels_t == c
        accuracy.append(
            round(float((predicted[mask] == c).float().mean()), 4) if mask.any() else None
        )
    pairs: dict[tuple[int, int], list[int]] = {}
    for index, (true, pred) in enumerate(zip(labels_t.tolist(), predicted.tolist(), strict=True)):
        if true != pred:
            pairs.setdefault((true, pred), []).append(index)
    ordered = sorted(pairs.items(), key=lambda item: (-len(item[1]), item[0]))[:max_pairs]
    confused = [
        {"true": t, "predicted": p, "count": len(rows), "examples": rows[:max_examples]}
        for (t, p), rows in ordered
    ]
    return {"accuracy": accuracy, "confused": confused}
