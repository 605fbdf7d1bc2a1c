import csv
import json

import numpy as np
import pytest
from PIL import Image

from clip_ping.data.shapes import COLOURS, POSITIONS, build_shapes, class_names


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    return out, build_shapes(out, num_train=60, num_val=15, image_size=32, seed=3)


def test_same_seed_same_bytes_other_seed_other_corpus(corpus, tmp_path):
    out, _ = corpus
    again = tmp_path / "again"
    build_shapes(again, num_train=60, num_val=15, image_size=32, seed=3)
    assert _files(again) == _files(out)
    other = tmp_path / "other"
    build_shapes(other, num_train=60, num_val=15, image_size=32, seed=4)
    assert (other / "train.csv").read_bytes() != (out / "train.csv").read_bytes()


def test_layout_and_metadata(corpus):
    out, info = corpus
    classnames = (out / "classnames.txt").read_text().splitlines()
    assert classnames == class_names() and len(set(classnames)) == info["num_classes"] == 30
    templates = (out / "templates.txt").read_text().splitlines()
    assert 3 <= len(templates) <= 5 and all("{}" in t for t in templates)
    assert json.loads((out / "corpus.json").read_text())["params"]["seed"] == 3
    train, val = _rows(info["train_csv"]), _rows(info["val_csv"])
    assert (len(train), len(val)) == (60, 15)
    assert list(train[0]) == ["filepath", "title", "label"]
    paths = {r["filepath"] for r in train + val}
    assert len(paths) == 75 and all((out / p).is_file() for p in paths)
    assert Image.open(out / train[0]["filepath"]).size == (32, 32)
    # Balanced labels: 60 training images over 30 classes, each exactly twice.
    assert sorted(int(r["label"]) for r in train) == sorted(list(range(30)) * 2)


def test_caption_label_and_pixels_agree(corpus):
    out, info = corpus
    for row in _rows(info["train_csv"]):
        colour, shape = class_names()[int(row["label"])].split()
        caption = row["title"]
        assert f"{colour} {shape}" in caption
        # The shape's pixels (far from the near-white background) have the named colour ...
        pixels = np.asarray(Image.open(out / row["filepath"]), dtype=np.float32)
        mask = (255 - pixels).sum(axis=2) > 150
        mean = pixels[mask].mean(axis=0)
        nearest = min(COLOURS, key=lambda c: np.abs(np.array(COLOURS[c]) - mean).sum())
        assert nearest == colour, (caption, mean)
        # ... and sit where the caption says.
        where = next(name for name, (_, text) in POSITIONS.items() if text in caption)
        ys, xs = np.nonzero(mask)
        centre_x, centre_y = xs.mean() / 32, ys.mean() / 32
        expected_x, expected_y = POSITIONS[where][0]
        assert abs(centre_x - expected_x) < 0.1 and abs(centre_y - expected_y) < 0.1, caption
        size_words = [w for w in ("small", "large") if w in caption.split()]
        assert len(size_words) == 1


def test_complete_corpus_is_not_rewritten_and_other_params_refused(corpus):
    out, info = corpus
    before = (out / "train.csv").stat().st_mtime_ns
    assert build_shapes(out, num_train=60, num_val=15, image_size=32, seed=3) == info
    assert (out / "train.csv").stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="another output folder"):
        build_shapes(out, num_train=61, num_val=15, image_size=32, seed=3)


def test_interrupted_build_finishes_identically(corpus, tmp_path):
    out, _ = corpus
    partial = tmp_path / "partial"
    build_shapes(partial, num_train=60, num_val=15, image_size=32, seed=3)
    # A crash before corpus.json: some images written, no completion marker.
    (partial / "corpus.json").unlink()
    (partial / "val.csv").unlink()
    for png in sorted((partial / "images").glob("val_*.png"))[5:]:
        png.unlink()
    build_shapes(partial, num_train=60, num_val=15, image_size=32, seed=3)
    assert _files(partial) == _files(out)
