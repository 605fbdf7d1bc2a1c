"""End-to-end training on the shapes corpus: learning, resuming, exporting, shards."""

import json
import subprocess
import sys

import pytest
import torch

import clip_ping
from clip_ping.models import load_checkpoint_file
from clip_ping.training.config import build_config
from clip_ping.training.train import train


def config(corpus, logs, **overrides):
    values = dict(
        train_data=str(corpus / "train.csv"),
        val_data=str(corpus / "val.csv"),
        model="cpu-micro-32",
        batch_size=64,
        epochs=2,
        lr=2e-3,
        warmup=10,
        workers=0,
        logs=str(logs),
        seed=0,
        save_every_steps=7,
        log_every_steps=5,
        progress=False,
    )
    values.update(overrides)
    return build_config(overrides=values)


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_clip_learns_shapes_well_above_chance(shapes_corpus, tmp_path):
    run_dir = train(config(shapes_corpus, tmp_path, name="learn", epochs=6))
    records = read_metrics(run_dir)
    acc1 = [r["zeroshot/val/acc1"] for r in records if "zeroshot/val/acc1" in r]
    num_classes = len((shapes_corpus / "classnames.txt").read_text().split("\n")) - 1
    chance = 1 / num_classes
    assert len(acc1) == 6
    assert acc1[-1] > 4 * chance, f"zero-shot top-1 {acc1[-1]:.3f} vs chance {chance:.3f}"
    train_loss = [r["train/loss"] for r in records if "train/loss" in r]
    assert train_loss[-1] < 0.8 * train_loss[0]
    for key in ("train/clip_loss", "train/lr", "train/scale", "train/samples_per_second"):
        assert key in records[0]
    result = json.loads((run_dir / "results" / "zeroshot_val.json").read_text())
    assert set(result) >= {"dataset", "model", "task", "metrics"}
    assert result["metrics"]["acc1"] == acc1[-1]


# A ViT and a MobileViT: its BatchNorm statistics are state outside the parameters.
@pytest.mark.parametrize(
    "student, logit_scale",
    [("cpu-micro-32", "model.clip.logit_scale"), ("cpu-mobilevit-micro-32", "model.log_scale")],
)
def test_resumed_run_ends_with_the_same_weights(shapes_corpus, tmp_path, student, logit_scale):
    # 1536 / 64 = 24 batches per epoch; accumulate 2 → 12 steps/epoch. Stop mid-epoch at
    # step 5 (between checkpoints at 7), resume with another number of workers.
    common = dict(epochs=2, accum_freq=2, val_data=None, model=student)
    full_dir = train(config(shapes_corpus, tmp_path, name="full", **common))
    stopped = train(config(shapes_corpus, tmp_path, name="cut", stop_after_steps=17, **common))
    assert not (stopped / "hf").exists()
    checkpoint = load_checkpoint_file(stopped / "checkpoints" / "latest.pt")
    assert (checkpoint["step"], checkpoint["epoch"], checkpoint["batch"]) == (17, 1, 5)
    resumed = train(
        config(shapes_corpus, tmp_path, name="cut", resume="latest", workers=2, **common)
    )
    full = load_checkpoint_file(full_dir / "checkpoints" / "latest.pt")
    again = load_checkpoint_file(resumed / "checkpoints" / "latest.pt")
    assert again["step"] == full["step"] == 24
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == [
        "epoch_1.pt",
        "epoch_2.pt",
        "latest.pt",
    ]
    assert torch.equal(
        load_checkpoint_file(resumed / "checkpoints" / "epoch_2.pt")["task"][logit_scale],
        again["task"][logit_scale],
    )
    tower = clip_ping.models.get_model_spec(student).tower
    assert again["student"]["tower"] == tower
    model, _, _ = clip_ping.load(resumed / "checkpoints" / "latest.pt")
    assert model.tower == tower and not model.training
    for key, value in full["task"].items():
        assert torch.equal(value, again["task"][key]), key
    # metrics.jsonl has each step once, as an uninterrupted run would
    steps = [r["step"] for r in read_metrics(resumed) if "train/loss" in r]
    assert steps == sorted(set(steps))


