"""Evaluation sets checked before use: bad images left out with their captions, what each task
needs, and sets on which any model scores perfectly. (Training and ``clip-ping eval`` with
these checks: tests/test_bad_inputs.py.)"""

import pytest
from PIL import Image

from clip_ping.data.bad_samples import BadSample
from clip_ping.evaluation.checks import check_images, check_task, meaningless_score
from clip_ping.evaluation.datasets import load_eval_dataset


def raw(image):
    return image


@pytest.fixture
def pairs(tmp_path):
    """Three images with two captions each; the second image is not a PNG."""
    for name, colour in (("a", (255, 0, 0)), ("c", (0, 0, 255))):
        Image.new("RGB", (8, 8), colour).save(tmp_path / f"{name}.png")
    (tmp_path / "b.png").write_bytes(b"not an image")
    rows = [f"{name}.png,{name} {i},{label}" for name, label in "a0 b1 c2".split() for i in (1, 2)]
    (tmp_path / "pairs.csv").write_text("filepath,title,label\n" + "\n".join(rows) + "\n")
    (tmp_path / "classnames.txt").write_text("red\ngreen\nblue\n")
    return tmp_path / "pairs.csv"


def test_bad_images_are_left_out_with_their_captions_and_labels(pairs):
    data = load_eval_dataset(pairs, raw)
    checked = check_images(data, "skip", max_bad_share=0.5)
    assert [p.name for p in checked.images.paths] == ["a.png", "c.png"]
    assert checked.labels == [0, 2]
    assert checked.captions == ["a 1", "a 2", "c 1", "c 2"]
    assert checked.caption_image == [0, 0, 1, 1]
    assert checked.images[1]["image"].getpixel((0, 0)) == (0, 0, 255)
    with pytest.raises(BadSample, match=r"image .*b\.png listed in .*pairs\.csv: unreadable"):
        check_images(data, "error", max_bad_share=0.5)
    with pytest.raises(ValueError, match=r"1 of the 3 samples .*\(more than --max-bad-share 0.01"):
        check_images(data, "skip", max_bad_share=0.01)
    assert check_images(checked, "error", 0.01) is checked  # nothing bad: the same set


def test_a_task_needs_what_it_reads(pairs):
    data = load_eval_dataset(pairs, raw)
    check_task(data, "zeroshot")
    (pairs.parent / "classnames.txt").write_text("red\ngreen\n")  # one name short
    with pytest.raises(ValueError, match="pairs has label 2 but 2 class names"):
        check_task(load_eval_dataset(pairs, raw), "zeroshot")
    folder = pairs.parent / "folder" / "red"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "x.png")
    with pytest.raises(ValueError, match="retrieval on folder needs captions"):
        check_task(load_eval_dataset(pairs.parent / "folder", raw), "retrieval")


def test_sets_any_model_scores_perfectly_on_are_named(pairs, tmp_path):
    data = load_eval_dataset(pairs, raw)
    assert meaningless_score(data, "zeroshot") is None
    assert meaningless_score(data, "retrieval") is None
    (tmp_path / "one.csv").write_text("filepath,title,label\na.png,a red one,0\n")
    one = load_eval_dataset(tmp_path / "one.csv", raw)
    assert "has a single class" in meaningless_score(one, "linear-probe")
    assert "has a single image" in meaningless_score(one, "retrieval")
    (tmp_path / "same.csv").write_text("filepath,title,label\na.png,x,0\nb.png,y,1\nc.png,z,2\n")
    (tmp_path / "classnames.txt").write_text("dog\ndog\ncat\n")  # two classes, one name
    same = load_eval_dataset(tmp_path / "same.csv", raw)
    assert "2 classes are named 'dog' (2 names for 3 classes)" in meaningless_score(
        same, "zeroshot"
    )
    assert meaningless_score(same, "linear-probe") is None  # the probe never reads names
