"""Students on disk: the ``hf/`` export, checkpoint records, and ``clip_ping.load``.

Each kind of image tower writes and reads its own layout (its class in
:data:`~clip_ping.models.registry.TOWERS`); today there are two:

- ViT: a ``transformers.CLIPModel`` directory (``config.json`` at its top);
- transformers backbones: ``dual_encoder.json`` beside ``vision/`` (AutoModel), ``text/``
  (CLIPTextModelWithProjection) and ``visual_projection.safetensors``.

Both carry the image processor and the tokenizer, and both load without clip-ping. The
code here asks the registry which class a checkpoint record or an export folder belongs to.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from ..io import atomic_directory, how_to_fix_write, os_error
from ..tokenizer import Tokenizer
from .registry import export_class, export_layouts, holds_export, record_class, tower_class
from .student import Student

STUDENT_PREFIX = "model."  # the student's keys in a checkpoint's TrainingTask state
student_class = tower_class  # its earlier name


def export_hf(model: Student, tokenizer: Tokenizer, out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir`` as the student's transformers export (weights as safetensors,
    configs, image processor, tokenizer). Written beside and swapped in whole, so a reader
    never sees half an export."""
    out_dir = Path(out_dir)
    try:
        with atomic_directory(out_dir) as staging:
            model.export(staging, tokenizer)
    except Exception as exc:  # disk full: an OSError, or safetensors' error with its code
        cause = _write_error(exc)
        if cause is None:
            raise
        fix = how_to_fix_write(cause, out_dir.parent)
        raise os_error(
            cause,
            f"could not write the export {out_dir} ({cause.strerror or cause}); nothing of it "
            f"is kept. {fix[:1].upper()}{fix[1:]}, then write it again (a "
            "finished run: rerun its clip-ping train command with --resume latest)",
        ) from exc
    return out_dir


def _write_error(exc: Exception) -> OSError | None:
    """The ``OSError`` behind a failed write: ``exc`` itself, or the OS error code that
    safetensors (Rust) puts only in its message (``(os error 28)``)."""
    if isinstance(exc, OSError):
        return exc
    found = re.search(r"\(os error (\d+)\)|\bOs \{ code: (\d+)", str(exc))
    if type(exc).__name__ != "SafetensorError" or found is None:
        return None
    code = int(found.group(1) or found.group(2))
    return OSError(code, os.strerror(code))


def is_exported(run_dir: str | os.PathLike) -> bool:
    """Whether the run folder ``run_dir`` holds a finished export (``hf/``)."""
    return holds_export(Path(run_dir) / "hf")


def load_export(hf_dir: str | os.PathLike) -> tuple[Student, Tokenizer]:
    """The student and tokenizer of an export folder (any kind's layout)."""
    kind = export_class(hf_dir)
    if kind is None:
        raise FileNotFoundError(f"{hf_dir} holds no clip-ping export: expected {export_layouts()}")
    try:
        return kind.from_export(Path(hf_dir))
    except Exception as exc:  # safetensors' own error for a file cut short or altered
        if type(exc).__name__ != "SafetensorError":
            raise
        raise DamagedCheckpointError(
            f"the export {hf_dir} is damaged: a .safetensors file in it does not load "
            f"({first_line(exc)}); export it again (a finished run: rerun its clip-ping train "
            "command with --resume latest) or load the run's checkpoint instead"
        ) from exc


def student_record(model: Student, tokenizer: Tokenizer) -> dict:
    """What rebuilds ``model`` with no registry of ours: its tower kind, its transformers
    configs and its tokenizer (the context length is the text tower's
    ``max_position_embeddings``)."""
    return {**model.record(), "tokenizer": tokenizer.to_str()}


class DamagedCheckpointError(ValueError):
    """A checkpoint file read whole that is no usable clip-ping checkpoint (cut short,
    altered, or written by something else): reading it again will not help."""


def model_from_checkpoint(state: dict, source: str = "the checkpoint") -> tuple[Student, Tokenizer]:
    """Rebuild the student stored in a training checkpoint dict (see ``checkpoint.py``).
    Checkpoints from before other towers existed (no ``tower``: a ViT) and of format 1
    (``model``/``clip_config`` keys) load too. A dict that does not describe a student is
    :class:`DamagedCheckpointError`, naming ``source``."""
    if isinstance(state.get("student"), dict) and isinstance(state.get("task"), dict):
        record = state["student"]
        weights = {
            key[len(STUDENT_PREFIX) :]: value
            for key, value in state["task"].items()
            if isinstance(key, str) and key.startswith(STUDENT_PREFIX)
        }
    elif isinstance(state.get("model"), dict):  # format 1
        record, weights = state, state["model"]
    else:
        raise DamagedCheckpointError(
            f"{source} holds no student (keys {_some(state)}); it was not written by clip-ping "
            "training, or was altered"
        )
    try:
        kind = record_class(record)
    except ValueError as exc:
        raise DamagedCheckpointError(
            f"{source}: {exc}; it was written by a later clip-ping, or altered"
        ) from exc
    if not (
        all(isinstance(record.get(key), dict) for key in kind.record_keys)
        and isinstance(record.get("tokenizer"), str)
    ):
        raise DamagedCheckpointError(
            f"{source}: the student's record lacks its {', '.join(kind.record_keys)} or "
            "tokenizer; it was altered"
        )
    try:
        text = kind.record_text_config(record)
        tokenizer = Tokenizer.from_str(record["tokenizer"], text["max_position_embeddings"])
        model = kind.from_record(record, tokenizer)
    except Exception as exc:
        raise DamagedCheckpointError(
            f"{source}: the student's record does not build a model ({first_line(exc)}); "
            "it was altered"
        ) from exc
    load_weights(model, weights, source)
    return model, tokenizer


