"""The neighbour draw in the data loader's workers (NeighborTransform) against the draw in
the training loop, on the real shapes banks: the same neighbours and targets, bit for bit;
and the draw is a function of (seed, epoch, sample index) alone."""

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
from clip_ping.guidance import DrawnNeighbors, NeighborGuidance
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
    return NeighborGuidance(
        *banks, k=5, target=target, memory=memory, seed=seed, self_targets=self_targets
    )


def assert_same_targets(worker, loop):
    for field in dataclasses.fields(loop):
        a, b = getattr(worker, field.name), getattr(loop, field.name)
        assert (a is None) == (b is None), field.name
        if b is not None:
            assert a.dtype == b.dtype and torch.equal(a, b), field.name


def check_loader(data, guidance, start_batch, workers, epoch):
    """Every batch of the loader brings the neighbours and targets the loop would draw and
    read for its anchors in ``epoch``; returns the number of batches."""
    batches = 0
    for batch in data.loader(epoch, start_batch, BATCH, workers, guidance.transform()):
        drawn = batch["neighbors"]
        assert isinstance(drawn, DrawnNeighbors) and len(drawn) == len(batch["index"])
        assert torch.equal(drawn.ids, guidance.draw(batch["index"], epoch).ids)
        assert (drawn.image_bank_rows is not None) == (guidance.target == "bank")
        from_workers = guidance.targets(batch, epoch, CPU)
        in_loop = guidance.targets({"index": batch["index"]}, epoch, CPU)
        assert_same_targets(from_workers, in_loop)
        batches += 1
    return batches


@pytest.mark.parametrize(
    ("target", "self_targets"),
    [("bank", "exclude"), ("bank", "include"), ("bank", "only"), ("memory", "exclude")],
)
def test_csv_workers_deliver_the_loops_neighbours_and_targets(
    small_corpus, banks, tokenizer, target, self_targets
):
    spec = DataSpec(str(small_corpus / "train.csv"))
    data = build_train_data(spec, TrainTransform(32), tokenizer, seed=0)
    guidance = guidance_of(banks, target, self_targets)
    assert check_loader(data, guidance, 6, 2, epoch=3) == 10  # resumed at batch 6 of 16


@pytest.mark.parametrize(("workers", "start_batch"), [(2, 0), (2, 5), (0, 3)])
def test_shard_workers_deliver_the_loops_neighbours_and_targets(
    shards, tokenizer, workers, start_batch
):
    spec, root = shards
    data = build_train_data(spec, TrainTransform(32), tokenizer, seed=0)
    guidance = guidance_of((Bank(root / "image"), Bank(root / "text")), "bank")
    assert check_loader(data, guidance, start_batch, workers, epoch=7) == 16 - start_batch


def test_memory_targets_are_read_in_the_loop_and_active_draws_there(banks):
    batch = guidance_of(banks, "memory").transform()({"index": torch.arange(8)}, 0)
    assert batch["neighbors"].ids.shape == (8, 4)
    assert batch["neighbors"].image_bank_rows is None  # the memory lives in the loop

    class Active:  # stands in for the online teachers: the transform must not need them
        pass

    active = NeighborGuidance(*banks, k=5, target="bank", active=Active())
    assert active.transform() is None


def test_the_draw_depends_on_the_sample_epoch_and_seed_only(banks):
    guidance = guidance_of(banks, "bank")
    anchors = torch.arange(200)
    drawn = guidance.draw(anchors, epoch=2).ids
    order = torch.randperm(200, generator=torch.Generator().manual_seed(0))
    # Another batch composition, order or split gives each sample the same neighbours.
    assert torch.equal(guidance.draw(anchors[order], epoch=2).ids, drawn[order])
    assert torch.equal(guidance.draw(anchors[50:90], epoch=2).ids, drawn[50:90])
    # Another epoch or seed draws again among the top 5: most anchors get another one.
    for other in (
        guidance.draw(anchors, epoch=3).ids,
        guidance_of(banks, "bank", seed=4).draw(anchors, 2).ids,
    ):
        changed = (other[:, :2] != drawn[:, :2]).any(1).float().mean().item()
        assert 0.6 < changed < 1.0  # one offset for both: 4 in 5 expected to change
    top = torch.from_numpy(guidance.image_neighbors[anchors.numpy(), :5].astype("int64"))
    assert (top == drawn[:, :1]).any(1).all()  # always one of the anchor's top 5


def test_a_batch_of_bad_samples_only_gets_empty_neighbours(banks):
    empty = torch.empty(0, dtype=torch.long)
    batch = guidance_of(banks, "bank").transform()({"index": empty, "bad_samples": []}, 0)
    assert batch["neighbors"].ids.shape == (0, 4)
    assert batch["neighbors"].image_bank_rows.shape == (0, 2, banks[0].dim)


def test_the_transform_opens_banks_in_each_process_and_pickles_without_them(banks):
    transform = guidance_of(banks, "bank").transform()
    transform({"index": torch.arange(4)}, 0)
    assert transform._guidance is not None  # opened on the first batch
    copy = pickle.loads(pickle.dumps(transform))
    assert copy._guidance is None and copy == transform
    assert len(pickle.dumps(transform)) < 1000  # paths and settings, no arrays


def test_drawn_neighbours_slice_and_pin_as_one_object():
    drawn = DrawnNeighbors(torch.arange(12).view(3, 4), torch.zeros(3, 2, 5), None)
    cut = drawn[:2]
    assert torch.equal(cut.ids, drawn.ids[:2]) and cut.image_bank_rows.shape == (2, 2, 5)
    assert cut.text_bank_rows is None
    assert cut.image.tolist() == [0, 4] and cut.text_ok.tolist() == [True, True]


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
        batch = guidance.transform()({"index": anchors}, 0)
        loop = guidance.targets({"index": anchors}, 0, CPU)
        assert_same_targets(guidance.targets(batch, 0, CPU), loop)
        drawn = batch["neighbors"]
        usable = drawn.image[drawn.image_ok]
        assert len(usable) and not np.isin(usable, skipped).any()
        if k == 1:  # nothing else to draw: masked
            assert not loop.nn_image_valid[:8].any() and not drawn.image_ok[:8].any()
