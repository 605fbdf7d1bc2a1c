"""Frozen embeddings of an evaluation set: every task scores these, never the model itself."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from ..workers import loader_workers


@torch.no_grad()
def encode_images(
    model,
    images: Dataset,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    workers: int = 0,
) -> torch.Tensor:
    """``(N, D)`` normalised float32 image embeddings on the CPU, in dataset order.

    ``images[i]`` is a dict with an ``"image"`` ``(3, H, W)`` tensor and its ``"index"``
    ``i``; the index places each row, so a loader's order cannot scramble the result.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loader = DataLoader(images, batch_size=batch_size, **loader_workers(workers))
    features: torch.Tensor | None = None
    try:
        for batch in loader:
            out = model.encode_image(batch["image"].to(device), normalize=True).float().cpu()
            if features is None:
                features = torch.empty(len(images), out.shape[1])
            features[batch["index"]] = out
    finally:
        model.train(was_training)
    if features is None:
        raise ValueError("no images to encode: the evaluation set is empty")
    return features


@torch.no_grad()
def encode_texts(
    model,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``(T, D)`` normalised float32 text embeddings on the CPU, in ``texts`` order."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        chunks = [
            model.encode_text(tokenizer(list(texts[i : i + batch_size])).to(device), normalize=True)
            .float()
            .cpu()
            for i in range(0, len(texts), batch_size)
        ]
    finally:
        model.train(was_training)
    if not chunks:
        raise ValueError("no texts to encode")
    return torch.cat(chunks)
