"""The locked teachers: the frozen image and text teachers with trained projections.

The yardstick of every student: the teachers a student learns from, kept frozen ("locked",
as LiT locks its image tower; here both towers), with only a projection head per tower and
the logit scale trained by the CLIP loss on the same pairs. What such a model reaches is
the ceiling of any method that distils these teachers on this data; a student's fraction
of it says how much of what the teachers know the student took.

It trains on the feature banks: a batch reads the rows of its samples from
``--image-bank`` and ``--text-bank`` (the L2-normalised teacher features), so a step is two
small matrix products. No teacher runs during training, and there is no augmentation (the
bank holds one view per image). At inference the teachers run: ``encode_image`` embeds
pixels preprocessed as the image teacher wants (``preprocess()``), ``encode_text`` the
text teacher's own tokens; then each is normalised and projected, as in training.

The teachers are those of the banks (``efficientnet-lite0``, ``minilm``, ``hf:<model>``,
``sentence-transformers:<folder>``); their weights are not trained and not stored in
checkpoints (the record names them). The export carries them whole, each in its own
format, so it loads without clip-ping::

    hf/
      locked_teachers.json        the manifest (MANIFEST): teachers, head, files
      image_teacher/              efficientnet-lite0: model.safetensors + config.json;
                                  hf: a transformers folder with its image processor
      text_teacher/               a transformers folder with its tokenizer (mean pooling),
                                  or a sentence-transformers folder
      projections.safetensors     image_head.*, text_head.*, logit_scale

Examples:
    >>> from clip_ping.models.locked import LockedSpec
    >>> LockedSpec(head="mlp").head, LockedSpec().embed_dim
    ('mlp', 256)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..tokenizer import Tokenizer
from .locked_io import (
    MANIFEST,
    export_teachers,
    read_manifest,
    teachers_from_export,
    transformers_lines,
)
from .student import INITIAL_LOGIT_SCALE, Student

HEADS = ("linear", "mlp")
TEXT_TEACHER_KINDS = ("minilm", "hf", "sentence-transformers")
IMAGE_TEACHER_KINDS = ("efficientnet-lite0", "hf")


@dataclass(frozen=True, kw_only=True)
class LockedSpec:
    """The locked-teachers model: which teachers, and the trained heads.

    ``image_teacher`` / ``text_teacher``: teacher names (``clip-ping bank build --teacher``);
    training takes them from the banks. ``teacher_image_size``: the input side of
    ``efficientnet-lite0`` (the image bank's). ``head``: ``linear`` (a matrix) or ``mlp``
    (linear, GELU, linear; hidden width 2 × ``embed_dim``).
    """

    tower: str = "locked"
    image_teacher: str = "efficientnet-lite0"
    text_teacher: str = "minilm"
    teacher_image_size: int | None = None
    embed_dim: int = 256
    head: str = "linear"
    context_length: int = 256  # the text teacher's token limit (its tokenizer's, when known)

    def with_banks(self, image_bank, text_bank) -> LockedSpec:
        """This spec with the teachers of the opened banks (``clip_ping.bank.Bank``)."""
        return replace(
            self,
            image_teacher=image_bank.teacher,
            text_teacher=text_bank.teacher,
            teacher_image_size=image_bank.teacher_spec.image_size,
            context_length=text_bank.teacher_spec.max_tokens or self.context_length,
        )


def projection_head(kind: str, width: int, embed_dim: int) -> nn.Module:
    """A head from a teacher's ``width``-d features into the ``embed_dim``-d joint space."""
    if kind == "linear":
        head = nn.Linear(width, embed_dim, bias=False)
        nn.init.normal_(head.weight, std=width**-0.5)
        return head
    if kind == "mlp":
        hidden = 2 * embed_dim
        return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, embed_dim))
    raise ValueError(f"locked-teachers head {kind!r}: choose one of {', '.join(HEADS)}")


def check_teachers(image_teacher: str, text_teacher: str) -> None:
    """Refuse teachers that cannot run at inference inside the model, naming the fix."""
    image_kind, text_kind = image_teacher.partition(":")[0], text_teacher.partition(":")[0]
    if image_kind not in IMAGE_TEACHER_KINDS:
        raise ValueError(
            f"the locked-teachers model runs its image teacher at inference, and "
            f"{image_teacher!r} cannot run (only {', '.join(IMAGE_TEACHER_KINDS)}:<model> "
            "can); build the image bank with one of those teachers"
        )
    if text_kind not in TEXT_TEACHER_KINDS:
        raise ValueError(
            f"the locked-teachers model runs its text teacher at inference, and "
            f"{text_teacher!r} cannot run (only minilm, hf:<model> and "
            "sentence-transformers:<folder> can); build the text bank with one of those"
        )


