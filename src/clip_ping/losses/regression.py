"""Feature regression (CLIP-KD's "FD"): each embedding, through a linear head, regressed onto
the sample's own teacher feature (``--loss fd``, and beside contrastive distillation
``--loss distill-fd``).

For anchor k, with u_k, v_k its image- and text-teacher features (unit rows of the banks)
and W_I: d→D_I, W_T: d→D_T linear heads:

    L_FD = λ_FD · w(t) · ½ (mean_k ‖normalise(W_I z_I(k)) − u_k‖² + mean_k ‖normalise(W_T z_T(k)) − v_k‖²)

(‖a − b‖² = 2 − 2 cos(a, b) for unit vectors). CLIP-KD (Yang et al., CVPR 2024) found this
per-sample feature distillation the best single distillation loss; there the teacher is one
CLIP model and the features are compared unnormalised, here the two unimodal teachers'
normalised features, through heads into their spaces. Samples skipped in a bank (a zero
row) are left out. The mean runs over the global batch, so two processes equal one.

Examples:
    >>> from clip_ping.losses import method_terms
    >>> [term.name for term in method_terms("distill-fd")]
    ['clip', 'distill', 'fd']
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import gather_batch, is_distributed
from ..errors import UserError
from ..flags import flag_name
from .base import LossTerm, TermContext
from .neighbor import OWN_ROWS, NeighborTargets, head_rows, require_banks


def regression(
    queries: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None
) -> torch.Tensor:
    """Mean over the valid rows of the global batch of ``‖normalise(queries) − targets‖²``;
    ``targets`` unit rows. Each process returns its rows' share of that mean, so that the
    gradient average of DDP gives the mean's gradient."""
    if valid is None:
        valid = torch.ones(len(queries), dtype=torch.bool, device=queries.device)
    targets = F.normalize(targets.to(queries.dtype), dim=-1)  # bank rows are float16
    distance = (F.normalize(queries, dim=-1) - targets).pow(2).sum(-1)
    count = gather_batch(valid.to(torch.uint8), with_grad=False).sum().clamp(min=1)
    world = torch.distributed.get_world_size() if is_distributed() else 1
    return distance[valid].sum() * world / count


class FeatureRegression(LossTerm):
    """λ_FD-weighted regression of each embedding onto its own teacher feature (module
    docstring). Logs ``fd_loss`` (summed) and ``fd_image_loss``, ``fd_text_loss``."""

    name = "fd"
    methods = ("fd", "distill-fd")
    order = 20  # after the contrastive terms
    reads = ("image_features", "text_features", "targets", "ramp", "grad_rows")
    summed = ("fd_loss",)
    description = (
        "feature regression onto each sample's own frozen teacher features (CLIP-KD's FD), "
        "through linear heads"
    )
    settings = (
        ("image_bank", "image bank"),
        ("text_bank", "text bank"),
        ("fd_weight", "λ_FD"),
        ("neighbor_warmup", "guidance warm-up steps"),
    )

    def __init__(self, embed_dim: int, image_bank_dim: int, text_bank_dim: int, weight: float):
        super().__init__()
        self.weight = weight
        self.heads = nn.ModuleDict(
            {
                "image": nn.Linear(embed_dim, image_bank_dim, bias=False),
                "text": nn.Linear(embed_dim, text_bank_dim, bias=False),
            }
        )

    @classmethod
    def from_config(cls, cfg: Any, context: TermContext) -> FeatureRegression:
        return cls(context.embed_dim, context.image_bank_dim, context.text_bank_dim, cfg.fd_weight)

    @classmethod
    def guidance_settings(cls, cfg: Any) -> dict[str, Any]:
        return dict(OWN_ROWS)

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        require_banks(cfg)
        if cfg.fd_weight <= 0:
            raise UserError(
                f"{flag_name('fd_weight')}={cfg.fd_weight}: --loss {cfg.loss} regresses with "
                "a weight above 0; use --loss clip or distill to leave it out"
            )

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        targets: NeighborTargets,
        ramp: float = 1.0,
        grad_rows: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``targets``: self-targets (``nn_image`` = u_k, ``nn_text`` = v_k)."""
        image = regression(
            head_rows(self.heads["image"], image_features, grad_rows),
            targets.nn_image,
            targets.nn_image_valid,
        )
        text = regression(
            head_rows(self.heads["text"], text_features, grad_rows),
            targets.nn_text,
            targets.nn_text_valid,
        )
        return {
            "fd_loss": self.weight * ramp * 0.5 * (image + text),
            "fd_image_loss": image.detach(),
            "fd_text_loss": text.detach(),
        }
