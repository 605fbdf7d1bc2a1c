"""The registries of students: kinds of image tower, and named sizes (the zoo).

:data:`TOWERS` maps each image-tower kind (the ``tower`` of checkpoint records, export
manifests and specs) to its :class:`~clip_ping.models.student.Student` subclass, which
carries everything specific to the kind: how it is built, recorded, exported, read back and
described on the model card. Nothing else in clip-ping branches on a kind's name. A new
kind of tower is its module plus one line of :data:`TOWERS` (docs/extending.md).

:data:`MODEL_SPECS` names the sizes that ``create_model`` and ``--model`` accept (shapes
and parameter counts in docs/models.md):

- ``vit-ti-16``, ``vit-xs-16``, ``vit-s-16``, ``convnext-femto-224``, ``convnext-pico-224``,
  ``mobilevit-xs-224``, ``mobilevit-s-224``: 224 px, for GPUs.
- ``cpu-micro-32``, ``cpu-mini-32``, ``cpu-small-64`` (ViT, patch 8),
  ``cpu-convnext-micro-32``, ``cpu-convnext-mini-32``, ``cpu-mobilevit-micro-32``,
  ``cpu-mobilevit-mini-64``: 32-64 px, for laptops, the demo corpus and tests.
- ``locked-teachers``, ``locked-teachers-mlp``: the frozen teachers of the run's banks with
  trained linear (or MLP) heads, the ceiling of the students that learn from them.

Examples:
    >>> from clip_ping.models import TOWERS, get_model_spec, tower_class
    >>> list(TOWERS)
    ['vit', 'convnext', 'mobilevit', 'locked']
    >>> tower_class(get_model_spec("cpu-convnext-mini-32").tower).__name__
    'ConvNextStudent'
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..tokenizer import Tokenizer, get_tokenizer
from .convnext import ConvNextStudent
from .locked import LockedSpec, LockedTeachers
from .mobilevit import MobileViTStudent
from .student import Student
from .towers import TowerSpec, TowerStudent
from .vit import ClipStudent, ViTSpec

TOWERS: dict[str, type[Student]] = {
    ClipStudent.tower: ClipStudent,
    ConvNextStudent.tower: ConvNextStudent,
    MobileViTStudent.tower: MobileViTStudent,
    LockedTeachers.tower: LockedTeachers,
}
# Checkpoint records written before other towers existed name none: they are ViTs.
UNNAMED_TOWER = ClipStudent.tower


def tower_class(tower: str) -> type[Student]:
    """The student class of the image-tower kind ``tower``."""
    if not isinstance(tower, str) or tower not in TOWERS:
        raise ValueError(
            f"image tower {tower!r} is not supported; clip-ping students use one of "
            f"{', '.join(TOWERS)} (clip_ping.models.TOWERS)"
        )
    return TOWERS[tower]


def record_class(record: dict) -> type[Student]:
    """The student class of a checkpoint record (see ``Student.record``)."""
    return tower_class(record.get("tower", UNNAMED_TOWER))


def holds_export(hf_dir: str | os.PathLike) -> bool:
    """Whether the folder ``hf_dir`` holds an export of some kind of student."""
    return any((Path(hf_dir) / cls.export_marker).is_file() for cls in TOWERS.values())


def export_class(hf_dir: str | os.PathLike) -> type[Student] | None:
    """The student class whose export ``hf_dir`` holds, or None if it holds none."""
    hf_dir = Path(hf_dir)
    for cls in TOWERS.values():
        if (hf_dir / cls.export_marker).is_file():
            return tower_class(cls.export_tower(hf_dir))
    return None


def export_layouts() -> str:
    """The export layouts of every kind, in words (for errors)."""
    return " or ".join(dict.fromkeys(cls.export_layout for cls in TOWERS.values()))


# The text towers (and joint embeddings) that several sizes share.
MICRO_TEXT = dict(text_width=64, text_layers=2, text_heads=2, embed_dim=64, context_length=16)
MINI_TEXT = dict(text_width=128, text_layers=4, text_heads=2, embed_dim=128, context_length=32)
TI_TEXT = dict(text_width=256, text_layers=6, text_heads=4, embed_dim=256, context_length=77)
NO_DROPOUT = dict(hidden_dropout_prob=0.0)

MODEL_SPECS: dict[str, ViTSpec | TowerSpec] = {
    # 224 px ViT students for GPUs. vit-s-16 follows open_clip's ViT-S-16 towers; vit-ti-16
    # uses DeiT-Tiny's image tower; vit-xs-16 is our own definition between the two (the
    # CLIP-PING paper does not publish its ViT-XS).
    "vit-ti-16": ViTSpec(
        image_size=224,
        patch_size=16,
        vision_width=192,
        vision_layers=12,
        vision_heads=3,
        **TI_TEXT,
    ),
    "vit-xs-16": ViTSpec(
        image_size=224,
        patch_size=16,
        vision_width=256,
        vision_layers=12,
        vision_heads=4,
        text_width=256,
        text_layers=8,
        text_heads=4,
        embed_dim=256,
    ),
    "vit-s-16": ViTSpec(
        image_size=224,
        patch_size=16,
        vision_width=384,
        vision_layers=12,
        vision_heads=6,
        text_width=384,
        text_layers=12,
        text_heads=6,
        embed_dim=384,
    ),
    # CPU ViT students for 32-64 px inputs (the demo corpus and the test suite).
    "cpu-micro-32": ViTSpec(
        image_size=32,
        patch_size=8,
        vision_width=64,
        vision_layers=2,
        vision_heads=2,
        **MICRO_TEXT,
    ),
    "cpu-mini-32": ViTSpec(
        image_size=32,
        patch_size=8,
        vision_width=192,
        vision_layers=6,
        vision_heads=3,
        **MINI_TEXT,
    ),
    "cpu-small-64": ViTSpec(
        image_size=64,
        patch_size=8,
        vision_width=128,
        vision_layers=4,
        vision_heads=2,
        **MINI_TEXT,
    ),
    # ConvNeXt image towers: femto and pico are the ConvNeXt-V2 paper's small widths and
    # depths (as ConvNeXt-V1 blocks); the CPU sizes are ours, with a patch-2 stem for
    # 32 px inputs. Text towers as the ViT sizes of similar cost.
    "convnext-femto-224": TowerSpec(
        tower="convnext",
        image_size=224,
        **TI_TEXT,
        vision=dict(hidden_sizes=[48, 96, 192, 384], depths=[2, 2, 6, 2]),
    ),
    "convnext-pico-224": TowerSpec(
        tower="convnext",
        image_size=224,
        **TI_TEXT,
        vision=dict(hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 6, 2]),
    ),
    "cpu-convnext-micro-32": TowerSpec(
        tower="convnext",
        image_size=32,
        **MICRO_TEXT,
        vision=dict(patch_size=4, num_stages=3, hidden_sizes=[16, 32, 64], depths=[1, 1, 1]),
    ),
    "cpu-convnext-mini-32": TowerSpec(
        tower="convnext",
        image_size=32,
        **MINI_TEXT,
        vision=dict(patch_size=2, hidden_sizes=[32, 64, 128, 256], depths=[2, 2, 4, 2]),
    ),
    # MobileViT image towers (hybrid): xs and s are MobileViT's own x-small and small; the
    # CPU sizes are ours, narrower (MobileViT's depths are fixed by its code). No dropout,
    # like every other student (CLIP trains without it).
    "mobilevit-xs-224": TowerSpec(
        tower="mobilevit",
        image_size=224,
        **TI_TEXT,
        vision=dict(
            hidden_sizes=[96, 120, 144],
            neck_hidden_sizes=[16, 32, 48, 64, 80, 96, 384],
            **NO_DROPOUT,
        ),
    ),
    "mobilevit-s-224": TowerSpec(tower="mobilevit", image_size=224, vision=NO_DROPOUT, **TI_TEXT),
    "cpu-mobilevit-micro-32": TowerSpec(
        tower="mobilevit",
        image_size=32,
        **MICRO_TEXT,
        vision=dict(
            hidden_sizes=[32, 40, 48],
            neck_hidden_sizes=[8, 8, 16, 24, 32, 40, 160],
            expand_ratio=2.0,
            num_attention_heads=2,
            **NO_DROPOUT,
        ),
    ),
    "cpu-mobilevit-mini-64": TowerSpec(
        tower="mobilevit",
        image_size=64,
        **MINI_TEXT,
        vision=dict(
            hidden_sizes=[64, 80, 96],
            neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320],
            expand_ratio=2.0,
            **NO_DROPOUT,
        ),
    ),
}

# Not students: the frozen teachers of the run's banks with trained heads, the ceiling of
# any student that learns from them (models/locked.py). Trained on the bank features.
LOCKED_SPECS: dict[str, LockedSpec] = {
    "locked-teachers": LockedSpec(head="linear"),
    "locked-teachers-mlp": LockedSpec(head="mlp"),
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model` and ``--model`` (the students' sizes, then
    the locked teachers)."""
    return sorted(MODEL_SPECS) + sorted(LOCKED_SPECS)


