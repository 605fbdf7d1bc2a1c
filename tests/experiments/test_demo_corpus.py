"""The offline demo corpus, built from the real asset packages in ``.assets`` (``make assets``)."""

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_ping.data.datasets import CsvDataset
from clip_ping.data.transforms import EvalTransform
from clip_ping.evaluation.datasets import load_eval_dataset
from clip_ping.experiments.assets import ASSETS_ENV, SOURCES, package_dir, resolve_assets
from clip_ping.experiments.clipart import _title_problem
from clip_ping.experiments.demo_corpus import EVAL_SETS, build_demo_corpus
from clip_ping.experiments.emoji import EMOJI_STYLES, caption, load_concepts

REPO = Path(__file__).resolve().parents[2]
SMALL = {"max_concepts": 60, "max_clipart": 40}
RETRIEVAL_CSVS = ("train.csv", *(f"{name}.csv" for name in EVAL_SETS))
ZEROSHOT_CSVS = tuple(f"zeroshot/{name}/test.csv" for name in ("unseen", "seen", "subgroups"))


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def assets():
    root = resolve_assets(os.environ.get(ASSETS_ENV) or REPO / ".assets").resolve()
    for package in SOURCES:
        package_dir(root, package)  # a clear error naming `make assets` when absent
    return root


@pytest.fixture(scope="module")
def concepts(assets):
    """All concepts from the packages, independently of any build."""
    folders = {p: package_dir(assets, p) for p in SOURCES}
    found, _ = load_concepts(
        {s: folders[f"emoji-datasource-{s}"] for s in EMOJI_STYLES},
        folders["emojibase-data"],
        folders["openmoji"],
    )
    return found


