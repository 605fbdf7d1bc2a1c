"""Per-sample student memory for ``memory`` targets (CLIP-PING, our reading).

Keeps the latest detached student embedding of every training sample, one table per
modality, so a neighbour's target is what the student currently says about it. Every rank
writes the whole global batch (gathered), so the tables are identical everywhere; rows
never written yet are reported invalid and left out of the loss.

Storage is ``(N, d)`` per modality in ``dtype`` (float16 by default: 2 · N · d · 2 bytes,
e.g. 3M samples × 256 dims = 3.1 GB for both tables, 12M = 12.3 GB), **replicated on every
rank, in host memory** by default (``device="cpu"``), whatever the training device. Why
(numbers in docs/scaling.md): a step moves only the gathered batch in (world · B · d · 2 · 2
bytes: 4 MB for a global batch of 4,096 at d = 256) and 4 · B rows out, milliseconds over
PCIe, while a GPU copy would take 3-12 GB of every GPU's memory; sharding the rows across
ranks would save host memory but add an all-to-all per lookup, and 8 replicas of CC12M's
tables (98 GB) fit the host memory of GPU nodes. Gathers run on the features' device (NCCL
needs CUDA tensors); only the gathered rows cross to the tables.

Examples:
    >>> memory = StudentMemory(num_samples=100, dim=8)
    >>> memory.update(torch.tensor([3, 5]), torch.randn(2, 8), torch.randn(2, 8))
    >>> features, valid = memory.lookup("image", torch.tensor([3, 4]))
    >>> valid.tolist()
    [True, False]
"""

from __future__ import annotations

import torch
from torch import nn

from .distributed import gather_batch

MODALITIES = ("image", "text")


class StudentMemory(nn.Module):
    """``(N, d)`` image and text tables plus a written-mask; buffers, so ``state_dict``
    carries them into checkpoints."""

    def __init__(
        self,
        num_samples: int,
        dim: int,
        dtype: torch.dtype = torch.float16,
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        for name in MODALITIES:
            self.register_buffer(name, torch.zeros(num_samples, dim, dtype=dtype, device=device))
        self.register_buffer("written", torch.zeros(num_samples, dtype=torch.bool, device=device))

    @torch.no_grad()
    def update(
        self, indices: torch.Tensor, image_features: torch.Tensor, text_features: torch.Tensor
    ) -> None:
        """Write the batch's ``(B, d)`` embeddings at sample ``indices`` ``(B,)``, after
        gathering every rank's batch."""
        features_device = image_features.device
        indices = gather_batch(indices.to(features_device), with_grad=False)
        image = gather_batch(image_features.detach(), with_grad=False)
        text = gather_batch(text_features.detach(), with_grad=False)
        indices = indices.to(self.written.device)
        self.image[indices] = image.to(self.image)
        self.text[indices] = text.to(self.text)
        self.written[indices] = True

    def lookup(self, modality: str, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, d)`` float32 rows of ``modality`` at ``indices`` and their ``(B,)`` validity."""
        if modality not in MODALITIES:
            raise ValueError(f"memory modality {modality!r}: choose one of {MODALITIES}")
        table = getattr(self, modality)
        indices = indices.to(table.device)
        return table[indices].float(), self.written[indices]
