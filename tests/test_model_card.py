"""The exported model card: what the run was, its numbers, and code that really loads it."""

import json
import re

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import clip_ping
from clip_ping.training.config import build_config
from clip_ping.training.train import train


# One student of each image-tower family: each trains, exports, evaluates and loads.
@pytest.mark.parametrize(
    "student", ["cpu-micro-32", "cpu-convnext-micro-32", "cpu-mobilevit-micro-32"]
)
def test_the_card_states_the_run_and_its_code_loads_the_same_model(
    shapes_corpus, tmp_path, student, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # --logs relative to where training runs
    cfg = build_config(
        overrides=dict(
            train_data=str(shapes_corpus / "train.csv"),
            val_data=str(shapes_corpus / "val.csv"),
            model=student,
            batch_size=128,
            epochs=1,
            warmup=2,
            workers=0,
            logs="logs",
            name="card",
            progress=False,
        )
    )
    run_dir = train(cfg)
    card = (run_dir / "hf" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    model, preprocess, tokenizer = clip_ping.load(run_dir)
    parameters = sum(p.numel() for p in model.parameters())
    assert f"{parameters / 1e6:.2f} M parameters, {model.describe()}" in card
    meta = yaml.safe_load(card.split("---")[1])
    assert model.tower in meta["tags"]
    # transformers' zero-shot pipeline loads a CLIPModel export only
    assert ("pipeline_tag" in meta) == (student == "cpu-micro-32")
    assert f"| peak learning rate | `{cfg.lr}` |" in card
    # Every number of the run's result records (retrieval and zero-shot on val) is in it.
    records = [json.loads(p.read_text()) for p in (run_dir / "results").glob("*.json")]
    assert len(records) == 2
    for record in records:
        for name, value in record["metric_names"].items():
            assert f"| `{name}` | {value:.4f} |" in card

    # The card's "transformers alone" code runs and gives clip-ping's embeddings, read from
    # another folder than the one training ran in.
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert len(blocks) == 2
    pil_image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8))
    scope = {"pil_image": pil_image}
    exec(blocks[1], scope)  # noqa: S102 - the card's own example, on our export
    with torch.no_grad():
        ours_image = model.encode_image(preprocess(pil_image)[None])
        ours_text = model.encode_text(tokenizer(["a photo of a cat"]))
    torch.testing.assert_close(scope["image"].detach(), ours_image, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scope["text"].detach(), ours_text, atol=1e-5, rtol=1e-4)
    exec(blocks[0], scope)  # the clip-ping example runs too
    assert scope["image"].shape == (1, model.embed_dim)
