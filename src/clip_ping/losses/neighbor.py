"""CLIP-PING's neighbour guidance (arXiv 2412.03871, in clip-ping's formulation, see
docs/method.md): NN (intra-modal) and XNN (cross-modal) terms against each anchor's drawn
neighbours, and the typed targets they read.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import gather_batch, is_distributed
from ..errors import UserError
from ..flags import flag_name
from .base import LossTerm, TermContext
from .clip import local_targets

#: ``--neighbor-target``: the neighbours' frozen teacher features, or their student embeddings.
TARGET_MODES = ("bank", "memory")


@dataclass
class NeighborTargets:
    """What each anchor of the local batch is guided towards, ``B`` anchors.

    ``image_neighbors``/``text_neighbors``: ``(B,)`` sample index of the drawn image
    neighbour n_I(k) and caption neighbour n_T(k). The four targets, ``(B, D)``:

    - ``nn_image``: image-side target of n_I(k)   (NN, image)
    - ``nn_text``: caption-side target of n_T(k)  (NN, text)
    - ``xnn_image``: caption-side target of n_I(k) (XNN, image)
    - ``xnn_text``: image-side target of n_T(k)   (XNN, text)

    In ``bank`` mode a target is the neighbour's frozen teacher feature; in ``memory``
    mode its latest student embedding. ``*_valid``: ``(B,)`` bool, False where a memory
    row was never written (``None``: all valid).

    ``own_image`` ``(B, D_I)`` and ``own_text`` ``(B, D_T)``: each anchor's own teacher
    features u_k and v_k, where a term asks for them besides the neighbours' (guidance
    ``own_rows``; None otherwise), with ``anchors`` ``(B,)`` (the anchors' sample indices)
    and ``own_valid`` ``(B,)`` (False where the anchor is skipped in a bank; None: all
    valid). :meth:`own` gives them as targets of their own.
    """

    image_neighbors: torch.Tensor
    text_neighbors: torch.Tensor
    nn_image: torch.Tensor
    nn_text: torch.Tensor
    xnn_image: torch.Tensor
    xnn_text: torch.Tensor
    nn_image_valid: torch.Tensor | None = None
    nn_text_valid: torch.Tensor | None = None
    xnn_image_valid: torch.Tensor | None = None
    xnn_text_valid: torch.Tensor | None = None
    anchors: torch.Tensor | None = None
    own_image: torch.Tensor | None = None
    own_text: torch.Tensor | None = None
    own_valid: torch.Tensor | None = None

    def own(self) -> NeighborTargets:
        """The anchors' own teacher features as targets (every anchor its own neighbour:
        intra-modal u_k and v_k, cross-modal v_k for the image and u_k for the caption)."""
        if self.own_image is None or self.own_text is None or self.anchors is None:
            raise ValueError("these targets carry no own rows: draw them with own_rows=True")
        valid = self.own_valid
        return NeighborTargets(
            self.anchors,
            self.anchors,
            nn_image=self.own_image,
            nn_text=self.own_text,
            xnn_image=self.own_text,
            xnn_text=self.own_image,
            nn_image_valid=valid,
            nn_text_valid=valid,
            xnn_image_valid=valid,
            xnn_text_valid=valid,
        )

    def mask_unusable(self, image_ok: torch.Tensor, text_ok: torch.Tensor) -> None:
        """Mark the targets of unusable image (``image_ok`` False, ``(B,)``) and caption
        neighbours invalid: NN and XNN image terms follow the image neighbour, the text terms
        the caption neighbour."""
        for name, ok in (
            ("nn_image", image_ok),
            ("xnn_image", image_ok),
            ("nn_text", text_ok),
            ("xnn_text", text_ok),
        ):
            valid = getattr(self, f"{name}_valid")
            setattr(self, f"{name}_valid", ok if valid is None else valid & ok)

    @classmethod
    def cat(cls, parts: list[NeighborTargets]) -> NeighborTargets:
        """The targets of several micro-batches as those of one batch, in order."""
        merged = {}
        for f in fields(cls):
            values = [getattr(part, f.name) for part in parts]
            if all(v is None for v in values):
                merged[f.name] = None
                continue
            if any(v is None for v in values):  # some parts all valid (masks only)
                values = [
                    torch.ones(len(part.image_neighbors), dtype=torch.bool) if v is None else v
                    for part, v in zip(parts, values, strict=True)
                ]
            merged[f.name] = torch.cat([v.to(values[0].device) for v in values])
        return cls(**merged)

    def to(self, device: torch.device | str) -> NeighborTargets:
        """A copy with every tensor on ``device``."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return NeighborTargets(**{k: v if v is None else v.to(device) for k, v in moved.items()})


