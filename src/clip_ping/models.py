"""Student CLIP models on ``transformers``' CLIP classes: size registry, export and loading.

A student is a plain :class:`transformers.CLIPModel` inside :class:`ClipStudent`, which adds
open_clip's interface (``encode_image``, ``encode_text``, ``forward -> features + scale``).
Because the weights *are* a CLIPModel, a finished run exports a directory that
``CLIPModel.from_pretrained`` loads with no code of ours.

Sizes (exact widths, depths and parameter counts in docs/models.md):

- ``vit-ti-16``, ``vit-xs-16``, ``vit-s-16``: 224 px, patch 16 — GPU recipes.
- ``cpu-micro-32``, ``cpu-mini-32``, ``cpu-small-64``: 32-64 px, patch 8 — laptops and tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .data.transforms import CLIP_MEAN, CLIP_STD, EvalTransform
from .io import atomic_directory, os_error
from .tokenizer import Tokenizer, get_tokenizer

MAX_LOGIT_SCALE = 100.0  # CLIP clamps exp(theta) at 100 so the softmax cannot collapse


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a student: a ViT image tower and a causal text transformer."""

    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    text_width: int
    text_layers: int
    text_heads: int
    embed_dim: int
    context_length: int = 77
    mlp_ratio: int = 4


MODEL_SPECS: dict[str, ModelSpec] = {
    # 224 px students for GPUs. vit-s-16 follows open_clip's ViT-S-16 towers; vit-ti-16 uses
    # DeiT-Tiny's image tower; vit-xs-16 is our own definition between the two (the
    # CLIP-PING paper does not publish its ViT-XS).
    "vit-ti-16": ModelSpec(224, 16, 192, 12, 3, 256, 6, 4, 256),
    "vit-xs-16": ModelSpec(224, 16, 256, 12, 4, 256, 8, 4, 256),
    "vit-s-16": ModelSpec(224, 16, 384, 12, 6, 384, 12, 6, 384),
    # CPU students for 32-64 px inputs (the demo corpus and the test suite).
    "cpu-micro-32": ModelSpec(32, 8, 64, 2, 2, 64, 2, 2, 64, context_length=16),
    "cpu-mini-32": ModelSpec(32, 8, 192, 6, 3, 128, 4, 2, 128, context_length=32),
    "cpu-small-64": ModelSpec(64, 8, 128, 4, 2, 128, 4, 2, 128, context_length=32),
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model` and ``--model``."""
    return sorted(MODEL_SPECS)


def get_model_spec(name: str) -> ModelSpec:
    if name not in MODEL_SPECS:
        raise ValueError(f"unknown model '{name}'; choose one of {', '.join(list_models())}")
    return MODEL_SPECS[name]


def clip_config(spec: ModelSpec, tokenizer: Tokenizer):
    """The ``transformers.CLIPConfig`` of ``spec`` for ``tokenizer``'s vocabulary."""
    from transformers import CLIPConfig

    text = dict(
        vocab_size=tokenizer.vocab_size,
        hidden_size=spec.text_width,
        intermediate_size=spec.text_width * spec.mlp_ratio,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        max_position_embeddings=spec.context_length,
        # The text tower pools at the first eos token: our tokenizers end captions with [SEP].
        pad_token_id=tokenizer.pad_id,
        bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id,
    )
    vision = dict(
        hidden_size=spec.vision_width,
        intermediate_size=spec.vision_width * spec.mlp_ratio,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=spec.embed_dim)


class ClipStudent(nn.Module):
    """open_clip-style wrapper around a ``transformers.CLIPModel``.

    Args:
        clip: the CLIPModel holding every weight (exported as is). Its QuickGELU activations
            are swapped in place for the fused form of :mod:`clip_ping.towers`.
        pad_id: padding token id, masked out of text attention.

    ``encode_image``/``encode_text`` run the last block of each tower for the pooled token
    only (:mod:`clip_ping.towers`; ``pooled_only = False``: transformers' own path). Both
    give the embeddings of ``CLIPModel.get_image_features``/``get_text_features``.

    Examples:
        >>> model, tokenizer = create_model("cpu-micro-32")
        >>> model.encode_text(tokenizer(["a red circle"]), normalize=True).shape
        torch.Size([1, 64])
    """

    def __init__(self, clip, pad_id: int):
        from .towers import fuse_activations, pooled_path_supported

        super().__init__()
        self.clip = fuse_activations(clip)
        self.pad_id = pad_id
        self.pooled_only = pooled_path_supported()

    @property
    def image_size(self) -> int:
        return self.clip.config.vision_config.image_size

    @property
    def embed_dim(self) -> int:
        return self.clip.config.projection_dim

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """``(B, 3, H, W)`` pixels → ``(B, embed_dim)`` embeddings."""
        if self.pooled_only:
            from .towers import image_features

            features = image_features(self.clip, images)
        else:
            features = self.clip.get_image_features(pixel_values=images).pooler_output
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """``(B, L)`` token ids → ``(B, embed_dim)`` embeddings."""
        if self.pooled_only:
            from .towers import text_features

            features = text_features(self.clip, tokens, self.pad_id)
        else:
            mask = (tokens != self.pad_id).long()
            features = self.clip.get_text_features(input_ids=tokens, attention_mask=mask)
            features = features.pooler_output
        return F.normalize(features, dim=-1) if normalize else features

    def logit_scale(self) -> torch.Tensor:
        """exp(theta), at most :data:`MAX_LOGIT_SCALE`."""
        return self.clip.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "image_features": self.encode_image(images, normalize=True),
            "text_features": self.encode_text(texts, normalize=True),
            "logit_scale": self.logit_scale(),
        }

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Keep theta in [0, ln 100] after each optimiser step, as CLIP does."""
        self.clip.logit_scale.clamp_(0.0, float(torch.log(torch.tensor(MAX_LOGIT_SCALE))))


def create_model(
    name: str, tokenizer: Tokenizer | None = None, seed: int | None = None
) -> tuple[ClipStudent, Tokenizer]:
    """A freshly initialised student ``name`` and its tokenizer (default: the offline
    MiniLM WordPiece, truncated to the model's context length)."""
    from transformers import CLIPModel

    spec = get_model_spec(name)
    tokenizer = tokenizer or get_tokenizer(context_length=spec.context_length)
    if tokenizer.context_length != spec.context_length:
        tokenizer = Tokenizer.from_str(tokenizer.to_str(), spec.context_length)
    if seed is not None:
        torch.manual_seed(seed)
    return ClipStudent(CLIPModel(clip_config(spec, tokenizer)), tokenizer.pad_id), tokenizer


# --------------------------------------------------------------------------------------
# Export and loading
# --------------------------------------------------------------------------------------


def export_hf(model: ClipStudent, tokenizer: Tokenizer, out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir`` as a transformers CLIP directory: weights (safetensors), config,
    ``CLIPImageProcessor`` and tokenizer. Written beside and swapped in whole, so a
    reader never sees half an export."""
    from transformers import CLIPImageProcessor

    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as staging:
        model.clip.save_pretrained(str(staging))
        size = model.image_size
        CLIPImageProcessor(
            size={"shortest_edge": size},
            crop_size={"height": size, "width": size},
            image_mean=list(CLIP_MEAN),
            image_std=list(CLIP_STD),
        ).save_pretrained(str(staging))
        tokenizer.save_pretrained(staging)
    return out_dir


def _load_hf_dir(path: Path) -> tuple[ClipStudent, Tokenizer]:
    from transformers import CLIPModel

    clip = CLIPModel.from_pretrained(str(path))
    context_length = clip.config.text_config.max_position_embeddings
    tokenizer = get_tokenizer(str(path), context_length=context_length)
    return ClipStudent(clip, tokenizer.pad_id), tokenizer


def student_record(model: ClipStudent, tokenizer: Tokenizer) -> dict:
    """What rebuilds ``model`` with no registry of ours: its transformers config and its
    tokenizer (the context length is the text tower's ``max_position_embeddings``)."""
    return {"clip_config": model.clip.config.to_dict(), "tokenizer": tokenizer.to_str()}


class DamagedCheckpointError(ValueError):
    """A checkpoint file read whole that is no usable clip-ping checkpoint (cut short,
    altered, or written by something else): reading it again will not help."""


STUDENT_PREFIX = "model."  # the student's keys in a checkpoint's TrainingTask state


def model_from_checkpoint(
    state: dict, source: str = "the checkpoint"
) -> tuple[ClipStudent, Tokenizer]:
    """Rebuild the student stored in a training checkpoint dict (see ``checkpoint.py``;
    checkpoints of format 1, with ``model``/``clip_config`` keys, load too). A dict that
    does not describe a student is :class:`DamagedCheckpointError`, naming ``source``."""
    from transformers import CLIPConfig, CLIPModel

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
    if not (
        isinstance(record.get("clip_config"), dict) and isinstance(record.get("tokenizer"), str)
    ):
        raise DamagedCheckpointError(
            f"{source}: the student's record lacks its clip_config or tokenizer; it was altered"
        )
    try:
        config = CLIPConfig.from_dict(record["clip_config"])
        context_length = config.text_config.max_position_embeddings
        tokenizer = Tokenizer.from_str(record["tokenizer"], context_length)
        model = ClipStudent(CLIPModel(config), tokenizer.pad_id)
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
            exc, f"could not read checkpoint {path} ({exc.strerror or exc}); the file may be "
            "intact: fix the cause (its permissions, the storage) and try again",
        ) from exc  # fmt: skip
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
    """``model, preprocess, tokenizer = load(path)``.

    ``path`` is a run directory (``logs/<name>``: its ``hf/`` export, else its latest
    checkpoint), a checkpoint ``.pt`` file, or a transformers CLIP directory.
    ``preprocess(PIL.Image) -> (3, H, W)`` tensor; ``tokenizer(list[str]) -> (B, L)``.
    """
    path = Path(path)
    if path.is_dir() and (path / "hf" / "config.json").is_file():
        model, tokenizer = _load_hf_dir(path / "hf")
    elif path.is_dir() and (path / "config.json").is_file():
        model, tokenizer = _load_hf_dir(path)
    elif path.is_dir() and (path / "checkpoints" / "latest.pt").is_file():
        latest = path / "checkpoints" / "latest.pt"
        model, tokenizer = model_from_checkpoint(load_checkpoint_file(latest), str(latest))
    elif path.is_file():
        model, tokenizer = model_from_checkpoint(load_checkpoint_file(path), str(path))
    else:
        raise FileNotFoundError(
            f"cannot load a model from {path}: expected a run directory (with hf/ or "
            "checkpoints/latest.pt), a checkpoint .pt file, or a transformers CLIP directory"
        )
    model = model.to(device).eval()
    return model, EvalTransform(model.image_size), tokenizer
