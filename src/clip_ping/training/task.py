"""The training task: everything one optimiser step needs, in one ``nn.Module``.

:class:`TrainingTask` owns the student, the CLIP loss, the neighbour loss (with its heads),
the neighbour guidance and the student memory (``memory`` targets; buffers). Its one
``state_dict`` is what a checkpoint saves. The loop asks it for the loss terms of a batch
(or, with ``--accum-freq``, for the gradients of several micro-batches scored as one batch:
:meth:`TrainingTask.accumulate`) and then tells it to remember the batch's embeddings.

The neighbours themselves are drawn (and, with ``bank`` targets, their rows read) in the
data loader's workers: :meth:`TrainingTask.neighbor_reader` gives the loader that half of
the guidance, and :meth:`TrainingTask.targets` assembles what the batch brings (see
:mod:`.guidance`).

Two parts stay out of the data-parallel wrapper on purpose:

- the frozen teachers of the ``active`` source and the memory-mapped banks (in
  :class:`~clip_ping.guidance.NeighborGuidance`, a plain object: not trained, not saved);
- the student memory: every rank writes the same gathered rows, so DDP must not broadcast
  its ``(N, d)`` buffers each step (3 GB at CC3M scale); it lives in host memory.

So DDP (and ``torch.compile``) wrap :class:`ContrastiveStep`, the trained parameters only.

Examples:
    >>> model, tokenizer = create_model("cpu-micro-32")
    >>> task = TrainingTask(model, ClipLoss())
    >>> batch = {"image": torch.randn(4, 3, 32, 32), "text": tokenizer(["a"] * 4),
    ...          "index": torch.arange(4)}
    >>> loss, terms, out = task(batch, step=0)
    >>> sorted(terms)
    ['clip_loss']
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..data.loader import DataSpec
from ..guidance import NeighborGuidance, NeighborReader
from ..losses import TOTAL_TERMS, ClipLoss, NeighborLoss, NeighborTargets
from ..memory import StudentMemory
from .config import TrainConfig
from .schedule import neighbor_ramp


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
        return torch.cat([
            torch.full((size,), i == self.index, dtype=torch.bool, device=device)
            for i, size in enumerate(sizes)
        ])  # fmt: skip


def total(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """The loss the optimiser minimises: the sum of :data:`~clip_ping.losses.TOTAL_TERMS`."""
    return sum(v for k, v in terms.items() if k in TOTAL_TERMS)


class ContrastiveStep(nn.Module):
    """Student and losses: every trained parameter (the neighbour heads too), so DDP,
    ``torch.compile`` and the optimiser see them all.

    ``forward(images (B, 3, H, W), texts (B, L), targets, ramp, accumulated) -> (terms,
    outputs)``. With ``accumulated`` (gradient accumulation), the losses span the whole
    accumulated batch: this micro-batch's fresh embeddings among the others' cached ones.
    """

    def __init__(self, model, clip_loss: ClipLoss, neighbor_loss: NeighborLoss | None = None):
        super().__init__()
        self.model, self.clip_loss, self.neighbor_loss = model, clip_loss, neighbor_loss

    def forward(
        self,
        images: torch.Tensor,
        texts: torch.Tensor,
        targets: NeighborTargets | None = None,
        ramp: float = 1.0,
        accumulated: Accumulated | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        out = self.model(images, texts)
        image, text, scale = out["image_features"], out["text_features"], out["logit_scale"]
        grad_rows = None
        if accumulated is not None:
            image = accumulated.splice(image, accumulated.image_features)
            text = accumulated.splice(text, accumulated.text_features)
            if accumulated.index > 0:  # the scale's gradient counts once per batch (a zero
                scale = scale.detach() + 0.0 * scale  # here keeps it in DDP's graph)
            grad_rows, targets = accumulated.grad_rows(image.device), accumulated.targets
        terms = self.clip_loss(image, text, scale)
        if self.neighbor_loss is not None:
            terms.update(
                self.neighbor_loss(
                    image, text, scale, targets=targets, ramp=ramp, grad_rows=grad_rows
                )
            )
        return terms, out


def accumulate_gradients(
    step_module: nn.Module,
    model,
    inputs: list[tuple[torch.Tensor, torch.Tensor]],
    targets: NeighborTargets | None,
    ramp: float,
    backward: Callable,
    autocast: Callable = contextlib.nullcontext,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Gradients of one batch given as micro-batches, as open_clip accumulates: every
    micro-batch ``(images, texts)`` of ``inputs`` is embedded by ``model`` without gradient
    first; then each is embedded again with gradient by ``step_module``
    (:class:`ContrastiveStep`, or its DDP wrapper) and scored against the cached embeddings
    of all the others, so every loss term has the whole batch as negatives. ``targets``: the
    whole batch's neighbour targets. ``backward(loss)`` runs after each pass; the passes'
    gradients sum to those of one pass over the whole batch. ``autocast()``: the student's
    precision. Returns the last pass's ``(loss, terms)`` (every pass has the whole batch's
    values) and the cached outputs of the whole batch."""
    with torch.no_grad(), autocast():
        cached = [model(images, texts) for images, texts in inputs]
    images_cached = [c["image_features"] for c in cached]
    texts_cached = [c["text_features"] for c in cached]
    for index, (images, texts) in enumerate(inputs):
        accumulated = Accumulated(images_cached, texts_cached, index, targets)
        with autocast():
            terms, _ = step_module(images, texts, None, ramp, accumulated)
            loss = total(terms)
        backward(loss)
    out = {
        "image_features": torch.cat(images_cached), "text_features": torch.cat(texts_cached),
        "logit_scale": cached[-1]["logit_scale"],
    }  # fmt: skip
    return loss, terms, out


