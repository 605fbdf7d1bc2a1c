"""The student zoo: sizes, creation, export and loading.

Every student has open_clip's interface (``encode_image``, ``encode_text``,
``forward -> features + scale``; :class:`~clip_ping.models.student.Student`) and the same
kind of text tower (a causal CLIP text transformer). The image tower is one of:

- a ViT (``vit.py``): the student is a ``transformers.CLIPModel``;
- a transformers vision backbone (``towers.py``): ConvNeXt (convolutional) or MobileViT
  (hybrid), pooled and projected.

Sizes (shapes and parameter counts in docs/models.md):

- ``vit-ti-16``, ``vit-xs-16``, ``vit-s-16``, ``convnext-femto-224``, ``convnext-pico-224``,
  ``mobilevit-xs-224``, ``mobilevit-s-224``: 224 px, for GPUs.
- ``cpu-micro-32``, ``cpu-mini-32``, ``cpu-small-64`` (ViT, patch 8),
  ``cpu-convnext-micro-32``, ``cpu-convnext-mini-32``, ``cpu-mobilevit-micro-32``,
  ``cpu-mobilevit-mini-64``: 32-64 px, for laptops, the demo corpus and tests.
"""

from __future__ import annotations

import torch

from ..tokenizer import Tokenizer, get_tokenizer
from .export import (
    STUDENT_PREFIX,
    DamagedCheckpointError,
    export_hf,
    first_line,
    is_exported,
    load,
    load_checkpoint_file,
    load_export,
    load_weights,
    model_from_checkpoint,
    student_class,
    student_record,
)
from .student import MAX_LOGIT_SCALE, Student
from .towers import FAMILIES, TowerSpec, TowerStudent
from .vit import ClipStudent, ModelSpec, clip_config

# Text towers shared by the sizes below: (width, layers, heads, embed dim, context length).
_MICRO_TEXT = dict(text_width=64, text_layers=2, text_heads=2, embed_dim=64, context_length=16)
_MINI_TEXT = dict(text_width=128, text_layers=4, text_heads=2, embed_dim=128, context_length=32)
_NO_DROPOUT = dict(hidden_dropout_prob=0.0)
_TI_TEXT = dict(text_width=256, text_layers=6, text_heads=4, embed_dim=256, context_length=77)

# fmt: off
MODEL_SPECS: dict[str, ModelSpec | TowerSpec] = {
    # 224 px ViT students for GPUs. vit-s-16 follows open_clip's ViT-S-16 towers; vit-ti-16
    # uses DeiT-Tiny's image tower; vit-xs-16 is our own definition between the two (the
    # CLIP-PING paper does not publish its ViT-XS).
    "vit-ti-16": ModelSpec(224, 16, 192, 12, 3, 256, 6, 4, 256),
    "vit-xs-16": ModelSpec(224, 16, 256, 12, 4, 256, 8, 4, 256),
    "vit-s-16": ModelSpec(224, 16, 384, 12, 6, 384, 12, 6, 384),
    # CPU ViT students for 32-64 px inputs (the demo corpus and the test suite).
    "cpu-micro-32": ModelSpec(32, 8, 64, 2, 2, 64, 2, 2, 64, context_length=16),
    "cpu-mini-32": ModelSpec(32, 8, 192, 6, 3, 128, 4, 2, 128, context_length=32),
    "cpu-small-64": ModelSpec(64, 8, 128, 4, 2, 128, 4, 2, 128, context_length=32),
    # ConvNeXt image towers: femto and pico are the ConvNeXt-V2 paper's small widths and
    # depths (as ConvNeXt-V1 blocks); the CPU sizes are ours, with a patch-2 stem for
    # 32 px inputs. Text towers as the ViT sizes of similar cost.
    "convnext-femto-224": TowerSpec(
        "convnext", 224, dict(hidden_sizes=[48, 96, 192, 384], depths=[2, 2, 6, 2]), **_TI_TEXT
    ),
    "convnext-pico-224": TowerSpec(
        "convnext", 224, dict(hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 6, 2]), **_TI_TEXT
    ),
    "cpu-convnext-micro-32": TowerSpec(
        "convnext", 32,
        dict(patch_size=4, num_stages=3, hidden_sizes=[16, 32, 64], depths=[1, 1, 1]),
        **_MICRO_TEXT,
    ),
    "cpu-convnext-mini-32": TowerSpec(
        "convnext", 32,
        dict(patch_size=2, hidden_sizes=[32, 64, 128, 256], depths=[2, 2, 4, 2]),
        **_MINI_TEXT,
    ),
    # MobileViT image towers (hybrid): xs and s are MobileViT's own x-small and small; the
    # CPU sizes are ours, narrower (MobileViT's depths are fixed by its code). No dropout,
    # like every other student (CLIP trains without it).
    "mobilevit-xs-224": TowerSpec(
        "mobilevit", 224,
        dict(hidden_sizes=[96, 120, 144], neck_hidden_sizes=[16, 32, 48, 64, 80, 96, 384],
             **_NO_DROPOUT),
        **_TI_TEXT,
    ),
    "mobilevit-s-224": TowerSpec("mobilevit", 224, _NO_DROPOUT, **_TI_TEXT),
    "cpu-mobilevit-micro-32": TowerSpec(
        "mobilevit", 32,
        dict(hidden_sizes=[32, 40, 48], neck_hidden_sizes=[8, 8, 16, 24, 32, 40, 160],
             expand_ratio=2.0, num_attention_heads=2, **_NO_DROPOUT),
        **_MICRO_TEXT,
    ),
    "cpu-mobilevit-mini-64": TowerSpec(
        "mobilevit", 64,
        dict(hidden_sizes=[64, 80, 96], neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320],
             expand_ratio=2.0, **_NO_DROPOUT),
        **_MINI_TEXT,
    ),
}
# fmt: on


def list_models() -> list[str]:
    """Names accepted by :func:`create_model` and ``--model``."""
    return sorted(MODEL_SPECS)


def get_model_spec(name: str) -> ModelSpec | TowerSpec:
    if name not in MODEL_SPECS:
        raise ValueError(
            f"unknown model '{name}'; choose one of {', '.join(list_models())} "
            "(clip_ping.list_models())"
        )
    return MODEL_SPECS[name]


def create_model(
    name: str, tokenizer: Tokenizer | None = None, seed: int | None = None
) -> tuple[Student, Tokenizer]:
    """A freshly initialised student ``name`` and its tokenizer (default: the offline
    MiniLM WordPiece, truncated to the model's context length)."""
    spec = get_model_spec(name)
    tokenizer = tokenizer or get_tokenizer(context_length=spec.context_length)
    if tokenizer.context_length != spec.context_length:
        tokenizer = Tokenizer.from_str(tokenizer.to_str(), spec.context_length)
    if seed is not None:
        torch.manual_seed(seed)
    return student_class(spec.tower).create(spec, tokenizer), tokenizer


__all__ = [
    "FAMILIES", "MAX_LOGIT_SCALE", "MODEL_SPECS", "STUDENT_PREFIX", "ClipStudent",
    "DamagedCheckpointError", "ModelSpec", "Student", "TowerSpec", "TowerStudent",
    "clip_config", "create_model", "export_hf", "first_line", "get_model_spec", "is_exported",
    "list_models", "load", "load_checkpoint_file", "load_export", "load_weights",
    "model_from_checkpoint", "student_class", "student_record",
]  # fmt: skip