def target_keys(targets: torch.Tensor) -> torch.Tensor:
    """``(B, 2)`` int64 keys of the rows of ``targets`` ``(B, D)``: equal rows get equal keys
    (two random integer projections of the rows' exact float32 bits; unequal rows collide
    with probability ~2^-40). Two samples with the same caption have identical text-bank rows
    under different ids: their keys say so."""
    bits = targets.detach().float().contiguous().view(torch.int32).long()
    generator = torch.Generator().manual_seed(0x5EED)
    # |bits| < 2^31 and coefficients < 2^20: a product is below 2^51, so sums over up to
    # 4,096 dimensions are exact in int64 (wider rows wrap around, still equal for equal rows).
    coefficients = torch.randint(1, 1 << 20, (2, targets.shape[-1]), generator=generator)
    coefficients = coefficients.to(bits.device)
    return torch.stack([(bits * c).sum(-1) for c in coefficients], dim=-1)  # no int GEMM on GPUs


#: the guidance of the terms that read each anchor's own teacher rows (distill, fd, relational)
OWN_ROWS = dict(k=1, target="bank", source="offline", self_targets="only")


def require_banks(cfg: Any) -> None:
    """Refuse a config of a bank-reading ``--loss`` without ``--image-bank``/``--text-bank``."""
    for name in ("image_bank", "text_bank"):
        if not getattr(cfg, name):
            raise UserError(
                f"{flag_name(name)}=None: --loss {cfg.loss} needs it; build one with "
                "clip-ping bank build"
            )


def head_rows(head: nn.Linear, query: torch.Tensor, grad_rows: torch.Tensor | None):
    """``head(query)``; with ``grad_rows`` (gradient accumulation) the head gets its
    gradient through those rows only: the others are cached from other micro-batches."""
    projected = head(query)
    if grad_rows is None:
        return projected
    return torch.where(grad_rows[:, None], projected, F.linear(query, head.weight.detach()))


def neighbor_contrast(
    queries: torch.Tensor,
    targets: torch.Tensor,
    target_ids: torch.Tensor,
    valid: torch.Tensor | None,
    scale: torch.Tensor | float,
    local_loss: bool = False,
    gather_with_grad: bool = False,
) -> torch.Tensor:
    """One-directional InfoNCE: query ``a`` must pick out target ``a`` among the batch's
    targets.

    Args:
        queries: ``(B, D)`` normalised, with gradient.
        targets: ``(B, D)`` normalised constants (no gradient flows into them).
        target_ids: ``(B,)`` or ``(B, k)`` identity of each target (a sample index, or the
            :func:`target_keys` of its content). A column whose identity equals that of a
            row's positive is not a negative for that row: two anchors often share a
            neighbour, and two samples may share a caption.
        valid: ``(B,)`` bool or None. Invalid targets are neither positives (their row is
            skipped) nor negatives.
        scale: logit scale (1 / temperature).

    Returns the mean over valid anchors of the global batch (per-rank shares under
    ``local_loss`` that the DDP gradient average turns into the same mean).
    """
    if valid is None:
        valid = torch.ones(len(target_ids), dtype=torch.bool, device=target_ids.device)
    all_targets = gather_batch(targets.detach(), with_grad=False)
    all_ids = gather_batch(target_ids, with_grad=False)
    all_valid = gather_batch(valid.to(torch.uint8), with_grad=False).bool()
    if local_loss:
        rows, row_ids, row_valid = queries, target_ids, valid
        labels = local_targets(queries.shape[0], queries.device, True)
    else:
        rows, row_ids, row_valid = gather_batch(queries, gather_with_grad), all_ids, all_valid
        labels = torch.arange(rows.shape[0], device=queries.device)
    logits = scale * rows @ all_targets.to(rows.dtype).T
    same = row_ids[:, None] == all_ids[None, :]
    if same.ndim == 3:  # keys of several columns: equal when all are
        same = same.all(-1)
    excluded = same | ~all_valid[None, :]
    excluded[torch.arange(len(labels), device=labels.device), labels] = False
    logits = logits.masked_fill(excluded, float("-inf"))
    per_row = F.cross_entropy(logits, labels, reduction="none")
    world = torch.distributed.get_world_size() if (local_loss and is_distributed()) else 1
    return per_row[row_valid].sum() * world / all_valid.sum().clamp(min=1)


