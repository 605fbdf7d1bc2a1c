"""The model card of an exported student: ``RUN/hf/README.md``, as Hugging Face users expect.

It says what the model is, what it was trained on and how, what it scored (the run's result
records), and how to load it with and without clip-ping. Written at export and again
whenever a later evaluation of the finished run adds numbers (the demo does).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..io import atomic_write_text
from ..losses import method_terms
from ..models import load_export
from .run_folder import run_settings

# What the card calls each setting of the run's config (config key → label).
SETTINGS = {
    "model": "student",
    "train_data": "training data",
    "epochs": "epochs",
    "batch_size": "batch size per process",
    "accum_freq": "accumulated micro-batches",
    "lr": "peak learning rate",
    "wd": "weight decay",
    "warmup": "warm-up steps",
    "precision": "precision",
    "seed": "seed",
    "loss": "objective",
}
TAGS = ["clip", "clip-ping", "contrastive-learning", "image-text-retrieval"]


def _front_matter(model) -> str:
    """The card's metadata; the student's class says what is specific to its kind of tower
    (the pipeline that loads its export, if any, and its tags)."""
    meta = {"library_name": "transformers"}
    if model.pipeline_tag:
        meta["pipeline_tag"] = model.pipeline_tag
    meta["tags"] = TAGS + model.card_tags()
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _description(cfg: dict, model) -> list[str]:
    objective = " plus ".join(term.description for term in method_terms(cfg["loss"]))
    return [model.card_sentence(cfg["model"], objective)]


def _settings_table(cfg: dict) -> list[str]:
    rows = {**SETTINGS, **{k: v for term in method_terms(cfg["loss"]) for k, v in term.settings}}
    lines = ["| setting | value |", "|---|---|"]
    lines += [
        f"| {label} | `{cfg[key]}` |" for key, label in rows.items() if cfg.get(key) is not None
    ]
    return lines


def _results_table(metrics: dict[str, float]) -> list[str]:
    if not metrics:
        return ["No evaluation was recorded for this run (see `clip-ping eval`)."]
    lines = ["| metric | value |", "|---|---:|"]
    lines += [f"| `{name}` | {value:.4f} |" for name, value in sorted(metrics.items())]
    return lines


def _usage(run_dir: Path, model) -> list[str]:
    run_dir = run_dir.resolve()  # the card is read from anywhere, not where training ran
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
        f"{model.plain_code_title} (the same embeddings, before `normalize=True` scales them "
        "to unit length):",
        "",
        "```python",
        *model.transformers_code(str(run_dir / "hf")),
        "```",
    ]


def write_model_card(run_dir: str | Path) -> Path:
    """Write ``run_dir/hf/README.md`` from the run's settings (``config.yaml`` with the
    changes of its resumes), its export (the student it holds) and its result records;
    return its path."""
    from ..evaluation.run import run_results

    run_dir = Path(run_dir)
    cfg = run_settings(run_dir)
    model, _ = load_export(run_dir / "hf")
    lines = [_front_matter(model), f"# {run_dir.name}", ""]
    lines += _description(cfg, model)
    lines += ["", "## Training", ""] + _settings_table(cfg)
    lines += ["", "## Evaluation", ""]
    lines += ["The run's latest evaluation of each metric (`RUN/results/*.json`).", ""]
    lines += _results_table(run_results(run_dir))
    lines += ["", "## How to use", ""] + _usage(run_dir, model)
    lines += [
        "",
        "Images are resized and centre-cropped to the tower's size and normalised with "
        "CLIP's mean and std; captions are lowercased WordPiece tokens padded to the "
        "context length.",
    ]
    return atomic_write_text(run_dir / "hf" / "README.md", "\n".join(lines) + "\n")
