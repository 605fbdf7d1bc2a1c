"""The model card of an exported student: ``RUN/hf/README.md``, as Hugging Face users expect.

It says what the model is, what it was trained on and how, what it scored (the run's result
records), and how to load it with and without clip-ping. Written at export and again
whenever a later evaluation of the finished run adds numbers (the demo does).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from .io import atomic_write_text
from .run_folder import run_settings

SETTINGS = (  # (config key, what the card calls it)
    ("model", "student"), ("train_data", "training data"), ("epochs", "epochs"),
    ("batch_size", "batch size per process"), ("accum_freq", "accumulated micro-batches"),
    ("lr", "peak learning rate"), ("wd", "weight decay"), ("warmup", "warm-up steps"),
    ("precision", "precision"), ("seed", "seed"), ("loss", "objective"),
)  # fmt: skip
NEIGHBOR_SETTINGS = (
    ("image_bank", "image bank"), ("text_bank", "text bank"), ("nn_weight", "λ_NN"),
    ("xnn_weight", "λ_XNN"), ("neighbor_k", "neighbours drawn among top-K"),
    ("neighbor_target", "neighbour targets"), ("neighbor_source", "neighbour source"),
)  # fmt: skip


def _front_matter() -> str:
    meta = {
        "library_name": "transformers",
        "pipeline_tag": "zero-shot-image-classification",
        "tags": ["clip", "clip-ping", "contrastive-learning", "image-text-retrieval"],
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _description(cfg: dict, hf_config: dict, parameters: int | None) -> list[str]:
    vision, text = hf_config["vision_config"], hf_config["text_config"]
    objective = (
        "CLIP-PING: the CLIP loss plus neighbour guidance from frozen teachers' feature banks "
        "(arXiv 2412.03871; clip-ping's formulation)"
        if cfg["loss"] == "clip-ping"
        else "the CLIP contrastive loss"
    )
    size = f"{parameters / 1e6:.2f} M parameters, " if parameters else ""
    return [
        f"A lightweight CLIP model (`{cfg['model']}`: {size}ViT image tower of "
        f"{vision['num_hidden_layers']} layers × {vision['hidden_size']} on "
        f"{vision['image_size']} px images, text transformer of {text['num_hidden_layers']} "
        f"layers × {text['hidden_size']} over {text['max_position_embeddings']} tokens, "
        f"{hf_config['projection_dim']}-d joint embedding), trained from scratch with "
        f"{objective}.",
    ]


def _settings_table(cfg: dict) -> list[str]:
    rows = SETTINGS + (NEIGHBOR_SETTINGS if cfg["loss"] == "clip-ping" else ())
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| {label} | `{cfg[key]}` |" for key, label in rows if cfg.get(key) is not None]
    return lines


def _results_table(metrics: dict[str, float]) -> list[str]:
    if not metrics:
        return ["No evaluation was recorded for this run (see `clip-ping eval`)."]
    lines = ["| metric | value |", "|---|---:|"]
    lines += [f"| `{name}` | {value:.4f} |" for name, value in sorted(metrics.items())]
    return lines


def _usage(run_dir: Path) -> list[str]:
    hf = run_dir / "hf"
    return [
        "With clip-ping (`encode_image`/`encode_text` as in open_clip):",
        "",
        "```python",
        "import clip_ping",
        f'model, preprocess, tokenizer = clip_ping.load("{run_dir}")',
        "image = model.encode_image(preprocess(pil_image)[None], normalize=True)",
        'text = model.encode_text(tokenizer(["a photo of a cat"]), normalize=True)',
        "```",
        "",
        "With `transformers` alone (the same embeddings):",
        "",
        "```python",
        "from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel",
        f'model = CLIPModel.from_pretrained("{hf}")',
        f'processor = CLIPImageProcessor.from_pretrained("{hf}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{hf}")',
        'pixels = processor(images=pil_image, return_tensors="pt").pixel_values',
        "tokens = tokenizer(",
        '    ["a photo of a cat"], padding="max_length", truncation=True, return_tensors="pt"',
        ")",
        "image = model.get_image_features(pixel_values=pixels).pooler_output",
        "text = model.get_text_features(**tokens).pooler_output",
        "```",
    ]


def exported_parameters(hf_dir: Path) -> int | None:
    """Parameters in the export's safetensors weights (None if it has none)."""
    from safetensors import safe_open

    weights = hf_dir / "model.safetensors"
    if not weights.is_file():
        return None
    with safe_open(str(weights), framework="pt") as f:
        return sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())


def write_model_card(run_dir: str | Path) -> Path:
    """Write ``run_dir/hf/README.md`` from the run's settings (``config.yaml`` with the
    changes of its resumes), its export's ``config.json`` and weights, and its result
    records; return its path."""
    from .evaluation.run import run_results

    run_dir = Path(run_dir)
    cfg = run_settings(run_dir)
    hf_config = json.loads((run_dir / "hf" / "config.json").read_text())
    lines = [_front_matter(), f"# {run_dir.name}", ""]
    lines += _description(cfg, hf_config, exported_parameters(run_dir / "hf"))
    lines += ["", "## Training", ""] + _settings_table(cfg)
    lines += ["", "## Evaluation", ""]
    lines += ["The run's latest evaluation of each metric (`RUN/results/*.json`).", ""]
    lines += _results_table(run_results(run_dir))
    lines += ["", "## How to use", ""] + _usage(run_dir)
    lines += [
        "",
        "Images are resized and centre-cropped to the tower's size and normalised with "
        "CLIP's mean and std; captions are lowercased WordPiece tokens padded to the "
        "context length.",
    ]
    return atomic_write_text(run_dir / "hf" / "README.md", "\n".join(lines) + "\n")
