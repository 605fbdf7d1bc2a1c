"""The training task: everything one optimiser step needs, in one ``nn.Module``.

:class:`TrainingTask` owns the student, the loss terms of the run's ``--loss`` (each an
``nn.Module`` of :mod:`clip_ping.losses`, with its heads), the neighbour guidance and the
student memory (``memory`` targets; buffers). Its one ``state_dict`` is what a checkpoint
saves. The loop asks it for the loss terms of a batch (or, with ``--accum-freq``, for the
gradients of several micro-batches scored as one batch: :meth:`TrainingTask.accumulate`)
and then tells it to remember the batch's embeddings.

The neighbours themselves are drawn (and, with ``bank`` targets, their rows read) in the
data loader's workers: :meth:`TrainingTask.data_transform` gives the loader that half of
the guidance, and the task turns what the batch brings into the typed targets the terms
read (see :mod:`clip_ping.guidance`).

Two parts stay out of the data-parallel wrapper on purpose:

- the frozen teachers of the ``active`` source and the memory-mapped banks (in
  :class:`~clip_ping.guidance.NeighborGuidance`, a plain object: not trained, not saved);
- the student memory: every rank writes the same gathered rows, so DDP must not broadcast
  its ``(N, d)`` buffers each step (3 GB at CC3M scale); it lives in host memory.

So DDP (and ``torch.compile``) wrap :class:`ContrastiveStep`, the trained parameters only.

Examples:
    >>> import torch
    >>> from clip_ping.losses import ClipLoss
    >>> from clip_ping.models import create_model
    >>> from clip_ping.training.task import TrainingTask
    >>> model, tokenizer = create_model("cpu-micro-32")
    >>> task = TrainingTask(model, {"clip": ClipLoss()})
    >>> batch = {"image": torch.randn(4, 3, 32, 32), "text": tokenizer(["a"] * 4),
    ...          "index": torch.arange(4)}
    >>> loss, terms, out = task(batch, step=0)
    >>> sorted(terms)
    ['clip_loss']
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..data.loader import DataSpec
from ..guidance import NeighborGuidance, NeighborTransform
from ..losses import LossTerm, NeighborTargets, TermContext, TermInputs, method_terms, total
from ..memory import StudentMemory
from .accumulate import Accumulated, accumulate_gradients
from .config import TrainConfig
from .features import BankFeatures, FeatureStep, check_feature_training
from .schedule import neighbor_ramp


class ContrastiveStep(nn.Module):
    """Student and loss terms: every trained parameter (the terms' heads too), so DDP,
    ``torch.compile`` and the optimiser see them all.

    ``terms``: name → :class:`~clip_ping.losses.LossTerm`, in the order they add up.
    ``forward(images (B, 3, H, W), texts (B, L), targets, ramp, accumulated) -> (terms,
    outputs)``: every term's named values. With ``accumulated`` (gradient accumulation), the
    terms span the whole accumulated batch: this micro-batch's fresh embeddings among the
    others' cached ones.
    """

    def __init__(self, model, terms: dict[str, LossTerm]):
        super().__init__()
        self.model, self.terms = model, nn.ModuleDict(terms)
        #: the returned names that add up to the loss (:func:`~clip_ping.losses.total`)
        self.summed = tuple(name for term in self.terms.values() for name in term.summed)

    def forward(
        self,
        images: torch.Tensor,
        texts: torch.Tensor,
        targets: NeighborTargets | None = None,
        ramp: float = 1.0,
        accumulated: Accumulated | None = None,
        progress: float = 0.0,
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
        inputs = TermInputs(image, text, scale, targets, ramp, grad_rows, progress)
        values: dict[str, torch.Tensor] = {}
        for term in self.terms.values():
            values.update(term(**term.inputs(inputs)))
        return values, out


class TrainingTask(nn.Module):
    """One training step's owner (see the module docstring).

    Args:
        model: the student (a ``clip_ping.models.Student``: any image tower).
        terms: name → loss term (:func:`create_task` builds them from ``--loss``), in the
            order they add up.
        guidance: draws neighbours and reads their targets; needed when a term reads
            ``targets``.
        neighbor_warmup: steps over which the guidance weights ramp up to 1 (0: none).
        inputs: for a model trained on its teachers' bank rows (the locked teachers), the
            loader transform that reads them (:class:`~.features.BankFeatures`); the step
            then embeds rows, not pixels and tokens.
        total_steps: the run's optimiser steps, for terms whose weight follows the
            run's progress (None: progress stays 0).

    ``state_dict`` keys: ``model.*`` (the student), ``terms.<name>.*`` (the terms' heads),
    ``memory.*`` (student memory). The task is built on its devices: the student and heads
    on the training device, the memory in host memory; do not ``.to()`` it whole.
    """

    def __init__(
        self,
        model,
        terms: dict[str, LossTerm],
        guidance: NeighborGuidance | None = None,
        neighbor_warmup: int = 0,
        inputs: BankFeatures | None = None,
        total_steps: int | None = None,
    ):
        super().__init__()
        self.total_steps = total_steps
        readers = [name for name, term in terms.items() if "targets" in term.reads]
        if bool(readers) != (guidance is not None):
            raise ValueError(
                f"terms reading neighbour targets ({readers or 'none'}) need a guidance, and "
                "a guidance needs such a term"
            )
        if inputs is not None and guidance is not None:
            raise ValueError("a model trained on bank rows takes no neighbour guidance")
        step = ContrastiveStep(FeatureStep(model) if inputs else model, terms)
        self.model, self.terms, self.summed = model, step.terms, step.summed
        self.inputs = inputs
        self.__dict__["_embedder"] = step.model  # what the step embeds with (unwrapped)
        self.memory: StudentMemory | None = guidance.memory if guidance else None
        self.guidance, self.neighbor_warmup = guidance, neighbor_warmup
        self._set_step_module(step)

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

    def distribute(self, world_size: int, device: torch.device, compile: bool = False) -> None:
        """Wrap the step module in DDP across ``world_size`` processes, then in
        ``torch.compile`` if asked."""
        if world_size > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.wrap(lambda step: nn.parallel.DistributedDataParallel(step, device_ids=ids))
        if compile:
            self.wrap(torch.compile)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As ``nn.Module``'s; checkpoints written before the terms became a dict keep the
        neighbour heads under ``neighbor_loss.*`` and load too."""
        legacy = "neighbor_loss."
        state_dict = {
            f"terms.neighbor.{key[len(legacy) :]}" if key.startswith(legacy) else key: value
            for key, value in state_dict.items()
        }
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def data_transform(self) -> NeighborTransform | BankFeatures | None:
        """What the data loader runs on each collated batch (``prepare`` of
        :meth:`~clip_ping.data.loader.TrainData.loader`): the neighbour draw and bank reads
        (or the bank rows a locked-teachers model trains on); None when there is nothing to
        do there."""
        if self.inputs is not None:
            return self.inputs
        return self.guidance.transform() if self.guidance else None

    def targets(self, batch: dict, epoch: int, device) -> NeighborTargets | None:
        """The neighbour targets of ``batch``'s anchors (None without guidance): those the
        loader's :meth:`data_transform` put in ``batch``, or drawn here for ``epoch``."""
        if self.guidance is None:
            return None
        # Bank rows are read as stored and the active teachers run in float32, whatever the
        # student's autocast.
        with torch.autocast(torch.device(device).type, enabled=False):
            return self.guidance.targets(batch, epoch, device)

    def forward(
        self, batch: dict, step: int, device: torch.device | str = "cpu", epoch: int = 0
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(loss, named terms, student outputs)`` of ``batch`` at optimiser ``step`` of
        ``epoch``.

        ``batch``: ``image (B, 3, H, W)``, ``text (B, L)``, ``index (B,)`` stable sample
        indices (and ``caption`` for the active source, ``neighbors`` where the loader drew
        them). The loss is the sum of the terms' ``summed`` values.
        """
        images = batch["image"].to(device, non_blocking=True)
        texts = batch["text"].to(device, non_blocking=True)
        targets = self.targets(batch, epoch, device)
        ramp = neighbor_ramp(step, self.neighbor_warmup)
        terms, out = self.step_module(images, texts, targets, ramp, None, self.progress(step))
        return total(terms, self.summed), terms, out

    def progress(self, step: int) -> float:
        """The share of the run's optimiser steps done before ``step``."""
        return min(1.0, step / self.total_steps) if self.total_steps else 0.0

    def accumulate(
        self,
        batches: list[dict],
        step: int,
        device,
        backward: Callable,
        autocast: Callable,
        epoch: int = 0,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """One optimiser step's gradients over several micro-batches
        (:func:`accumulate_gradients`)."""
        inputs = [
            (b["image"].to(device, non_blocking=True), b["text"].to(device, non_blocking=True))
            for b in batches
        ]
        targets = None
        if self.guidance is not None:
            targets = NeighborTargets.cat([self.targets(b, epoch, device) for b in batches])
        ramp = neighbor_ramp(step, self.neighbor_warmup)
        return accumulate_gradients(
            self.step_module,
            self.__dict__["_embedder"],
            inputs,
            targets,
            ramp,
            self.summed,
            backward,
            autocast,
            self.progress(step),
        )

    def remember(self, indices: torch.Tensor, out: dict[str, torch.Tensor]) -> None:
        """Write the batch's embeddings to the student memory (``memory`` targets only).
        Called after the loss: this batch's targets were the previous rows."""
        if self.memory is not None:
            self.memory.update(indices, out["image_features"], out["text_features"])


def reads_targets(cfg: TrainConfig) -> bool:
    """Whether a term of ``cfg``'s ``--loss`` reads neighbour targets (so the run needs the
    banks and a guidance)."""
    return any("targets" in term.reads for term in method_terms(cfg.loss))


def teacher_view_size(cfg: TrainConfig) -> int | None:
    """The input size of the image teacher that ``--neighbor-source active`` runs on each
    crop (the training transform's ``teacher_size``); None for other runs."""
    if not reads_targets(cfg) or guidance_settings(cfg)["source"] != "active":
        return None
    from ..active import active_image_size
    from ..bank import Bank

    return active_image_size(Bank(cfg.image_bank))


def open_banks(cfg: TrainConfig, spec: DataSpec):
    """``--image-bank`` and ``--text-bank``, checked to hold their modality's features of
    the training data ``spec``."""
    from ..bank import Bank

    banks = Bank(cfg.image_bank), Bank(cfg.text_bank)
    for bank, modality in zip(banks, ("image", "text"), strict=True):
        if bank.modality != modality:
            raise ValueError(
                f"--{modality}-bank {bank.path} holds {bank.modality} features; pass the "
                f"{modality} bank"
            )
        bank.check_dataset(spec)
    return banks


def guidance_settings(cfg: TrainConfig) -> dict:
    """How ``cfg``'s method draws its targets (its target-reading term says:
    :meth:`~clip_ping.losses.NeighborLoss.guidance_settings`)."""
    found = [
        term.guidance_settings(cfg) for term in method_terms(cfg.loss) if "targets" in term.reads
    ]
    if any(settings != found[0] for settings in found[1:]):
        raise ValueError(f"the terms of --loss {cfg.loss} ask for different targets: {found}")
    return found[0]


def create_guidance(cfg: TrainConfig, image_bank, text_bank, embed_dim: int, device):
    """The :class:`~clip_ping.guidance.NeighborGuidance` of ``cfg`` over the opened banks."""
    memory, settings = None, guidance_settings(cfg)
    if settings["target"] == "memory":
        # One row per bank row (= stable index), not per sample of an epoch, which
        # --train-num-samples may make smaller or larger. Kept in host memory: see memory.py.
        memory = StudentMemory(len(image_bank), embed_dim)
    active = None
    if settings["source"] == "active":
        from ..active import ActiveTeachers

        active = ActiveTeachers(image_bank, text_bank, device)
    return NeighborGuidance(
        image_bank,
        text_bank,
        k=settings["k"],
        target=settings["target"],
        memory=memory,
        seed=cfg.seed,
        active=active,
        self_targets=settings["self_targets"],
        own_rows=settings.get("own_rows", False),
    )


def create_task(
    cfg: TrainConfig, model, spec: DataSpec, device: torch.device, total_steps: int | None = None
) -> TrainingTask:
    """The :class:`TrainingTask` of ``cfg`` around ``model`` (already on ``device``): the
    terms of ``--loss``, and, when a term reads neighbour targets, the banks (validated
    against the training data ``spec`` before any step) and the guidance. ``total_steps``:
    the run's optimiser steps (for weights that follow its progress)."""
    context, guidance, inputs = TermContext(model.embed_dim), None, None
    if model.trains_on_bank_features:
        check_feature_training(cfg)
        open_banks(cfg, spec)
        inputs = BankFeatures(cfg.image_bank, cfg.text_bank)
    elif reads_targets(cfg):
        image_bank, text_bank = open_banks(cfg, spec)
        context = TermContext(model.embed_dim, image_bank.dim, text_bank.dim)
        guidance = create_guidance(cfg, image_bank, text_bank, model.embed_dim, device)
    terms = {
        term.name: term.from_config(cfg, context).to(device) for term in method_terms(cfg.loss)
    }
    return TrainingTask(model, terms, guidance, cfg.neighbor_warmup, inputs, total_steps)
