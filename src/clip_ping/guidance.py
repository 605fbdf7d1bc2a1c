"""The data side of CLIP-PING: draw each anchor's neighbours and fetch their targets.

For a batch of anchors with stable sample indices ``(B,)`` this module

1. draws one image neighbour n_I(k) and one caption neighbour n_T(k) uniformly from the
   top-K rows of the precomputed tables (K = 1: the nearest);
2. reads the four targets (DESIGN.md §2): in ``bank`` mode the neighbours' frozen teacher
   features (only the rows the batch needs, from the memory-mapped banks); in ``memory``
   mode their latest student embeddings from :class:`~clip_ping.memory.StudentMemory`.

The draw is a hash of (seed, step, sample index): a resumed run draws what the
uninterrupted one drew, however the batch is split across ranks.
"""

from __future__ import annotations

import numpy as np
import torch

from .bank import Bank
from .losses import NeighborTargets
from .memory import StudentMemory

_MIX = (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D)  # odd constants of a multiplicative hash


def draw_offsets(indices: torch.Tensor, step: int, seed: int, k: int) -> torch.Tensor:
    """``(B,)`` offsets in ``[0, k)``, a deterministic, well-mixed function of each
    sample index, the step and the seed."""
    x = indices.long() * _MIX[0] + step * _MIX[1] + seed * _MIX[2]
    x = x & 0x7FFFFFFF
    for shift in (16, 13, 16):  # xorshift-multiply rounds spread every input bit
        x = ((x ^ (x >> shift)) * _MIX[0]) & 0x7FFFFFFF
    return x % k


def _rows(table: np.ndarray, indices: torch.Tensor) -> torch.Tensor:
    """Rows of a memory-mapped table; reads only those rows."""
    return torch.from_numpy(np.ascontiguousarray(table[indices.cpu().numpy()]))


class NeighborGuidance:
    """Neighbour tables + targets for ``bank`` or ``memory`` mode.

    Args:
        image_bank, text_bank: finished banks with neighbour tables of the training set.
        k: draw among the top-``k`` neighbours (at most the tables' K).
        target: ``bank`` or ``memory``.
        memory: the student memory (``memory`` mode).
        seed: seed of the neighbour draw.
    """

    def __init__(
        self,
        image_bank: Bank,
        text_bank: Bank,
        k: int,
        target: str,
        memory: StudentMemory | None = None,
        seed: int = 0,
    ):
        self.image_bank, self.text_bank, self.k, self.target = image_bank, text_bank, k, target
        self.memory, self.seed = memory, seed
        if target == "memory" and memory is None:
            raise ValueError("memory targets need a StudentMemory")
        self.image_neighbors, _ = image_bank.neighbors()
        self.text_neighbors, _ = text_bank.neighbors()
        for bank, table in ((image_bank, self.image_neighbors), (text_bank, self.text_neighbors)):
            if not 1 <= k <= table.shape[1]:
                raise ValueError(
                    f"--neighbor-k {k} but the {bank.modality} bank {bank.path} lists "
                    f"{table.shape[1]} neighbours per sample; use --neighbor-k <= "
                    f"{table.shape[1]} or rerun clip-ping bank neighbors {bank.path} --k {k}"
                )

    def draw(self, indices: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B,)`` image and caption neighbours of the anchors ``indices``."""
        offsets = draw_offsets(indices.cpu(), step, self.seed, self.k).numpy()
        rows = indices.cpu().numpy()
        image = self.image_neighbors[rows, offsets]
        text = self.text_neighbors[rows, offsets]
        return torch.from_numpy(image.astype(np.int64)), torch.from_numpy(text.astype(np.int64))

    def targets(self, indices: torch.Tensor, step: int, device: torch.device) -> NeighborTargets:
        """The anchors' :class:`NeighborTargets`, on ``device``."""
        image_nbr, text_nbr = self.draw(indices, step)
        if self.target == "bank":
            image_feats, text_feats = self.image_bank.features, self.text_bank.features
            return NeighborTargets(
                image_nbr.to(device), text_nbr.to(device),
                nn_image=_rows(image_feats, image_nbr).to(device),
                nn_text=_rows(text_feats, text_nbr).to(device),
                xnn_image=_rows(text_feats, image_nbr).to(device),
                xnn_text=_rows(image_feats, text_nbr).to(device),
            )  # fmt: skip
        memory = self.memory
        nn_image, nn_image_valid = memory.lookup("image", image_nbr)
        nn_text, nn_text_valid = memory.lookup("text", text_nbr)
        xnn_image, xnn_image_valid = memory.lookup("text", image_nbr)
        xnn_text, xnn_text_valid = memory.lookup("image", text_nbr)
        return NeighborTargets(
            image_nbr.to(device), text_nbr.to(device),
            nn_image.to(device), nn_text.to(device), xnn_image.to(device), xnn_text.to(device),
            nn_image_valid.to(device), nn_text_valid.to(device),
            xnn_image_valid.to(device), xnn_text_valid.to(device),
        )  # fmt: skip
