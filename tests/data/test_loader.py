from collections import Counter
from pathlib import Path

import pytest
import torch

from clip_ping.data.datasets import CsvDataset
from clip_ping.data.loader import DataSpec, build_train_data
from clip_ping.data.shapes import build_shapes
from clip_ping.data.shards import write_shards
from clip_ping.data.transforms import TrainTransform

NUM_SAMPLES = 90
BATCH = 8


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    info = build_shapes(out, num_train=NUM_SAMPLES, num_val=10, image_size=32, seed=0)
    # Uneven shards (25, 25, 25, 15): ranks and workers must still get equal shares.
    write_shards(info["train_csv"], out / "shards", samples_per_shard=25)
    return {"csv": info["train_csv"], "webdataset": str(out / "shards" / "{00000..00003}.tar")}


def _data(corpus, kind, tokenizer, rank=0, world_size=1, seed=0):
    # A strong crop makes augmentation visible, so equal images mean equal randomness.
    transform = TrainTransform(32, scale=(0.3, 0.6))
    spec = DataSpec(corpus[kind])
    return build_train_data(spec, transform, tokenizer, seed, rank=rank, world_size=world_size)


def _batches(data, epoch, start_batch=0, workers=0):
    return list(data.loader(epoch, start_batch, BATCH, workers))


def _indices(batches):
    return [b["index"].tolist() for b in batches]


def _assert_same(batches, others):
    assert len(batches) == len(others)
    for a, b in zip(batches, others, strict=True):
        assert torch.equal(a["index"], b["index"])
        assert torch.equal(a["text"], b["text"])
        assert torch.equal(a["image"], b["image"])


@pytest.mark.parametrize("kind", ["csv", "webdataset"])
def test_epoch_sees_each_index_once_with_its_caption(corpus, kind, tokenizer):
    data = _data(corpus, kind, tokenizer)
    assert data.num_samples == NUM_SAMPLES and data.batches_per_epoch(BATCH) == 11
    batches = _batches(data, epoch=0, workers=2)
    assert len(batches) == 11
    batch = batches[0]
    assert batch["image"].shape == (BATCH, 3, 32, 32) and batch["text"].shape == (BATCH, 32)
    assert batch["index"].dtype == torch.long
    seen = sum(_indices(batches), [])
    assert len(seen) == len(set(seen)) == 88 and set(seen) <= set(range(NUM_SAMPLES))
    captions = CsvDataset(corpus["csv"]).captions
    for b in batches[::3]:
        expected = tokenizer([captions[i] for i in b["index"].tolist()])
        assert torch.equal(b["text"], expected)


@pytest.mark.parametrize("kind", ["csv", "webdataset"])
def test_same_epoch_repeats_other_epoch_reshuffles(corpus, kind, tokenizer):
    data = _data(corpus, kind, tokenizer)
    epoch1 = _batches(data, epoch=1, workers=2)
    _assert_same(epoch1, _batches(data, epoch=1, workers=2))
    epoch2 = _batches(data, epoch=2, workers=2)
    assert _indices(epoch1) != _indices(epoch2)
    assert _indices(epoch1) != _indices(_batches(_data(corpus, kind, tokenizer, seed=1), 1, 0, 2))


def test_csv_batches_do_not_depend_on_workers(corpus, tokenizer):
    data = _data(corpus, "csv", tokenizer)
    _assert_same(_batches(data, epoch=3, workers=0), _batches(data, epoch=3, workers=2))


@pytest.mark.parametrize(
    ("kind", "workers", "resume_workers"),
    [("csv", 0, 0), ("csv", 0, 2), ("webdataset", 0, 0), ("webdataset", 2, 2)],
)
def test_resume_equals_tail_of_uninterrupted_epoch(
    corpus, kind, workers, resume_workers, tokenizer
):
    data = _data(corpus, kind, tokenizer)
    full = _batches(data, epoch=1, workers=workers)
    # 3 is odd, so with 2 workers the resumed loader starts on the other worker's batches.
    _assert_same(full[3:], _batches(data, epoch=1, start_batch=3, workers=resume_workers))
    assert _batches(data, epoch=1, start_batch=11, workers=resume_workers) == []


@pytest.mark.parametrize(("kind", "workers"), [("csv", 0), ("webdataset", 2)])
def test_ranks_are_disjoint_and_cover_the_data(corpus, kind, workers, tokenizer):
    per_rank = []
    for rank in (0, 1):
        data = _data(corpus, kind, tokenizer, rank=rank, world_size=2)
        assert data.batches_per_epoch(BATCH) == 5  # 90 // (8 * 2)
        per_rank.append(sum(_indices(_batches(data, epoch=0, workers=workers)), []))
    assert [len(r) for r in per_rank] == [40, 40]
    assert not set(per_rank[0]) & set(per_rank[1])
    # Only the drop_last tail (90 - 80 = 10 samples) is missing from the union.
    assert len(set(per_rank[0]) | set(per_rank[1])) == 80


def test_webdataset_stream_is_balanced_across_workers(corpus, tokenizer):
    data = _data(corpus, "webdataset", tokenizer)
    batches = _batches(data, epoch=0, workers=2)
    # DataLoader round-robin: batch b comes from worker b % 2; every batch is full.
    assert Counter(len(b["index"]) for b in batches) == {BATCH: 11}


