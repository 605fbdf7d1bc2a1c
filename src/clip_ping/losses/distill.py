"""Distillation: each anchor's *own* teacher features as its targets (``--loss distill``).

CLIP-PING's terms and heads (:class:`~.neighbor.NeighborLoss`) with every anchor as its own
"neighbour": the intra-modal term pulls the image embedding, through its head, towards the
image's own teacher feature u_k among the batch's, and the caption's towards v_k; the
cross-modal term pulls the image towards its own caption's text-teacher feature v_k and the
caption towards its image's u_k. One-directional InfoNCE over the (gathered) batch, as the
neighbour terms, with the same weights (``--nn-weight`` intra-, ``--xnn-weight``
cross-modal), heads and temperature (``--aux-temperature``). It is CLIP-PING's
``--neighbor-self only`` made a method of its own: the control that showed the neighbours'
gain to be distillation, and the base the other guidance methods are measured against.

Needs the two banks, not their neighbour tables. Logged as ``train/nn_loss`` and
``train/xnn_loss`` (intra- and cross-modal), as CLIP-PING's.

Examples:
    >>> from clip_ping.losses import method_terms
    >>> [term.name for term in method_terms("distill")]
    ['clip', 'distill']
"""

from __future__ import annotations

from typing import Any

from ..errors import UserError
from ..flags import flag_name
from .neighbor import OWN_ROWS, NeighborLoss, require_banks


class DistillLoss(NeighborLoss):
    """Contrastive distillation from the anchor's own teacher features (module docstring)."""

    name = "distill"
    methods = ("distill", "distill-fd")
    description = (
        "contrastive distillation: each sample's own frozen teacher features as targets, "
        "intra- and cross-modal, through linear heads"
    )
    settings = (
        ("image_bank", "image bank"),
        ("text_bank", "text bank"),
        ("nn_weight", "λ intra-modal"),
        ("xnn_weight", "λ cross-modal"),
        ("aux_temperature", "temperature of the teacher targets"),
        ("neighbor_warmup", "distillation warm-up steps"),
    )

    @classmethod
    def guidance_settings(cls, cfg: Any) -> dict[str, Any]:
        return dict(OWN_ROWS)

    @classmethod
    def from_config(cls, cfg: Any, context) -> DistillLoss:
        return cls(
            context.embed_dim,
            image_bank_dim=context.image_bank_dim,
            text_bank_dim=context.text_bank_dim,
            target="bank",
            nn_weight=cfg.nn_weight,
            xnn_weight=cfg.xnn_weight,
            aux_temperature=cfg.aux_temperature,
            local_loss=cfg.local_loss,
            gather_with_grad=cfg.gather_with_grad,
            **cls.own_settings(cfg),
        )

    @classmethod
    def own_settings(cls, cfg: Any) -> dict[str, Any]:
        """Keyword arguments of a subclass's own settings, beside distillation's."""
        return {}

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        require_banks(cfg)
        if cfg.nn_weight == 0 and cfg.xnn_weight == 0:
            raise UserError(
                f"{flag_name('nn_weight')}=0.0: with --xnn-weight 0 too no distillation term "
                "is left; use --loss clip, or give a weight above 0"
            )

    @classmethod
    def warnings(cls, cfg: Any, changed: set[str]) -> list[str]:
        return []
