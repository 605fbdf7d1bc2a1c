"""Students with ConvNeXt (convolutional) and MobileViT (hybrid) image towers: sizes,
export in the dual-encoder layout, the same embeddings with plain transformers, checkpoints."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clip_ping
from clip_ping.losses import ClipLoss
from clip_ping.models import (
    FAMILIES,
    MODEL_SPECS,
    TOWERS,
    ClipStudent,
    DamagedCheckpointError,
    TowerStudent,
    create_model,
    export_hf,
    model_from_checkpoint,
    student_record,
)

README = Path(__file__).resolve().parents[2] / "README.md"
MICRO = {"convnext": "cpu-convnext-micro-32", "mobilevit": "cpu-mobilevit-micro-32"}


def settled(name: str) -> TowerStudent:
    """A student whose BatchNorm statistics and logit scale are no longer their initial
    values (a few train-mode forwards), so an export that dropped them would show."""
    model, tokenizer = create_model(name, seed=1)
    size = model.image_size
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 3, size, size) * 2, tokenizer(["a red circle"] * 8))
        model.log_scale.fill_(3.1)
    return model.eval()


@pytest.mark.parametrize("tower", sorted(FAMILIES))
def test_each_tower_has_a_cpu_size_and_a_224_px_size(tower):
    sizes = {MODEL_SPECS[n].image_size for n in MODEL_SPECS if MODEL_SPECS[n].tower == tower}
    assert 224 in sizes and any(32 <= s <= 64 for s in sizes)
    model, _ = create_model(MICRO[tower], seed=0)
    assert isinstance(model, TowerStudent) and model.tower == tower
    with torch.no_grad():
        model.log_scale.fill_(10.0)
    assert model.logit_scale().item() == pytest.approx(100.0)
    model.clamp_logit_scale()
    assert model.log_scale.item() == pytest.approx(np.log(100.0))


@pytest.mark.parametrize("name", ["cpu-micro-32", *MICRO.values()])
def test_a_fresh_student_fits_a_small_batch(name):
    """From its initial weights every student can learn: 30 AdamW steps on 16 pairs take
    the CLIP loss from about ln 16 = 2.8 to near 0. (transformers' own MobileViT
    initialisation, BatchNorm scales near 0, stays at 2.77.)"""
    model, tokenizer = create_model(name, seed=0)
    generator = torch.Generator().manual_seed(0)
    size = model.image_size
    images = torch.rand(16, 3, size, size, generator=generator) * 2 - 1
    texts = tokenizer([f"picture number {i}" for i in range(16)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    loss_fn = ClipLoss()
    for _ in range(30):
        out = model(images, texts)
        loss = sum(
            loss_fn(out["image_features"], out["text_features"], out["logit_scale"]).values()
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3


@pytest.mark.parametrize(
    "name, millions", [("cpu-convnext-mini-32", 6.65), ("cpu-mobilevit-mini-64", 5.71)]
)
def test_the_demo_sizes_have_the_parameter_counts_docs_models_states(name, millions):
    model, _ = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(millions * 1e6, abs=5e3)


@pytest.mark.parametrize("tower", sorted(FAMILIES))
def test_export_gives_the_same_embeddings_with_clip_ping_and_with_plain_transformers(
    tower, tmp_path
):
    model, tokenizer = settled(MICRO[tower]), create_model(MICRO[tower])[1]
    hf = export_hf(model, tokenizer, tmp_path / "hf")
    layout = {"dual_encoder.json", "vision", "text", "visual_projection.safetensors"}
    assert {p.name for p in hf.iterdir()} == layout
    ours, preprocess, our_tokenizer = clip_ping.load(hf)
    assert isinstance(ours, TowerStudent) and ours.tower == tower

    # The README's plain-transformers code for this layout, run on the export.
    code = TowerStudent.transformers_code(str(hf))
    assert "\n".join(TowerStudent.transformers_code("logs/convnext/hf")) in README.read_text()
    image = Image.new("RGBA", (50, 40), (0, 0, 0, 0))
    image.paste((200, 30, 30, 255), (10, 10, 30, 30))
    scope = {"pil_image": image}
    exec("\n".join(code), scope)  # noqa: S102 - the documented example, on our export
    torch.testing.assert_close(scope["pixels"][0], preprocess(image), atol=1e-5, rtol=0)
    assert torch.equal(scope["tokens"]["input_ids"], our_tokenizer(["a photo of a cat"]))
    with torch.no_grad():
        expected_image = ours.encode_image(preprocess(image)[None])
        expected_text = ours.encode_text(our_tokenizer(["a photo of a cat"]))
        torch.testing.assert_close(scope["image"], expected_image, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(scope["text"], expected_text, atol=1e-5, rtol=1e-4)
        # ... and both are the exported model's own embeddings, BatchNorm statistics included.
        torch.testing.assert_close(model.encode_image(preprocess(image)[None]), expected_image)
    assert ours.logit_scale().item() == pytest.approx(np.exp(3.1), rel=1e-6)


@pytest.mark.parametrize("tower", sorted(FAMILIES))
def test_a_checkpoint_records_the_tower_and_rebuilds_the_student(tower):
    model, tokenizer = settled(MICRO[tower]), create_model(MICRO[tower])[1]
    record = student_record(model, tokenizer)
    assert record["tower"] == tower and "vision_config" in record
    state = {"student": record, "task": {f"model.{k}": v for k, v in model.state_dict().items()}}
    rebuilt, rebuilt_tokenizer = model_from_checkpoint(state)
    assert type(rebuilt) is TOWERS[tower] and rebuilt.tower == tower
    assert isinstance(rebuilt, TowerStudent)
    assert rebuilt_tokenizer.context_length == tokenizer.context_length
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key


def test_a_vit_checkpoint_from_before_the_tower_kind_loads_as_a_vit():
    model, tokenizer = create_model("cpu-micro-32", seed=0)
    record = student_record(model, tokenizer)
    assert record.pop("tower") == "vit"  # what checkpoints written before towers hold
    state = {"student": record, "task": {f"model.{k}": v for k, v in model.state_dict().items()}}
    rebuilt, _ = model_from_checkpoint(state)
    assert isinstance(rebuilt, ClipStudent)
    torch.testing.assert_close(rebuilt.state_dict(), model.state_dict())


def test_an_unknown_tower_kind_names_the_supported_ones():
    model, tokenizer = create_model(MICRO["convnext"], seed=0)
    state = {"student": {**student_record(model, tokenizer), "tower": "resnet"}, "task": {}}
    with pytest.raises(ValueError, match="'resnet'.*vit, convnext, mobilevit"):
        model_from_checkpoint(state)


@pytest.mark.parametrize("tower", sorted(FAMILIES))
def test_a_tower_checkpoint_that_does_not_fit_is_one_line_naming_it(tower):
    model, tokenizer = create_model(MICRO[tower], seed=0)
    weights = {f"model.{k}": v for k, v in model.state_dict().items()}
    record = student_record(model, tokenizer)
    no_vision = {key: value for key, value in record.items() if key != "vision_config"}
    reshaped = {**weights, "model.log_scale": torch.zeros(3)}
    cases = [
        ({"student": no_vision, "task": weights}, "lacks its vision_config, text_config"),
        ({"student": record, "task": reshaped}, "log_scale (3,) instead of scalar"),
        ({"student": record, "task": {}}, f"tensors {len(weights)} missing"),
    ]
    for state, says in cases:
        with pytest.raises(DamagedCheckpointError) as error:
            model_from_checkpoint(state, "ckpt.pt")
        assert says in str(error.value) and "ckpt.pt" in str(error.value)
        assert "\n" not in str(error.value)
