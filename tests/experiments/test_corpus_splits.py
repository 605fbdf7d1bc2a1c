"""Leak-free splits of the full demo corpus, built from the real asset packages (``make assets``).

The checks re-derive what they can from the written files (CSVs, ``groups.csv``, pixels)
rather than trusting the builder: a group on two sides, a near-duplicate or identical image
in val/test with a copy in train, a val/test caption that occurs in train.
"""

import csv
import hashlib
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_ping.experiments.assets import ASSETS_ENV, SOURCES, package_dir, resolve_assets
from clip_ping.experiments.corpus_splits import Row, evaluation_sets, split_of
from clip_ping.experiments.demo_corpus import EVAL_SETS, build_demo_corpus
from clip_ping.experiments.groups import (
    NEAR_DUPLICATE_THRESHOLD,
    DisjointSets,
    edge_signature,
    emoji_group_key,
    near_duplicates,
    title_key,
)

REPO = Path(__file__).resolve().parents[2]


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = resolve_assets(os.environ.get(ASSETS_ENV) or REPO / ".assets").resolve()
    for package in SOURCES:
        package_dir(root, package)
    out = tmp_path_factory.mktemp("full") / "corpus"
    build_demo_corpus(out, assets=root)  # the whole corpus: the claims are about it
    return out


@pytest.fixture(scope="module")
def sides(corpus):
    """Every row of train and the evaluation sets with its split, read from the CSVs."""
    rows = {"train": read_csv(corpus / "train.csv")}
    for name in EVAL_SETS:
        rows[name] = read_csv(corpus / f"{name}.csv")
    return rows


def test_emoji_counterparts_share_a_key():
    same = [
        ("boy", "girl", "child", "baby", "man", "woman", "person", "old man", "older person"),
        ("woman dancing", "man dancing"),
        ("pregnant man", "pregnant woman", "pregnant person"),
        ("kiss", "kiss: woman, man", "kiss: man, man"),
        ("family", "family: man, woman, boy", "family: adult, child"),
        ("couple with heart", "couple with heart: woman, woman"),
        ("men’s room", "women’s room"),
        ("female sign", "male sign"),
        ("prince", "princess", "person with crown"),
        ("santa claus", "mrs. claus", "mx claus"),
        ("woman and man holding hands", "men holding hands", "people holding hands"),
        ("person running", "person running: facing right"),
        ("person", "person: red hair"),
    ]
    for labels in same:
        assert len({emoji_group_key(label) for label in labels}) == 1, labels
    different = [
        "flag: germany",
        "flag: france",
        "kiss mark",
        "man’s shoe",
        "woman’s hat",
        "keycap: 1",
        "keycap: 2",
        "person running",
        "person walking",
    ]
    keys = [emoji_group_key(label) for label in different]
    assert len(set(keys)) == len(keys)
    assert title_key("Candy_21") == title_key("candy 22") == "candy"


def test_disjoint_sets_and_near_duplicates_against_brute_force():
    sets = DisjointSets(6)
    assert sets.union_all([0, 2, 4]) == 2 and not sets.union(4, 0)
    roots = sets.components()
    assert roots[0] == roots[2] == roots[4] and len(set(roots)) == 4
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8)).astype(np.float32)
    x[10] = x[3] + 0.01  # two near-copies
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    scores = x @ x.T
    expected = {(i, j) for i in range(50) for j in range(i + 1, 50) if scores[i, j] >= 0.6}
    found = {(i, j) for i, j, _ in near_duplicates(x, 0.6, block=7)}
    assert found == expected and (3, 10) in found


def test_edge_signature_ignores_colour_but_not_shape():
    def drawing(colour, box):
        image = Image.new("RGB", (64, 64), "white")
        image.paste(Image.new("RGB", (box[2] - box[0], box[3] - box[1]), colour), box[:2])
        return image

    red, blue = drawing("red", (10, 10, 40, 50)), drawing("navy", (10, 10, 40, 50))
    other = drawing("red", (30, 5, 60, 25))
    assert edge_signature(red) @ edge_signature(blue) > 0.99  # a recolour
    assert edge_signature(red) @ edge_signature(other) < NEAR_DUPLICATE_THRESHOLD


def test_evaluation_sets_have_unique_captions_and_one_drawing_per_group():
    rows = [
        Row("emoji/google/a", "a.png", "cat", "g", "google", "A", "cat"),
        Row("emoji/google/b", "b.png", "cat", "g", "google", "B", "cat face"),
        Row("clipart/x1", "x1.png", "star", "o", "clipart", label="star"),
        Row("clipart/x2", "x2.png", "star 2", "o", "clipart", label="star"),
    ]
    groups = ["ga", "gb", "gx", "gx"]
    sets, left_out = evaluation_sets(rows, groups, dict.fromkeys(groups, "test"))
    assert [r.key for r in sets["test_google"]] == ["emoji/google/a"]  # caption repeated
    assert [r.key for r in sets["test_clipart"]] == ["clipart/x1"]  # second of its group
    assert left_out == 2 and not sets["val_google"]
    assert {split_of(f"group {i}", 0) for i in range(100)} == {"train", "val", "test"}


