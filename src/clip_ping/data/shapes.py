"""Synthetic coloured-shapes corpus: a tiny image-text dataset for tests and smoke runs.

Each image shows one shape (circle, square, triangle, star, cross) in one of six colours,
small or large, on the left/right/top/bottom/centre of a near-white background with a
little pixel noise. The caption names all four attributes ("a small red circle on the
left"); the label is the colour-shape class, so the same corpus serves zero-shot
classification (``classnames.txt`` + ``templates.txt``) and retrieval (``val.csv``).

Layout written under ``out_dir``::

    images/{train,val}_000000.png
    train.csv, val.csv        filepath,title,label (filepath relative to the CSV's folder)
    classnames.txt            one class name per line, in label order ("red circle")
    templates.txt             zero-shot prompts with "{}" ("a photo of a {}.")
    corpus.json               parameters and file names; written last = corpus complete

Examples:
    >>> from clip_ping.data.shapes import build_shapes
    >>> info = build_shapes("shapes", num_train=20, num_val=10, image_size=16)
    >>> info["num_classes"]
    30
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..io import atomic_write, atomic_write_text

SHAPES = ("circle", "square", "triangle", "star", "cross")
COLOURS = {
    "red": (215, 30, 35),
    "green": (35, 155, 55),
    "blue": (35, 70, 215),
    "yellow": (240, 205, 20),
    "purple": (135, 45, 175),
    "orange": (245, 125, 10),
}
SIZES = {"small": 0.15, "large": 0.27}  # shape radius as a fraction of the image side
POSITIONS = {  # shape centre (x, y) as fractions of the image side, and how a caption says it
    "left": ((0.32, 0.5), "on the left"),
    "right": ((0.68, 0.5), "on the right"),
    "top": ((0.5, 0.32), "at the top"),
    "bottom": ((0.5, 0.68), "at the bottom"),
    "centre": ((0.5, 0.5), "in the centre"),
}
CAPTION_FORMATS = (
    "a {size} {colour} {shape} {where}",
    "a picture of a {size} {colour} {shape} {where}",
    "{where} there is a {size} {colour} {shape}",
    "a {colour} {shape} {where} which is {size}",
)
TEMPLATES = (
    "a photo of a {}.",
    "a {}.",
    "a picture of a {}.",
    "a drawing of a {} on a white background.",
)
SUPERSAMPLE = 4  # draw at 4x and downsample: smooth edges without an antialiasing renderer
JITTER = 0.04  # random shift of the shape centre, fraction of the image side
NOISE_STD = 4.0  # pixel noise, in 0-255 units
FORMAT_VERSION = 1


def class_names() -> list[str]:
    """Class names in label order: label = colour_index * len(SHAPES) + shape_index."""
    return [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        s = r / math.sqrt(2) * 1.15  # a square of the same visual weight as the circle
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        angles = [-90, 30, 150]
        return [
            (cx + r * math.cos(math.radians(a)), cy + r * math.sin(math.radians(a))) for a in angles
        ]
    if shape == "star":
        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else r * 0.45
            angle = math.radians(-90 + 36 * i)
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    if shape == "cross":
        a, b = r, r * 0.35
        offsets = [(-b, -a), (b, -a), (b, -b)]  # the top arm, clockwise; then a quarter turn
        for _ in range(3):  # at a time for the right, bottom and left arms
            offsets += [(-dy, dx) for dx, dy in offsets[-3:]]
        return [(cx + dx, cy + dy) for dx, dy in offsets]
    raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")


def render_shape(
    shape: str, colour: str, size: str, position: str, image_size: int, rng: np.random.Generator
) -> Image.Image:
    """One RGB ``image_size`` x ``image_size`` image; all randomness drawn from ``rng``."""
    big = image_size * SUPERSAMPLE
    background = tuple(int(v) for v in rng.integers(238, 256, size=3))
    canvas = Image.new("RGB", (big, big), background)
    (fx, fy), _ = POSITIONS[position]
    cx = (fx + rng.uniform(-JITTER, JITTER)) * big
    cy = (fy + rng.uniform(-JITTER, JITTER)) * big
    r = SIZES[size] * big
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=COLOURS[colour])
    else:
        draw.polygon(_polygon(shape, cx, cy, r), fill=COLOURS[colour])
    image = canvas.resize((image_size, image_size), Image.Resampling.LANCZOS)
    pixels = np.asarray(image, dtype=np.float32)
    pixels = pixels + rng.normal(0.0, NOISE_STD, size=pixels.shape)
    return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _write_split(out: Path, split: str, num: int, image_size: int, seed: int) -> None:
    names = class_names()
    split_id = {"train": 0, "val": 1}[split]
    # Labels are balanced (each class num / 30 times, ± 1) and shuffled.
    label_rng = np.random.default_rng([seed, split_id])
    labels = label_rng.permutation(np.arange(num) % len(names))
    rows = []
    for i, label in enumerate(labels.tolist()):
        # One generator per image: the corpus does not depend on which images already exist.
        rng = np.random.default_rng([seed, split_id, i])
        colour, shape = names[label].split(" ")
        size = list(SIZES)[rng.integers(len(SIZES))]
        position = list(POSITIONS)[rng.integers(len(POSITIONS))]
        caption = CAPTION_FORMATS[rng.integers(len(CAPTION_FORMATS))].format(
            size=size, colour=colour, shape=shape, where=POSITIONS[position][1]
        )
        relpath = f"images/{split}_{i:06d}.png"
        # Files are written atomically, so one that exists is complete and (same seed) identical.
        if not (out / relpath).exists():
            data = _png_bytes(render_shape(shape, colour, size, position, image_size, rng))
            atomic_write(out / relpath, lambda f, data=data: f.write(data))
        rows.append((relpath, caption, label))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["filepath", "title", "label"])
    writer.writerows(rows)
    atomic_write_text(out / f"{split}.csv", text.getvalue())


def build_shapes(
    out_dir: str | os.PathLike,
    num_train: int = 2000,
    num_val: int = 500,
    image_size: int = 64,
    seed: int = 0,
) -> dict:
    """Write the shapes corpus to ``out_dir`` (deterministic in ``seed``) and describe it.

    Returns the ``corpus.json`` content plus absolute paths: ``train_csv``, ``val_csv``,
    ``classnames``, ``templates``. If ``out_dir`` already holds a complete corpus with the
    same parameters, nothing is written; one with other parameters is an error.
    """
    if num_train < 1 or num_val < 1 or image_size < 8:
        raise ValueError(
            f"num_train={num_train}, num_val={num_val}, image_size={image_size}: "
            "need at least one train and one val image, and image_size >= 8"
        )
    out = Path(out_dir)
    params = {"num_train": num_train, "num_val": num_val, "image_size": image_size, "seed": seed}
    meta_path = out / "corpus.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("params") != params or meta.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{out} already holds a shapes corpus built with {meta.get('params')}, not "
                f"{params}; choose another output folder or delete this one"
            )
        return _describe(out, meta)

    (out / "images").mkdir(parents=True, exist_ok=True)
    _write_split(out, "train", num_train, image_size, seed)
    _write_split(out, "val", num_val, image_size, seed)
    atomic_write_text(out / "classnames.txt", "\n".join(class_names()) + "\n")
    atomic_write_text(out / "templates.txt", "\n".join(TEMPLATES) + "\n")
    meta = {
        "name": "shapes",
        "version": FORMAT_VERSION,
        "params": params,
        "num_classes": len(class_names()),
        "files": {
            "train_csv": "train.csv",
            "val_csv": "val.csv",
            "classnames": "classnames.txt",
            "templates": "templates.txt",
        },
        "license": "CC0-1.0 (generated)",
    }
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")  # last: marks completion
    return _describe(out, meta)


def _describe(out: Path, meta: dict) -> dict:
    return {**meta, **{key: str(out / name) for key, name in meta["files"].items()}}
