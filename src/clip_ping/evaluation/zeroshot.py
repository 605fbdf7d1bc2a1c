"""Zero-shot classification, CLIP_benchmark protocol.

Each class is embedded as the mean of its normalised prompt embeddings (one per template,
e.g. "a photo of a {}."), renormalised; an image is assigned the class with the highest
cosine similarity. Ties count against the image (see :mod:`.ranking`).

Examples:
    >>> import torch
    >>> from clip_ping.evaluation.zeroshot import zero_shot_metrics
    >>> zero_shot_metrics(torch.eye(3)[[0, 1, 1]], torch.eye(3), labels=[0, 1, 2])
    {'acc1': 0.6666666865348816, 'acc5': 1.0, 'mean_per_class_recall': 0.6666666865348816}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from .ranking import DEFAULT_MAX_BLOCK_ELEMENTS, hits_at, negatives_outranking

DEFAULT_TEMPLATES = ("a photo of a {}.", "a {}.", "an image of a {}.")


def read_lines(path: str | Path) -> list[str]:
    """Non-empty, stripped lines of a text file (class names, templates)."""
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    return [line for line in lines if line]


@torch.no_grad()
def class_embeddings(
    model,
    tokenizer,
    classnames: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> torch.Tensor:
    """``(C, D)`` normalised class embeddings: mean over templates of normalised prompts."""
    from .features import encode_texts

    bad = [t for t in templates if "{}" not in t]
    if bad or not templates:
        raise ValueError(
            f"prompt templates must be a non-empty list, each with '{{}}' for the class name; "
            f"bad: {bad or list(templates)}"
        )
    prompts = [t.format(name) for name in classnames for t in templates]
    texts = encode_texts(model, tokenizer, prompts, batch_size, device)  # (C * T, D)
    means = texts.view(len(classnames), len(templates), -1).mean(dim=1)
    return F.normalize(means, dim=-1)


def zero_shot_metrics(
    image_features: torch.Tensor,
    class_features: torch.Tensor,
    labels: Sequence[int] | torch.Tensor,
    max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
) -> dict[str, float]:
    """``acc1``, ``acc5`` and ``mean_per_class_recall`` (top-1 recall averaged over the
    classes present in ``labels``, i.e. balanced accuracy).

    Args:
        image_features: ``(N, D)`` image embeddings.
        class_features: ``(C, D)`` class embeddings (:func:`class_embeddings`).
        labels: ``(N,)`` class indices in ``[0, C)``.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    num_classes = class_features.shape[0]
    if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
        raise ValueError(
            f"labels span {int(labels.min())}..{int(labels.max())} but there are "
            f"{num_classes} class names; the class-name file must list one name per label"
        )
    counts = negatives_outranking(
        image_features, class_features, labels[:, None], max_block_elements
    )
    top1 = hits_at(counts, 1).float()
    recalls = [top1[labels == c].mean() for c in labels.unique()]
    return {
        "acc1": top1.mean().item(),
        "acc5": hits_at(counts, 5).float().mean().item(),
        "mean_per_class_recall": torch.stack(recalls).mean().item(),
    }
