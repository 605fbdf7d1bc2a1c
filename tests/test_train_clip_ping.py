"""CLIP-PING training end to end on the shapes corpus with real teacher banks."""

import json

import pytest
import torch

from clip_ping.models import load_checkpoint_file
from clip_ping.training.config import build_config
from clip_ping.training.train import train

TERMS = (
    "clip_loss",
    "nn_loss",
    "xnn_loss",
    "nn_image_loss",
    "nn_text_loss",
    "xnn_image_loss",
    "xnn_text_loss",
)


def config(corpus, banks, logs, **overrides):
    values = dict(
        train_data=str(corpus / "train.csv"),
        loss="clip-ping",
        image_bank=str(banks / "image"),
        text_bank=str(banks / "text"),
        model="cpu-micro-32",
        batch_size=32,
        epochs=1,
        lr=2e-3,
        warmup=5,
        workers=0,
        logs=str(logs),
        seed=0,
        save_every_steps=5,
        log_every_steps=4,
        progress=False,
    )
    values.update(overrides)
    return build_config(overrides=values)


@pytest.mark.parametrize(
    "target, student",
    [("bank", "cpu-micro-32"), ("memory", "cpu-micro-32"), ("bank", "cpu-convnext-micro-32")],
)
def test_metrics_carry_every_named_term(small_corpus, shapes_banks, tmp_path, target, student):
    run_dir = train(
        config(
            small_corpus, shapes_banks, tmp_path, name=target, neighbor_target=target, model=student
        )
    )
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    for term in TERMS:
        assert f"train/{term}" in last, term
    total = last["train/clip_loss"] + last["train/nn_loss"] + last["train/xnn_loss"]
    assert last["train/loss"] == pytest.approx(total, rel=1e-5)
    assert last["train/nn_loss"] > 0 and last["train/xnn_loss"] > 0
    checkpoint = load_checkpoint_file(run_dir / "checkpoints" / "latest.pt")
    if target == "bank":
        heads = {k for k in checkpoint["task"] if k.startswith("terms.neighbor.")}
        assert heads == {
            f"terms.neighbor.heads.{n}.weight"
            for n in ("nn_image", "nn_text", "xnn_image", "xnn_text")
        }
    else:  # every sample was written once in the epoch (drop_last leaves 512 % 32 = 0)
        assert bool(checkpoint["task"]["memory.written"].all())


def test_memory_mode_resumes_to_identical_weights_and_memory(small_corpus, shapes_banks, tmp_path):
    common = dict(neighbor_target="memory", epochs=2, neighbor_warmup=10)
    full = train(config(small_corpus, shapes_banks, tmp_path, name="full", **common))
    train(config(small_corpus, shapes_banks, tmp_path, name="cut", stop_after_steps=21, **common))
    cut = train(config(small_corpus, shapes_banks, tmp_path, name="cut", resume="latest", **common))
    a = load_checkpoint_file(full / "checkpoints" / "latest.pt")
    b = load_checkpoint_file(cut / "checkpoints" / "latest.pt")
    assert a["step"] == b["step"] == 32
    assert any(key.startswith("memory.") for key in a["task"])
    for key, value in a["task"].items():  # student, memory (no heads in memory mode)
        assert torch.equal(value, b["task"][key]), key


def test_banks_are_checked_before_training(small_corpus, shapes_banks, tmp_path):
    swapped = config(
        small_corpus, shapes_banks, tmp_path, name="swap", image_bank=str(shapes_banks / "text")
    )
    with pytest.raises(ValueError, match="--image-bank .* holds text features"):
        train(swapped)
    too_many = config(small_corpus, shapes_banks, tmp_path, name="k", neighbor_k=9)
    with pytest.raises(ValueError, match="--neighbor-k 9 .* lists 5 neighbours"):
        train(too_many)
    other_data = config(
        small_corpus, shapes_banks, tmp_path, name="other", train_data=str(small_corpus / "val.csv")
    )
    with pytest.raises(ValueError, match="rows but --train-data"):
        train(other_data)
    assert not (tmp_path / "swap" / "checkpoints" / "latest.pt").exists()


def test_active_search_finds_the_offline_neighbours_of_unchanged_captions(
    small_corpus, shapes_banks
):
    """Captions are not augmented, so the online text search must find neighbours as similar
    as the precomputed table's (indices may differ among exact ties: repeated captions)."""
    from clip_ping.active import ActiveTeachers
    from clip_ping.bank import Bank
    from clip_ping.guidance import NeighborGuidance

    image_bank, text_bank = Bank(shapes_banks / "image"), Bank(shapes_banks / "text")
    active = ActiveTeachers(image_bank, text_bank, torch.device("cpu"))
    guidance = NeighborGuidance(image_bank, text_bank, 5, "bank", active=active)
    from clip_ping.data.datasets import CsvDataset
    from clip_ping.data.transforms import TrainTransform

    dataset = CsvDataset(small_corpus / "train.csv", transform=TrainTransform(32, teacher_size=64))
    rows = [3, 50, 200, 511]
    batch = torch.utils.data.default_collate([dataset[(0, i)] for i in rows])
    _, text_query = active.encode(batch)
    features = torch.from_numpy(text_bank.features[:].astype("float32"))
    _, offline_similarities = text_bank.neighbors()
    for k in range(5):
        drawn = guidance.draw(torch.tensor(rows), epoch=k, batch=batch)
        image_nbr, text_nbr = drawn.image, drawn.text
        for b, row in enumerate(rows):
            assert text_nbr[b] != row and image_nbr[b] != row
            similarity = float(text_query[b] @ features[text_nbr[b]])
            assert similarity >= float(offline_similarities[row].min()) - 2e-3


