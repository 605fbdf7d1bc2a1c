"""Students whose image tower is a transformers vision backbone: the shared part.

The image tower is a transformers vision backbone (``ConvNextModel`` in ``convnext.py``,
``MobileViTModel`` in ``mobilevit.py``); its pooled output, flattened, goes through a linear
projection (no bias) into the joint space. The text tower is the ViT students' causal CLIP
text transformer with its projection, a ``CLIPTextModelWithProjection``.

transformers has no class that pairs such an image tower with a text tower
(``VisionTextDualEncoderModel`` needs ``hidden_size`` on the vision config, which these
configs lack), so the export is three standard pieces side by side::

    hf/
      dual_encoder.json               which piece is where, the tower kind (EXPORT_FILE)
      vision/                         AutoModel + CLIPImageProcessor folder
      text/                           CLIPTextModelWithProjection + tokenizer folder
      visual_projection.safetensors   "visual_projection.weight" (embed_dim, pooled width),
                                      "logit_scale" (theta, as CLIPModel names it)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from ..tokenizer import Tokenizer, get_tokenizer
from .student import INITIAL_LOGIT_SCALE, Student, text_tower_config
from .vit import clip_image_processor

EXPORT_FORMAT = "clip-ping-dual-encoder/1"
EXPORT_FILE = "dual_encoder.json"
VISION_DIR, TEXT_DIR = "vision", "text"
PROJECTION_FILE = "visual_projection.safetensors"


def joined(values) -> str:
    """``[2, 2, 6]`` → ``"2-2-6"`` (widths and depths in the towers' descriptions)."""
    return "-".join(str(v) for v in values)


@dataclass(frozen=True, kw_only=True)
class TowerSpec:
    """Shape of a student whose image tower is a transformers vision backbone.

    ``tower`` is the backbone's transformers ``model_type``, a kind of
    :data:`~clip_ping.models.registry.TOWERS`; ``vision`` holds its config's arguments (e.g.
    ``ConvNextConfig``'s ``depths``); the text tower is given as in
    :class:`~clip_ping.models.vit.ViTSpec`.

    Examples:
        >>> from clip_ping.models import TowerSpec
        >>> spec = TowerSpec(tower="convnext", image_size=32, vision=dict(depths=[1, 1, 1, 1]))
        >>> spec.text_width, spec.context_length
        (128, 77)
    """

    tower: str
    image_size: int
    vision: dict = field(hash=False)
    text_width: int = 128
    text_layers: int = 4
    text_heads: int = 2
    embed_dim: int = 128
    context_length: int = 77
    mlp_ratio: int = 4


class TowerStudent(Student):
    """Image backbone + projection, CLIP text tower, logit scale (open_clip's interface).

    The base of one kind of student per backbone family (``convnext.py``,
    ``mobilevit.py``): a subclass sets ``tower`` (the backbone's transformers
    ``model_type``), ``title`` and ``design`` (the family in words), and says how wide the
    backbone's pooled output is (``pooled_width``), its shape in words (``shape``) and how a
    fresh backbone is initialised (``init_from_scratch``).

    Args:
        vision: a transformers vision backbone whose output has ``pooler_output``.
        text: a ``CLIPTextModelWithProjection``; its ``projection_dim`` is ``embed_dim``.
        pad_id: padding token id, masked out of text attention.

    Examples:
        >>> import torch
        >>> from clip_ping.models import create_model
        >>> model, tokenizer = create_model("cpu-convnext-micro-32")
        >>> model.encode_image(torch.randn(2, 3, 32, 32), normalize=True).shape
        torch.Size([2, 64])
    """

    record_keys = ("vision_config", "text_config")
    export_marker = EXPORT_FILE
    export_layout = f"{EXPORT_FILE} (another image tower)"
    title: ClassVar[str]  # the family's name, e.g. "ConvNeXt"
    design: ClassVar[str]  # its kind of network in words, e.g. "convolutional"

    @staticmethod
    def pooled_width(config) -> int:
        """The width of the backbone's ``pooler_output`` under ``config``."""
        raise NotImplementedError

    @staticmethod
    def shape(config) -> str:
        """The backbone's widths and depths under ``config``, in words."""
        raise NotImplementedError

    @staticmethod
    def init_from_scratch(vision: nn.Module) -> None:
        """Set a fresh backbone's weights, in place. By default transformers' own
        initialisation stays: it is the reference one of most families."""

    def __init__(self, vision, text, pad_id: int):
        super().__init__()
        if vision.config.model_type != self.tower:
            raise ValueError(
                f"{type(self).__name__} takes a {self.tower} backbone, not a "
                f"{vision.config.model_type} one"
            )
        self.vision = vision
        self.text = text
        self.pad_id = pad_id
        width = self.pooled_width(vision.config)
        self.visual_projection = nn.Linear(width, text.config.projection_dim, bias=False)
        nn.init.normal_(self.visual_projection.weight, std=width**-0.5)  # as CLIPModel's
        self.log_scale = nn.Parameter(torch.tensor(INITIAL_LOGIT_SCALE))

    @classmethod
    def create(cls, spec: TowerSpec, tokenizer: Tokenizer) -> TowerStudent:
        from transformers import CONFIG_MAPPING, AutoModel

        config = CONFIG_MAPPING[cls.tower](**spec.vision, image_size=spec.image_size)
        vision = AutoModel.from_config(config)
        cls.init_from_scratch(vision)
        return cls(vision, _text_tower(spec, tokenizer), tokenizer.pad_id)

    @property
    def image_size(self) -> int:
        return self.vision.config.image_size

    @property
    def embed_dim(self) -> int:
        return self.text.config.projection_dim

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.vision(pixel_values=images).pooler_output.flatten(1)
        return self.visual_projection(pooled)

    def text_features(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.text(input_ids=tokens, attention_mask=mask).text_embeds

    def log_logit_scale(self) -> nn.Parameter:
        return self.log_scale

    def describe(self) -> str:
        text = self.text.config
        return (
            f"{self.title} image tower ({self.design}; {self.shape(self.vision.config)}) on "
            f"{self.image_size} px images, text transformer of {text.num_hidden_layers} layers "
            f"× {text.hidden_size} over {text.max_position_embeddings} tokens, "
            f"{self.embed_dim}-d joint embedding"
        )

    def record(self) -> dict:
        return {
            "tower": self.tower,
            "vision_config": self.vision.config.to_dict(),
            "text_config": self.text.config.to_dict(),
        }

    @classmethod
    def record_text_config(cls, record: dict) -> dict:
        return record["text_config"]

    @classmethod
    def from_record(cls, record: dict, tokenizer: Tokenizer) -> TowerStudent:
        from transformers import CONFIG_MAPPING, AutoModel, CLIPTextConfig
        from transformers import CLIPTextModelWithProjection as TextTower

        vision = CONFIG_MAPPING[cls.tower].from_dict(record["vision_config"])
        text = TextTower(CLIPTextConfig.from_dict(record["text_config"]))
        return cls(AutoModel.from_config(vision), text, tokenizer.pad_id)

    def export(self, out_dir: Path, tokenizer: Tokenizer) -> None:
        from safetensors.torch import save_file

        self.vision.save_pretrained(str(out_dir / VISION_DIR))
        clip_image_processor(self.image_size).save_pretrained(str(out_dir / VISION_DIR))
        self.text.save_pretrained(str(out_dir / TEXT_DIR))
        tokenizer.save_pretrained(out_dir / TEXT_DIR)
        weights = {
            "visual_projection.weight": self.visual_projection.weight.detach().cpu().contiguous(),
            "logit_scale": self.log_scale.detach().cpu().clone(),
        }
        save_file(weights, str(out_dir / PROJECTION_FILE), metadata={"format": "pt"})
        manifest = {
            "format": EXPORT_FORMAT,
            "tower": self.tower,
            "image_tower": VISION_DIR,
            "text_tower": TEXT_DIR,
            "projection": PROJECTION_FILE,
            "embed_dim": self.embed_dim,
            "image_size": self.image_size,
        }
        (out_dir / EXPORT_FILE).write_text(json.dumps(manifest, indent=2) + "\n")

    @classmethod
    def export_tower(cls, hf_dir: Path) -> str:
        return str(_manifest(hf_dir).get("tower"))

    @classmethod
    def from_export(cls, hf_dir: Path) -> tuple[TowerStudent, Tokenizer]:
        from safetensors.torch import load_file
        from transformers import AutoModel
        from transformers import CLIPTextModelWithProjection as TextTower

        manifest = _manifest(hf_dir)
        if manifest.get("format") != EXPORT_FORMAT:
            raise ValueError(
                f"{hf_dir / EXPORT_FILE} has format {manifest.get('format')!r}, this clip-ping "
                f"reads {EXPORT_FORMAT!r}; load it with the clip-ping version that exported it"
            )
        text = TextTower.from_pretrained(str(hf_dir / TEXT_DIR))
        tokenizer = get_tokenizer(
            str(hf_dir / TEXT_DIR), context_length=text.config.max_position_embeddings
        )
        model = cls(AutoModel.from_pretrained(str(hf_dir / VISION_DIR)), text, tokenizer.pad_id)
        weights = load_file(str(hf_dir / PROJECTION_FILE))
        with torch.no_grad():
            model.visual_projection.weight.copy_(weights["visual_projection.weight"])
            model.log_scale.copy_(weights["logit_scale"])
        return model, tokenizer

    @staticmethod
    def transformers_code(hf_dir: str) -> list[str]:
        return [
            "from safetensors.torch import load_file",
            "from transformers import AutoModel, AutoTokenizer, CLIPImageProcessor",
            "from transformers import CLIPTextModelWithProjection",
            "",
            f'vision = AutoModel.from_pretrained("{hf_dir}/{VISION_DIR}")',
            f'processor = CLIPImageProcessor.from_pretrained("{hf_dir}/{VISION_DIR}")',
            f'text_tower = CLIPTextModelWithProjection.from_pretrained("{hf_dir}/{TEXT_DIR}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{hf_dir}/{TEXT_DIR}")',
            f'projection = load_file("{hf_dir}/{PROJECTION_FILE}")["visual_projection.weight"]',
            'pixels = processor(images=pil_image, return_tensors="pt").pixel_values',
            "tokens = tokenizer(",
            '    ["a photo of a cat"], padding="max_length", truncation=True, return_tensors="pt"',
            ")",
            "image = vision(pixel_values=pixels).pooler_output.flatten(1) @ projection.T",
            "text = text_tower(**tokens).text_embeds",
        ]


def _manifest(hf_dir: Path) -> dict:
    manifest = json.loads((hf_dir / EXPORT_FILE).read_text())
    if not isinstance(manifest, dict):
        raise ValueError(f"{hf_dir / EXPORT_FILE} holds no clip-ping export manifest")
    return manifest


def _text_tower(spec: TowerSpec, tokenizer: Tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(**text_tower_config(spec, tokenizer), projection_dim=spec.embed_dim)
    return CLIPTextModelWithProjection(config)
