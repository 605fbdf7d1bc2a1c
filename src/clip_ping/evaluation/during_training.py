"""Evaluation every ``--val-frequency`` epochs of a training run.

Retrieval on ``--val-data`` (when it has captions) and zero-shot on ``--zeroshot-data``
(default: ``--val-data`` when it has a ``label`` column). Each result goes to
``metrics.jsonl`` and TensorBoard as ``retrieval/<dataset>/...`` and
``zeroshot/<dataset>/...``, and the latest of each to ``results/<task>_<dataset>.json``.
"""

from __future__ import annotations

import json
import logging

from ..config import TrainConfig
from ..io import atomic_write_text
from ..logger import MetricsLog

log = logging.getLogger("clip_ping")


def evaluate_during_training(
    model, tokenizer, cfg: TrainConfig, device, metrics: MetricsLog, step: int, epoch: int
) -> dict[str, float]:
    """Evaluate ``model`` on the run's held-out data; return the logged values."""
    from ..data.transforms import EvalTransform
    from .datasets import load_eval_dataset
    from .run import evaluate_dataset, result_path, result_record

    preprocess = EvalTransform(model.image_size)
    options = dict(
        classnames=cfg.zeroshot_classnames, templates=cfg.zeroshot_templates,
        csv_img_key=cfg.csv_img_key, csv_caption_key=cfg.csv_caption_key,
        csv_separator=cfg.csv_separator,
    )  # fmt: skip
    jobs = []  # (dataset, tasks): each dataset's images are encoded once for all its tasks
    if cfg.val_data:
        val = load_eval_dataset(cfg.val_data, preprocess, **options)
        tasks = ["retrieval"] if val.captions is not None else []
        if cfg.zeroshot_data is None and val.labels is not None:
            tasks.append("zeroshot")
        jobs.append((val, tasks))
    if cfg.zeroshot_data:
        jobs.append((load_eval_dataset(cfg.zeroshot_data, preprocess, **options), ["zeroshot"]))
    values: dict[str, float] = {}
    for data, tasks in jobs:
        if not tasks:
            log.warning("%s has neither captions nor labels: nothing to evaluate", data.name)
            continue
        for task, scores in evaluate_dataset(model, tokenizer, tasks, data, device=device).items():
            record = {**result_record(task, data.name, cfg.model, scores), "step": step}
            values.update(record["metric_names"])
            log.info("epoch %d %s %s: %s", epoch, task, data.name, json.dumps(scores))
            atomic_write_text(
                result_path(metrics.run_dir, task, data.name), json.dumps(record, indent=2)
            )
    if values:
        metrics.write(step, values, epoch=epoch)
    return values
