"""Neighbours that add to distillation (``--loss distill-nn``).

Distillation (:mod:`.distill`) pulls each anchor towards its *own* teacher features. This
method keeps those terms and adds CLIP-PING's neighbour terms on top, through the **same**
heads: the anchor's image must also pick out its drawn image neighbour's teacher features
(intra-modal u_{n_I(k)}, cross-modal v_{n_I(k)}), its caption those of its caption neighbour.
The neighbour terms carry their own weight, which decays over the run:

    L = L_CLIP + L_distill
        + λ_nbr · d(t) · w · (λ_NN · ½ (NN_I + NN_T) + λ_XNN · ½ (XNN_I + XNN_T))

with ``t`` the share of the run done, ``d`` the decay (``--neighbor-decay``: ``linear``
1 − t, ``cosine`` ½ (1 + cos πt), or ``none``), ``w`` the warm-up ramp and ``λ_nbr``
``--neighbor-weight``. Early on the neighbours widen what a sample is pulled towards (a
look-alike's caption is a plausible second description); late in the run the sample's
own features have the last word. It is the test of whether neighbours add anything once
the student already distils: the sweep on val says (docs/method.md).

Needs the banks and their neighbour tables; targets are the teachers' bank rows (the
``bank`` mode of the offline tables). Logged as ``train/nn_loss``, ``train/xnn_loss``
(distillation, as :mod:`.distill`) and ``train/nbr_loss`` (the weighted neighbour terms).

Examples:
    >>> from clip_ping.losses import method_terms
    >>> [term.name for term in method_terms("distill-nn")]
    ['clip', 'distill-nn']
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import UserError
from ..flags import flag_name
from .distill import DistillLoss
from .neighbor import NeighborTargets

#: ``--neighbor-decay``: how the neighbour terms' weight falls over the run.
DECAYS = ("linear", "cosine", "none")


def decay(schedule: str, progress: float) -> float:
    """The weight factor ``d(t)`` of ``schedule`` at the share ``progress`` of the run."""
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "none":
        return 1.0
    raise ValueError(f"--neighbor-decay {schedule!r}: choose one of {DECAYS}")


class DistillNeighborLoss(DistillLoss):
    """Distillation plus decaying neighbour terms through the same heads (module docstring)."""

    name = "distill-nn"
    methods = ("distill-nn",)
    reads = (*DistillLoss.reads, "progress")
    summed = ("nn_loss", "xnn_loss", "nbr_loss")
    description = (
        "contrastive distillation from each sample's own teacher features, plus "
        "CLIP-PING's neighbour terms through the same heads with a decaying weight"
    )
    settings = (
        *DistillLoss.settings,
        ("neighbor_k", "neighbours drawn among top-K"),
        ("neighbor_weight", "λ of the neighbour terms"),
        ("neighbor_decay", "decay of the neighbour weight over the run"),
    )

    def __init__(
        self,
        embed_dim: int,
        *,
        neighbor_weight: float = 0.5,
        neighbor_decay: str = "linear",
        **kwargs: Any,
    ):
        super().__init__(embed_dim, **kwargs)
        decay(neighbor_decay, 0.0)  # a clear error for an unknown schedule
        self.neighbor_weight, self.neighbor_decay = neighbor_weight, neighbor_decay

    @classmethod
    def guidance_settings(cls, cfg: Any) -> dict[str, Any]:
        return dict(
            k=cfg.neighbor_k, target="bank", source="offline", self_targets="exclude", own_rows=True
        )

    @classmethod
    def own_settings(cls, cfg: Any) -> dict[str, Any]:
        return dict(neighbor_weight=cfg.neighbor_weight, neighbor_decay=cfg.neighbor_decay)

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        super().check_config(cfg)
        if cfg.neighbor_weight == 0:
            raise UserError(
                f"{flag_name('neighbor_weight')}=0.0 leaves no neighbour term: that is "
                "--loss distill; give a weight above 0"
            )

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        targets: NeighborTargets,
        ramp: float = 1.0,
        grad_rows: torch.Tensor | None = None,
        progress: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        """As :meth:`NeighborLoss.forward` on the anchors' own targets, plus ``nbr_loss``
        (and its parts ``nbr_nn_loss``, ``nbr_xnn_loss``, logged) on the drawn neighbours'
        at the decayed weight for ``progress``, the share of the run done."""
        own = super().forward(
            image_features, text_features, logit_scale, targets.own(), ramp, grad_rows
        )
        factor = self.neighbor_weight * decay(self.neighbor_decay, progress) * ramp
        neighbors = image_features.new_zeros(())
        own["nbr_nn_loss"] = own["nbr_xnn_loss"] = neighbors
        if factor > 0:  # the heads have their gradient from the own terms either way
            drawn = super().forward(
                image_features, text_features, logit_scale, targets, 1.0, grad_rows
            )
            for kind in ("nn", "xnn"):
                own[f"nbr_{kind}_loss"] = drawn[f"{kind}_loss"].detach()
            neighbors = factor * (drawn["nn_loss"] + drawn["xnn_loss"])
        own["nbr_loss"] = neighbors
        return own
