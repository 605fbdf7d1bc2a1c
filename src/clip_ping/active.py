"""The ``active`` source's teachers (our reading of A-CLIP-PING): the banks' own frozen
encoders, run on the current augmented batch so that its neighbours are searched in the
banks at that moment (:class:`~clip_ping.guidance.NeighborGuidance` with ``active``)."""

from __future__ import annotations

import torch

from .bank import Bank


def active_image_size(image_bank: Bank) -> int:
    """The input size at which the image bank's teacher runs on augmented crops (the active
    source), or an error naming the bank when it cannot run online."""
    size = image_bank.teacher_spec.online_image_size
    if size is None:
        raise ValueError(
            f"--neighbor-source active runs the image teacher on the augmented batch; it "
            f"supports efficientnet-lite0 banks, not {image_bank.teacher} ({image_bank.path})"
        )
    return size


class ActiveTeachers:
    """The banks' own teachers, run on the current batch (frozen, no gradients)."""

    def __init__(self, image_bank: Bank, text_bank: Bank, device: torch.device):
        from .teachers import create_teacher

        image_size = active_image_size(image_bank)
        self.image = create_teacher(image_bank.teacher, "image", image_size, str(device))
        self.text = create_teacher(text_bank.teacher, "text", None, str(device))
        self.image_size, self.device = image_size, device

    @torch.inference_mode()
    def encode(self, batch: dict) -> tuple[torch.Tensor, ...]:
        """Unit teacher features of ``batch``: ``teacher_image`` ``(B, 3, s, s)`` (the
        student's crop of the full-resolution image at the bank's input size, see
        :class:`~clip_ping.data.transforms.TrainTransform`) and ``caption``."""
        if "teacher_image" not in batch:
            raise ValueError(
                "--neighbor-source active needs the teacher's view of each crop: build the "
                f"training data with TrainTransform(..., teacher_size={self.image_size})"
            )
        pixels = batch["teacher_image"].to(self.device)
        if pixels.shape[-1] != self.image_size:
            raise ValueError(
                f"teacher views of {pixels.shape[-1]} px, but the image bank was built at "
                f"{self.image_size} px; build the data with teacher_size={self.image_size}"
            )
        image = self.image.encode(pixels)
        captions = batch["caption"]
        text = self.text.encode(self.text.collate([self.text.preprocess(c) for c in captions]))
        return image, text