def test_no_group_spans_two_splits(corpus, sides):
    assigned = {r["key"]: (r["group"], r["split"]) for r in read_csv(corpus / "groups.csv")}
    split_of_group = defaultdict(set)
    for group, split in assigned.values():
        split_of_group[group].add(split)
    assert all(len(s) == 1 for s in split_of_group.values())
    for name, rows in sides.items():
        split = name.split("_")[0]
        for row in rows:
            assert assigned[row["key"]][1] == split, (name, row["key"])
    meta = json.loads((corpus / "corpus.json").read_text())
    groups = meta["counts"]["groups"]
    assert sum(groups.values()) == len(split_of_group)
    shares = {s: n / len(split_of_group) for s, n in groups.items()}
    assert abs(shares["test"] - 0.2) < 0.03 and abs(shares["val"] - 0.1) < 0.03
    for name, rows in sides.items():
        assert meta["splits"][f"{name}.csv"] == len(rows)


def test_the_issue_cases_are_grouped(corpus):
    """Counterparts named in the bug report land in one group (so on one side)."""
    rows = read_csv(corpus / "groups.csv")
    captions = {}
    for name in ("train", *EVAL_SETS):
        captions |= {r["key"]: r["title"] for r in read_csv(corpus / f"{name}.csv")}
    group = {r["key"]: r["group"] for r in rows}
    by_label = defaultdict(set)
    for key, text in captions.items():
        if key.startswith("emoji/"):
            by_label[text.split(":")[0].split(",")[0]].add(group[key])
    for labels in (
        ("boy", "girl"),
        ("woman dancing", "man dancing"),
        ("pregnant man", "pregnant woman", "pregnant person"),
        ("men’s room", "women’s room"),
        ("female sign", "male sign"),
    ):
        found = set().union(*(by_label[label] for label in labels))
        assert len(found) == 1, (labels, found)


def test_no_val_or_test_image_has_a_copy_or_near_duplicate_in_train(corpus, sides):
    def signatures(rows):
        return np.stack([edge_signature(Image.open(corpus / r["filepath"])) for r in rows])

    def pixels(rows):
        return {
            hashlib.sha1(Image.open(corpus / r["filepath"]).tobytes()).hexdigest(): r["key"]
            for r in rows
        }

    train = sides["train"]
    held_out = [r for name in EVAL_SETS for r in sides[name]]
    pairs = list(near_duplicates(signatures(held_out), against=signatures(train)))
    assert not pairs, [(held_out[i]["key"], train[j]["key"], s) for i, j, s in pairs[:5]]
    assert not set(pixels(held_out)) & set(pixels(train))


def test_no_val_or_test_caption_occurs_in_train_and_sets_are_caption_unique(sides):
    train = {r["title"] for r in sides["train"]}
    for name in EVAL_SETS:
        texts = [r["title"] for r in sides[name]]
        assert len(texts) == len(set(texts)), name  # one caption per image, unique texts
        assert not set(texts) & train, name
        assert len({r["filepath"] for r in sides[name]}) == len(texts)
    assert all(len(sides[name]) > 100 for name in EVAL_SETS)


def test_openmoji_stays_out_and_zeroshot_splits_by_concept(corpus, sides):
    for name, rows in sides.items():  # OpenMoji only in its own (off-style) sets
        in_openmoji = ["openmoji" in r["filepath"] for r in rows]
        assert all(in_openmoji) if name.endswith("_openmoji") else not any(in_openmoji), name

    def starts(name, captions):
        return any(c == name or c.startswith((f"{name}: ", f"{name}, ")) for c in captions)

    for name, side in (("unseen", "test"), ("seen", "train")):
        classes = (corpus / "zeroshot" / name / "classnames.txt").read_text().splitlines()
        assert len(classes) > 100
        captions = {r["title"] for s, rows in sides.items() if s.startswith(side) for r in rows}
        others = {r["title"] for s, rows in sides.items() if not s.startswith(side) for r in rows}
        for classname in classes:  # a concept of that side, and of no other
            assert starts(classname, captions) and not starts(classname, others), classname


def test_the_off_style_sets_are_the_splits_concepts_in_a_style_never_trained_on(corpus, sides):
    groups = {r["key"]: r["split"] for r in read_csv(corpus / "groups.csv")}
    for split in ("val", "test"):
        off = sides[f"{split}_openmoji"]
        assert len(off) > 100 and all(groups[r["key"]] == split for r in off)
        # The captions are the split's own emoji captions (its base emoji's, as trained
        # styles caption it): the same texts in another style.
        in_style = {r["title"] for s in ("google", "twitter") for r in sides[f"{split}_{s}"]}
        assert {r["title"] for r in off} <= in_style
    meta = json.loads((corpus / "corpus.json").read_text())
    assert meta["counts"]["off_style_near_duplicates_left_out"] >= 1  # plain squares
