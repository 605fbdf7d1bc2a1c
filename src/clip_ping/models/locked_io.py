"""The locked-teachers export: each frozen teacher in its own format, beside the heads.

See :mod:`.locked` for the layout. The image teacher is written as:

- ``efficientnet-lite0``: ``image_teacher/model.safetensors`` (the network's original,
  unfolded weights, loadable with ``efficientnet_lite_pytorch``'s
  ``EfficientNet.from_name("efficientnet-lite0", image_size=...)``) and ``config.json``
  (input size, normalisation, pooling);
- ``hf:`` teachers: the transformers folder (``save_pretrained``) with its image processor.

The text teacher is a transformers folder with its tokenizer (mean pooling over the
attention mask, and ``sentence_bert_config.json`` giving its token limit), or, for a
``sentence-transformers:`` teacher, the sentence-transformers folder.
"""

from __future__ import annotations

import json
from pathlib import Path

EXPORT_FORMAT = "clip-ping-locked-teachers/1"
MANIFEST = "locked_teachers.json"
IMAGE_DIR, TEXT_DIR = "image_teacher", "text_teacher"
PROJECTIONS = "projections.safetensors"
EFFICIENTNET_WEIGHTS = "model.safetensors"


def _efficientnet_weights(teacher) -> dict:
    """The original (unfolded) weights of an ``efficientnet-lite0`` teacher."""
    import torch
    from safetensors.torch import load_file

    path = teacher.weights_path
    if path.endswith(".safetensors"):
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def export_teachers(model, out_dir: Path) -> dict:
    """Write ``model``'s teachers under ``out_dir``; return the manifest (written last by
    the caller, with the heads)."""
    from safetensors.torch import save_file

    image, text, spec = model.image_teacher, model.text_teacher, model.spec
    image_dir, text_dir = out_dir / IMAGE_DIR, out_dir / TEXT_DIR
    image_dir.mkdir()
    if image.name == "efficientnet-lite0":
        weights = {k: v.contiguous() for k, v in _efficientnet_weights(image).items()}
        save_file(weights, str(image_dir / EFFICIENTNET_WEIGHTS), metadata={"format": "pt"})
        config = {"architecture": "efficientnet-lite0", **image.info}
        config["weights"] = EFFICIENTNET_WEIGHTS
        (image_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        image_kind = "efficientnet-lite0"
    else:
        image.model.save_pretrained(str(image_dir))
        image.preprocess.processor.save_pretrained(str(image_dir))
        image_kind = "transformers"
    if text.name.startswith("sentence-transformers:"):
        text.model.save(str(text_dir))
        text_kind = "sentence-transformers"
    else:
        text.model.save_pretrained(str(text_dir))
        text.collate.tokenizer.save_pretrained(str(text_dir))
        limit = {"max_seq_length": text.collate.max_length}
        (text_dir / "sentence_bert_config.json").write_text(json.dumps(limit) + "\n")
        text_kind = "transformers-mean-pooling"
    return {
        "format": EXPORT_FORMAT,
        "tower": model.tower,
        "spec": {
            key: getattr(spec, key)
            for key in ("image_teacher", "text_teacher", "teacher_image_size", "embed_dim")
        }
        | {"head": spec.head, "context_length": spec.context_length},
        "image_teacher": {"folder": IMAGE_DIR, "kind": image_kind, "dim": image.dim},
        "text_teacher": {"folder": TEXT_DIR, "kind": text_kind, "dim": text.dim},
        "projections": PROJECTIONS,
        "features": "L2-normalised teacher features, then the head; embeddings L2-normalised",
    }


def read_manifest(hf_dir: Path) -> dict:
    """The manifest of the export ``hf_dir``, checked to be one this version reads."""
    path = hf_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); export the run again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(
            f"{path} has format {found!r}, this clip-ping reads {EXPORT_FORMAT!r}; load it with "
            "the clip-ping version that exported it"
        )
    return manifest


def teachers_from_export(hf_dir: Path, manifest: dict):
    """The image and text teachers stored in the export ``hf_dir``."""
    from ..teachers import (
        EfficientNetLite0,
        HFImageTeacher,
        HFTextTeacher,
        SentenceTransformerTeacher,
    )

    spec, image_info = manifest["spec"], manifest["image_teacher"]
    image_dir = hf_dir / image_info["folder"]
    if image_info["kind"] == "efficientnet-lite0":
        config = json.loads((image_dir / "config.json").read_text())
        size = int(config["image_size"])
        image = EfficientNetLite0(size, weights=str(image_dir / config["weights"]))
    else:
        image = HFImageTeacher(str(image_dir))
    text_info = manifest["text_teacher"]
    text_dir = str(hf_dir / text_info["folder"])
    if text_info["kind"] == "sentence-transformers":
        text = SentenceTransformerTeacher(text_dir)
    else:
        text = HFTextTeacher(text_dir, name=spec["text_teacher"])
    image.name = spec["image_teacher"]  # as trained: the bank's teacher names
    return image, text


def transformers_lines(hf_dir: str) -> list[str]:
    """Python that embeds ``pil_image`` and a caption from the export without clip-ping
    (an ``efficientnet-lite0`` image teacher and a transformers text teacher, linear heads)."""
    return [
        "import json",
        "import numpy as np",
        "import torch",
        "import torch.nn.functional as F",
        "from efficientnet_lite_pytorch import EfficientNet",
        "from safetensors.torch import load_file",
        "from transformers import AutoModel, AutoTokenizer",
        "",
        f'config = json.load(open("{hf_dir}/{IMAGE_DIR}/config.json"))',
        'net = EfficientNet.from_name("efficientnet-lite0", image_size=config["image_size"])',
        f'net.load_state_dict(load_file("{hf_dir}/{IMAGE_DIR}/{EFFICIENTNET_WEIGHTS}"))',
        "net.eval()",
        f'heads = load_file("{hf_dir}/{PROJECTIONS}")',
        "size = config['image_size']  # shorter side to size (bicubic), centre crop",
        "w, h = pil_image.size",
        "s = size / min(w, h)",
        "im = pil_image.convert('RGB').resize((max(size, round(w * s)), max(size, round(h * s))), 3)",
        "left, top = (im.width - size) // 2, (im.height - size) // 2",
        "im = im.crop((left, top, left + size, top + size))",
        "x = torch.from_numpy(np.asarray(im, dtype=np.float32))",
        "x = ((x / 255 - 0.5) / 0.5).permute(2, 0, 1)[None]",
        "with torch.no_grad():",
        "    u = F.normalize(net.extract_features(x).mean((2, 3)), dim=-1)",
        "image = u @ heads['image_head.weight'].T",
        f'tokenizer = AutoTokenizer.from_pretrained("{hf_dir}/{TEXT_DIR}")',
        f'text_model = AutoModel.from_pretrained("{hf_dir}/{TEXT_DIR}").eval()',
        'tokens = tokenizer(["a photo of a cat"], return_tensors="pt")',
        "with torch.no_grad():",
        "    hidden = text_model(**tokens).last_hidden_state",
        "mask = tokens['attention_mask'][..., None].float()",
        "v = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)",
        "text = v @ heads['text_head.weight'].T",
    ]
