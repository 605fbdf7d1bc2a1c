"""Evaluation sets: built-in splits, CSV grouping and class names, class folders, errors."""

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from clip_ping.evaluation.datasets import load_eval_dataset


def raw(image):
    """A preprocess that keeps the pixels: (H, W, 3) uint8 tensor."""
    return torch.from_numpy(np.asarray(image).copy())


def test_mnist5k_has_a_fixed_stratified_4000_1000_split():
    train = load_eval_dataset("mnist5k", raw, split="train")
    test = load_eval_dataset("mnist5k", raw, split="test")
    assert (len(train), len(test)) == (4000, 1000)
    assert np.bincount(test.labels).tolist() == [100] * 10
    train_pixels = {train.images[i]["image"].numpy().tobytes() for i in range(0, 4000, 40)}
    assert not any(test.images[i]["image"].numpy().tobytes() in train_pixels for i in range(1000))
    sample = test.images[0]["image"]
    assert sample.shape == (28, 28, 3) and sample.max() > 200  # real digits, grey → RGB
    assert torch.equal(sample[..., 0], sample[..., 2])
    assert test.classnames == [str(d) for d in range(10)] and "{}" in test.templates[0]


def test_digits_split_and_model_preprocess():
    from clip_ping.data.transforms import EvalTransform

    train = load_eval_dataset("digits", EvalTransform(32), split="train")
    test = load_eval_dataset("digits", EvalTransform(32), split="test")
    assert (len(train), len(test)) == (1437, 360)
    assert test.images[5]["image"].shape == (3, 32, 32)  # 8×8 resized by the model's preprocess
    with pytest.raises(ValueError, match="retrieval on digits needs captions"):
        test.require_captions()


def write_image(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def test_csv_rows_sharing_an_image_are_one_image_with_several_captions(tmp_path):
    for name in ("a", "b"):
        write_image(tmp_path / f"{name}.png", (255, 0, 0))
    (tmp_path / "pairs.csv").write_text(
        "filepath,title,label\na.png,red one,1\nb.png,blue,0\na.png,red two,1\n"
    )
    data = load_eval_dataset(tmp_path / "pairs.csv", raw)
    assert data.name == "pairs" and len(data) == 2
    assert data.labels == [1, 0]
    assert data.captions == ["red one", "blue", "red two"] and data.caption_image == [0, 1, 0]
    with pytest.raises(FileNotFoundError, match=f"looked for {tmp_path / 'classnames.txt'}"):
        data.require_classnames()
    (tmp_path / "classnames.txt").write_text("blue\nred\n")
    (tmp_path / "templates.txt").write_text("a {} thing\n")
    data = load_eval_dataset(tmp_path / "pairs.csv", raw)
    assert data.classnames == ["blue", "red"] and list(data.templates) == ["a {} thing"]


def test_csv_errors_name_the_problem(tmp_path):
    write_image(tmp_path / "a.png", (0, 0, 0))
    (tmp_path / "bad.csv").write_text("filepath,title,label\na.png,x,0\na.png,y,1\n")
    with pytest.raises(ValueError, match="a.png has rows with labels 0 and 1"):
        load_eval_dataset(tmp_path / "bad.csv", raw)
    (tmp_path / "cols.csv").write_text("path,title\na.png,x\n")
    with pytest.raises(ValueError, match="--csv-img-key"):
        load_eval_dataset(tmp_path / "cols.csv", raw)
    (tmp_path / "missing.csv").write_text("filepath,title\nnope.png,x\n")
    with pytest.raises(ValueError, match="nope.png listed in .*: file not found"):
        load_eval_dataset(tmp_path / "missing.csv", raw).images[0]
    with pytest.raises(ValueError, match="digits, mnist5k"):
        load_eval_dataset("imagenet", raw)


def test_class_folders(tmp_path):
    write_image(tmp_path / "shapes" / "red_circle" / "0.png", (255, 0, 0))
    write_image(tmp_path / "shapes" / "red_circle" / "1.png", (250, 0, 0))
    write_image(tmp_path / "shapes" / "blue_star" / "0.png", (0, 0, 255))
    (tmp_path / "shapes" / "blue_star" / "notes.txt").write_text("not an image")
    data = load_eval_dataset(tmp_path / "shapes", raw)
    assert data.classnames == ["blue star", "red circle"] and data.labels == [0, 1, 1]
    assert data.images[0]["image"][0, 0].tolist() == [0, 0, 255]


def test_shipped_imagenet1k_class_names_and_templates(tmp_path):
    # ImageNet's val layout: one folder per WordNet id; labels follow their sorted order.
    for wnid in ("n01440764", "n01443537", "n15075141"):
        write_image(tmp_path / "val" / wnid / "0.png", (9, 9, 9))
    data = load_eval_dataset(tmp_path / "val", raw, classnames="imagenet1k", templates="imagenet1k")
    names = data.classnames
    assert len(names) == 1000 and data.labels == [0, 1, 2]
    # Spot checks at known label positions, and the two duplicate pairs CLIP's list has.
    assert [names[i] for i in (0, 1, 151, 281, 398, 999)] == [
        "tench",
        "goldfish",
        "Chihuahua",
        "tabby cat",
        "abacus",
        "toilet paper",
    ]
    counts = Counter(names)
    assert {n for n, c in counts.items() if c > 1} == {"missile", "sunglasses"}
    assert len(data.templates) == 80 and len(set(data.templates)) == 80
    assert all(t.count("{}") == 1 for t in data.templates)
    assert "itap of a {}." in data.templates


def test_karpathy_split_file_becomes_a_retrieval_csv(tmp_path):
    import json

    from clip_ping.cli import main

    entries = []
    for i, (folder, split) in enumerate([("val2014", "test"), ("val2014", "val"), ("", "test")]):
        name = f"img{i}.jpg"
        write_image(tmp_path / "images" / folder / name, (100 * i, 0, 0))
        sentences = [{"raw": f" image {i} caption {c} "} for c in range(5)]
        entry = {"filename": name, "split": split, "sentences": sentences}
        if folder:
            entry["filepath"] = folder  # COCO entries name their folder, Flickr30K's do not
        entries.append(entry)
    (tmp_path / "karpathy.json").write_text(json.dumps({"images": entries}))
    out = tmp_path / "eval" / "test.csv"
    args = ["data", "karpathy", "--json", str(tmp_path / "karpathy.json")]
    assert main([*args, "--images", str(tmp_path / "images"), "--out", str(out)]) == 0
    data = load_eval_dataset(out, raw)
    assert len(data.images) == 2 and len(data.captions) == 10
    assert data.captions[:2] == ["image 0 caption 0", "image 0 caption 1"]
    assert data.caption_image == [0] * 5 + [1] * 5
    red = [int(data.images[j]["image"][0, 0, 0]) for j in range(2)]  # JPEG: about 0 and 200
    assert abs(red[0] - 0) <= 4 and abs(red[1] - 200) <= 4
    assert main([*args, "--images", str(tmp_path / "elsewhere"), "--out", str(out)]) == 2
