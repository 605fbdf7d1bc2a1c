"""Per-sample student memory for ``memory`` targets (CLIP-PING, our reading).

Keeps the latest detached student embedding of every training sample, one table per
modality, so a neighbour's target is what the student currently says about it. Every rank
writes the whole global batch (gathered), so the tables are identical everywhere; rows
never written yet are reported invalid and left out of the loss.

Storage is ``(N, d)`` per modality in ``dtype`` (float16 by default: 2 · N · d · 2 bytes,
e.g. 3M samples × 256 dims = 3.1 GB for both tables).

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

    def __init__(self, num_samples: int, dim: int, dtype: torch.dtype = torch.float16):
        super().__init__()
        self.register_buffer("image", torch.zeros(num_samples, dim, dtype=dtype))
        self.register_buffer("text", torch.zeros(num_samples, dim, dtype=dtype))
        self.register_buffer("written", torch.zeros(num_samples, dtype=torch.bool))

    @torch.no_grad()
    def update(
        self, indices: torch.Tensor, image_features: torch.Tensor, text_features: torch.Tensor
    ) -> None:
        """Write the batch's ``(B, d)`` embeddings at sample ``indices`` ``(B,)``, after
        gathering every rank's batch."""
        indices = gather_batch(indices.to(self.written.device), with_grad=False)
        image = gather_batch(image_features.detach(), with_grad=False)
        text = gather_batch(text_features.detach(), with_grad=False)
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