@pytest.fixture(scope="module")
def small(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "small"
    info = build_demo_corpus(out, assets=assets, **SMALL)
    return out, info


def test_concepts_group_skin_tones_and_genders(concepts):
    by_base = {c.base: {v.stem for v in c.variants} for c in concepts}
    # person gesturing OK: its five tones, and the man's and woman's forms with theirs
    assert {"1f646", "1f646-1f3fd", "1f646-200d-2642-fe0f", "1f646-1f3ff-200d-2640-fe0f"} <= (
        by_base["1F646"]
    )
    assert len(by_base["1F646"]) == 18
    assert "1f468-200d-1f4bb" in by_base["1F9D1-200D-1F4BB"]  # man technologist → technologist
    stems = [s for variants in by_base.values() for s in variants]
    assert len(stems) == len(set(stems))  # each image in one concept
    assert not any(s.startswith("1f3fb") for s in stems)  # skin-tone swatch (component) dropped
    labels = [c.label for c in concepts]
    assert len(labels) == len(set(labels))


def test_images_are_rgb_at_their_size_with_white_where_transparent(small, assets):
    out, _ = small
    checked_transparent = 0
    for name in RETRIEVAL_CSVS:
        for row in read_csv(out / name):
            with Image.open(out / row["filepath"]) as image:
                assert image.mode == "RGB"
                size = 128 if row["source"] == "openclipart" else 64
                assert image.size == (size, size), row["key"]
                pixels = np.asarray(image)
            if row["source"].startswith("emoji-datasource"):
                style = row["key"].split("/")[1]
                source = package_dir(assets, row["source"]) / "img" / style / "64"
                with Image.open(source / Path(row["filepath"]).name) as original:
                    alpha = np.asarray(original.convert("RGBA"))[..., 3]
                transparent = alpha == 0
                assert (pixels[transparent] == 255).all(), row["key"]
                checked_transparent += int(transparent.any())
    assert checked_transparent > 50
    for row in read_csv(out / ZEROSHOT_CSVS[0]):  # OpenMoji SVGs have no background
        with Image.open(out / "zeroshot" / "unseen" / row["filepath"]) as image:
            assert image.mode == "RGB" and image.size == (64, 64)
            assert np.asarray(image)[0, 0].tolist() == [255, 255, 255]


def test_splits_keep_concepts_whole_and_openmoji_out_of_training(small, concepts):
    out, info = small
    concept_of = {v.stem: c.base for c in concepts for v in c.variants}
    variants = {c.base: {v.stem for v in c.variants} for c in concepts}
    sides, keys_of = {}, {}
    for row in read_csv(out / "groups.csv"):
        if row["key"].startswith("emoji/"):
            base = concept_of[row["key"].split("/")[2]]
            sides.setdefault(base, set()).add(row["split"])
            keys_of.setdefault(base, set()).add(row["key"])
    assert len(sides) == SMALL["max_concepts"]
    assert {"train", "test"} <= set().union(*sides.values())
    for base, split in sides.items():
        assert len(split) == 1, f"concept {base} on two sides: {split}"
        expected = {f"emoji/{s}/{stem}" for s in EMOJI_STYLES for stem in variants[base]}
        assert keys_of[base] == expected  # every variant, in both styles
    for name in RETRIEVAL_CSVS:
        rows = read_csv(out / name)
        openmoji = ["openmoji" in r["key"] or "openmoji" in r["filepath"] for r in rows]
        # OpenMoji only in its off-style sets, never in training or the trained styles' sets
        assert all(openmoji) if name.endswith("_openmoji.csv") else not any(openmoji), name
        keys = [r["key"] for r in rows]
        assert keys == sorted(keys) and len(keys) == len(set(keys))
    train_keys = {r["key"] for r in read_csv(out / "train.csv")}
    eval_keys = {r["key"] for n in RETRIEVAL_CSVS[1:] for r in read_csv(out / n)}
    assert not train_keys & eval_keys
    assert info["counts"]["clipart_kept"] == sum(
        r["key"].startswith("clipart/") for r in read_csv(out / "groups.csv")
    )


def test_zeroshot_labels_classnames_and_templates(small):
    out, _ = small
    captions = [r["title"] for n in RETRIEVAL_CSVS for r in read_csv(out / n)]
    for name in ZEROSHOT_CSVS:
        folder = (out / name).parent
        rows = read_csv(out / name)
        classnames = (folder / "classnames.txt").read_text(encoding="utf-8").splitlines()
        templates = (folder / "templates.txt").read_text(encoding="utf-8").splitlines()
        labels = [int(r["label"]) for r in rows]
        assert rows and set(labels) == set(range(len(classnames)))
        assert len(classnames) == len(set(classnames))
        assert templates and all("{}" in t for t in templates)
        assert all(r["key"].startswith("openmoji/") for r in rows)
    concept_names = []
    for name in ("unseen", "seen"):
        concept_names += (out / f"zeroshot/{name}/classnames.txt").read_text().splitlines()
    assert 0 < len(concept_names) < SMALL["max_concepts"]  # val concepts are in neither
    assert len(set(concept_names)) == len(concept_names)
    for name in concept_names:  # written exactly as the captions start
        assert any(c == name or c.startswith((f"{name}: ", f"{name}, ")) for c in captions), name
    subgroups = read_csv(out / "zeroshot/subgroups/test.csv")
    names = (out / "zeroshot/subgroups/classnames.txt").read_text().splitlines()
    sizes = np.bincount([int(r["label"]) for r in subgroups], minlength=len(names))
    assert sizes.min() >= 5 and all("-" not in n for n in names)


def test_every_file_opens_through_the_readers(small):
    out, _ = small
    transform = EvalTransform(32)
    for name in RETRIEVAL_CSVS:
        dataset = CsvDataset(out / name, transform=transform)
        for i in range(len(dataset)):
            assert dataset[i]["image"].shape == (3, 32, 32)
        retrieval = load_eval_dataset(out / name, transform)
        captions, _ = retrieval.require_captions()
        assert len(captions) == len(dataset) == len(retrieval.images)
    for name in ZEROSHOT_CSVS:
        zeroshot = load_eval_dataset(out / name, transform)
        assert len(zeroshot.require_classnames()) == max(zeroshot.require_labels("zero-shot")) + 1
        for i in range(len(zeroshot)):
            assert zeroshot.images[i]["image"].shape == (3, 32, 32)


def test_corpus_json_records_every_source_and_licence(small):
    out, info = small
    meta = json.loads((out / "corpus.json").read_text())
    sources = {s["package"]: s for s in meta["sources"]}
    assert set(sources) == set(SOURCES)
    assert sources["emoji-datasource-google"]["licence"].startswith("Apache-2.0")
    assert sources["emoji-datasource-twitter"]["licence"].startswith("CC-BY-4.0")
    assert sources["openmoji"]["licence"].startswith("CC-BY-SA-4.0")
    assert sources["openmoji"]["version"] == "17.0.0"
    assert sources["openclipart-png"]["version"].startswith("1:0.18")
    assert all(s["licence"] and s["url"] and s["count"] > 0 for s in sources.values())
    assert meta["options"] == {"seed": 0, **SMALL}
    for name in RETRIEVAL_CSVS + ZEROSHOT_CSVS:
        assert meta["splits"][name] == len(read_csv(out / name))
    assert meta["counts"]["clipart_dropped"] > 0 and meta["counts"]["clipart_dropped_by_reason"]


def test_builds_are_identical_cached_and_nested(small, assets, tmp_path):
    out, _ = small
    again = build_demo_corpus(tmp_path / "again", assets=assets, **SMALL)
    for name in RETRIEVAL_CSVS + ZEROSHOT_CSVS:
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    assert not again["cached"]
    assert build_demo_corpus(tmp_path / "again", assets=assets, **SMALL)["cached"]

    # A larger build holds the small one's samples (a side may change: groups can grow).
    larger = tmp_path / "larger"
    build_demo_corpus(larger, assets=assets, max_concepts=90, max_clipart=60)
    small_keys = {r["key"] for r in read_csv(out / "groups.csv")}
    large_keys = {r["key"] for r in read_csv(larger / "groups.csv")}
    assert small_keys <= large_keys and len(large_keys) > len(small_keys)


def test_missing_asset_names_the_package_and_the_command(assets, tmp_path):
    partial = tmp_path / "assets"
    (partial / "npm" / "node_modules").mkdir(parents=True)
    for package in ("emoji-datasource-google", "emoji-datasource-twitter", "emojibase-data"):
        os.symlink(
            assets / "npm" / "node_modules" / package, partial / "npm/node_modules" / package
        )
    with pytest.raises(FileNotFoundError, match=r"openmoji.*make assets.*npm install.*openmoji@"):
        build_demo_corpus(tmp_path / "out", assets=partial)
    os.symlink(assets / "npm" / "node_modules" / "openmoji", partial / "npm/node_modules/openmoji")
    result = subprocess.run(
        [sys.executable, "-m", "clip_ping.cli", "data", "demo", "--out", str(tmp_path / "out")],
        env={**os.environ, "CLIP_PING_ASSETS": str(partial)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "openclipart-svg" in result.stderr and "apt-get download" in result.stderr
    assert not (tmp_path / "out").exists()


def test_refuses_to_replace_a_folder_that_is_not_a_corpus(assets, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a demo corpus"):
        build_demo_corpus(tmp_path, assets=assets, max_concepts=1, max_clipart=1)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_captions_and_title_rules():
    assert caption("grinning face", ["face", "Grin", "grinning face", "face", "big_grin"]) == (
        "grinning face: face, grin, big grin"
    )
    assert caption("waving hand: medium skin tone", ["hand", "wave"]) == (
        "waving hand: medium skin tone, hand, wave"
    )
    assert len(caption("a b", [f"word{i}" for i in range(100)]).split()) == 30
    counts = Counter({"gramastar": 1375, "brain": 1})
    assert _title_problem("brain", counts) is None
    assert _title_problem("gramastar", counts) == "collection title"
    assert _title_problem("", counts) == "empty title"
    assert _title_problem("untitled", counts) == "placeholder title"
    assert _title_problem("jigsaw_red_10", counts) == "file-name-like title"
    assert _title_problem("smiley111", counts) == "file-name-like title"
