"""The CLIP loss (Radford et al., 2021): symmetric InfoNCE over the (gathered) batch.

For L2-normalised image and text embeddings ``Z_I, Z_T`` of shape ``(B, d)`` and scale
``s``,

    L_CLIP = 1/2 * (CE(s * Z_I Z_T^T, diag) + CE(s * Z_T Z_I^T, diag)).

Under torchrun the logits span the gathered global batch (``gather_with_grad``); with
``local_loss`` each rank scores only its own anchors against all targets, which sums to the
same gradient at a fraction of the logit memory.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..distributed import gather_batch, is_distributed
from .base import LossTerm, TermContext


def local_targets(local_batch: int, device: torch.device, local_loss: bool) -> torch.Tensor:
    """Row → column of the positive in logits of ``(local or global anchors, global batch)``."""
    labels = torch.arange(local_batch, device=device)
    if local_loss and is_distributed():
        labels = labels + local_batch * torch.distributed.get_rank()
    return labels


class ClipLoss(LossTerm):
    """Symmetric InfoNCE over the (gathered) batch: the term of every method.

    Args:
        local_loss: score only this rank's anchors against the gathered targets.
        gather_with_grad: all-gather features with gradient (needed for ``local_loss``).

    Shapes: ``image_features, text_features``: ``(B, d)`` normalised; ``logit_scale``: scalar.
    Returns ``{"clip_loss": scalar}``.

    Examples:
        >>> import torch
        >>> from clip_ping.losses import ClipLoss
        >>> z = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
        >>> ClipLoss()(z, z, torch.tensor(10.0))["clip_loss"].shape
        torch.Size([])
    """

    name = "clip"
    methods = ("clip",)
    in_every_method = True
    order = 0
    summed = ("clip_loss",)
    description = "the CLIP contrastive loss"

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False):
        super().__init__()
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad

    @classmethod
    def from_config(cls, cfg: Any, context: TermContext) -> ClipLoss:
        return cls(cfg.local_loss, cfg.gather_with_grad)

    def forward(
        self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        all_image = gather_batch(image_features, self.gather_with_grad)
        all_text = gather_batch(text_features, self.gather_with_grad)
        if self.local_loss:
            logits_image = logit_scale * image_features @ all_text.T
            logits_text = logit_scale * text_features @ all_image.T
            labels = local_targets(image_features.shape[0], image_features.device, True)
        else:
            logits_image = logit_scale * all_image @ all_text.T
            logits_text = logits_image.T
            labels = torch.arange(all_image.shape[0], device=image_features.device)
        loss = 0.5 * (F.cross_entropy(logits_image, labels) + F.cross_entropy(logits_text, labels))
        return {"clip_loss": loss}
