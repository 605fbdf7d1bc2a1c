"""The locked teachers: frozen teachers with trained heads, trained on the bank rows."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import clip_ping
from clip_ping.bank import Bank
from clip_ping.models import (
    LockedSpec,
    LockedTeachers,
    create_model,
    load_checkpoint_file,
    model_from_checkpoint,
)
from clip_ping.teachers import create_teacher
from clip_ping.training.config import build_config
from clip_ping.training.train import train


def config(corpus, banks, logs, **overrides):
    return build_config(
        overrides=dict(
            dict(
                train_data=str(corpus / "train.csv"),
                val_data=str(corpus / "val.csv"),
                image_bank=str(banks / "image"),
                text_bank=str(banks / "text"),
                model="locked-teachers",
                batch_size=64,
                epochs=3,
                lr=2e-3,
                warmup=2,
                workers=0,
                seed=0,
                logs=str(logs),
                name="locked",
                progress=False,
            ),
            **overrides,
        )
    )


@pytest.fixture(scope="module")
def locked_run(small_corpus, shapes_banks, tmp_path_factory):
    return train(config(small_corpus, shapes_banks, tmp_path_factory.mktemp("locked")))


def test_it_learns_the_pairs_from_the_bank_rows(locked_run):
    """Three epochs of the heads alone find the held-out pairs far above chance (1/64 for
    R@1 among the 64 val pairs)."""
    metrics = [line for line in (locked_run / "metrics.jsonl").read_text().splitlines()]
    last = [m for m in metrics if "retrieval/val/text_to_image_R@1" in m][-1]
    recall = float(re.search(r'"retrieval/val/text_to_image_R@1": ([0-9.]+)', last).group(1))
    assert recall > 5 / 64


def test_the_teachers_do_not_change_and_stay_out_of_the_checkpoint(locked_run):
    checkpoint = load_checkpoint_file(locked_run / "checkpoints" / "latest.pt")
    trained = {k for k in checkpoint["task"] if k.startswith("model.")}
    assert trained == {
        "model.image_head.weight",
        "model.text_head.weight",
        "model.log_scale",
    }
    # The export carries the teachers whole: exactly the weights they were created with.
    hf = locked_run / "hf"
    image_teacher = create_teacher("efficientnet-lite0", "image", 64)
    original = torch.load(image_teacher.weights_path, map_location="cpu", weights_only=True)
    exported = load_file(str(hf / "image_teacher" / "model.safetensors"))
    assert exported.keys() == original.keys()
    assert all(torch.equal(exported[k], original[k]) for k in original)
    text_teacher = create_teacher("minilm", "text")
    exported = load_file(str(hf / "text_teacher" / "model.safetensors"))
    for name, value in text_teacher.model.state_dict().items():
        assert torch.equal(exported[name], value), name


def test_checkpoint_export_and_bank_rows_give_the_same_embeddings(
    locked_run, small_corpus, shapes_banks
):
    from_export, preprocess, tokenizer = clip_ping.load(locked_run)
    state = load_checkpoint_file(locked_run / "checkpoints" / "latest.pt")
    from_checkpoint, _ = model_from_checkpoint(state, "latest.pt")
    assert isinstance(from_export, LockedTeachers)
    rows = [0, 5, 9]
    lines = (small_corpus / "train.csv").read_text().splitlines()[1:]
    paths = [small_corpus / lines[i].split(",")[0] for i in rows]
    captions = [lines[i].split(",")[1] for i in rows]
    images = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths])
    tokens = tokenizer(captions)
    with torch.no_grad():
        a = from_export(images, tokens)
        b = from_checkpoint.eval()(images, tokens)
        # what training saw: the same samples' rows of the banks (float16)
        bank_rows = [
            torch.from_numpy(Bank(shapes_banks / m).features[rows].astype(np.float32))
            for m in ("image", "text")
        ]
        c = from_export.forward_features(*bank_rows)
    for key in ("image_features", "text_features"):
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a[key], c[key], atol=2e-3, rtol=0)


def test_the_card_s_code_loads_the_export_without_clip_ping(locked_run):
    card = (locked_run / "hf" / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    model, preprocess, tokenizer = clip_ping.load(locked_run)
    pil_image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8))
    scope = {"pil_image": pil_image}
    exec(blocks[1], scope)  # noqa: S102 - the card's own example, on our export
    with torch.no_grad():
        ours_image = model.encode_image(preprocess(pil_image)[None])
        ours_text = model.encode_text(tokenizer(["a photo of a cat"]))
    torch.testing.assert_close(scope["image"], ours_image, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(scope["text"], ours_text, atol=1e-5, rtol=1e-4)


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(
    small_corpus, shapes_banks, locked_run, tmp_path
):
    cut = config(small_corpus, shapes_banks, tmp_path, stop_after_steps=4, save_every_steps=2)
    train(cut)
    resumed = train(config(small_corpus, shapes_banks, tmp_path, resume="latest"))
    a = load_checkpoint_file(resumed / "checkpoints" / "latest.pt")["task"]
    b = load_checkpoint_file(locked_run / "checkpoints" / "latest.pt")["task"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_what_it_cannot_train_on_is_refused_by_name(small_corpus, shapes_banks, tmp_path):
    with pytest.raises(ValueError, match="pass --image-bank and --text-bank"):
        train(config(small_corpus, shapes_banks, tmp_path, image_bank=None))
    with pytest.raises(ValueError, match="trains with --loss clip only, not clip-ping"):
        train(config(small_corpus, shapes_banks, tmp_path, loss="clip-ping"))
    with pytest.raises(ValueError, match="npy:f.npy' cannot run"):
        create_model("locked-teachers", spec=LockedSpec(image_teacher="npy:f.npy"))


def test_the_mlp_head_trains_too():
    model, tokenizer = create_model("locked-teachers-mlp", spec=LockedSpec(head="mlp"))
    rows = torch.nn.functional.normalize(torch.randn(8, 1280), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(8, 384), dim=-1)
    out = model.forward_features(rows, text)
    out["image_features"].sum().backward()
    assert model.image_head[0].weight.grad is not None
    assert out["text_features"].shape == (8, 256)


def test_two_processes_under_torchrun_train_the_heads_of_one(small_corpus, shapes_banks, tmp_path):
    """torchrun with two gloo processes of 32 pairs each ends with the heads of one process
    on the same global batches of 64 (features gathered with their gradient)."""
    import os
    import shutil
    import subprocess
    import sys

    flags = [
        *("--model", "locked-teachers", "--train-data", str(small_corpus / "train.csv")),
        *("--image-bank", str(shapes_banks / "image"), "--text-bank", str(shapes_banks / "text")),
        *("--epochs", "1", "--lr", "1e-3", "--warmup", "2", "--workers", "0", "--no-progress"),
        *("--gather-with-grad", "--logs-dir", str(tmp_path)),  # torchrun takes --logs
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = shutil.which("clip-ping") or str(Path(sys.executable).with_name("clip-ping"))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    subprocess.run(
        [
            *torchrun,
            "--master_port",
            "29541",
            cli,
            "train",
            *flags,
            "--batch-size",
            "32",
            "--name",
            "ddp",
        ],
        check=True,
        capture_output=True,
        env=env,
        timeout=600,
    )
    subprocess.run(
        [cli, "train", *flags, "--batch-size", "64", "--name", "one"],
        check=True,
        capture_output=True,
        env=env,
        timeout=600,
    )
    ddp, one = (
        load_checkpoint_file(tmp_path / name / "checkpoints" / "latest.pt")["task"]
        for name in ("ddp", "one")
    )
    assert ddp.keys() == one.keys()
    for key in one:
        torch.testing.assert_close(ddp[key], one[key], atol=1e-5, rtol=0)


def test_a_sentence_transformers_text_teacher_runs_inside_the_export(
    small_corpus, shapes_banks, tmp_path
):
    """A text bank of ``sentence-transformers:<folder>`` (MiniLM's own folder): the export
    carries the sentence-transformers model, and its captions embed as the bank's rows."""
    from clip_ping.bank import build_bank
    from clip_ping.data.loader import DataSpec
    from clip_ping.teachers import minilm_path

    spec = DataSpec(str(small_corpus / "train.csv"))
    teacher = f"sentence-transformers:{minilm_path()}"
    build_bank(spec, "text", tmp_path / "text", teacher=teacher, workers=0, progress=False)
    run = train(
        config(small_corpus, shapes_banks, tmp_path, text_bank=str(tmp_path / "text"), epochs=1)
    )
    model, _, tokenizer = clip_ping.load(run)
    assert type(model.text_teacher).__name__ == "SentenceTransformerTeacher"
    assert (run / "hf" / "text_teacher" / "modules.json").is_file()  # its own format
    lines = (small_corpus / "train.csv").read_text().splitlines()[1:4]
    rows = torch.from_numpy(Bank(tmp_path / "text").features[:3].astype(np.float32))
    with torch.no_grad():
        ours = model.encode_text(tokenizer([line.split(",")[1] for line in lines]))
        expected = model.project_text(rows)
    torch.testing.assert_close(ours, expected, atol=2e-3, rtol=0)