def test_active_source_needs_an_image_teacher_it_can_run(shapes_banks):
    from clip_ping.active import ActiveTeachers
    from clip_ping.bank import Bank

    text_bank = Bank(shapes_banks / "text")  # MiniLM: embeds captions, not pixels
    with pytest.raises(ValueError, match="supports efficientnet-lite0 banks, not minilm"):
        ActiveTeachers(text_bank, text_bank, torch.device("cpu"))


def test_active_source_trains_and_logs_every_term(small_corpus, shapes_banks, tmp_path):
    run_dir = train(
        config(
            small_corpus,
            shapes_banks,
            tmp_path,
            name="active",
            neighbor_source="active",
            stop_after_steps=4,
        )
    )
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    for term in TERMS:
        assert f"train/{term}" in last, term


def test_self_targets_draw_the_anchor_itself_or_beside_its_neighbours(shapes_banks):
    from clip_ping.bank import Bank
    from clip_ping.guidance import NeighborGuidance, draw_offsets

    image_bank, text_bank = Bank(shapes_banks / "image"), Bank(shapes_banks / "text")
    anchors = torch.arange(0, 64)
    only = NeighborGuidance(image_bank, text_bank, 5, "bank", self_targets="only")
    drawn = only.draw(anchors, epoch=3)
    assert torch.equal(drawn.image, anchors) and torch.equal(drawn.text, anchors)
    assert bool(drawn.image_ok.all() and drawn.text_ok.all())
    targets = only.targets({"index": anchors}, 3, torch.device("cpu"))  # the anchors' own bank rows
    assert torch.equal(targets.nn_image, torch.from_numpy(image_bank.features[:64].copy()))

    both = NeighborGuidance(image_bank, text_bank, 5, "bank", self_targets="include")
    plain = NeighborGuidance(image_bank, text_bank, 5, "bank")
    table, _ = image_bank.neighbors()
    drawn = torch.stack([both.draw(anchors, epoch).image for epoch in range(60)])  # (epochs, B)
    offsets = torch.stack([draw_offsets(anchors, epoch, 0, 6) for epoch in range(60)])
    expected = torch.where(  # offset 0: the anchor; offset i: its i-th table entry
        offsets == 0,
        anchors,
        torch.as_tensor(table[anchors.numpy()].astype("int64")).T.gather(
            0, (offsets - 1).clamp(min=0)
        ),
    )
    assert torch.equal(drawn, expected)
    assert (drawn == anchors).any() and (drawn != anchors).any()
    assert not (plain.draw(anchors, 0).image == anchors).any()  # the default never draws self
    with pytest.raises(ValueError, match="self_targets='all'"):
        NeighborGuidance(image_bank, text_bank, 5, "bank", self_targets="all")


def test_neighbor_self_trains(small_corpus, shapes_banks, tmp_path):
    for mode in ("only", "include"):
        run_dir = train(
            config(
                small_corpus,
                shapes_banks,
                tmp_path,
                name=mode,
                neighbor_self=mode,
                stop_after_steps=8,
            )
        )
        last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
        assert last["train/nn_loss"] > 0 and last["train/xnn_loss"] > 0


@pytest.mark.parametrize("target", ["bank", "memory"])
def test_resume_with_loader_workers_equals_an_uninterrupted_run_drawing_in_the_loop(
    small_corpus, shapes_banks, tmp_path, monkeypatch, target
):
    """Neighbours drawn (and bank rows read) by 2 loader workers, with --accum-freq 2, cut
    mid-epoch and resumed: the weights, heads and memory of an uninterrupted run that
    draws them in the training loop, bit for bit."""
    from clip_ping.guidance import NeighborGuidance
    from clip_ping.training.task import TrainingTask

    common = dict(neighbor_target=target, epochs=2, accum_freq=2, neighbor_self="include")
    with monkeypatch.context() as patch:  # the reference: every draw in the loop
        patch.setattr(TrainingTask, "data_transform", lambda self: None)
        full = train(config(small_corpus, shapes_banks, tmp_path, name="loop", **common))
    draws_here = []
    draw = NeighborGuidance.draw  # counts the draws of this process (not those of workers)
    monkeypatch.setattr(
        NeighborGuidance,
        "draw",
        lambda self, *a, **kw: draws_here.append(1) or draw(self, *a, **kw),
    )
    cut = dict(name="workers", workers=2, **common)
    train(config(small_corpus, shapes_banks, tmp_path, stop_after_steps=11, **cut))  # epoch 1
    resumed = train(config(small_corpus, shapes_banks, tmp_path, resume="latest", **cut))
    assert draws_here == []
    a = load_checkpoint_file(full / "checkpoints" / "latest.pt")
    b = load_checkpoint_file(resumed / "checkpoints" / "latest.pt")
    assert a["step"] == b["step"] == 16
    assert a["task"].keys() == b["task"].keys()
    for key, value in a["task"].items():
        assert torch.equal(value, b["task"][key]), key
