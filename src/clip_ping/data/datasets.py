"""The CSV/TSV reader, and what every reader shares: each sample's stable index.

Neighbour banks are indexed by sample, so every sample carries a **stable index** that does
not depend on shuffling, workers or ranks: the row number of a CSV (0-based, header
excluded), or for shards the position in "shards in list order, then members in tar order"
(:class:`~clip_ping.data.tars.KeyIndex`; the shard reader is
:class:`~clip_ping.data.shards.ShardDataset`). Both readers yield the same dict::

    {"image": (3, H, W) float tensor, "text": (L,) LongTensor, "index": int}

Augmentation randomness comes from ``numpy.random.default_rng([seed, epoch, index])``, so a
sample's pixels depend on nothing else (resume and worker count leave them unchanged).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .bad_samples import (
    BadSample,
    bad_record,
    check_caption,
    check_policy,
    decode_image,
    inside_root,
)
from .csv_table import int_column, read_csv_table
from .transforms import to_rgb

Transform = Callable[[Image.Image, np.random.Generator], torch.Tensor]
Tokenizer = Callable[[list[str]], torch.Tensor]

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTENSION = "txt"
KEY_INDEX_FORMAT = "clip-ping-key-index/1"


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator a sample's transform draws from: a function of (seed, epoch, index) only."""
    return np.random.default_rng([seed, epoch, index])


def make_sample(
    image: Image.Image,
    caption: str,
    index: int,
    epoch: int,
    seed: int,
    transform: Transform | None,
    tokenizer: Tokenizer | None,
) -> dict:
    # Without a transform / tokenizer the raw RGB image / caption string is returned, which is
    # what feature extractors with their own preprocessing want.
    pixels = transform(image, sample_rng(seed, epoch, index)) if transform else to_rgb(image)
    views = pixels if isinstance(pixels, dict) else {"image": pixels}  # + teacher_image
    text = tokenizer([caption])[0] if tokenizer else caption
    # The caption string rides along for online text teachers (--neighbor-source active).
    return {**views, "text": text, "index": index, "caption": caption}


def _split_item(item: int | tuple[int, int]) -> tuple[int, int]:
    """``index`` or ``(epoch, index)`` → ``(epoch, index)``."""
    if isinstance(item, tuple):
        epoch, index = item
        return int(epoch), int(index)
    return 0, int(item)


class CsvDataset(Dataset):
    """Image-caption pairs listed in a CSV/TSV file (open_clip's ``--csv-*`` conventions).

    ``dataset[i]`` or ``dataset[(epoch, i)]`` returns ``{"image": (3, H, W), "text": (L,),
    "index": i}`` where ``i`` is the CSV row (0-based, header excluded). Image paths are read
    relative to ``root``, by default the CSV's folder. A ``label`` column, if present, is
    exposed as :attr:`labels` (zero-shot and linear-probe evaluation use it).

    A bad sample (see :mod:`.bad_samples`) raises :class:`BadSample` with
    ``on_bad_sample="error"``; with ``"skip"`` it is returned as a ``bad_record``. When
    ``root`` is given, paths that lead outside it are bad samples and never opened.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        img_key: str = "filepath",
        caption_key: str = "title",
        separator: str | None = None,
        root: str | os.PathLike | None = None,
        transform: Transform | None = None,
        tokenizer: Tokenizer | None = None,
        seed: int = 0,
        on_bad_sample: str = "error",
    ):
        check_policy(on_bad_sample)
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"CSV file {self.path} not found; pass --train-data a .csv/.tsv file (e.g. "
                "from `clip-ping data shapes --out DIR`: DIR/train.csv) or WebDataset shards"
            )
        required = {img_key: "--csv-img-key", caption_key: "--csv-caption-key"}
        # One row a line: a quoted field over a line break is a stray quote pair.
        table = read_csv_table(self.path, separator, required, multiline=False)
        self.root = Path(root) if root is not None else self.path.parent
        self.confined = root is not None  # a given root is a boundary, the default is not
        self._keys: list[str] = table.column(img_key)  # type: ignore[assignment]
        self.captions: list[str | None] = table.column(caption_key)
        # Parsed when first read: training never reads labels, so a bad one must not stop it.
        self._table = table if "label" in table.columns else None
        self._labels: list[int] | None = None
        self.transform, self.tokenizer, self.seed = transform, tokenizer, seed
        self.on_bad_sample = on_bad_sample

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def labels(self) -> list[int] | None:
        """The ``label`` column as integers, None without one (an error names a bad value)."""
        if self._labels is None and self._table is not None:
            self._labels = int_column(self._table, "label")
            self._table = None
        return self._labels

    def keys(self) -> list[str]:
        """Image paths as written in the CSV, in row order: the samples' stable keys."""
        return list(self._keys)

    def image_path(self, index: int) -> Path:
        if self.confined:
            return inside_root(self.root, self._keys[index])
        return self.root / self._keys[index]

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        epoch, index = _split_item(item)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.path} ({len(self)} rows)")
        try:
            caption = check_caption(self.captions[index])
            image = decode_image(self.image_path(index))
        except BadSample as bad:
            if self.on_bad_sample == "skip":
                return bad_record(index, self._keys[index], bad.reason)
            if bad.reason == "file not found":
                bad = BadSample(f"not found (image paths are read relative to {self.root})")
            raise bad.at(f"image {self._keys[index]!r} (row {index} of {self.path})") from None
        return make_sample(image, caption, index, epoch, self.seed, self.transform, self.tokenizer)
