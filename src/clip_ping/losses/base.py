"""What every loss term is: an ``nn.Module`` that says what it reads, what it returns and
which settings it uses, and registers itself by name.

A term's ``forward`` takes, by keyword, the fields of :class:`TermInputs` it lists in
``reads`` and returns a dict of named scalars. The names in ``summed`` add up to the loss
the optimiser minimises; any other name it returns is a component, logged only. The
``--loss`` values (methods) whose objective includes the term are its ``methods`` (the CLIP
term is ``in_every_method``); a method's terms add up in ``order``, then by name.

A new term is one module in this package (a subclass with a ``name``: the package imports
every module, and the subclass registers itself) plus its settings in
``clip_ping.training.config``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

#: name → term class, filled as the term modules are imported.
TERMS: dict[str, type[LossTerm]] = {}


@dataclass
class TermInputs:
    """What a training step offers the loss terms, for the (accumulated) batch of ``B``
    anchors.

    ``image_features``/``text_features``: ``(B, d)`` normalised student embeddings;
    ``logit_scale``: scalar; ``targets``: the anchors' neighbour targets (a
    :class:`~clip_ping.losses.neighbor.NeighborTargets`, or None without guidance);
    ``ramp``: the guidance warm-up weight in ``[0, 1]``; ``grad_rows``: ``(B,)`` bool under
    gradient accumulation (the rows this pass trains), else None; ``progress``: the share of
    the run's optimiser steps done before this one, in ``[0, 1)`` (0 where the length of
    the run is not known).
    """

    image_features: torch.Tensor
    text_features: torch.Tensor
    logit_scale: torch.Tensor
    targets: Any = None
    ramp: float = 1.0
    grad_rows: torch.Tensor | None = None
    progress: float = 0.0


@dataclass(frozen=True)
class TermContext:
    """What building a term may need besides the settings: the student's embedding width
    and, when a term reads ``targets``, the dimensions of the teachers' banks."""

    embed_dim: int
    image_bank_dim: int | None = None
    text_bank_dim: int | None = None


class LossTerm(nn.Module):
    """Base class of the loss terms (see the module docstring)."""

    name: ClassVar[str] = ""
    methods: ClassVar[tuple[str, ...]] = ()
    #: part of every method (the CLIP term), besides its own ``methods``
    in_every_method: ClassVar[bool] = False
    order: ClassVar[int] = 10
    reads: ClassVar[tuple[str, ...]] = ("image_features", "text_features", "logit_scale")
    summed: ClassVar[tuple[str, ...]] = ()
    #: ``(config key, label)`` of each setting the term reads: the model card lists them,
    #: and a run whose terms read none of a setting warns that it is ignored.
    settings: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: What the term is, in a phrase the model card joins with the others' ("... plus ...").
    description: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            if cls.name in TERMS:
                raise ValueError(f"two loss terms are named {cls.name!r}")
            TERMS[cls.name] = cls

    @classmethod
    def from_config(cls, cfg: Any, context: TermContext) -> LossTerm:
        """The term with ``cfg``'s settings (a ``TrainConfig``)."""
        raise NotImplementedError

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Raise a ``UserError`` naming a setting this term cannot run with."""

    @classmethod
    def warnings(cls, cfg: Any, changed: set[str]) -> list[str]:
        """Warnings for settings in ``changed`` (given non-default values) that this term,
        with ``cfg``'s other settings, ignores."""
        return []

    def inputs(self, step: TermInputs) -> dict[str, Any]:
        """The keyword arguments of ``forward``: the ``reads`` fields of ``step``."""
        return {name: getattr(step, name) for name in self.reads}
