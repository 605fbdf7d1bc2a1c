"""Relational guidance ("soft neighbours"): the student's in-batch similarity distributions
matched by KL to the teachers' (``--loss relational``).

Where CLIP-PING gives each anchor one neighbour drawn from its top K, this uses every other
sample of the batch, weighted by how alike the teachers find it. For the (gathered) batch,
with u, v the samples' image- and text-teacher features (unit bank rows), z_I, z_T the
student's embeddings, s the CLIP logit scale and τ_R the teachers' temperature:

- image–image: p_k = softmax_{j≠k}(u_k·u_j / τ_R), q_k = softmax_{j≠k}(s z_I(k)·z_I(j));
- text–text: the same with v and z_T;
- cross-modal: the teachers share no space, so a pair's relatedness is the mean of its two
  intra-modal similarities, r_kj = (u_k·u_j + v_k·v_j) / 2, diagonal included (r_kk = 1):
  p_k = softmax_j(r_kj / τ_R) is a soft version of CLIP's one-hot target, matched by the
  rows of the CLIP logits, image→text q_k = softmax_j(s z_I(k)·z_T(j)) and text→image alike.

    L_R = λ_R · w(t) · (KL_II + KL_TT + ½ (KL_IT + KL_TI)) / 3

each KL(p_k ‖ q_k) averaged over the batch's anchors. Samples skipped in a bank (zero rows)
are neither anchors nor columns. Related: TinyCLIP's affinity mimicking (cross-modal, from a
CLIP teacher), CLIP-KD's contrastive relational distillation, SEED's similarity
distributions over a queue; the intra-modal terms and the mean-similarity relatedness are
ours.

Examples:
    >>> from clip_ping.losses import method_terms
    >>> [term.name for term in method_terms("relational")]
    ['clip', 'relational']
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..distributed import gather_batch, is_distributed
from ..errors import UserError
from ..flags import flag_name
from .base import LossTerm, TermContext
from .clip import local_targets
from .neighbor import OWN_ROWS, NeighborTargets, require_banks


def soft_kl(
    teacher: torch.Tensor, student: torch.Tensor, columns: torch.Tensor, rows: torch.Tensor
) -> torch.Tensor:
    """Per row, KL(softmax(teacher) ‖ softmax(student)) over the ``columns`` where the
    ``(R, C)`` bool mask is True; ``rows`` ``(R,)`` bool: rows with no column give 0."""
    minus_inf = torch.finfo(student.dtype).min
    p = F.softmax(teacher.masked_fill(~columns, minus_inf), dim=-1)
    log_p = F.log_softmax(teacher.masked_fill(~columns, minus_inf), dim=-1)
    log_q = F.log_softmax(student.masked_fill(~columns, minus_inf), dim=-1)
    per_row = (p * (log_p - log_q)).masked_fill(~columns, 0.0).sum(-1)
    return per_row.masked_fill(~rows, 0.0)


class RelationalLoss(LossTerm):
    """KL between the student's and the teachers' in-batch similarity distributions
    (module docstring). Logs ``rel_loss`` (summed) and its three parts ``rel_image_loss``,
    ``rel_text_loss``, ``rel_cross_loss``."""

    name = "relational"
    methods = ("relational",)
    order = 20
    reads = ("image_features", "text_features", "logit_scale", "targets", "ramp")
    summed = ("rel_loss",)
    description = (
        "relational guidance: the in-batch similarity distributions of the frozen teachers, "
        "matched by KL (soft neighbours)"
    )
    settings = (
        ("image_bank", "image bank"),
        ("text_bank", "text bank"),
        ("rel_weight", "λ_R"),
        ("rel_temperature", "teachers' temperature τ_R"),
        ("neighbor_warmup", "guidance warm-up steps"),
    )

    def __init__(
        self,
        weight: float = 1.0,
        temperature: float = 0.05,
        local_loss: bool = False,
        gather_with_grad: bool = False,
    ):
        super().__init__()
        self.weight, self.temperature = weight, temperature
        self.local_loss, self.gather_with_grad = local_loss, gather_with_grad

    @classmethod
    def from_config(cls, cfg: Any, context: TermContext) -> RelationalLoss:
        return cls(cfg.rel_weight, cfg.rel_temperature, cfg.local_loss, cfg.gather_with_grad)

    @classmethod
    def guidance_settings(cls, cfg: Any) -> dict[str, Any]:
        return dict(OWN_ROWS)

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        require_banks(cfg)
        if cfg.rel_weight <= 0:
            raise UserError(
                f"{flag_name('rel_weight')}={cfg.rel_weight}: --loss {cfg.loss} needs a "
                "weight above 0; use --loss clip to leave the term out"
            )

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        targets: NeighborTargets,
        ramp: float = 1.0,
    ) -> dict[str, torch.Tensor]:
        """``targets``: self-targets (``nn_image`` = u_k, ``nn_text`` = v_k)."""
        u = F.normalize(targets.nn_image.to(image_features.dtype), dim=-1)
        v = F.normalize(targets.nn_text.to(image_features.dtype), dim=-1)
        ok = torch.ones(len(u), dtype=torch.bool, device=u.device)
        for valid in (targets.nn_image_valid, targets.nn_text_valid):
            ok = ok & (valid.to(u.device) if valid is not None else True)
        all_u, all_v = (gather_batch(x.detach(), with_grad=False) for x in (u, v))
        all_ok = gather_batch(ok.to(torch.uint8), with_grad=False).bool()
        all_image = gather_batch(image_features, self.gather_with_grad)
        all_text = gather_batch(text_features, self.gather_with_grad)
        if self.local_loss:  # this rank's anchors against the whole batch
            rows_image, rows_text, rows_u, rows_v, rows_ok = (
                image_features,
                text_features,
                u,
                v,
                ok,
            )
            diagonal = local_targets(len(u), u.device, True)
        else:
            rows_image, rows_text, rows_u, rows_v, rows_ok = (
                all_image,
                all_text,
                all_u,
                all_v,
                all_ok,
            )
            diagonal = torch.arange(len(all_u), device=u.device)
        columns = rows_ok[:, None] & all_ok[None, :]
        others = columns.clone()
        others[torch.arange(len(diagonal), device=u.device), diagonal] = False
        image_sim, text_sim = rows_u @ all_u.T, rows_v @ all_v.T
        parts = {
            "image": soft_kl(
                image_sim / self.temperature,
                logit_scale * rows_image @ all_image.T,
                others,
                rows_ok,
            ),
            "text": soft_kl(
                text_sim / self.temperature, logit_scale * rows_text @ all_text.T, others, rows_ok
            ),
        }
        related = (image_sim + text_sim) / (2 * self.temperature)
        parts["cross"] = 0.5 * (
            soft_kl(related, logit_scale * rows_image @ all_text.T, columns, rows_ok)
            + soft_kl(related, logit_scale * rows_text @ all_image.T, columns, rows_ok)
        )
        world = torch.distributed.get_world_size() if (self.local_loss and is_distributed()) else 1
        count = all_ok.sum().clamp(min=1)
        means = {name: part.sum() * world / count for name, part in parts.items()}
        loss = self.weight * ramp * (means["image"] + means["text"] + means["cross"]) / 3
        return {
            "rel_loss": loss,
            **{f"rel_{name}_loss": mean.detach() for name, mean in means.items()},
        }