class NeighborLoss(LossTerm):
    """CLIP-PING's neighbour guidance: NN (intra-modal) and XNN (cross-modal) terms.

    The anchor's image embedding must pick out the target of its image neighbour (NN) and
    the caption-side target of its image neighbour (XNN); its text embedding the target
    of its caption neighbour (NN) and the image-side target of its caption neighbour (XNN).
    Each term is a one-directional cross-entropy over the (gathered) batch
    (:func:`neighbor_contrast`).

        nn_loss  = nn_weight  * w * (nn_image_loss  + nn_text_loss)  / 2
        xnn_loss = xnn_weight * w * (xnn_image_loss + xnn_text_loss) / 2

    with ``w`` the warm-up ramp passed to :meth:`forward`.

    ``bank`` targets live in the teachers' spaces: linear heads map the student
    embedding there (h_I: d→D_I and h_T: d→D_T for NN, g_I: d→D_T and g_T: d→D_I for XNN)
    and the scale is 1 / ``aux_temperature``. ``memory`` targets are student embeddings:
    no heads, the shared CLIP logit scale.

    Examples:
        >>> from clip_ping.losses import NeighborLoss
        >>> loss = NeighborLoss(embed_dim=64, image_bank_dim=1280, text_bank_dim=384)
        >>> sorted(loss.heads)
        ['nn_image', 'nn_text', 'xnn_image', 'xnn_text']
    """

    name = "neighbor"
    methods = ("clip-ping",)
    reads = ("image_features", "text_features", "logit_scale", "targets", "ramp", "grad_rows")
    summed = ("nn_loss", "xnn_loss")
    description = (
        "CLIP-PING's neighbour guidance from frozen teachers' feature banks (arXiv "
        "2412.03871; clip-ping's formulation)"
    )
    settings = (
        ("image_bank", "image bank"),
        ("text_bank", "text bank"),
        ("nn_weight", "λ_NN"),
        ("xnn_weight", "λ_XNN"),
        ("neighbor_k", "neighbours drawn among top-K"),
        ("neighbor_target", "neighbour targets"),
        ("neighbor_source", "neighbour source"),
        ("neighbor_self", "the anchor's own features"),
        ("aux_temperature", "temperature of bank targets"),
        ("neighbor_warmup", "neighbour warm-up steps"),
    )

    def __init__(
        self,
        embed_dim: int,
        *,
        image_bank_dim: int | None = None,
        text_bank_dim: int | None = None,
        target: str = "bank",
        nn_weight: float = 1.0,
        xnn_weight: float = 1.0,
        aux_temperature: float = 0.1,
        local_loss: bool = False,
        gather_with_grad: bool = False,
    ):
        super().__init__()
        if target not in TARGET_MODES:
            raise ValueError(f"--neighbor-target {target!r}: choose one of {TARGET_MODES}")
        if target == "bank" and not (image_bank_dim and text_bank_dim):
            raise ValueError("bank targets need image_bank_dim and text_bank_dim")
        self.target, self.nn_weight, self.xnn_weight = target, nn_weight, xnn_weight
        self.aux_temperature = aux_temperature
        self.local_loss, self.gather_with_grad = local_loss, gather_with_grad
        self.heads = nn.ModuleDict()
        if target == "bank":
            # NN heads map into the neighbour's own modality, XNN heads into the other one.
            out_dims = dict(
                nn_image=image_bank_dim,
                nn_text=text_bank_dim,
                xnn_image=text_bank_dim,
                xnn_text=image_bank_dim,
            )
            weights = {"nn": nn_weight, "xnn": xnn_weight}
            for name, out_dim in out_dims.items():
                if weights[name.split("_")[0]] > 0:  # no unused parameters (DDP refuses them)
                    self.heads[name] = nn.Linear(embed_dim, out_dim, bias=False)

    @classmethod
    def from_config(cls, cfg: Any, context: TermContext) -> NeighborLoss:
        return cls(
            context.embed_dim,
            image_bank_dim=context.image_bank_dim,
            text_bank_dim=context.text_bank_dim,
            target=cfg.neighbor_target,
            nn_weight=cfg.nn_weight,
            xnn_weight=cfg.xnn_weight,
            aux_temperature=cfg.aux_temperature,
            local_loss=cfg.local_loss,
            gather_with_grad=cfg.gather_with_grad,
        )

    @classmethod
    def guidance_settings(cls, cfg: Any) -> dict[str, Any]:
        """How the guidance draws this term's targets: ``k``, ``target`` (bank|memory),
        ``source`` (offline|active) and ``self_targets`` (see
        :class:`~clip_ping.guidance.NeighborGuidance`)."""
        return dict(
            k=cfg.neighbor_k,
            target=cfg.neighbor_target,
            source=cfg.neighbor_source,
            self_targets=cfg.neighbor_self,
        )

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        require_banks(cfg)
        if cfg.nn_weight == 0 and cfg.xnn_weight == 0:
            raise UserError(
                f"{flag_name('nn_weight')}=0.0: with --xnn-weight 0 too no neighbour term is "
                "left: the run would be plain CLIP that still loads the banks; use --loss "
                "clip, or give a weight above 0"
            )

    @classmethod
    def warnings(cls, cfg: Any, changed: set[str]) -> list[str]:
        if cfg.neighbor_target == "memory" and "aux_temperature" in changed:
            return ["--aux-temperature set, but memory targets use the CLIP logit scale: ignored"]
        return []

    def _term(
        self, name: str, query: torch.Tensor, targets: NeighborTargets, scale, grad_rows=None
    ) -> torch.Tensor:
        raw = getattr(targets, name)
        keys = target_keys(raw)  # identical targets (shared neighbour or caption): no negatives
        if self.target == "bank":
            projected = head_rows(self.heads[name], query, grad_rows)
            query, scale = F.normalize(projected, dim=-1), 1.0 / self.aux_temperature
        target = F.normalize(raw.to(query.dtype), dim=-1)
        valid = getattr(targets, f"{name}_valid")
        return neighbor_contrast(
            query, target, keys, valid, scale, self.local_loss, self.gather_with_grad
        )

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        targets: NeighborTargets,
        ramp: float = 1.0,
        grad_rows: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``image_features, text_features``: ``(B, d)`` normalised student embeddings.
        ``grad_rows`` ``(B,)`` bool (gradient accumulation): the rows this pass trains; the
        heads get their gradient through those rows only, so that the passes over an
        accumulated batch sum to the gradient of one pass over it."""
        terms: dict[str, torch.Tensor] = {}
        zero = image_features.new_zeros(())
        for kind, weight in (("nn", self.nn_weight), ("xnn", self.xnn_weight)):
            if weight == 0:
                terms[f"{kind}_loss"] = zero
                continue
            image_term = self._term(
                f"{kind}_image", image_features, targets, logit_scale, grad_rows
            )
            text_term = self._term(f"{kind}_text", text_features, targets, logit_scale, grad_rows)
            terms[f"{kind}_image_loss"] = image_term.detach()
            terms[f"{kind}_text_loss"] = text_term.detach()
            terms[f"{kind}_loss"] = weight * ramp * 0.5 * (image_term + text_term)
        return terms
