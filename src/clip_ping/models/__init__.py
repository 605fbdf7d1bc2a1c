"""The students: kinds of image tower, sizes, creation, export and loading.

Every student has open_clip's interface (``encode_image``, ``encode_text``,
``forward -> features + scale``; :class:`~clip_ping.models.student.Student`) and the same
kind of text tower (a causal CLIP text transformer). The image tower is one of the kinds of
:data:`~clip_ping.models.registry.TOWERS`:

- ``vit`` (``vit.py``): the student is a ``transformers.CLIPModel``;
- a transformers vision backbone (``towers.py``), pooled and projected: ``convnext``
  (``convnext.py``, convolutional) or ``mobilevit`` (``mobilevit.py``, hybrid);
- ``locked`` (``locked.py``): the frozen teachers themselves with trained heads, the ceiling
  a student is measured against.

The named sizes are :data:`~clip_ping.models.registry.MODEL_SPECS` (``list_models()``);
docs/extending.md adds a kind of tower.
"""

from __future__ import annotations

from .convnext import ConvNextStudent
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
from .locked import LockedSpec, LockedTeachers
from .mobilevit import MobileViTStudent
from .registry import (
    FAMILIES,
    MODEL_SPECS,
    TOWERS,
    create_model,
    get_model_spec,
    list_models,
    tower_class,
)
from .student import MAX_LOGIT_SCALE, Student
from .towers import TowerSpec, TowerStudent
from .vit import ClipStudent, ModelSpec, ViTSpec, clip_config

__all__ = [
    "FAMILIES",
    "MAX_LOGIT_SCALE",
    "MODEL_SPECS",
    "STUDENT_PREFIX",
    "TOWERS",
    "ClipStudent",
    "ConvNextStudent",
    "DamagedCheckpointError",
    "LockedSpec",
    "LockedTeachers",
    "MobileViTStudent",
    "ModelSpec",
    "Student",
    "TowerSpec",
    "TowerStudent",
    "ViTSpec",
    "clip_config",
    "create_model",
    "export_hf",
    "first_line",
    "get_model_spec",
    "is_exported",
    "list_models",
    "load",
    "load_checkpoint_file",
    "load_export",
    "load_weights",
    "model_from_checkpoint",
    "student_class",
    "student_record",
    "tower_class",
]
