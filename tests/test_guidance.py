"""The neighbour draw in the data loader's workers (NeighborReader) against the draw in the
training loop, on the real shapes banks: the same neighbours and targets, bit for bit."""

import dataclasses
import json
import pickle
import shutil

import numpy as np
import pytest
import torch

from clip_ping.bank import Bank, build_bank, mine_bank
from clip_ping.data.loader import DataSpec, build_train_data
from clip_ping.data.shards import write_shards
from clip_ping.data.transforms import TrainTransform
from clip_ping.guidance import NEIGHBOR_COLUMNS, NeighborGuidance
from clip_ping.memory import StudentMemory

CPU = torch.device("cpu")
BATCH = 32


@pytest.fixture(scope="module")
def banks(shapes_banks):
    return Bank(shapes_banks / "image"), Bank(shapes_banks / "text")


@pytest.fixture(scope="module")
def shards(small_corpus, shapes_banks, tmp_path_factory):
    """The 512 shapes pairs as 6 uneven shards, with banks of the same rows (shards keep
    the CSV's order, so the stable indices and the features are the CSV's)."""
    root = tmp_path_factory.mktemp("guidance_shards")
    write_shards(small_corpus / "train.csv", root / "shards", samples_per_shard=100)
    spec = DataSpec(str(root / "shards" / "{00000..00005}.tar"))
    for modality in ("image", "text"):
        features = Bank(shapes_banks / modality).features[:].astype(np.float32)
        np.save(root / f"{modality}.npy", features)
        teacher = f"npy:{root / modality}.npy"
        build_bank(spec, modality, root / modality, teacher=teacher, workers=0, progress=False)
        mine_bank(root / modality, k=5, backend="exact", progress=False)
    return spec, root


def guidance_of(banks, target, self_targets="exclude", seed=3):
    memory = None
    if target == "memory":  # a memory with every other row written, so masks matter
        memory = StudentMemory(len(banks[0]), 16)
        generator = torch.Generator().manual_seed(0)
        memory.image.copy_(torch.randn(memory.image.shape, generator=generator).half())
        memory.text.copy_(torch.randn(memory.text.shape, generator=generator).half())
        memory.written[::2] = True
    return NeighborGuidance(*banks, k=5, target=target, memory=memory, seed=seed,
                            self_targets=self_targets)  # fmt: skip


def assert_same_targets(worker, loop):
    for field in dataclasses.fields(loop):
        a, b = getattr(worker, field.name), getattr(loop, field.name)
        assert (a is None) == (b is None), field.name
        if b is not None:
            assert a.dtype == b.dtype and torch.equal(a, b), field.name


def check_loader(data, guidance, start_batch, workers, first_step, accum_freq):
    """Every batch of the loader brings the neighbours and targets the loop would draw and
    read at its step; returns the batches' positions in the epoch."""
    reader = guidance.reader(first_step, accum_freq)
    positions = []
    for batch in data.loader(1, start_batch, BATCH, workers, reader):
        position = int(batch["epoch_batch"][0])
        assert torch.equal(batch["epoch_batch"], torch.full_like(batch["index"], position))
        step = first_step + position // accum_freq
        image, text, image_ok, text_ok = guidance.draw(batch["index"], step)
        columns = [torch.full_like(image, step), image, text, image_ok.long(), text_ok.long()]
        assert torch.equal(batch["neighbors"], torch.stack(columns, 1))
        for name in ("image_bank_rows", "text_bank_rows"):
            assert (name in batch) == (guidance.target == "bank"), name
        from_workers = guidance.targets(batch["index"], step, CPU, batch)
        assert_same_targets(from_workers, guidance.targets(batch["index"], step, CPU))
        positions.append(position)
    return positions


@pytest.mark.parametrize(
    ("target", "self_targets"),
    [("bank", "exclude"), ("bank", "include"), ("bank", "only"), ("memory", "exclude")],
)
def test_csv_workers_deliver_the_loops_neighbours_and_targets(
    small_corpus, banks, tokenizer, target, self_targets
):
    data = build_train_data(DataSpec(str(small_corpus / "train.csv")), TrainTransform(32),
                            tokenizer, seed=0)  # fmt: skip
    guidance = guidance_of(banks, target, self_targets)
    # resumed at batch 6 of 16: accumulated pairs of batches from step 40 + 3 on
    positions = check_loader(data, guidance, 6, 2, first_step=40, accum_freq=2)
    assert positions == list(range(6, 16))


