"""Training on the teachers' bank rows instead of pixels and tokens (the locked teachers).

A model whose class says ``trains_on_bank_features`` (:mod:`clip_ping.models.locked`)
never runs its teachers in training: the data loader's workers replace each batch's
``image`` and ``text`` by the rows of its samples in ``--image-bank`` and ``--text-bank``
(:class:`BankFeatures`, a ``prepare`` transform like the neighbour draw), and the step
embeds them with the model's ``forward_features`` (:class:`FeatureStep`). The images are
still read (a bad image is still a bad sample, skipped as for any student) but not
resized or augmented (:class:`NoPixels`).

Examples:
    >>> import torch
    >>> NoPixels()(None, None).shape
    torch.Size([0])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


class NoPixels:
    """The training transform of a model fed bank rows: the decoded image is not used."""

    def __call__(self, image, rng) -> torch.Tensor:
        return torch.empty(0)


@dataclass
class BankFeatures:
    """``prepare(batch, epoch)``: the batch's ``image`` and ``text`` become its samples'
    rows of the two banks, float32 ``(B, D_I)`` and ``(B, D_T)``. Holds the folders only;
    each process maps the banks on its first batch (after the fork)."""

    image_bank: str
    text_bank: str

    def __post_init__(self):
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}

    def _open(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            from ..bank import Bank

            image, text = Bank(self.image_bank), Bank(self.text_bank)
            self._arrays = image.random_access_features(), text.random_access_features()
        return self._arrays

    def __call__(self, batch: dict, epoch: int) -> dict:
        rows = batch["index"].numpy()
        image, text = (torch.from_numpy(a[rows].astype(np.float32)) for a in self._open())
        return {**batch, "image": image, "text": text}


class FeatureStep(nn.Module):
    """The model as the training step calls it: ``(image rows, text rows) -> outputs``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image_rows: torch.Tensor, text_rows: torch.Tensor) -> dict:
        return self.model.forward_features(image_rows, text_rows)


def check_feature_training(cfg) -> None:
    """Refuse settings that a model trained on bank rows cannot take, naming the fix."""
    name = f"--model {cfg.model}"
    if not (cfg.image_bank and cfg.text_bank):
        raise ValueError(
            f"{name} trains on its teachers' features: pass --image-bank and --text-bank "
            "(clip-ping bank build --modality image|text); its teachers are the banks'"
        )
    if cfg.loss != "clip":
        raise ValueError(
            f"{name} is the frozen teachers with trained heads: it trains with --loss clip "
            f"only, not {cfg.loss} (its own features are the teachers')"
        )


def locked_spec(cfg, spec):
    """The :class:`~clip_ping.models.locked.LockedSpec` ``spec`` with the teachers of the
    run's banks (checked first)."""
    from ..bank import Bank

    check_feature_training(cfg)
    if cfg.tokenizer:
        raise ValueError(
            f"--tokenizer {cfg.tokenizer} does not apply to --model {cfg.model}: it tokenizes "
            "captions as its text teacher does; drop --tokenizer"
        )
    return spec.with_banks(Bank(cfg.image_bank), Bank(cfg.text_bank))
