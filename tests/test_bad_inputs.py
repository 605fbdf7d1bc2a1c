"""Bad input: each case of docs/reliability.md fed to the readers, training and bank builds."""

import csv
import io
import json
import logging
import os
import shutil
import tarfile
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from clip_ping.bank import Bank, build_bank, mine_bank
from clip_ping.data import tars
from clip_ping.data.bad_samples import MAX_IMAGE_PIXELS, BadSample
from clip_ping.data.datasets import CsvDataset
from clip_ping.data.loader import DataSpec
from clip_ping.data.shapes import build_shapes
from clip_ping.data.shards import ShardDataset, write_shards
from clip_ping.data.tars import build_key_index
from clip_ping.training.config import build_config
from clip_ping.training.train import train

NUM_GOOD = 58  # + 6 bad = 64 rows: two batches of 32, none dropped


def _bad_files(folder):
    """``{case: (filepath, caption, reason pattern)}``; each file is a real broken input."""
    folder.mkdir()
    good = Image.new("RGB", (32, 32), (200, 30, 30))
    good.save(folder / "whole.png")
    data = (folder / "whole.png").read_bytes()
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    (folder / "noise.png").write_bytes(os.urandom(500))
    # 1-bit and blank: ~12 KB of PNG that claims more pixels than MAX_IMAGE_PIXELS.
    side = int(MAX_IMAGE_PIXELS**0.5) + 1
    Image.new("1", (side, side)).save(folder / "bomb.png", optimize=True)
    return {
        "truncated image": ("bad/cut.png", "a red square", "unreadable or truncated"),
        "not an image": ("bad/noise.png", "a red square", "unreadable or truncated"),
        "missing file": ("bad/gone.png", "a red square", "not found"),
        "empty caption": ("bad/whole.png", "   ", "empty caption"),
        "decompression bomb": ("bad/bomb.png", "a red square", "decompression bomb"),
        "short row": ("bad/whole.png", None, "no caption"),
    }