def test_dataset_type_resolution():
    assert DataSpec("x/train.csv").resolved_type() == "csv"
    assert DataSpec("x/pairs.tsv").resolved_type() == "csv"
    assert DataSpec("x/{000..009}.tar").resolved_type() == "webdataset"
    assert DataSpec("a.tar::b.tar").resolved_type() == "webdataset"
    assert DataSpec("x/train.csv", dataset_type="webdataset").resolved_type() == "webdataset"
    with pytest.raises(ValueError, match="--dataset-type='parquet': choose one of csv, webdataset"):
        DataSpec("x.csv", dataset_type="parquet")


def test_errors_name_the_problem(corpus, tokenizer, tmp_path):
    data = _data(corpus, "csv", tokenizer)
    with pytest.raises(ValueError, match=r"--batch-size 64 x 2 ranks = 128 exceeds the 90 samples"):
        _data(corpus, "csv", tokenizer, world_size=2).batches_per_epoch(64)
    with pytest.raises(ValueError, match="start_batch 12 is outside the epoch's 11 batches"):
        data.loader(0, 12, BATCH, 0)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        build_train_data(DataSpec(str(tmp_path / "missing.csv")), None, tokenizer, 0)
    with pytest.raises(ValueError, match="is a folder"):
        build_train_data(DataSpec(str(tmp_path)), None, tokenizer, 0)
    (tmp_path / "empty.csv").write_text("filepath,title\n")
    with pytest.raises(ValueError, match="has no rows"):
        build_train_data(DataSpec(str(tmp_path / "empty.csv")), None, tokenizer, 0)
    spec = DataSpec(corpus["webdataset"], train_num_samples=1000)
    with pytest.raises(ValueError, match="num_samples=1000 but the shards hold 90.*resampled"):
        build_train_data(spec, None, tokenizer, 0)


def test_webdataset_num_samples_caps_the_epoch(corpus, tokenizer):
    spec = DataSpec(corpus["webdataset"], train_num_samples=40)
    data = build_train_data(spec, TrainTransform(32), tokenizer, 0)
    assert data.num_samples == 40 and data.batches_per_epoch(BATCH) == 5
    seen = sum(_indices(_batches(data, epoch=0, workers=2)), [])
    assert len(set(seen)) == 40


def test_webdataset_resampled_epochs_draw_shards_with_replacement(corpus, tokenizer):
    # 200 samples per virtual epoch from 90: shards must repeat within an epoch.
    spec = DataSpec(corpus["webdataset"], train_num_samples=200, dataset_resampled=True)
    ranks = [build_train_data(spec, TrainTransform(32), tokenizer, 0, r, 2) for r in range(2)]
    assert ranks[0].batches_per_epoch(BATCH) == 200 // 2 // BATCH
    epochs = []
    for epoch in range(2):
        seen = sum((sum(_indices(_batches(d, epoch, workers=2)), []) for d in ranks), [])
        assert len(seen) == 2 * 12 * BATCH and all(0 <= i < NUM_SAMPLES for i in seen)
        # The expected multiset, from the drawn shard list: each stream position once, cut
        # to whole batches per rank (the tail positions 96..99 and 196..199 are dropped).
        key_index = ranks[0].dataset.key_index
        dataset = ranks[0].dataset
        dataset.set_epoch(epoch)
        stream = [
            key_index.offsets[s] + p
            for s in dataset._shard_order().tolist()
            for p in range(key_index.counts[s])
        ]
        expected = stream[:96] + stream[100:196]
        assert Counter(seen) == Counter(expected)
        assert max(Counter(dataset._shard_order().tolist()).values()) > 1
        epochs.append(seen)
    assert Counter(epochs[0]) != Counter(epochs[1])
    with pytest.raises(ValueError, match="--dataset-resampled applies to WebDataset"):
        build_train_data(DataSpec(corpus["csv"], dataset_resampled=True), None, tokenizer, 0)


def test_write_shards_accepts_a_dataset(corpus, tmp_path):
    dataset = CsvDataset(corpus["csv"])
    paths = write_shards(dataset, tmp_path, samples_per_shard=100)
    assert [Path(p).name for p in paths] == ["00000.tar"]


def test_shard_only_settings_on_a_csv_are_clear_errors(corpus, tokenizer, tmp_path, capsys):
    from clip_ping.cli import main

    csv_path = corpus["csv"]
    # --dataset-type webdataset on a CSV: was a tarfile traceback.
    spec = DataSpec(csv_path, dataset_type="webdataset")
    with pytest.raises(ValueError, match=r"train\.csv is not a tar archive .*--dataset-type csv"):
        build_train_data(spec, None, tokenizer, 0)
    command = ["tokenizer", "train", "--train-data", csv_path, "--dataset-type", "webdataset"]
    assert main([*command, "--out", str(tmp_path / "tok")]) == 2
    assert "is not a tar archive" in capsys.readouterr().err
    # --train-num-samples on a CSV: was silently ignored.
    with pytest.raises(ValueError, match="--train-num-samples 40 applies to WebDataset shards"):
        build_train_data(DataSpec(csv_path, train_num_samples=40), None, tokenizer, 0)