class TrainingTask(nn.Module):
    """One training step's owner (see the module docstring).

    Args:
        model: the student (a ``clip_ping.models.Student``: any image tower).
        clip_loss: the CLIP term.
        neighbor_loss: the NN/XNN terms (``--loss clip-ping``), else None.
        guidance: draws neighbours and reads their targets (``--loss clip-ping``).
        neighbor_warmup: steps over which the neighbour weights ramp up to 1 (0: none).

    ``state_dict`` keys: ``model.*`` (the student), ``neighbor_loss.*`` (heads),
    ``memory.*`` (student memory). The task is built on its devices: the student and heads
    on the training device, the memory in host memory; do not ``.to()`` it whole.
    """

    def __init__(
        self,
        model,
        clip_loss: ClipLoss,
        neighbor_loss: NeighborLoss | None = None,
        guidance: NeighborGuidance | None = None,
        neighbor_warmup: int = 0,
    ):
        super().__init__()
        if (neighbor_loss is None) != (guidance is None):
            raise ValueError("neighbour guidance needs both a NeighborLoss and its guidance")
        self.model, self.clip_loss, self.neighbor_loss = model, clip_loss, neighbor_loss
        self.memory: StudentMemory | None = guidance.memory if guidance else None
        self.guidance, self.neighbor_warmup = guidance, neighbor_warmup
        self._set_step_module(ContrastiveStep(model, clip_loss, neighbor_loss))

    @property
    def step_module(self) -> nn.Module:
        """What computes the loss terms: :class:`ContrastiveStep`, or its DDP/compiled
        wrapper after :meth:`wrap`. Not a registered submodule: its parameters are the
        task's own, and ``state_dict`` keys stay free of wrapper prefixes."""
        return self.__dict__["_step_module"]

    def _set_step_module(self, module: nn.Module) -> None:
        self.__dict__["_step_module"] = module  # past nn.Module's registration, on purpose

    def wrap(self, wrapper) -> None:
        """Replace the step module by ``wrapper(step_module)`` (DDP, ``torch.compile``)."""
        self._set_step_module(wrapper(self.step_module))

    def neighbor_reader(self, first_step: int, accum_freq: int = 1) -> NeighborReader | None:
        """What the data loader runs on each batch of an epoch whose first batch is trained
        at ``first_step`` (``prepare`` of :meth:`~clip_ping.data.loader.TrainData.loader`):
        the neighbour draw and bank reads; None when there is nothing to draw there."""
        return self.guidance.reader(first_step, accum_freq) if self.guidance else None

    def targets(self, batch: dict, step: int, device) -> NeighborTargets | None:
        """The neighbour targets of ``batch``'s anchors at ``step`` (None without guidance):
        those the loader's :meth:`neighbor_reader` put in ``batch``, or drawn here."""
        if self.guidance is None:
            return None
        # Bank rows are read as stored and the active teachers run in float32, whatever the
        # student's autocast.
        with torch.autocast(torch.device(device).type, enabled=False):
            return self.guidance.targets(batch["index"], step, device, batch)

    def forward(
        self, batch: dict, step: int, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(loss, named terms, student outputs)`` of ``batch`` at optimiser ``step``.

        ``batch``: ``image (B, 3, H, W)``, ``text (B, L)``, ``index (B,)`` stable sample
        indices (and ``caption`` for the active source). The loss is the sum of
        :data:`~clip_ping.losses.TOTAL_TERMS`.
        """
        images = batch["image"].to(device, non_blocking=True)
        texts = batch["text"].to(device, non_blocking=True)
        targets = self.targets(batch, step, device)
        ramp = neighbor_ramp(step, self.neighbor_warmup)
        terms, out = self.step_module(images, texts, targets, ramp)
        return total(terms), terms, out

    def accumulate(
        self, batches: list[dict], step: int, device, backward: Callable, autocast: Callable
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """One optimiser step's gradients over several micro-batches
        (:func:`accumulate_gradients`), their neighbours drawn at ``step``."""
        inputs = [
            (b["image"].to(device, non_blocking=True), b["text"].to(device, non_blocking=True))
            for b in batches
        ]
        targets = None
        if self.guidance is not None:
            targets = NeighborTargets.cat([self.targets(b, step, device) for b in batches])
        ramp = neighbor_ramp(step, self.neighbor_warmup)
        return accumulate_gradients(
            self.step_module, self.model, inputs, targets, ramp, backward, autocast
        )

    def remember(self, indices: torch.Tensor, out: dict[str, torch.Tensor]) -> None:
        """Write the batch's embeddings to the student memory (``memory`` targets only).
        Called after the loss: this batch's targets were the previous rows."""
        if self.memory is not None:
            self.memory.update(indices, out["image_features"], out["text_features"])


def teacher_view_size(cfg: TrainConfig) -> int | None:
    """The input size of the image teacher that ``--neighbor-source active`` runs on each
    crop (the training transform's ``teacher_size``); None for other runs."""
    if cfg.loss != "clip-ping" or cfg.neighbor_source != "active":
        return None
    from ..bank import Bank
    from ..guidance import active_image_size

    return active_image_size(Bank(cfg.image_bank))


def create_task(cfg: TrainConfig, model, spec: DataSpec, device: torch.device) -> TrainingTask:
    """The :class:`TrainingTask` of ``cfg`` around ``model`` (already on ``device``). For
    ``--loss clip-ping`` the banks are validated against the training data ``spec``
    before any step."""
    clip_loss = ClipLoss(cfg.local_loss, cfg.gather_with_grad)
    if cfg.loss != "clip-ping":
        return TrainingTask(model, clip_loss)
    from ..bank import Bank

    image_bank, text_bank = Bank(cfg.image_bank), Bank(cfg.text_bank)
    for bank, modality in ((image_bank, "image"), (text_bank, "text")):
        if bank.modality != modality:
            raise ValueError(
                f"--{modality}-bank {bank.path} holds {bank.modality} features; pass the "
                f"{modality} bank"
            )
        bank.check_dataset(spec)
    memory = None
    if cfg.neighbor_target == "memory":
        # One row per bank row (= stable index), not per sample of an epoch, which
        # --train-num-samples may make smaller or larger. Kept in host memory: see memory.py.
        memory = StudentMemory(len(image_bank), model.embed_dim)
    neighbor_loss = NeighborLoss(
        model.embed_dim,
        image_bank_dim=image_bank.dim,
        text_bank_dim=text_bank.dim,
        target=cfg.neighbor_target,
        nn_weight=cfg.nn_weight,
        xnn_weight=cfg.xnn_weight,
        aux_temperature=cfg.aux_temperature,
        local_loss=cfg.local_loss,
        gather_with_grad=cfg.gather_with_grad,
    ).to(device)
    active = None
    if cfg.neighbor_source == "active":
        from ..guidance import ActiveTeachers

        active = ActiveTeachers(image_bank, text_bank, device)
    guidance = NeighborGuidance(
        image_bank, text_bank, k=cfg.neighbor_k, target=cfg.neighbor_target, memory=memory,
        seed=cfg.seed, active=active, self_targets=cfg.neighbor_self,
    )  # fmt: skip
    return TrainingTask(model, clip_loss, neighbor_loss, guidance, cfg.neighbor_warmup)
