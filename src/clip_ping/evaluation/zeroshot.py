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


def _stripped_lines(path: str | Path) -> list[str]:
    """Every line of a UTF-8 text file, stripped; ``ValueError`` naming the file and line of
    bytes that are not UTF-8."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ValueError(
            f"{path}, line {line}: byte 0x{data[exc.start]:02x} is not UTF-8 text; save the "
            "file as UTF-8"
        ) from None
    return [line.strip() for line in text.splitlines()]


def read_lines(path: str | Path) -> list[str]:
    """Non-empty, stripped lines of a UTF-8 text file (templates, class names)."""
    return [line for line in _stripped_lines(path) if line]


def read_class_names(path: str | Path) -> list[str]:
    """The class names of a file, one a line: line ``i + 1`` names class ``i``, so a blank
    line before the last name is refused (dropping it would shift every later class)."""
    lines = _stripped_lines(path)
    while lines and not lines[-1]:
        lines.pop()
    if "" in lines:
        raise ValueError(
            f"{path}, line {lines.index('') + 1}: a blank line among the class names; line "
            "i + 1 names class i, so it would shift every later class. Name the class or "
            "remove the line"
        )
    return lines


def read_templates(path: str | Path) -> list[str]:
    """Prompt templates of a file, one a line, each checked (:func:`check_templates`)."""
    templates = read_lines(path)
    check_templates(templates, f"{path}: ")
    return templates


def check_templates(templates: Sequence[str], where: str = "") -> None:
    """``ValueError`` unless each template holds ``{}`` once and no other field."""
    bad = [t for t in templates if not _one_slot(t)]
    if bad or not templates:
        raise ValueError(
            f"{where}prompt templates must be a non-empty list, each with '{{}}' once for the "
            f"class name (a literal brace is written twice: '{{{{'); bad: {bad or list(templates)}"
        )


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

    check_templates(templates)
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


def _one_slot(template: str) -> bool:
    """Whether ``template.format(name)`` fills exactly one ``{}`` and nothing else."""
    try:
        return template.format("\0").count("\0") == 1 and template.count("{}") >= 1
    except (IndexError, KeyError, ValueError):  # '{} {}', '{name}', '{'
        return False