@pytest.fixture(scope="module")
def dirty(tmp_path_factory):
    """A CSV of 58 good shapes and 6 bad rows interleaved; ``(csv, {row: (case, reason)})``."""
    root = tmp_path_factory.mktemp("dirty")
    build_shapes(root, num_train=NUM_GOOD, num_val=4, image_size=32, seed=3)
    cases = _bad_files(root / "bad")
    with open(root / "train.csv", newline="") as f:
        rows = [[r["filepath"], r["title"]] for r in csv.DictReader(f)]
    bad_rows = {}  # ascending slots: each insert lands at its final row
    slots = (3, 11, 20, 33, 47, 60)
    for slot, (case, (path, caption, reason)) in zip(slots, cases.items(), strict=True):
        rows.insert(slot, [path] if caption is None else [path, caption])
        bad_rows[slot] = (case, reason)
    with open(root / "dirty.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "title"])
        writer.writerows(rows)
    assert len(bad_rows) == 6 and len(rows) == 64
    return root / "dirty.csv", bad_rows


def test_each_bad_sample_is_skipped_with_its_reason_or_named_in_the_error(dirty):
    path, bad_rows = dirty
    skipping = CsvDataset(path, on_bad_sample="skip")
    strict = CsvDataset(path)
    for row, (case, reason) in bad_rows.items():
        record = skipping[row]
        assert record["index"] == row and record["key"] == skipping.keys()[row], case
        assert reason in record["bad"], (case, record["bad"])
        with pytest.raises(BadSample, match=f"row {row} of .*{reason}.*--on-bad-sample skip"):
            strict[row]
    assert "bad" not in skipping[0] and skipping[0]["image"].size == (32, 32)


def test_training_skips_counts_and_logs_bad_samples(dirty, tmp_path):
    path, bad_rows = dirty
    common = dict(
        train_data=str(path),
        model="cpu-micro-32",
        batch_size=32,
        epochs=1,
        workers=0,
        logs=str(tmp_path),
        warmup=1,
        log_every_steps=1,
        progress=False,
        max_bad_share=0.1,
    )
    run = train(build_config(overrides=dict(common, name="skip")))
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["train/skipped_samples"] == 6
    log = (run / "out.log").read_text()
    keys = CsvDataset(path).keys()
    for row, (case, _) in bad_rows.items():
        assert f"skipped bad sample {keys[row]!r} (index {row}): " in log, case
    assert (run / "hf" / "config.json").is_file()

    with pytest.raises(BadSample, match="--on-bad-sample skip"):
        train(build_config(overrides=dict(common, name="strict", on_bad_sample="error")))
    with pytest.raises(ValueError, match="are bad \\(more than --max-bad-share 0.05"):
        train(build_config(overrides=dict(common, name="share", max_bad_share=0.05)))
    # Nothing half-written: the failed runs hold no checkpoint, temporary or export.
    for name in ("strict", "share"):
        assert os.listdir(tmp_path / name / "checkpoints") == []
        assert not (tmp_path / name / "hf").exists()


def test_csv_paths_cannot_leave_a_given_root(tmp_path):
    (tmp_path / "data").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "secret.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "data" / "ok.png")
    (tmp_path / "data" / "link.png").symlink_to(tmp_path / "secret.png")
    rows = "filepath,title\nok.png,fine\n../secret.png,up\n/etc/hostname,abs\nlink.png,link\n"
    (tmp_path / "data" / "pairs.csv").write_text(rows)
    dataset = CsvDataset(tmp_path / "data" / "pairs.csv", root=tmp_path / "data")
    assert dataset[0]["caption"] == "fine"
    for row in (1, 2, 3):
        with pytest.raises(BadSample, match="outside the data root"):
            dataset[row]


def _cut_inside(shard, name):
    """Cut ``shard`` in the middle of member ``name``'s data, as an interrupted download."""
    with tarfile.open(shard) as tar:
        member = tar.getmember(name)
    os.truncate(shard, member.offset_data + member.size // 2)


def test_cut_shard_and_non_text_caption(dirty, tmp_path, caplog):
    root = dirty[0].parent
    urls = write_shards(root / "train.csv", tmp_path / "shards", samples_per_shard=20)
    # A caption that is not UTF-8, and the last shard cut in the middle of a member.
    shard = tmp_path / "shards" / "00000.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in members:
            if member.name == "0000000.txt":
                data = b"\xff\xfe caption"
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    _cut_inside(tmp_path / "shards" / "00002.tar", "0000205.json")
    with caplog.at_level(logging.WARNING, logger="clip_ping"):
        index = build_key_index(urls)
    (cut,) = [r.getMessage() for r in caplog.records if "cut short" in r.getMessage()]
    assert "00002.tar is cut short" in cut  # the run log's warning, not a raw UserWarning
    assert len(index) == 46 and index.keys[-1] == "0000205"  # the rest of the shard is lost
    tars._cut_found.clear()  # as a later run in its own process
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clip_ping"):
        assert build_key_index(urls) == index  # from the cached index: warned again
    assert [r.getMessage() for r in caplog.records] == [cut]
    dataset = ShardDataset(urls, key_index=index, shuffle=False, on_bad_sample="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples = list(dataset)
    bad = {s["key"]: s["bad"] for s in samples if "bad" in s}
    assert bad.pop("0000000").startswith("caption is not UTF-8")
    assert list(bad.values()) == ["shard cut short inside this sample"]
    assert list(bad)[0] == index.keys[-1]
    assert len(samples) == len(index)
    strict = ShardDataset(urls, key_index=index, shuffle=False)
    with pytest.raises(BadSample, match="'0000000'.*not UTF-8"):
        next(iter(strict))


def test_bank_build_skips_bad_rows_and_mining_never_returns_them(dirty, tmp_path):
    path, bad_rows = dirty
    spec = DataSpec(str(path), max_bad_share=0.1)
    out = build_bank(
        spec,
        "image",
        tmp_path / "image",
        image_size=64,
        workers=0,
        progress=False,
        chunk_rows=16,
        batch_size=8,
    )
    bank = Bank(out)
    assert sorted(bank.skipped.tolist()) == sorted(bad_rows)
    assert not np.asarray(bank.features[bank.skipped]).any()
    good = np.setdiff1d(np.arange(len(bank)), bank.skipped)
    norms = np.linalg.norm(bank.features[good].astype(np.float32), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)
    for backend in ("exact", "faiss-flat"):
        result = mine_bank(out, k=10, backend=backend, progress=False)
        assert not np.isin(result.neighbors, bank.skipped).any(), backend
        assert not np.isin(np.load(out / "neighbors.npy"), bank.skipped).any(), backend

    # Text bank: only caption problems count (empty caption, short row).
    text = Bank(
        build_bank(
            DataSpec(str(path), max_bad_share=0.1),
            "text",
            tmp_path / "text",
            workers=0,
            progress=False,
        )
    )
    expected = [r for r, (case, _) in bad_rows.items() if case in ("empty caption", "short row")]
    assert sorted(text.skipped.tolist()) == sorted(expected)

    # error: stops at the first bad one, no meta.json; past the share: stops, resumable.
    strict = DataSpec(str(path), on_bad_sample="error")
    with pytest.raises(BadSample, match="row 3 of"):
        build_bank(strict, "image", tmp_path / "strict", image_size=64, workers=0, progress=False)
    assert not (tmp_path / "strict" / "meta.json").exists()
    with pytest.raises(ValueError, match="more than --max-bad-share 0.01"):
        build_bank(DataSpec(str(path)), "text", tmp_path / "share", workers=0, progress=False)
    assert not (tmp_path / "share" / "meta.json").exists()
    shutil.rmtree(tmp_path / "share")


def test_a_sample_bad_in_either_bank_is_never_a_neighbour(dirty, tmp_path):
    """A bad image with a good caption: a zero image-bank row but a valid text-bank row.
    It must not be drawn as a caption neighbour (its image-side XNN target would be zero)."""
    from clip_ping.active import ActiveTeachers
    from clip_ping.data.datasets import CsvDataset
    from clip_ping.data.transforms import TrainTransform
    from clip_ping.guidance import NeighborGuidance

    path, bad_rows = dirty
    spec = DataSpec(str(path), max_bad_share=0.1)
    options = dict(workers=0, progress=False)
    image = Bank(build_bank(spec, "image", tmp_path / "image", image_size=64, **options))
    text = Bank(build_bank(spec, "text", tmp_path / "text", **options))
    image_only = sorted(set(image.skipped.tolist()) - set(text.skipped.tolist()))
    assert len(image_only) == 4  # truncated, noise, missing, bomb: captions all fine
    union = np.union1d(image.skipped, text.skipped)

    # Mined alone, the text table proposes them (they share the caption "a red square")...
    alone = mine_bank(text.path, k=10, backend="exact", progress=False)
    assert np.isin(alone.neighbors, image_only).any()
    mine_bank(image.path, k=10, backend="exact", progress=False)
    # ... and training's draw passes them over, whatever the table says.
    guidance = NeighborGuidance(image, text, k=10, target="bank")
    anchors = torch.tensor([i for i in range(64) if i not in union])
    for step in range(30):
        targets = guidance.targets({"index": anchors}, step, torch.device("cpu"))
        for drawn in (targets.image_neighbors, targets.text_neighbors):
            assert not np.isin(drawn.numpy(), union).any(), step
        norms = targets.xnn_text.float().norm(dim=1)  # image side of the caption neighbour
        torch.testing.assert_close(norms, torch.ones_like(norms), atol=2e-3, rtol=0)

    # An anchor whose every drawable neighbour is bad gets masked targets: the bad rows'
    # own nearest caption neighbour is another "a red square" row, bad too.
    nearest = NeighborGuidance(image, text, k=1, target="bank")
    targets = nearest.targets({"index": torch.tensor(image_only)}, 0, torch.device("cpu"))
    assert not targets.nn_text_valid.any() and not targets.xnn_text_valid.any()

    # Mined with the paired bank, the table itself holds none of them.
    paired = mine_bank(text.path, k=10, backend="exact", progress=False, paired_bank=image.path)
    assert not np.isin(paired.neighbors, union).any()
    # The active source searches without them too.
    active = NeighborGuidance(
        image, text, k=10, target="bank", active=ActiveTeachers(image, text, torch.device("cpu"))
    )
    dataset = CsvDataset(path, transform=TrainTransform(32, teacher_size=64), on_bad_sample="skip")
    rows = anchors[:16].tolist()
    batch = torch.utils.data.default_collate([dataset[(0, i)] for i in rows])
    drawn = active.draw(torch.tensor(rows), 0, batch)
    assert drawn.image_ok.all() and drawn.text_ok.all()
    assert not np.isin(torch.cat([drawn.image, drawn.text]).numpy(), union).any()


def _train_overrides(path, tmp_path, **extra):
    """One step of training on the 58 good shapes beside ``dirty.csv``."""
    values = dict(
        train_data=str(path.parent / "train.csv"),
        model="cpu-micro-32",
        batch_size=32,
        epochs=1,
        workers=0,
        logs=str(tmp_path),
        warmup=1,
        progress=False,
    )
    return build_config(overrides=dict(values, **extra))


def test_evaluation_sets_are_checked_before_the_first_step(dirty, tmp_path):
    path, bad_rows = dirty
    # Three steps an epoch, stopped after one: the run ends before any evaluation, so only a
    # check at the start fails it (before, each of these ran, saved a checkpoint, exited 0).
    early = dict(batch_size=16, stop_after_steps=1)
    with pytest.raises(ValueError, match="unknown evaluation dataset .*vall.csv"):
        train(
            _train_overrides(
                path, tmp_path, name="typo", val_data=str(path.parent / "vall.csv"), **early
            )
        )
    with pytest.raises(BadSample, match=r"image .*bad/cut.png listed in .*dirty.csv: unreadable"):
        train(
            _train_overrides(
                path, tmp_path, name="strict", val_data=str(path), on_bad_sample="error", **early
            )
        )
    with pytest.raises(FileNotFoundError, match="zero-shot on val needs class names"):
        (path.parent / "classnames.txt").rename(path.parent / "names.txt")
        try:
            train(
                _train_overrides(
                    path, tmp_path, name="names", val_data=str(path.parent / "val.csv"), **early
                )
            )
        finally:
            (path.parent / "names.txt").rename(path.parent / "classnames.txt")
    for name in ("typo", "strict", "names"):  # no step was taken
        assert not (tmp_path / name / "metrics.jsonl").exists(), name
        assert os.listdir(tmp_path / name / "checkpoints") == [], name


def test_evaluation_skips_bad_images_with_a_logged_reason(dirty, tmp_path):
    path, bad_rows = dirty
    run = train(
        _train_overrides(path, tmp_path, name="skip", val_data=str(path), max_bad_share=0.1)
    )
    log = (run / "out.log").read_text()
    for image, reason in (
        ("cut.png", "unreadable"),
        ("gone.png", "not found"),
        ("whole.png", "empty caption"),
        ("bomb.png", "decompression bomb"),
    ):
        assert f"bad/{image}' (index " in log and reason in log, image
    record = json.loads((run / "results" / "retrieval_dirty.json").read_text())
    assert 0 <= record["metrics"]["image_to_text_R@1"] <= 1
    # Past --max-bad-share the run stops before its first step, naming the set.
    with pytest.raises(ValueError, match=r"5 of the 63 samples of .*dirty.csv are bad"):
        train(
            _train_overrides(path, tmp_path, name="share", val_data=str(path), stop_after_steps=1)
        )


def test_clip_ping_eval_follows_on_bad_sample_and_warns_on_meaningless_sets(
    dirty, tmp_path, capsys
):
    from clip_ping.cli import main
    from clip_ping.evaluation.run import run_eval

    path, _ = dirty
    run = train(_train_overrides(path, tmp_path, name="model"))
    record = run_eval(run, "retrieval", str(path), max_bad_share=0.1)
    assert record["skipped_images"] == 5 and record["num_images"] == 58
    command = ["eval", "--model", str(run), "--task", "retrieval", "--dataset", str(path)]
    assert main([*command, "--on-bad-sample", "error"]) == 2
    assert "bad/cut.png listed in" in capsys.readouterr().err

    # One class, or one caption text for every image: a score that says nothing.
    root = path.parent
    rows = list(csv.DictReader(open(root / "train.csv", newline="")))[:6]
    with open(root / "one_class.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "title", "label"])
        writer.writerows([[r["filepath"], "a shape", 0] for r in rows])
    (root / "names.txt").write_text("shape\n")
    zeroshot = run_eval(
        run, "zeroshot", str(root / "one_class.csv"), classnames=str(root / "names.txt")
    )
    assert zeroshot["metrics"]["acc1"] == 1.0
    assert "has a single class" in zeroshot["warnings"][0]
    with pytest.warns(UserWarning, match="5 caption rows repeat another row's text"):
        retrieval = run_eval(run, "retrieval", str(root / "one_class.csv"))
    # One caption per row (CLIP_benchmark): identical texts tie, and ties count against the
    # query, so every model scores 0; merged, every model scores 1.
    assert retrieval["metrics"]["image_to_text_R@1"] == 0.0
    assert "every caption of one_class is the same text" in retrieval["warnings"][0]
    merged = run_eval(run, "retrieval", str(root / "one_class.csv"), merge_identical_captions=True)
    assert merged["metrics"]["image_to_text_R@1"] == 1.0 and merged["dataset"] == "one_class-merged"
    assert "warnings" not in record  # a set that tells its images apart: no warning