def load_weights(module: nn.Module, weights: dict, source: str) -> None:
    """``module.load_state_dict(weights)``; weights that do not fit (missing, extra, of
    another shape) are one :class:`DamagedCheckpointError` naming ``source``."""
    expected = module.state_dict()
    shape = lambda value: tuple(getattr(value, "shape", ())) or "scalar"  # noqa: E731
    wrong = [
        f"{key} {shape(value)} instead of {shape(expected[key])}"
        for key, value in weights.items()
        if key in expected
        and not (isinstance(value, torch.Tensor) and value.shape == expected[key].shape)
    ]
    found = {
        "missing": [key for key in expected if key not in weights],
        "unexpected": [str(key)[:80] for key in weights if key not in expected],
        "of another shape": wrong,
    }
    problems = [
        f"{len(keys)} {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
        for what, keys in found.items()
        if keys
    ]
    if problems:
        raise DamagedCheckpointError(
            f"{source} does not fit the model it describes: tensors {'; '.join(problems)}. "
            "It is damaged or was altered: use another checkpoint, or start a new run"
        )
    module.load_state_dict(weights)


READ_CHUNK_BYTES = 16 << 20


def load_checkpoint_file(path: str | os.PathLike) -> dict:
    """``torch.load`` with ``weights_only=True``: a crafted pickle cannot run code.

    The file is read through once first, so that a failure to read it (permissions, an I/O
    error) is raised as that ``OSError``, naming the file, and is never taken for damage:
    the file may be intact. Only a file read whole that does not load as a clip-ping
    checkpoint dict is :class:`DamagedCheckpointError`.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            while f.read(READ_CHUNK_BYTES):
                pass
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise os_error(
            exc,
            f"could not read checkpoint {path} ({exc.strerror or exc}); the file may be "
            "intact: fix the cause (its permissions, the storage) and try again",
        ) from exc
    except MemoryError as exc:
        raise MemoryError(f"not enough memory to load checkpoint {path}") from exc
    except Exception as exc:  # the zip reader, the unpickler, weights_only's refusal
        raise DamagedCheckpointError(
            f"could not load checkpoint {path}: {first_line(exc)}. It is cut short or "
            "altered, or was not written by clip-ping: only clip-ping checkpoints (plain "
            "tensors and containers) are accepted"
        ) from exc
    if not isinstance(state, dict):
        raise DamagedCheckpointError(
            f"could not load checkpoint {path}: it holds a {type(state).__name__}, not the "
            "dict clip-ping writes"
        )
    return state


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of ``exc``'s message, cut at ``limit`` (for one-line errors)."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return line if len(line) <= limit else line[:limit] + "..."


def _some(state: dict, limit: int = 6) -> str:
    keys = [str(key)[:40] for key in list(state)[:limit]]
    return ", ".join(keys) + (", ..." if len(state) > limit else "") if keys else "none"


def load(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """``model, preprocess, tokenizer = load(path)``, for every kind of student.

    ``path`` is a run directory (``logs/<name>``: its ``hf/`` export, else its latest
    checkpoint), a checkpoint ``.pt`` file, or an export folder (``hf/``).
    ``preprocess(PIL.Image) -> (3, H, W)`` tensor; ``tokenizer(list[str]) -> (B, L)``.
    """
    path = Path(path)
    if path.is_dir() and is_exported(path):
        model, tokenizer = load_export(path / "hf")
    elif path.is_dir() and holds_export(path):
        model, tokenizer = load_export(path)
    elif path.is_dir() and (path / "checkpoints" / "latest.pt").is_file():
        latest = path / "checkpoints" / "latest.pt"
        model, tokenizer = model_from_checkpoint(load_checkpoint_file(latest), str(latest))
    elif path.is_file():
        model, tokenizer = model_from_checkpoint(load_checkpoint_file(path), str(path))
    else:
        raise FileNotFoundError(
            f"cannot load a model from {path}: expected a run directory (with hf/ or "
            "checkpoints/latest.pt), a checkpoint .pt file, or an exported hf/ folder"
        )
    model = model.to(device).eval()
    return model, model.preprocess(), tokenizer
