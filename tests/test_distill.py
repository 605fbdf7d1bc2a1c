"""``--loss distill``: CLIP-PING's terms with each anchor's own teacher features as targets."""

import shutil

import pytest
import torch

from clip_ping.errors import UserError
from clip_ping.models import load_checkpoint_file
from clip_ping.training.config import build_config
from clip_ping.training.train import train


def config(corpus, banks, logs, name, **overrides):
    settings = dict(
        train_data=str(corpus / "train.csv"),
        image_bank=str(banks / "image"),
        text_bank=str(banks / "text"),
        model="cpu-micro-32",
        batch_size=64,
        epochs=1,
        lr=2e-3,
        warmup=2,
        workers=0,
        seed=0,
        logs=str(logs),
        name=name,
        val_frequency=0,
        progress=False,
    )
    return build_config(overrides={**settings, **overrides})


def weights(run_dir):
    """The run's trained tensors, the terms' heads named without their term."""
    task = load_checkpoint_file(run_dir / "checkpoints" / "latest.pt")["task"]
    return {
        k.replace("terms.distill.", "terms.").replace("terms.neighbor.", "terms."): v
        for k, v in task.items()
    }


def test_distill_is_clip_ping_with_self_targets_and_needs_no_neighbour_tables(
    small_corpus, shapes_banks, tmp_path
):
    # Banks without their neighbour tables: distillation reads the rows only.
    bare = tmp_path / "bare"
    for modality in ("image", "text"):
        shutil.copytree(
            shapes_banks / modality,
            bare / modality,
            ignore=shutil.ignore_patterns("neighbors*", "similarities*"),
        )
    distill = train(config(small_corpus, bare, tmp_path, "distill", loss="distill"))
    control = train(
        config(small_corpus, shapes_banks, tmp_path, "self", loss="clip-ping", neighbor_self="only")
    )
    a, b = weights(distill), weights(control)
    assert a.keys() == b.keys() and any(k.startswith("terms.heads.") for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    with pytest.raises(FileNotFoundError):  # CLIP-PING itself needs the tables
        train(config(small_corpus, bare, tmp_path, "ping", loss="clip-ping"))


def test_neighbour_settings_do_not_apply_to_distill_and_the_banks_are_required(tmp_path):
    cfg = build_config(
        overrides=dict(
            train_data="x.csv",
            loss="distill",
            image_bank="i",
            text_bank="t",
            neighbor_target="memory",
            neighbor_k=3,
        )
    )
    (warning,) = cfg.unused_settings()
    assert "--neighbor-k, --neighbor-target set, but --loss distill does not use them" in warning
    with pytest.raises(UserError, match="--image-bank=None: --loss distill needs it"):
        build_config(overrides=dict(train_data="x.csv", loss="distill"))


@pytest.mark.parametrize(
    ("loss", "model"),
    [("distill-fd", "cpu-convnext-micro-32"), ("relational", "cpu-mobilevit-micro-32")],
)
def test_the_guidance_family_resumes_to_the_uninterrupted_weights(
    small_corpus, shapes_banks, tmp_path, loss, model
):
    """Cut mid-epoch and resumed with 2 loader workers and --accum-freq 2: the student and
    every head equal an uninterrupted run's, bit for bit (a ConvNeXt and a MobileViT)."""
    common = dict(loss=loss, model=model, epochs=2, accum_freq=2, batch_size=32)
    full = train(config(small_corpus, shapes_banks, tmp_path, "full", **common))
    cut = dict(workers=2, save_every_steps=4, **common)
    train(config(small_corpus, shapes_banks, tmp_path, "cut", stop_after_steps=11, **cut))
    resumed = train(config(small_corpus, shapes_banks, tmp_path, "cut", resume="latest", **cut))
    a = load_checkpoint_file(full / "checkpoints" / "latest.pt")
    b = load_checkpoint_file(resumed / "checkpoints" / "latest.pt")
    assert a["step"] == b["step"] == 16
    assert any(key.startswith("terms.") for key in a["task"]) or loss == "relational"
    assert a["task"].keys() == b["task"].keys()
    for key, value in a["task"].items():
        assert torch.equal(value, b["task"][key]), key
