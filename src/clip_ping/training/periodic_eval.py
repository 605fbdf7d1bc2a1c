"""Evaluation every ``--val-frequency`` epochs of a training run. The sets are opened and
checked once, before the first step (:func:`load_eval_sets`).

Retrieval on ``--val-data`` (when it has captions) and zero-shot on ``--zeroshot-data``
(default: ``--val-data`` when it has a ``label`` column). Each result goes to
``metrics.jsonl`` and TensorBoard as ``retrieval/<dataset>/...`` and
``zeroshot/<dataset>/...``, and the latest of each to ``results/<task>_<dataset>.json``.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from ..io import atomic_write_text
from .config import TrainConfig
from .logger import MetricsLog

if TYPE_CHECKING:
    from ..evaluation.datasets import EvalDataset

log = logging.getLogger("clip_ping")


# (dataset, its tasks): each dataset's images are encoded once for all its tasks
EvalJob = tuple["EvalDataset", list[str]]


def load_eval_sets(cfg: TrainConfig, preprocess) -> list[EvalJob]:
    """Open and check every evaluation set of the run before its first step (see
    :mod:`.checks`): a typo in ``--val-data``, a missing class-name file or a broken image
    fails now, not after the first epoch. Bad images follow ``--on-bad-sample``."""
    from ..evaluation.checks import check_images, check_task, meaningless_score
    from ..evaluation.datasets import load_eval_dataset

    options = dict(
        classnames=cfg.zeroshot_classnames,
        templates=cfg.zeroshot_templates,
        csv_img_key=cfg.csv_img_key,
        csv_caption_key=cfg.csv_caption_key,
        csv_separator=cfg.csv_separator,
    )
    jobs = []
    if cfg.val_data:
        val = load_eval_dataset(cfg.val_data, preprocess, **options)
        tasks = ["retrieval"] if val.captions is not None else []
        if cfg.zeroshot_data is None and val.labels is not None:
            tasks.append("zeroshot")
        jobs.append((val, tasks))
    if cfg.zeroshot_data:
        jobs.append((load_eval_dataset(cfg.zeroshot_data, preprocess, **options), ["zeroshot"]))
    checked = []
    for data, tasks in jobs:
        if not tasks:
            log.warning("%s has neither captions nor labels: nothing to evaluate", data.name)
            continue
        for task in tasks:
            check_task(data, task)
        data = check_images(data, cfg.on_bad_sample, cfg.max_bad_share)
        for task in tasks:
            if reason := meaningless_score(data, task):
                log.warning(reason)
        checked.append((data, tasks))
    return checked


def evaluate_during_training(
    model,
    tokenizer,
    cfg: TrainConfig,
    device,
    metrics: MetricsLog,
    step: int,
    epoch: int,
    eval_sets: list[EvalJob],
) -> dict[str, float]:
    """Evaluate ``model`` on the run's held-out data (from :func:`load_eval_sets`); return
    the logged values."""
    from ..evaluation.run import evaluate_dataset, result_path, result_record

    values: dict[str, float] = {}
    for data, tasks in eval_sets:
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
