"""Train / val / test of the demo corpus: groups (:mod:`.groups`) drawn by a seeded hash, and
evaluation sets with one caption text per image row (CLIP_benchmark's retrieval protocol).

- A group goes to ``test`` when the hash of its name (its smallest row key) is below
  :data:`TEST_FRACTION`, to ``val`` when below ``TEST_FRACTION + VAL_FRACTION``, else to
  ``train``: about 70/10/20 of the groups, and a group's side never depends on row order.
- An evaluation set holds the rows of one split and one source: ``<split>_google`` and
  ``<split>_twitter`` (every emoji variant of the split in that style) and
  ``<split>_clipart`` (one drawing per group: the others are near-duplicates or namesakes of
  it). A caption text that occurs twice in a set keeps its first row by key, so every set's
  caption texts are unique and each image has one caption.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .groups import DisjointSets, emoji_group_key, name_key, near_duplicates, title_key

VAL_FRACTION = 0.10
TEST_FRACTION = 0.20
SPLITS = ("train", "val", "test")
EVAL_SOURCES = ("google", "twitter", "clipart")


@dataclass(frozen=True)
class Row:
    """One image-caption pair of the corpus, before it has a split."""

    key: str  # emoji/<style>/<stem> or clipart/<path>
    image: str  # path under the corpus folder
    caption: str
    source: str  # the package it comes from
    kind: str  # "google", "twitter" (emoji styles) or "clipart"
    concept: str | None = None  # an emoji's concept base hexcode
    label: str | None = None  # an emoji concept's label, or a drawing's title

    def csv_row(self) -> dict:
        return {
            "filepath": self.image,
            "title": self.caption,
            "key": self.key,
            "source": self.source,
        }


def unit_hash(seed: int, purpose: str, name: str) -> float:
    """A stable number in [0, 1) for ``name``: splits and subsets without any RNG state."""
    digest = hashlib.blake2b(f"{seed}:{purpose}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def link_groups(rows: Sequence[Row], signatures: np.ndarray) -> tuple[list[str], Counter]:
    """The group name of every row and how many joins each rule made (see :mod:`.groups`)."""
    sets = DisjointSets(len(rows))
    links: Counter = Counter()
    by_rule: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, row in enumerate(rows):
        if row.concept is not None:
            by_rule["emoji concept"][row.concept].append(i)
            by_rule["emoji counterparts"][emoji_group_key(row.label or "")].append(i)
            by_rule["same name"][name_key(row.label or "")].append(i)
        else:
            by_rule["same name"][title_key(row.label or row.caption)].append(i)
        by_rule["same caption"][row.caption].append(i)
    for rule, members in by_rule.items():
        links[rule] = sum(sets.union_all(items) for items in members.values())
    links["near-duplicate image"] = sum(sets.union(i, j) for i, j, _ in near_duplicates(signatures))
    roots = sets.components()
    name_of: dict[int, str] = {}
    for row, root in zip(rows, roots, strict=True):
        name_of[root] = min(name_of.get(root, row.key), row.key)
    return [name_of[root] for root in roots], links


def split_of(group: str, seed: int) -> str:
    """``train``, ``val`` or ``test`` for a group name, by a hash salted with ``seed``."""
    u = unit_hash(seed, "split", group)
    if u < TEST_FRACTION:
        return "test"
    return "val" if u < TEST_FRACTION + VAL_FRACTION else "train"


def evaluation_sets(
    rows: Sequence[Row], groups: Sequence[str], splits: dict[str, str]
) -> tuple[dict[str, list[Row]], int]:
    """``{"val_google": rows, ...}`` for val and test, and how many rows were left out for a
    caption text already in their set (clip-art: also for a group already in it)."""
    sets: dict[str, list[Row]] = {f"{s}_{k}": [] for s in SPLITS[1:] for k in EVAL_SOURCES}
    for row, group in sorted(zip(rows, groups, strict=True), key=lambda pair: pair[0].key):
        if splits[group] != "train":
            sets[f"{splits[group]}_{row.kind}"].append((row, group))
    left_out = 0
    kept: dict[str, list[Row]] = {}
    for name, members in sets.items():
        seen_captions, seen_groups, chosen = set(), set(), []
        for row, group in members:
            if row.caption in seen_captions or (row.kind == "clipart" and group in seen_groups):
                left_out += 1
                continue
            seen_captions.add(row.caption)
            seen_groups.add(group)
            chosen.append(row)
        kept[name] = chosen
    return kept, left_out
