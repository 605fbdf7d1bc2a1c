"""The registry of image-tower kinds and the zoo of sizes: every size builds the model its
numbers describe, an unknown kind is refused by name, nothing outside a kind's class
branches on its name, and a new kind plugs in with its class and one registry line."""

import ast
import inspect
import json
from pathlib import Path

import pytest
import torch
import yaml

import clip_ping
from clip_ping.models import (
    MODEL_SPECS,
    TOWERS,
    DamagedCheckpointError,
    TowerSpec,
    TowerStudent,
    ViTSpec,
    create_model,
    export_hf,
    load_export,
    model_from_checkpoint,
    registry,
    student_record,
    tower_class,
)
from clip_ping.models.towers import joined
from clip_ping.training.model_card import _front_matter

SRC = Path(clip_ping.__file__).parent

# Parameters of each size with the default 30,522-token vocabulary (docs/models.md).
PARAMETERS = {
    "convnext-femto-224": 17_569_041,
    "convnext-pico-224": 21_301_697,
    "cpu-convnext-micro-32": 2_123_601,
    "cpu-convnext-mini-32": 6_652_641,
    "cpu-micro-32": 2_176_385,
    "cpu-mini-32": 7_455_489,
    "cpu-mobilevit-micro-32": 2_312_585,
    "cpu-mobilevit-mini-64": 5_712_625,
    "cpu-small-64": 5_563_649,
    "mobilevit-s-224": 17_739_425,
    "mobilevit-xs-224": 14_669_105,
    "vit-s-16": 55_005_313,
    "vit-ti-16": 18_211_713,
    "vit-xs-16": 24_008_449,
}


def test_the_zoo_is_the_documented_sizes():
    assert set(MODEL_SPECS) == set(PARAMETERS)
    assert list(TOWERS) == ["vit", "convnext", "mobilevit", "locked"]


@pytest.mark.parametrize("name", sorted(MODEL_SPECS))
def test_every_size_builds_its_kind_with_its_parameter_count(name):
    spec = MODEL_SPECS[name]
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model, tokenizer = create_model(name)
    assert type(model) is TOWERS[spec.tower] and model.tower == spec.tower
    assert (model.image_size, model.embed_dim) == (spec.image_size, spec.embed_dim)
    assert tokenizer.context_length == spec.context_length
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS[name]


def test_specs_are_written_by_keyword():
    with pytest.raises(TypeError):
        ViTSpec(32, 8, 64, 2, 2, 64, 2, 2, 64)
    with pytest.raises(TypeError):
        TowerSpec("convnext", 32, {})
    with pytest.raises(TypeError):  # a ViT spec's kind is fixed
        ViTSpec(**{**MODEL_SPECS["cpu-micro-32"].__dict__, "tower": "convnext"})


def _text_config(tokenizer, width, layers, heads, **extra):
    return dict(
        vocab_size=tokenizer.vocab_size,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=tokenizer.context_length,
        pad_token_id=tokenizer.pad_id,
        bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id,
        **extra,
    )


def test_a_seeded_vit_size_is_the_clip_model_its_numbers_describe():
    from transformers import CLIPConfig, CLIPModel

    model, tokenizer = create_model("cpu-micro-32", seed=0)
    torch.manual_seed(0)
    vision = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2)
    config = CLIPConfig(
        text_config=_text_config(tokenizer, 64, 2, 2),
        vision_config=dict(vision, num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=64,
    )
    reference = CLIPModel(config).state_dict()
    assert reference.keys() == model.clip.state_dict().keys()
    for key, value in model.clip.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_a_seeded_convnext_size_is_the_backbone_its_numbers_describe():
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        ConvNextConfig,
        ConvNextModel,
    )

    model, tokenizer = create_model("cpu-convnext-mini-32", seed=0)
    torch.manual_seed(0)
    vision = ConvNextModel(
        ConvNextConfig(
            patch_size=2, hidden_sizes=[32, 64, 128, 256], depths=[2, 2, 4, 2], image_size=32
        )
    )
    text = CLIPTextModelWithProjection(
        CLIPTextConfig(**_text_config(tokenizer, 128, 4, 2, projection_dim=128))
    )
    projection = torch.nn.Linear(256, 128, bias=False).weight  # then drawn as CLIPModel's
    torch.nn.init.normal_(projection, std=256**-0.5)
    for ours, reference in ((model.vision, vision), (model.text, text)):
        for key, value in ours.state_dict().items():
            assert torch.equal(value, reference.state_dict()[key]), key
    assert torch.equal(model.visual_projection.weight, projection)


