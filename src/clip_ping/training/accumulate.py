"""Gradient accumulation as open_clip does it (``--accum-freq N``): the contrastive terms see
the whole accumulated batch.

The N micro-batches are embedded without gradient first; then each is embedded again with
gradient and scored against the cached embeddings of all the others
(:func:`accumulate_gradients`, with :class:`Accumulated` telling the step which rows are
fresh). The passes' gradients sum to those of one pass over the whole batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..losses import NeighborTargets, total


@dataclass
class Accumulated:
    """The rest of an accumulated batch while one micro-batch is recomputed with gradient.

    ``image_features``/``text_features``: every micro-batch's ``(b_i, d)`` embeddings, cached
    without gradient; ``index``: the micro-batch this pass recomputes; ``targets``: the whole
    batch's neighbour targets (or None).
    """

    image_features: list[torch.Tensor]
    text_features: list[torch.Tensor]
    index: int
    targets: NeighborTargets | None = None

    def splice(self, fresh: torch.Tensor, cached: list[torch.Tensor]) -> torch.Tensor:
        """The whole batch's rows, this pass's micro-batch being ``fresh`` (with gradient)."""
        return torch.cat([*cached[: self.index], fresh, *cached[self.index + 1 :]])

    def grad_rows(self, device: torch.device) -> torch.Tensor:
        sizes = [len(part) for part in self.image_features]
        parts = [
            torch.full((size,), i == self.index, dtype=torch.bool, device=device)
            for i, size in enumerate(sizes)
        ]
        return torch.cat(parts)


def accumulate_gradients(
    step_module: nn.Module,
    model,
    inputs: list[tuple[torch.Tensor, torch.Tensor]],
    targets: NeighborTargets | None,
    ramp: float,
    summed: tuple[str, ...],
    backward: Callable,
    autocast: Callable = contextlib.nullcontext,
    progress: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Gradients of one batch given as micro-batches, as open_clip accumulates: every
    micro-batch ``(images, texts)`` of ``inputs`` is embedded by ``model`` without gradient
    first; then each is embedded again with gradient by ``step_module``
    (:class:`ContrastiveStep`, or its DDP wrapper) and scored against the cached embeddings
    of all the others, so every loss term has the whole batch as negatives. ``targets``: the
    whole batch's neighbour targets; ``summed``: the names that add up to the loss.
    ``backward(loss)`` runs after each pass; the passes' gradients sum to those of one pass
    over the whole batch. ``autocast()``: the student's precision. Returns the last pass's
    ``(loss, terms)`` (every pass has the whole batch's values) and the cached outputs of
    the whole batch. ``progress``: the share of the run done (:class:`TermInputs`)."""
    with torch.no_grad(), autocast():
        cached = [model(images, texts) for images, texts in inputs]
    images_cached = [c["image_features"] for c in cached]
    texts_cached = [c["text_features"] for c in cached]
    for index, (images, texts) in enumerate(inputs):
        accumulated = Accumulated(images_cached, texts_cached, index, targets)
        with autocast():
            terms, _ = step_module(images, texts, None, ramp, accumulated, progress)
            loss = total(terms, summed)
        backward(loss)
    out = {
        "image_features": torch.cat(images_cached),
        "text_features": torch.cat(texts_cached),
        "logit_scale": cached[-1]["logit_scale"],
    }
    return loss, terms, out