@pytest.mark.parametrize(("workers", "start_batch"), [(2, 0), (2, 5), (0, 3)])
def test_shard_workers_deliver_the_loops_neighbours_and_targets(
    shards, tokenizer, workers, start_batch
):
    spec, root = shards
    data = build_train_data(spec, TrainTransform(32), tokenizer, seed=0)
    guidance = guidance_of((Bank(root / "image"), Bank(root / "text")), "bank")
    positions = check_loader(data, guidance, start_batch, workers, first_step=7, accum_freq=1)
    assert positions == list(range(start_batch, 16))  # in order, whichever worker read them


def test_memory_targets_are_read_in_the_loop_and_active_draws_there(banks):
    memory_reader = guidance_of(banks, "memory").reader(0)
    batch = memory_reader({"index": torch.arange(8), "epoch_batch": torch.zeros(8, dtype=int)})
    assert batch["neighbors"].shape == (8, len(NEIGHBOR_COLUMNS))
    assert "image_bank_rows" not in batch and "text_bank_rows" not in batch

    class Active:  # stands in for the online teachers: the reader must not need them
        pass

    active = NeighborGuidance(*banks, k=5, target="bank", active=Active())
    assert active.reader(0) is None


def test_a_batch_drawn_for_another_step_is_refused(banks):
    guidance = guidance_of(banks, "bank")
    batch = guidance.reader(first_step=10, accum_freq=2)(
        {"index": torch.arange(4), "epoch_batch": torch.full((4,), 3)}
    )
    assert batch["neighbors"][:, NEIGHBOR_COLUMNS.index("step")].tolist() == [11] * 4
    guidance.targets(batch["index"], 11, CPU, batch)
    with pytest.raises(RuntimeError, match="drew neighbours for step 11 but the batch is trained"):
        guidance.targets(batch["index"], 12, CPU, batch)


def test_a_batch_of_bad_samples_only_gets_empty_neighbours(banks):
    empty = torch.empty(0, dtype=torch.long)
    batch = guidance_of(banks, "bank").reader(0)({"index": empty, "bad_samples": []})
    assert batch["neighbors"].shape == (0, len(NEIGHBOR_COLUMNS))
    assert batch["image_bank_rows"].shape == (0, 2, banks[0].dim)


def test_the_reader_opens_banks_in_each_process_and_pickles_without_them(banks):
    reader = guidance_of(banks, "bank").reader(0)
    reader({"index": torch.arange(4), "epoch_batch": torch.zeros(4, dtype=int)})
    assert reader._guidance is not None  # opened on the first batch
    copy = pickle.loads(pickle.dumps(reader))
    assert copy._guidance is None and copy == reader
    assert len(pickle.dumps(reader)) < 1000  # paths and settings, no arrays


def test_rows_skipped_in_a_bank_are_passed_over_and_masked_alike(shapes_banks, tmp_path):
    for modality in ("image", "text"):
        shutil.copytree(shapes_banks / modality, tmp_path / modality)
    table, _ = Bank(tmp_path / "image").neighbors()
    skipped = sorted(set(table[:8, 0].tolist()))  # the nearest image neighbours of rows 0..7
    meta = json.loads((tmp_path / "image" / "meta.json").read_text())
    (tmp_path / "image" / "meta.json").write_text(json.dumps({**meta, "skipped": skipped}))
    banks = Bank(tmp_path / "image"), Bank(tmp_path / "text")
    anchors = torch.arange(64)
    for k in (1, 5):
        guidance = NeighborGuidance(*banks, k=k, target="bank")
        batch = guidance.reader(0)({"index": anchors, "epoch_batch": torch.zeros(64, dtype=int)})
        loop = guidance.targets(anchors, 0, CPU)
        assert_same_targets(guidance.targets(anchors, 0, CPU, batch), loop)
        columns = dict(zip(NEIGHBOR_COLUMNS, batch["neighbors"].T, strict=True))
        usable = columns["image"][columns["image_ok"] == 1]
        assert len(usable) and not np.isin(usable, skipped).any()
        if k == 1:  # nothing else to draw: masked
            assert not loop.nn_image_valid[:8].any() and not columns["image_ok"][:8].any()