def get_model_spec(name: str) -> ViTSpec | TowerSpec | LockedSpec:
    if name not in MODEL_SPECS and name not in LOCKED_SPECS:
        raise ValueError(
            f"unknown model '{name}'; choose one of {', '.join(list_models())} "
            "(clip_ping.list_models())"
        )
    return MODEL_SPECS.get(name) or LOCKED_SPECS[name]


def create_model(
    name: str,
    tokenizer: Tokenizer | None = None,
    seed: int | None = None,
    spec: ViTSpec | TowerSpec | LockedSpec | None = None,
) -> tuple[Student, Tokenizer]:
    """A freshly initialised student ``name`` (or of ``spec``) and its tokenizer (default:
    the offline MiniLM WordPiece, truncated to the model's context length). The locked
    teachers tokenize as their text teacher and ignore ``tokenizer``."""
    spec = spec or get_model_spec(name)
    if seed is not None:
        torch.manual_seed(seed)
    if isinstance(spec, LockedSpec):
        model = LockedTeachers.create(spec)
        return model, model.tokenizer
    tokenizer = tokenizer or get_tokenizer(context_length=spec.context_length)
    if tokenizer.context_length != spec.context_length:
        tokenizer = Tokenizer.from_str(tokenizer.to_str(), spec.context_length)
    return tower_class(spec.tower).create(spec, tokenizer), tokenizer


def backbone_families() -> dict[str, type[TowerStudent]]:
    """The kinds whose image tower is a transformers vision backbone."""
    return {kind: cls for kind, cls in TOWERS.items() if issubclass(cls, TowerStudent)}


FAMILIES = backbone_families()  # its earlier name (kinds other than the ViT)
