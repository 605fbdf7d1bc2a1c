"""Zero-shot classification, CLIP_benchmark protocol.

Each class is embedded as the mean of its normalised prompt embeddings (one per
template, e.g. "a photo of a {}."), renormalised; an image is assigned the class with
the highest cosine similarity.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

DEFAULT_TEMPLATES = ("a photo of a {}.", "a {}.", "an image of a {}.")


def read_lines(path: str | Path) -> list[str]:
    """Non-empty, stripped lines of a text file (class names, templates)."""
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    return [line for line in lines if line]


@torch.no_grad()
def class_embeddings(
    model, tokenizer, classnames: Sequence[str], templates: Sequence[str], device: torch.device
) -> torch.Tensor:
    """``(C, d)`` normalised class embeddings: mean over templates of normalised prompts."""
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"prompt templates must contain '{{}}' for the class name: {bad}")
    rows = []
    for name in classnames:
        tokens = tokenizer([t.format(name) for t in templates]).to(device)
        prompts = model.encode_text(tokens, normalize=True)
        rows.append(F.normalize(prompts.mean(dim=0), dim=-1))
    return torch.stack(rows)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """``acc1``, ``acc5`` and ``mean_per_class_recall`` of ``(N, C)`` scores.

    Ties are broken towards the lower class index (``torch.topk`` order), the same for
    every method compared.
    """
    num_classes = logits.shape[1]
    topk = logits.topk(min(5, num_classes), dim=1).indices
    hits = topk == labels[:, None]
    recalls = [hits[labels == c, 0].float().mean() for c in labels.unique()]
    return {
        "acc1": hits[:, 0].float().mean().item(),
        "acc5": hits.any(dim=1).float().mean().item(),
        "mean_per_class_recall": torch.stack(recalls).mean().item(),
    }


@torch.no_grad()
def zero_shot_eval(
    model,
    tokenizer,
    images: torch.utils.data.Dataset,
    labels: Sequence[int],
    classnames: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Zero-shot metrics of ``model`` on ``images`` (items with an ``"image"`` tensor and an
    ``"index"`` into ``labels``)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    classes = class_embeddings(model, tokenizer, classnames, templates, device)
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size)
    all_logits, all_labels = [], []
    labels_t = torch.as_tensor(labels)
    for batch in loader:
        features = model.encode_image(batch["image"].to(device), normalize=True)
        all_logits.append((features @ classes.T).float().cpu())
        all_labels.append(labels_t[batch["index"]])
    model.train(was_training)
    return classification_metrics(torch.cat(all_logits), torch.cat(all_labels))
