"""What every student offers, whatever its image tower: open_clip's interface.

A student has an image tower and a text tower, each followed by a linear projection into
the shared ``embed_dim``-d space, and a learnable logit scale ``exp(theta)``. Subclasses say
how their towers embed (``image_features``, ``text_features``), where theta lives, how they
are written to disk (``record``, ``export``) and read back (``from_record``, ``from_export``),
and what the model card says of them. Each subclass is one kind of image tower, registered
under its ``tower`` name in :mod:`.registry`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..tokenizer import Tokenizer

MAX_LOGIT_SCALE = 100.0  # CLIP clamps exp(theta) at 100 so the softmax cannot collapse
INITIAL_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's initial theta (temperature 0.07)


def text_tower_config(spec, tokenizer: Tokenizer) -> dict:
    """``transformers.CLIPTextConfig`` arguments of every student's text tower: a causal
    transformer of ``spec.text_width / text_layers / text_heads`` over ``context_length``
    tokens of ``tokenizer``'s vocabulary."""
    return dict(
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


class Student(nn.Module):
    """Base of the students: ``encode_image``, ``encode_text``, ``forward``, logit scale.

    A subclass is one kind of image tower. Its class attributes say what is specific to
    it: ``tower`` (its kind, recorded in checkpoints and exports, the key of
    :data:`~clip_ping.models.registry.TOWERS`), ``record_keys`` (the configs its checkpoint
    record holds besides ``tower`` and ``tokenizer``), ``export_marker`` (the file at the top
    of its export folder) and ``export_layout`` (that layout in words, for errors), and
    ``pipeline_tag`` (the Hugging Face pipeline that loads its export, if any). Instances set
    ``pad_id`` (masked out of text attention).
    """

    tower: ClassVar[str]
    record_keys: ClassVar[tuple[str, ...]]
    export_marker: ClassVar[str]
    export_layout: ClassVar[str]
    pipeline_tag: ClassVar[str | None] = None
    #: whether training feeds the model its teachers' bank rows instead of pixels and
    #: tokens (then it has ``forward_features(image_rows, text_rows)``)
    trains_on_bank_features: ClassVar[bool] = False
    #: how the model card titles the code that loads the export without clip-ping
    plain_code_title: ClassVar[str] = "With `transformers` alone"
    pad_id: int

    # -- what a subclass provides -----------------------------------------------------------

    @classmethod
    def create(cls, spec, tokenizer: Tokenizer) -> Student:
        """A freshly initialised student of ``spec`` for ``tokenizer``'s vocabulary."""
        raise NotImplementedError

    @property
    def image_size(self) -> int:
        raise NotImplementedError

    @property
    def embed_dim(self) -> int:
        raise NotImplementedError

    def preprocess(self):
        """``preprocess(PIL.Image) -> (3, H, W)`` tensor, as inference wants it."""
        from ..data.transforms import EvalTransform

        return EvalTransform(self.image_size)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` → ``(B, embed_dim)`` projected, not normalised."""
        raise NotImplementedError

    def text_features(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` token ids and attention mask → ``(B, embed_dim)``, not normalised."""
        raise NotImplementedError

    def log_logit_scale(self) -> nn.Parameter:
        """theta, the parameter whose exponential is the logit scale."""
        raise NotImplementedError

    def describe(self) -> str:
        """The towers in words, for the model card."""
        raise NotImplementedError

    def card_sentence(self, name: str, objective: str) -> str:
        """The model card's first sentence: what ``name`` is and how it was trained."""
        parameters = sum(p.numel() for p in self.parameters())
        return (
            f"A lightweight CLIP model (`{name}`: {parameters / 1e6:.2f} M parameters, "
            f"{self.describe()}), trained from scratch with {objective}."
        )

    def card_tags(self) -> list[str]:
        """The model card's tags of this kind of student (besides clip-ping's own)."""
        return [self.tower]

    def record(self) -> dict:
        """``tower`` and the configs (``record_keys``) that rebuild this student (stored in
        checkpoints)."""
        raise NotImplementedError

    @classmethod
    def record_text_config(cls, record: dict) -> dict:
        """The text tower's config (a dict) in a checkpoint ``record`` of this kind."""
        raise NotImplementedError

    @classmethod
    def from_record(cls, record: dict, tokenizer: Tokenizer) -> Student:
        raise NotImplementedError

    def export(self, out_dir: Path, tokenizer: Tokenizer) -> None:
        """Write weights, configs, the image processor and ``tokenizer`` to the empty
        folder ``out_dir``."""
        raise NotImplementedError

    @classmethod
    def export_tower(cls, hf_dir: Path) -> str:
        """The tower kind of the export ``hf_dir``, which holds ``export_marker``."""
        return cls.tower

    @classmethod
    def from_export(cls, hf_dir: Path) -> tuple[Student, Tokenizer]:
        raise NotImplementedError

    @staticmethod
    def transformers_code(hf_dir: str) -> list[str]:
        """Python lines that embed ``pil_image`` and a caption from ``hf_dir`` with
        transformers alone, into ``image`` and ``text`` (the model card runs them)."""
        raise NotImplementedError

    # -- open_clip's interface --------------------------------------------------------------

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """``(B, 3, H, W)`` pixels → ``(B, embed_dim)`` embeddings."""
        features = self.image_features(images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """``(B, L)`` token ids → ``(B, embed_dim)`` embeddings."""
        features = self.text_features(tokens, (tokens != self.pad_id).long())
        return F.normalize(features, dim=-1) if normalize else features

    def logit_scale(self) -> torch.Tensor:
        """exp(theta), at most :data:`MAX_LOGIT_SCALE`."""
        return self.log_logit_scale().exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "image_features": self.encode_image(images, normalize=True),
            "text_features": self.encode_text(texts, normalize=True),
            "logit_scale": self.logit_scale(),
        }

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Keep theta in [0, ln 100] after each optimiser step, as CLIP does."""
        self.log_logit_scale().clamp_(0.0, math.log(MAX_LOGIT_SCALE))
