"""Flickr30K / MSCOCO retrieval sets from Karpathy's split files, as evaluation CSVs.

Karpathy & Fei-Fei's ``dataset_flickr30k.json`` / ``dataset_coco.json`` list every image with
its split (``train``, ``restval``, ``val``, ``test``) and its (usually 5) captions. The
standard retrieval test sets are the ``test`` splits: 1,000 Flickr30K images and 5,000 COCO
images, each with 5 captions. This writes one CSV row per caption (``filepath,title``), which
``clip-ping eval --task retrieval`` groups by image::

    clip-ping data karpathy --json dataset_flickr30k.json --images flickr30k-images \\
        --split test --out flickr30k_test.csv

Image paths are written relative to the CSV's folder when possible (absolute otherwise):
``images/<filename>`` for Flickr30K, ``images/<filepath>/<filename>`` for COCO (its
entries name the ``val2014`` / ``train2014`` folder).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from ..io import atomic_write_text, read_json_object

SPLITS = ("train", "restval", "val", "test")
KARPATHY_FIX = "pass Karpathy's dataset_flickr30k.json or dataset_coco.json"


def karpathy_to_csv(
    json_path: str | os.PathLike,
    images: str | os.PathLike,
    out: str | os.PathLike,
    split: str = "test",
    check_files: bool = True,
) -> int:
    """Write ``out`` (``filepath,title``, one row per caption) for ``split``; returns the
    number of images. ``check_files``: fail on the first image missing under ``images``."""
    if split not in SPLITS:
        raise ValueError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    json_path, images, out = Path(json_path), Path(images), Path(out)
    entries = read_json_object(json_path, KARPATHY_FIX).get("images")
    if not isinstance(entries, list):
        raise ValueError(f"{json_path} has no 'images' list; {KARPATHY_FIX}")
    rows, count = [], 0
    for number, entry in enumerate(entries):
        if not _is_entry(entry):
            raise ValueError(
                f"{json_path}: images[{number}] is not an image entry (an object with "
                f"'filename', 'split' and a 'sentences' list of {{'raw': caption}}); {KARPATHY_FIX}"
            )
        if entry.get("split") != split:
            continue
        path = images / entry.get("filepath", "") / entry["filename"]
        if check_files and not path.is_file():
            raise FileNotFoundError(
                f"image {path} (listed in {json_path}) not found; --images must be the folder "
                "holding the dataset's images (COCO: the one holding val2014/)"
            )
        try:
            path = path.resolve().relative_to(out.parent.resolve())
        except ValueError:
            path = path.resolve()
        rows += [(path.as_posix(), s["raw"].strip()) for s in entry["sentences"]]
        count += 1
    if not count:
        raise ValueError(f"{json_path} lists no '{split}' images")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["filepath", "title"])
    writer.writerows(rows)
    atomic_write_text(out, buffer.getvalue())
    return count


def _is_entry(entry) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("filename"), str)
        and isinstance(entry.get("filepath", ""), str)
        and isinstance(entry.get("sentences"), list)
        and all(isinstance(s, dict) and isinstance(s.get("raw"), str) for s in entry["sentences"])
    )
