"""ViT students: a plain ``transformers.CLIPModel`` holds every weight.

Because the weights *are* a CLIPModel, the export is a directory that
``CLIPModel.from_pretrained`` (and the zero-shot pipeline) loads with no code of ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.transforms import CLIP_MEAN, CLIP_STD
from ..tokenizer import Tokenizer, get_tokenizer
from .student import Student, text_tower_config


@dataclass(frozen=True, kw_only=True)
class ViTSpec:
    """Shape of a ViT student: a ViT image tower and a causal text transformer.

    Examples:
        >>> from clip_ping.models import ViTSpec
        >>> spec = ViTSpec(image_size=32, patch_size=8, vision_width=64, vision_layers=2,
        ...     vision_heads=2, text_width=64, text_layers=2, text_heads=2, embed_dim=64)
        >>> spec.tower, spec.context_length
        ('vit', 77)
    """

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
    tower: str = field(default="vit", init=False)  # ClipStudent.tower


ModelSpec = ViTSpec  # its earlier name


def clip_config(spec: ViTSpec, tokenizer: Tokenizer):
    """The ``transformers.CLIPConfig`` of ``spec`` for ``tokenizer``'s vocabulary."""
    from transformers import CLIPConfig

    vision = dict(
        hidden_size=spec.vision_width,
        intermediate_size=spec.vision_width * spec.mlp_ratio,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
    )
    return CLIPConfig(
        text_config=text_tower_config(spec, tokenizer),
        vision_config=vision,
        projection_dim=spec.embed_dim,
    )


def clip_image_processor(image_size: int):
    """CLIP's preprocessing at ``image_size``: what ``EvalTransform`` does, for transformers."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )


class ClipStudent(Student):
    """open_clip-style wrapper around a ``transformers.CLIPModel``.

    Args:
        clip: the CLIPModel holding every weight (exported as is). Its QuickGELU activations
            are swapped in place for the fused form of :mod:`.vit_fast`.
        pad_id: padding token id, masked out of text attention.

    ``image_features``/``text_features`` run the last block of each tower for the pooled
    token only (:mod:`.vit_fast`; ``pooled_only = False``: transformers' own path). Both give
    the embeddings of ``CLIPModel.get_image_features``/``get_text_features``.

    Examples:
        >>> from clip_ping.models import create_model
        >>> model, tokenizer = create_model("cpu-micro-32")
        >>> model.encode_text(tokenizer(["a red circle"]), normalize=True).shape
        torch.Size([1, 64])
    """

    tower = "vit"
    record_keys = ("clip_config",)
    export_marker = "config.json"
    export_layout = "config.json (a CLIPModel)"
    pipeline_tag = "zero-shot-image-classification"  # transformers' pipeline loads a CLIPModel

    def __init__(self, clip, pad_id: int):
        from .vit_fast import fuse_activations, pooled_path_supported

        super().__init__()
        self.clip = fuse_activations(clip)
        self.pad_id = pad_id
        self.pooled_only = pooled_path_supported()

    @classmethod
    def create(cls, spec: ViTSpec, tokenizer: Tokenizer) -> ClipStudent:
        from transformers import CLIPModel

        return cls(CLIPModel(clip_config(spec, tokenizer)), tokenizer.pad_id)

    @property
    def image_size(self) -> int:
        return self.clip.config.vision_config.image_size

    @property
    def embed_dim(self) -> int:
        return self.clip.config.projection_dim

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        if self.pooled_only:
            from .vit_fast import image_features

            return image_features(self.clip, images)
        return self.clip.get_image_features(pixel_values=images).pooler_output

    def text_features(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooled_only:
            from .vit_fast import text_features

            return text_features(self.clip, tokens, self.pad_id)
        return self.clip.get_text_features(input_ids=tokens, attention_mask=mask).pooler_output

    def log_logit_scale(self):
        return self.clip.logit_scale

    def describe(self) -> str:
        config = self.clip.config
        vision, text = config.vision_config, config.text_config
        return (
            f"ViT image tower of {vision.num_hidden_layers} layers × {vision.hidden_size} "
            f"(patch {vision.patch_size}) on {vision.image_size} px images, text transformer "
            f"of {text.num_hidden_layers} layers × {text.hidden_size} over "
            f"{text.max_position_embeddings} tokens, {config.projection_dim}-d joint embedding"
        )

    def record(self) -> dict:
        return {"tower": self.tower, "clip_config": self.clip.config.to_dict()}

    @classmethod
    def record_text_config(cls, record: dict) -> dict:
        return record["clip_config"]["text_config"]

    @classmethod
    def from_record(cls, record: dict, tokenizer: Tokenizer) -> ClipStudent:
        from transformers import CLIPConfig, CLIPModel

        return cls(CLIPModel(CLIPConfig.from_dict(record["clip_config"])), tokenizer.pad_id)

    def export(self, out_dir: Path, tokenizer: Tokenizer) -> None:
        self.clip.save_pretrained(str(out_dir))
        clip_image_processor(self.image_size).save_pretrained(str(out_dir))
        tokenizer.save_pretrained(out_dir)

    @classmethod
    def from_export(cls, hf_dir: Path) -> tuple[ClipStudent, Tokenizer]:
        from transformers import CLIPModel

        clip = CLIPModel.from_pretrained(str(hf_dir))
        context_length = clip.config.text_config.max_position_embeddings
        tokenizer = get_tokenizer(str(hf_dir), context_length=context_length)
        return cls(clip, tokenizer.pad_id), tokenizer

    @staticmethod
    def transformers_code(hf_dir: str) -> list[str]:
        return [
            "from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel",
            "",
            f'model = CLIPModel.from_pretrained("{hf_dir}")',
            f'processor = CLIPImageProcessor.from_pretrained("{hf_dir}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{hf_dir}")',
            'pixels = processor(images=pil_image, return_tensors="pt").pixel_values',
            "tokens = tokenizer(",
            '    ["a photo of a cat"], padding="max_length", truncation=True, return_tensors="pt"',
            ")",
            "image = model.get_image_features(pixel_values=pixels).pooler_output",
            "text = model.get_text_features(**tokens).pooler_output",
        ]
