"""Students on disk: the ``hf/`` export, checkpoint records, and ``clip_ping.load``.

Two export layouts, one per kind of image tower (see ``vit.py`` and ``towers.py``):

- ViT: a ``transformers.CLIPModel`` directory (``config.json`` at its top);
- other towers: ``dual_encoder.json`` beside ``vision/`` (AutoModel), ``text/``
  (CLIPTextModelWithProjection) and ``visual_projection.safetensors``.

Both carry the image processor and the tokenizer, and both load without clip-ping.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..data.transforms import EvalTransform
from ..tokenizer import Tokenizer
from .student import Student
from .towers import EXPORT_FILE, TowerStudent
from .vit import ClipStudent

STUDENT_PREFIX = "model."  # the student's keys in a checkpoint's TrainingTask state


def student_class(tower: str) -> type[Student]:
    return ClipStudent if tower == "vit" else TowerStudent


def export_hf(model: Student, tokenizer: Tokenizer, out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir`` as the student's transformers export (weights as safetensors,
    configs, image processor, tokenizer). Written beside and swapped in whole, so a reader
    never sees half an export."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        model.export(staging, tokenizer)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def export_kind(hf_dir: str | os.PathLike) -> type[Student] | None:
    """The student class whose export ``hf_dir`` holds, or None if it holds none."""
    hf_dir = Path(hf_dir)
    if (hf_dir / EXPORT_FILE).is_file():
        return TowerStudent
    if (hf_dir / "config.json").is_file():
        return ClipStudent
    return None


def is_exported(run_dir: str | os.PathLike) -> bool:
    """Whether the run folder ``run_dir`` holds a finished export (``hf/``)."""
    return export_kind(Path(run_dir) / "hf") is not None


def load_export(hf_dir: str | os.PathLike) -> tuple[Student, Tokenizer]:
    """The student and tokenizer of an export folder (either layout)."""
    kind = export_kind(hf_dir)
    if kind is None:
        raise FileNotFoundError(
            f"{hf_dir} holds no clip-ping export: expected config.json (a CLIPModel) or "
            f"{EXPORT_FILE} (another image tower)"
        )
    return kind.from_export(Path(hf_dir))


def student_record(model: Student, tokenizer: Tokenizer) -> dict:
    """What rebuilds ``model`` with no registry of ours: its tower kind, its transformers
    configs and its tokenizer (the context length is the text tower's
    ``max_position_embeddings``)."""
    return {**model.record(), "tokenizer": tokenizer.to_str()}


def model_from_checkpoint(state: dict) -> tuple[Student, Tokenizer]:
    """Rebuild the student stored in a training checkpoint dict (see ``checkpoint.py``).
    Checkpoints from before other towers existed (no ``tower``: a ViT) and of format 1
    (``model``/``clip_config`` keys) load too."""
    if "student" in state:
        record = state["student"]
        weights = {
            key[len(STUDENT_PREFIX) :]: value
            for key, value in state["task"].items()
            if key.startswith(STUDENT_PREFIX)
        }
    else:  # format 1
        record, weights = state, state["model"]
    tower = record.get("tower", "vit")
    text_config = record["clip_config"]["text_config"] if tower == "vit" else record["text_config"]
    tokenizer = Tokenizer.from_str(record["tokenizer"], text_config["max_position_embeddings"])
    model = student_class(tower).from_record(record, tokenizer)
    model.load_state_dict(weights)
    return model, tokenizer


def load_checkpoint_file(path: str | os.PathLike) -> dict:
    """``torch.load`` with ``weights_only=True``: a crafted pickle cannot run code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"could not load checkpoint {path}: {exc}. Only checkpoints written by clip-ping "
            "(plain tensors and containers) are accepted."
        ) from exc


def load(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """``model, preprocess, tokenizer = load(path)``, for every kind of student.

    ``path`` is a run directory (``logs/<name>``: its ``hf/`` export, else its latest
    checkpoint), a checkpoint ``.pt`` file, or an export folder (``hf/``).
    ``preprocess(PIL.Image) -> (3, H, W)`` tensor; ``tokenizer(list[str]) -> (B, L)``.
    """
    path = Path(path)
    if path.is_dir() and is_exported(path):
        model, tokenizer = load_export(path / "hf")
    elif path.is_dir() and export_kind(path):
        model, tokenizer = load_export(path)
    elif path.is_dir() and (path / "checkpoints" / "latest.pt").is_file():
        model, tokenizer = model_from_checkpoint(
            load_checkpoint_file(path / "checkpoints" / "latest.pt")
        )
    elif path.is_file():
        model, tokenizer = model_from_checkpoint(load_checkpoint_file(path))
    else:
        raise FileNotFoundError(
            f"cannot load a model from {path}: expected a run directory (with hf/ or "
            "checkpoints/latest.pt), a checkpoint .pt file, or an exported hf/ folder"
        )
    model = model.to(device).eval()
    return model, EvalTransform(model.image_size), tokenizer