class LockedTeachers(Student):
    """Frozen teachers + trained heads + logit scale (see the module docstring).

    Args:
        image_teacher, text_teacher: :class:`clip_ping.teachers.Teacher` objects (frozen;
            not submodules, so their weights stay out of ``state_dict``).
        spec: the :class:`LockedSpec` they were built from.
        tokenizer: the text teacher's tokenizer as a clip-ping ``Tokenizer``.
    """

    tower = "locked"
    record_keys = ("locked_config",)
    export_marker = MANIFEST
    export_layout = f"{MANIFEST} (the locked teachers)"
    trains_on_bank_features = True
    plain_code_title = "Without clip-ping (`efficientnet_lite_pytorch` and `transformers`)"

    def __init__(self, image_teacher, text_teacher, spec: LockedSpec, tokenizer: Tokenizer):
        super().__init__()
        self.image_teacher, self.text_teacher = image_teacher, text_teacher
        self.spec, self.tokenizer, self.pad_id = spec, tokenizer, tokenizer.pad_id
        self.image_head = projection_head(spec.head, image_teacher.dim, spec.embed_dim)
        self.text_head = projection_head(spec.head, text_teacher.dim, spec.embed_dim)
        self.log_scale = nn.Parameter(torch.tensor(INITIAL_LOGIT_SCALE))

    @classmethod
    def create(cls, spec: LockedSpec, tokenizer: Tokenizer | None = None) -> LockedTeachers:
        from ..teachers import create_teacher

        check_teachers(spec.image_teacher, spec.text_teacher)
        size = spec.teacher_image_size if spec.image_teacher == "efficientnet-lite0" else None
        image = create_teacher(spec.image_teacher, "image", size)
        text = create_teacher(spec.text_teacher, "text")
        return cls(image, text, spec, teacher_tokenizer(text, spec.context_length))

    def _apply(self, fn, recurse: bool = True):
        # .to()/.cuda() move the frozen teachers too (they are not submodules).
        super()._apply(fn, recurse)
        for teacher in (self.image_teacher, self.text_teacher):
            teacher.model._apply(fn)
            teacher.device = next(teacher.model.parameters()).device
        return self

    # -- what a student provides ----------------------------------------------------------

    @property
    def image_size(self) -> int:
        size = self.spec.teacher_image_size
        if size is None:  # an hf: teacher: its processor's crop
            crop = self.image_teacher.info.get("image_processor", {}).get("crop_size", {})
            size = crop.get("height") if isinstance(crop, dict) else crop
        return int(size or 224)

    @property
    def embed_dim(self) -> int:
        return self.spec.embed_dim

    def preprocess(self):
        return self.image_teacher.preprocess

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.project_image(_frozen(self.image_teacher.forward, images))

    def text_features(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        width = max(int(mask.sum(1).max()), 1)  # padding beyond the longest caption is idle
        batch = {"input_ids": tokens[:, :width], "attention_mask": mask[:, :width]}
        return self.project_text(_frozen(self._text_forward, batch))

    def _text_forward(self, batch: dict) -> torch.Tensor:
        teacher = self.text_teacher
        batch = {key: value.to(teacher.device) for key, value in batch.items()}
        if teacher.name.startswith("sentence-transformers:"):
            return teacher.model(batch)["sentence_embedding"]
        return teacher.forward(batch)

    def project_image(self, features: torch.Tensor) -> torch.Tensor:
        """Teacher image features ``(B, D_I)`` (normalised here) → ``(B, embed_dim)``."""
        return self.image_head(F.normalize(features.float(), dim=-1))

    def project_text(self, features: torch.Tensor) -> torch.Tensor:
        """Teacher text features ``(B, D_T)`` (normalised here) → ``(B, embed_dim)``."""
        return self.text_head(F.normalize(features.float(), dim=-1))

    def forward_features(self, image_rows: torch.Tensor, text_rows: torch.Tensor) -> dict:
        """``forward`` on teacher features (bank rows) instead of pixels and tokens."""
        return {
            "image_features": F.normalize(self.project_image(image_rows), dim=-1),
            "text_features": F.normalize(self.project_text(text_rows), dim=-1),
            "logit_scale": self.logit_scale(),
        }

    def log_logit_scale(self) -> nn.Parameter:
        return self.log_scale

    def describe(self) -> str:
        return (
            f"the frozen teachers {self.spec.image_teacher} (image, {self.image_teacher.dim}-d, "
            f"{self.image_size} px) and {self.spec.text_teacher} (text, "
            f"{self.text_teacher.dim}-d), each followed by a trained {self.spec.head} head into "
            f"a {self.embed_dim}-d joint embedding"
        )

    def card_sentence(self, name: str, objective: str) -> str:
        trained = sum(p.numel() for p in self.parameters())
        return (
            f"The teachers' ceiling (`{name}`): {self.describe()}. Only the heads and the logit "
            f"scale ({trained / 1e6:.2f} M parameters) were trained, with {objective}, on the "
            "teachers' features of the training pairs; the teachers are as their authors "
            "trained them."
        )

    def card_tags(self) -> list[str]:
        return ["locked-teachers", "lit"]

    def record(self) -> dict:
        config = {**self.spec.__dict__, "image_dim": self.image_teacher.dim}
        return {"tower": self.tower, "locked_config": {**config, "text_dim": self.text_teacher.dim}}

    @classmethod
    def record_text_config(cls, record: dict) -> dict:
        return {"max_position_embeddings": record["locked_config"]["context_length"]}

    @classmethod
    def from_record(cls, record: dict, tokenizer: Tokenizer) -> LockedTeachers:
        config = dict(record["locked_config"])
        dims = config.pop("image_dim"), config.pop("text_dim")
        model = cls.create(LockedSpec(**config))
        found = model.image_teacher.dim, model.text_teacher.dim
        if found != dims:
            raise ValueError(
                f"the teachers {config['image_teacher']} and {config['text_teacher']} now give "
                f"{found[0]}- and {found[1]}-d features, but the checkpoint was trained on "
                f"{dims[0]}- and {dims[1]}-d ones; load it where the same teachers exist"
            )
        return model

    def export(self, out_dir: Path, tokenizer: Tokenizer) -> None:
        from safetensors.torch import save_file

        manifest = export_teachers(self, out_dir)
        weights = {
            **{f"image_head.{k}": v for k, v in self.image_head.state_dict().items()},
            **{f"text_head.{k}": v for k, v in self.text_head.state_dict().items()},
            "logit_scale": self.log_scale.detach(),
        }
        weights = {key: value.detach().cpu().contiguous() for key, value in weights.items()}
        save_file(weights, str(out_dir / manifest["projections"]), metadata={"format": "pt"})
        (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    @classmethod
    def from_export(cls, hf_dir: Path) -> tuple[LockedTeachers, Tokenizer]:
        from safetensors.torch import load_file

        manifest = read_manifest(hf_dir)
        image, text = teachers_from_export(hf_dir, manifest)
        spec = LockedSpec(**manifest["spec"])
        model = cls(image, text, spec, teacher_tokenizer(text, spec.context_length))
        weights = load_file(str(hf_dir / manifest["projections"]))
        with torch.no_grad():
            model.image_head.load_state_dict(_prefixed(weights, "image_head."))
            model.text_head.load_state_dict(_prefixed(weights, "text_head."))
            model.log_scale.copy_(weights["logit_scale"])
        return model, model.tokenizer

    @staticmethod
    def transformers_code(hf_dir: str) -> list[str]:
        return transformers_lines(hf_dir)


def teacher_tokenizer(teacher, context_length: int) -> Tokenizer:
    """The text teacher's own tokenizer as a clip-ping ``Tokenizer`` (``[CLS] … [SEP]``
    framing, as the teachers of this model use)."""
    backend = getattr(teacher, "collate", None)
    hf_tokenizer = getattr(backend, "tokenizer", None)  # HFTextTeacher (minilm, hf:)
    if hf_tokenizer is None:  # a sentence-transformers model
        hf_tokenizer = getattr(teacher.model, "tokenizer", None)
    if hf_tokenizer is None or not hasattr(hf_tokenizer, "backend_tokenizer"):
        raise ValueError(
            f"text teacher {teacher.name} has no fast (tokenizers) tokenizer, which the "
            "locked-teachers model needs; use minilm or a model saved with tokenizer.json"
        )
    try:
        return Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str(), context_length)
    except ValueError as exc:
        raise ValueError(
            f"text teacher {teacher.name}: {exc}. The locked-teachers model supports text "
            "teachers with BERT-style ([CLS]/[SEP]/[PAD]) tokenizers, such as minilm"
        ) from None


def _frozen(forward, batch) -> torch.Tensor:
    """The teacher's output without a graph, as an ordinary tensor the heads can train on
    (an inference-mode tensor cannot be saved for backward)."""
    with torch.inference_mode():
        features = forward(batch).float()
    return features.clone()


def _prefixed(weights: dict, prefix: str) -> dict:
    return {key[len(prefix) :]: value for key, value in weights.items() if key.startswith(prefix)}