def test_evaluating_during_training_leaves_the_training_unchanged(shapes_corpus, tmp_path):
    # The data-efficiency curve evaluates its runs on val once, at the end, instead of after
    # every epoch: the trained weights must not depend on it. A MobileViT, whose BatchNorm
    # statistics would move if evaluation ran in training mode.
    common = dict(epochs=2, model="cpu-mobilevit-micro-32")
    every = train(config(shapes_corpus, tmp_path, name="every", val_frequency=1, **common))
    last = train(config(shapes_corpus, tmp_path, name="last", val_frequency=2, **common))
    evals = {
        name: [r["epoch"] for r in read_metrics(run) if "retrieval/val/image_to_text_R@1" in r]
        for name, run in (("every", every), ("last", last))
    }
    assert evals == {"every": [1, 2], "last": [2]}
    a = load_checkpoint_file(every / "checkpoints" / "latest.pt")["task"]
    b = load_checkpoint_file(last / "checkpoints" / "latest.pt")["task"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_refuses_another_model(shapes_corpus, tmp_path):
    train(config(shapes_corpus, tmp_path, name="m", stop_after_steps=2, val_data=None))
    try:
        train(config(shapes_corpus, tmp_path, name="m", resume="latest", model="cpu-mini-32"))
    except ValueError as exc:
        assert "cpu-micro-32" in str(exc) and "--model" in str(exc)
    else:
        raise AssertionError("resuming with another --model must fail")
    # A checkpoint of the earlier layout (format 1) is refused with what to do; its
    # student still loads.
    latest = tmp_path / "m" / "checkpoints" / "latest.pt"
    state = load_checkpoint_file(latest)
    old = {k: v for k, v in state.items() if k not in ("format", "student", "task")}
    old.update(
        student_weights(state),
        clip_config=state["student"]["clip_config"],
        tokenizer=state["student"]["tokenizer"],
        context_length=16,
    )
    torch.save(old, latest)
    with pytest.raises(ValueError, match="format clip-ping-checkpoint/1.*clip_ping.load"):
        train(config(shapes_corpus, tmp_path, name="m", resume="latest"))
    model, _, _ = clip_ping.load(latest)
    torch.testing.assert_close(model.state_dict(), student_weights(state)["model"])


def student_weights(state: dict) -> dict:
    """Format 1 kept the student's weights apart, under ``model``."""
    prefix = "model."
    return {
        "model": {k[len(prefix) :]: v for k, v in state["task"].items() if k.startswith(prefix)}
    }


def test_cli_trains_with_a_trained_tokenizer_and_exports(shapes_corpus, tmp_path):
    cli = [sys.executable, "-m", "clip_ping.cli"]
    train_csv = str(shapes_corpus / "train.csv")
    subprocess.run(
        [*cli, "tokenizer", "train", "--train-data", train_csv, "--out", str(tmp_path / "tok")],
        check=True,
        capture_output=True,
    )
    cmd = [
        *cli,
        "train",
        "--train-data",
        train_csv,
        "--tokenizer",
        str(tmp_path / "tok"),
        "--model",
        "cpu-micro-32",
        "--epochs",
        "1",
        "--batch-size",
        "128",
        "--workers",
        "1",
        "--logs",
        str(tmp_path),
        "--name",
        "cli",
        "--no-progress",
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    run_dir = tmp_path / "cli"
    for part in (
        "config.yaml",
        "out.log",
        "metrics.jsonl",
        "checkpoints/latest.pt",
        "hf/config.json",
    ):
        assert (run_dir / part).exists(), part
    assert list((run_dir / "tensorboard").iterdir())
    model, _, tokenizer = clip_ping.load(run_dir)
    assert tokenizer.vocab_size < 500  # the captions' own small vocabulary, not MiniLM's 30,522
    assert model.clip.config.text_config.vocab_size == tokenizer.vocab_size
    from_checkpoint, _, _ = clip_ping.load(run_dir / "checkpoints" / "latest.pt")
    tokens = tokenizer(["a small red circle on the left"])
    assert tokenizer.unk_id not in tokens[0].tolist()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens), from_checkpoint.encode_text(tokens))
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode != 0 and "--resume latest" in again.stderr


def test_training_from_webdataset_shards(shapes_corpus, tmp_path):
    from clip_ping.data.shards import write_shards

    shards = tmp_path / "shards"
    write_shards(shapes_corpus / "train.csv", shards, samples_per_shard=256)
    urls = str(shards / "{00000..00005}.tar")
    run_dir = train(
        config(
            shapes_corpus,
            tmp_path,
            name="wds",
            train_data=urls,
            val_data=str(shapes_corpus / "val.csv"),
            epochs=2,
            workers=2,
            batch_size=64,
        )
    )
    records = read_metrics(run_dir)
    assert any("zeroshot/val/acc1" in r for r in records)
    assert (run_dir / "hf" / "config.json").is_file()


def test_unused_settings_are_warned_in_the_run_log(shapes_corpus, tmp_path):
    run_dir = train(
        config(
            shapes_corpus,
            tmp_path,
            name="w",
            stop_after_steps=1,
            val_data=None,
            nn_weight=2.0,
            neighbor_warmup=50,
        )
    )
    log = (run_dir / "out.log").read_text()
    assert "WARNING | --nn-weight, --neighbor-warmup set, but --loss clip does not use them" in log