def test_an_unknown_tower_kind_is_refused_naming_the_kinds(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match=r"'resnet' is not supported.*vit, convnext, mobilevit"):
        tower_class("resnet")
    spec = TowerSpec(tower="resnet", image_size=32, vision={})
    monkeypatch.setitem(registry.MODEL_SPECS, "cpu-resnet-32", spec)
    with pytest.raises(ValueError, match="'resnet' is not supported"):
        create_model("cpu-resnet-32")
    # An export whose manifest names a kind this clip-ping lacks.
    (tmp_path / "dual_encoder.json").write_text(json.dumps({"tower": "resnet"}))
    with pytest.raises(ValueError, match="'resnet' is not supported"):
        load_export(tmp_path)
    # A checkpoint record likewise: one line naming the checkpoint.
    model, tokenizer = create_model("cpu-micro-32", seed=0)
    state = {"student": {**student_record(model, tokenizer), "tower": ["vit"]}, "task": {}}
    with pytest.raises(DamagedCheckpointError, match=r"^ckpt\.pt: image tower \['vit'\]"):
        model_from_checkpoint(state, "ckpt.pt")


def _compared_names(tree: ast.AST) -> list[str]:
    """String constants that ``==``, ``!=``, ``in`` or ``not in`` compares against."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                found += [
                    sub.value
                    for sub in ast.walk(operand)
                    if isinstance(sub, ast.Constant) and isinstance(sub.value, str)
                ]
    return found


def test_only_a_towers_own_class_and_the_registry_name_its_kind():
    owners = {Path(inspect.getsourcefile(cls)) for cls in TOWERS.values()}
    owners |= {Path(inspect.getsourcefile(registry))}
    branching = {
        str(path.relative_to(SRC)): names
        for path in sorted(SRC.rglob("*.py"))
        if path not in owners
        and (names := [n for n in _compared_names(ast.parse(path.read_text())) if n in TOWERS])
    }
    assert branching == {}


class ResNetStudent(TowerStudent):
    """A kind of tower that clip-ping lacks, as docs/extending.md adds one."""

    tower, title, design = "resnet", "ResNet", "convolutional, residual"

    @staticmethod
    def pooled_width(config) -> int:
        return config.hidden_sizes[-1]

    @staticmethod
    def shape(config) -> str:
        return f"stages of {joined(config.depths)} blocks, widths {joined(config.hidden_sizes)}"


def test_a_new_tower_kind_plugs_in_with_one_registry_line(monkeypatch, tmp_path):
    monkeypatch.setitem(registry.TOWERS, "resnet", ResNetStudent)
    vision = dict(embedding_size=8, hidden_sizes=[16, 24], depths=[1, 1], layer_type="basic")
    spec = TowerSpec(
        tower="resnet",
        image_size=32,
        vision=vision,
        text_width=32,
        text_layers=1,
        text_heads=2,
        embed_dim=16,
        context_length=16,
    )
    monkeypatch.setitem(registry.MODEL_SPECS, "cpu-resnet-32", spec)
    model, tokenizer = create_model("cpu-resnet-32", seed=0)
    assert isinstance(model, ResNetStudent) and "ResNet image tower" in model.describe()
    model.eval()
    images, texts = torch.rand(2, 3, 32, 32), tokenizer(["a red circle", "a blue square"])

    # Through a checkpoint record and through an export, the same student comes back.
    state = {"student": student_record(model, tokenizer)}
    state["task"] = {f"model.{k}": v for k, v in model.state_dict().items()}
    from_checkpoint, _ = model_from_checkpoint(state)
    from_export, _, exported_tokenizer = clip_ping.load(
        export_hf(model, tokenizer, tmp_path / "hf")
    )
    assert json.loads((tmp_path / "hf" / "dual_encoder.json").read_text())["tower"] == "resnet"
    assert torch.equal(exported_tokenizer(["a red circle"]), texts[:1])
    with torch.no_grad():
        expected = model(images, texts)
        for rebuilt in (from_checkpoint, from_export):
            assert type(rebuilt) is ResNetStudent
            for key, value in rebuilt.eval()(images, texts).items():
                torch.testing.assert_close(value, expected[key])

    # The model card's metadata is the class's: its tag, no pipeline (not a CLIPModel).
    meta = yaml.safe_load(_front_matter(model).split("---")[1])
    assert "pipeline_tag" not in meta and meta["tags"][-1] == "resnet"
