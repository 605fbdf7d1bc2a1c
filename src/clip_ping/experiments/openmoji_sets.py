"""The demo corpus's held-out sets of OpenMoji, the style no model trains on (see
:mod:`.demo_corpus`): zero-shot over concept names and CLDR subgroups, and off-style
retrieval over the drawings of the val and test concepts; and the CSV writer every set
shares."""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from ..io import atomic_write_text
from .corpus_splits import SPLITS, Row
from .demo_images import openmoji_image
from .emoji import normalise_hexcode
from .groups import edge_signature, near_duplicates

CSV_COLUMNS = ["filepath", "title", "key", "source"]
# The style no model trains on: a retrieval set of it per evaluation split (off-style).
OFF_STYLE = "openmoji"
ZEROSHOT_SETS = ("unseen", "seen", "subgroups")
MIN_SUBGROUP_IMAGES = 5
TEMPLATES = ("an emoji of {}.", "a {} emoji.", "{}.", "an icon of {}.")


def write_csv(path: Path, rows: list[dict], columns: list[str] = CSV_COLUMNS) -> int:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda row: row["key"]))
    atomic_write_text(path, buffer.getvalue())
    return len(rows)


def _write_zeroshot(folder: Path, items: list[tuple[Path, str]]) -> dict:
    """``items`` = (image path from ``out``, class name) → test.csv + names + templates."""
    classnames = sorted({name for _, name in items})
    label = {name: i for i, name in enumerate(classnames)}
    rows = [
        {"filepath": f"../../{p.as_posix()}", "label": label[n], "key": f"openmoji/{p.stem}"}
        for p, n in items
    ]
    write_csv(folder / "test.csv", rows, ["filepath", "label", "key"])
    atomic_write_text(folder / "classnames.txt", "".join(f"{n}\n" for n in classnames))
    atomic_write_text(folder / "templates.txt", "".join(f"{t}\n" for t in TEMPLATES))
    return {"images": len(rows), "classes": len(classnames)}


def write_zeroshot_sets(tmp: Path, rows: list[Row], groups: list, split: dict, openmoji) -> dict:
    """The three OpenMoji zero-shot sets (module docstring); each one's image and class count."""
    side_of_concept = {r.concept: split[g] for r, g in zip(rows, groups, strict=True) if r.concept}
    zeroshot_items = {
        "unseen": [c for c, _ in openmoji if side_of_concept[c.base] == "test"],
        "seen": [c for c, _ in openmoji if side_of_concept[c.base] == "train"],
    }
    zeroshot = {
        name: _write_zeroshot(
            tmp / "zeroshot" / name, [(openmoji_image(c.openmoji), c.label) for c in items]
        )
        for name, items in zeroshot_items.items()
    }
    subgroups = [(openmoji_image(c.openmoji), c.subgroup.replace("-", " ")) for c, _ in openmoji]
    sizes = Counter(name for _, name in subgroups)
    zeroshot["subgroups"] = _write_zeroshot(
        tmp / "zeroshot" / "subgroups", [i for i in subgroups if sizes[i[1]] >= MIN_SUBGROUP_IMAGES]
    )
    return zeroshot


def write_off_style_sets(
    tmp: Path, rows: list[Row], groups: list, split: dict, openmoji, signatures: np.ndarray
) -> tuple[dict[str, int], list[dict]]:
    """``{val,test}_openmoji.csv``: the OpenMoji drawing of every emoji concept of the split,
    captioned as the concept's base emoji is in its own style (the same text as its Noto and
    Twemoji rows), one caption per image as the other sets (a repeated caption keeps its
    first concept). A drawing that is a near-duplicate of a training image (``signatures``:
    the rows' edge signatures) is left out: simple shapes look alike in every style. Their
    row counts and the drawings left out, and their ``groups.csv`` entries (each drawing in
    its concept's group)."""
    group_of = {r.concept: g for r, g in zip(rows, groups, strict=True) if r.concept}
    train = signatures[[split[g] == "train" for g in groups]]
    counts, entries = {"off_style_near_duplicates_left_out": 0}, []
    for name in SPLITS[1:]:
        members, seen = [], set()
        for concept, svg in sorted(openmoji, key=lambda item: item[0].base):
            group = group_of[concept.base]
            text = _base_caption(concept)
            if split[group] != name or text in seen:
                continue
            image = openmoji_image(svg)
            signature = edge_signature(Image.open(tmp / image))[None]
            if next(near_duplicates(signature, against=train), None) is not None:
                counts["off_style_near_duplicates_left_out"] += 1
                continue
            seen.add(text)
            key = f"{OFF_STYLE}/{image.stem}"
            members.append(
                {"filepath": image.as_posix(), "title": text, "key": key, "source": OFF_STYLE}
            )
            entries.append({"key": key, "group": group, "split": name})
        counts[f"{name}_{OFF_STYLE}_rows"] = write_csv(tmp / f"{name}_{OFF_STYLE}.csv", members)
    return counts, entries


def _base_caption(concept) -> str:
    """The caption of a concept's base emoji (the variant named by its hexcode; the first
    variant where the base itself has no image)."""
    for variant in concept.variants:
        if normalise_hexcode(variant.stem) == concept.base:
            return variant.caption
    return concept.variants[0].caption
