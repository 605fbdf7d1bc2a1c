"""Image transforms without torchvision: PIL in, ``(3, H, W)`` float tensor out.

Training uses a random resized crop (scale 0.9-1.0, as open_clip's default) and
evaluation a resize of the shorter side plus a centre crop, both followed by CLIP's
mean/std normalisation. Randomness comes from an explicit ``numpy`` generator so
that a sample's augmentation depends only on (seed, epoch, sample index): a resumed
run, or a run with another number of workers, sees the same pixels.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# The ranges a 32-bit integer (signed, as PIL reads it) or float image is read in: the
# smallest that holds its values. Such files carry no white level (16-bit data in a 32-bit
# TIFF is common, float images are usually 0-1); PIL's own convert() clips at 255 instead,
# which makes nearly every pixel white.
HIGH_DEPTH_RANGES = (1.0, 255.0, 65535.0, 2147483647.0)


def _to_8bit(image: Image.Image) -> Image.Image:
    """A grayscale image deeper than 8 bits (PIL modes ``I;16*``, ``I``, ``F``) scaled to
    mode ``L``: 16-bit by 65,535 → 255; 32-bit integer and float images by the first of
    :data:`HIGH_DEPTH_RANGES` that holds their largest value (1.0 only for floats, and for a
    TIFF that declares 16 bits per sample, 65,535). Negative values become 0."""
    pixels = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        white = 65535.0
    elif getattr(image, "tag_v2", {}).get(258) in (16, (16,)):  # TIFF BitsPerSample
        white = 65535.0
    else:
        peak = float(pixels.max(initial=0.0))
        ranges = HIGH_DEPTH_RANGES if image.mode == "F" else HIGH_DEPTH_RANGES[1:]
        white = next((r for r in ranges if peak <= r), ranges[-1])
    scaled = np.clip(np.nan_to_num(pixels) * (255.0 / white), 0, 255)
    return Image.fromarray(np.round(scaled).astype(np.uint8), "L")


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of ``image``; transparent pixels are composited on white, not black, and
    16-bit or 32-bit grayscale is scaled to 8 bits (:func:`_to_8bit`), not clipped."""
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_8bit(image)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")


@functools.cache
def _affine(mean: tuple, std: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x/255 − mean)/std`` as one multiply-add: the (3, 1, 1) scale and shift."""
    mean_t, std_t = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    return 1.0 / (255.0 * std_t), -mean_t / std_t


def _to_tensor(image: Image.Image, mean: tuple, std: tuple) -> torch.Tensor:
    """``(3, H, W)`` float32, normalised. Height-width-channel in memory (a view of the
    decoded pixels): collating with :func:`stack_channels_last` keeps that layout."""
    scale, shift = _affine(tuple(mean), tuple(std))
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))  # (H, W, 3), writable copy
    return pixels.permute(2, 0, 1).float().mul_(scale).add_(shift)


def stack_channels_last(items: list[torch.Tensor]) -> torch.Tensor:
    """``(B, 3, H, W)`` in channels-last memory from ``(3, H, W)`` tensors: for convolutional
    networks on CPU, and ~6× cheaper than a plain stack of height-width-channel images."""
    return torch.stack([x.permute(1, 2, 0) for x in items]).permute(0, 3, 1, 2)


@dataclass
class EvalTransform:
    """Resize the shorter side to ``image_size`` (bicubic), centre crop, normalise."""

    image_size: int
    mean: tuple = CLIP_MEAN
    std: tuple = CLIP_STD

    def __call__(self, image: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        image = to_rgb(image)
        w, h = image.size
        scale = self.image_size / min(w, h)
        new_w, new_h = (
            max(self.image_size, round(w * scale)),
            max(self.image_size, round(h * scale)),
        )
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        left, top = (new_w - self.image_size) // 2, (new_h - self.image_size) // 2
        image = image.crop((left, top, left + self.image_size, top + self.image_size))
        return _to_tensor(image, self.mean, self.std)


TEACHER_MEAN = TEACHER_STD = (0.5, 0.5, 0.5)  # the image teacher's (x/255 − 0.5)/0.5


@dataclass
class TrainTransform:
    """Random resized crop (area ``scale``, aspect ``ratio``), then normalise.

    ``rng`` makes the draw reproducible; without it a fresh generator is used.

    With ``teacher_size`` (``--neighbor-source active``) the call returns
    ``{"image": student view, "teacher_image": teacher view}``: the teacher view is the same
    crop box of the full-resolution image, resized to the teacher's input size and
    normalised as the image teacher's bank was, so the online teacher sees what the bank
    saw (not the student's small view upscaled).
    """

    image_size: int
    scale: tuple = (0.9, 1.0)
    ratio: tuple = (3 / 4, 4 / 3)
    mean: tuple = CLIP_MEAN
    std: tuple = CLIP_STD
    teacher_size: int | None = None

    def crop_box(self, width: int, height: int, rng: np.random.Generator) -> tuple:
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                left = int(rng.integers(0, width - w + 1))
                top = int(rng.integers(0, height - h + 1))
                return left, top, left + w, top + h
        side = min(width, height)  # fall back to a centre crop
        left, top = (width - side) // 2, (height - side) // 2
        return left, top, left + side, top + side

    def __call__(
        self, image: Image.Image, rng: np.random.Generator | None = None
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        rng = rng if rng is not None else np.random.default_rng()
        image = to_rgb(image)
        box = self.crop_box(*image.size, rng)
        size = (self.image_size, self.image_size)
        student = _to_tensor(
            image.resize(size, Image.Resampling.BICUBIC, box=box), self.mean, self.std
        )
        if self.teacher_size is None:
            return student
        size = (self.teacher_size, self.teacher_size)
        teacher = image.resize(size, Image.Resampling.BICUBIC, box=box)
        return {"image": student, "teacher_image": _to_tensor(teacher, TEACHER_MEAN, TEACHER_STD)}
