"""``clip-ping eval``: one task on one dataset for any model ``clip_ping.load`` opens → JSON.

    clip-ping eval --model logs/shapes --task zeroshot --dataset shapes/val.csv --out zs.json
    clip-ping eval --model logs/shapes/hf --task retrieval --dataset shapes/val.csv --out r.json
    clip-ping eval --model logs/shapes/checkpoints/latest.pt --task linear-probe \\
        --dataset digits --out lp.json

The JSON has CLIP_benchmark's fields ``dataset``, ``model``, ``task`` and ``metrics`` (short
names: ``acc1``, ``image_to_text_R@1``, ``lp_acc1`` ...), plus ``metric_names``: the same
values under the run-log names (``zeroshot/<dataset>/acc1``). A linear probe also records the
chosen ``weight_decay``.

Retrieval follows CLIP_benchmark: every row is one caption of its image, so a set whose
caption texts repeat cannot be scored fairly (identical texts have identical embeddings, and
ties count against the query); it is scored anyway, with a warning. ``--merge-identical-captions``
instead scores identical texts as one caption with several positive images, under the
dataset name ``<name>-merged`` so it never passes for the standard protocol.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import warnings
from pathlib import Path

import torch

from ..data.bad_samples import DEFAULT_MAX_BAD_SHARE
from ..distributed import resolve_device
from ..io import atomic_torch_save, atomic_write_text, load_tensor_file, read_json_object
from ..workers import check_workers
from .checks import check_images, check_task, meaningless_score
from .datasets import EvalDataset, builtin_datasets, load_eval_dataset
from .features import encode_images, encode_texts
from .linear_probe import DEFAULT_WEIGHT_DECAYS, linear_probe
from .ranking import DEFAULT_MAX_BLOCK_ELEMENTS
from .retrieval import retrieval_metrics, text_ids
from .zeroshot import class_embeddings, zero_shot_metrics

log = logging.getLogger("clip_ping")

# CLI task → (CLIP_benchmark task name, prefix of the run-log metric names)
TASKS = {
    "zeroshot": ("zeroshot_classification", "zeroshot"),
    "retrieval": ("zeroshot_retrieval", "retrieval"),
    "linear-probe": ("linear_probe", "linear_probe"),
}
# Values a task returns that describe the fit rather than measure the model.
NOT_METRICS = ("weight_decay", "val_acc1")
RESULT_FIX = "delete it or rerun the evaluation that wrote it"


def zeroshot(
    model,
    tokenizer,
    data: EvalDataset,
    image_features: torch.Tensor,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
) -> dict[str, float]:
    """``acc1``, ``acc5``, ``mean_per_class_recall`` of ``(N, D)`` ``image_features``."""
    labels = data.require_labels("zero-shot")
    classnames = data.require_classnames()
    classes = class_embeddings(model, tokenizer, classnames, data.templates, device, batch_size)
    return zero_shot_metrics(image_features, classes, labels, max_block_elements)


def retrieval(
    model,
    tokenizer,
    data: EvalDataset,
    image_features: torch.Tensor,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
    merge_identical_captions: bool = False,
) -> dict[str, float]:
    """Recall@{1,5,10} both ways between ``(I, D)`` ``image_features`` and the captions:
    one caption per row (CLIP_benchmark), or identical texts merged (see the module)."""
    captions, caption_image = data.require_captions()
    ids = text_ids(captions)
    repeated = len(ids) - len(set(ids))
    if repeated and not merge_identical_captions:
        warnings.warn(
            f"{data.name}: {repeated} caption rows repeat another row's text; each row is "
            "scored as its own caption (CLIP_benchmark), so identical texts tie and count "
            "against the query. Give every row a unique text, or pass "
            "--merge-identical-captions for the merged scoring",
            stacklevel=2,
        )
    texts = encode_texts(model, tokenizer, captions, batch_size, device)
    return retrieval_metrics(
        image_features,
        texts,
        caption_image,
        max_block_elements=max_block_elements,
        caption_text=ids if merge_identical_captions else None,
    )


def evaluate_dataset(
    model,
    tokenizer,
    tasks: list[str],
    data: EvalDataset,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    workers: int = 0,
    max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
    merge_identical_captions: bool = False,
) -> dict[str, dict[str, float]]:
    """Zero-shot and/or retrieval on one dataset, its images encoded once: ``{task: metrics}``."""
    for task in tasks:
        if task not in ("zeroshot", "retrieval"):
            raise ValueError(f"evaluate_dataset runs zeroshot and retrieval, not {task!r}")
    features = encode_images(model, data.images, batch_size, device, workers)
    options = dict(batch_size=batch_size, device=device, max_block_elements=max_block_elements)
    results = {}
    if "zeroshot" in tasks:
        results["zeroshot"] = zeroshot(model, tokenizer, data, features, **options)
    if "retrieval" in tasks:
        results["retrieval"] = retrieval(
            model,
            tokenizer,
            data,
            features,
            **options,
            merge_identical_captions=merge_identical_captions,
        )
    return {task: results[task] for task in tasks}


def _fingerprint(model, *parts: str) -> str:
    """Hash of the weights and ``parts``: cached features are reused only for the same ones."""
    digest = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy())
    for part in parts:
        digest.update(part.encode())
    return digest.hexdigest()


def probe_features(
    model,
    train: EvalDataset,
    test: EvalDataset,
    cache: str | os.PathLike | None = None,
    **encode_options,
) -> dict[str, torch.Tensor]:
    """Frozen ``(N, D)`` train and ``(M, D)`` test features, encoded once; with ``cache``
    (a .pt file) they are reloaded while the weights and datasets are the same."""
    key = None
    if cache is not None:
        key = _fingerprint(model, train.name, str(len(train)), test.name, str(len(test)))
        if Path(cache).is_file():
            stored = load_tensor_file(cache, "a feature cache", "pass another --feature-cache")
            if stored.get("fingerprint") == key and {"train", "test"} <= stored.keys():
                return {"train": stored["train"], "test": stored["test"]}
    features = {
        "train": encode_images(model, train.images, **encode_options),
        "test": encode_images(model, test.images, **encode_options),
    }
    if cache is not None:
        atomic_torch_save({"fingerprint": key, **features}, cache)
    return features


def run_eval(
    model_path: str | os.PathLike,
    task: str,
    dataset: str,
    out: str | os.PathLike | None = None,
    train_dataset: str | None = None,
    classnames: str | None = None,
    templates: str | None = None,
    batch_size: int = 256,
    device: str = "auto",
    workers: int = 0,
    csv_img_key: str = "filepath",
    csv_caption_key: str = "title",
    csv_separator: str | None = None,
    weight_decays: tuple[float, ...] = DEFAULT_WEIGHT_DECAYS,
    feature_cache: str | None = None,
    merge_identical_captions: bool = False,
    on_bad_sample: str = "skip",
    max_bad_share: float = DEFAULT_MAX_BAD_SHARE,
) -> dict:
    """Load ``model_path``, run ``task`` on ``dataset``, return (and write to ``out``) the
    result record. ``train_dataset`` is the probe's training set (built-ins: their own
    train split). Every image is checked first; bad ones follow ``on_bad_sample`` (see
    :mod:`.checks`), and the record counts them as ``skipped_images``. A set on which any
    model would score perfectly is warned about, and the warning kept in ``warnings``."""
    from ..models import load

    if task not in TASKS:
        raise ValueError(f"--task {task!r}: choose one of {', '.join(TASKS)}")
    check_workers(workers)  # before the model loads
    device = resolve_device(device)
    model, preprocess, tokenizer = load(model_path, device=device)
    options = dict(
        classnames=classnames,
        templates=templates,
        csv_img_key=csv_img_key,
        csv_caption_key=csv_caption_key,
        csv_separator=csv_separator,
    )
    report: dict = {"skipped_images": 0, "warnings": []}
    check = dict(task=task, on_bad_sample=on_bad_sample, max_bad_share=max_bad_share)
    data = _checked(
        load_eval_dataset(dataset, preprocess, split="test", **options), report, **check
    )
    encode = dict(batch_size=batch_size, device=device, workers=workers)
    extra = {}
    if task == "linear-probe":
        if train_dataset is None and dataset not in builtin_datasets():
            raise ValueError(
                f"--task linear-probe on {dataset} needs --train-dataset, the labelled set the "
                f"probe is fitted on (built-ins {', '.join(builtin_datasets())} bring their own)"
            )
        train = load_eval_dataset(train_dataset or dataset, preprocess, split="train", **options)
        train = _checked(train, report, **check)
        features = probe_features(model, train, data, feature_cache, **encode)
        result = linear_probe(
            features["train"],
            train.require_labels("linear probe"),
            features["test"],
            data.require_labels("linear probe"),
            weight_decays,
        )
        extra = {k: result.pop(k) for k in NOT_METRICS}
        extra.update(train_dataset=train.name, train_size=len(train), weight_decays=weight_decays)
        metrics = result
    else:
        merge = merge_identical_captions and task == "retrieval"
        metrics = evaluate_dataset(
            model, tokenizer, [task], data, **encode, merge_identical_captions=merge
        )[task]
        if merge:
            data.name = f"{data.name}-merged"  # never mistaken for the standard protocol
    record = result_record(task, data.name, str(model_path), metrics)
    record.update(num_images=len(data), **extra)
    record.update({key: value for key, value in report.items() if value})
    if out is not None:
        atomic_write_text(out, json.dumps(record, indent=2) + "\n")
    return record


def _checked(
    data: EvalDataset, report: dict, task: str, on_bad_sample: str, max_bad_share: float
) -> EvalDataset:
    """``data`` checked for ``task`` (:mod:`.checks`); skips and warnings go to ``report``."""
    check_task(data, task)
    checked = check_images(data, on_bad_sample, max_bad_share)
    report["skipped_images"] += len(data) - len(checked)
    if reason := meaningless_score(checked, task):
        log.warning(reason)
        report["warnings"].append(reason)
    return checked


def result_record(task: str, dataset: str, model: str, metrics: dict[str, float]) -> dict:
    """CLIP_benchmark's fields plus the run-log metric names (docs/design.md: metric names)."""
    benchmark_task, prefix = TASKS[task]
    return {
        "dataset": dataset,
        "model": model,
        "task": benchmark_task,
        "metrics": metrics,
        "metric_names": {f"{prefix}/{dataset}/{k}": v for k, v in metrics.items()},
    }


def result_path(run_dir: str | os.PathLike, task: str, dataset: str) -> Path:
    """Where a run keeps its result record of ``task`` (zeroshot | retrieval | linear-probe)
    on ``dataset`` (its name in the metric names): ``RUN/results/<prefix>_<dataset>.json``,
    ``<prefix>`` being the metric-name prefix (``retrieval``, ``zeroshot``, ``linear_probe``).
    Training's periodic evaluations and a later evaluation of the finished run share the file.

    Examples:
        >>> result_path("logs/demo", "linear-probe", "digits").as_posix()
        'logs/demo/results/linear_probe_digits.json'
    """
    if task not in TASKS:
        raise ValueError(f"task {task!r}: choose one of {', '.join(TASKS)}")
    return Path(run_dir) / "results" / f"{TASKS[task][1]}_{dataset}.json"


def after_training(record: dict) -> bool:
    """Whether a result record is of the finished run: no ``step`` (periodic ones have it)."""
    return "step" not in record


def result_records(run_dir: str | os.PathLike) -> list[dict]:
    """The records of ``RUN/results/*.json``, the first measured first: training's periodic
    evaluations by their ``step``, then evaluations of the finished run
    (:func:`after_training`); file-name order between records measured alike. Decided by
    what the records say, never by file times."""
    paths = (Path(run_dir) / "results").glob("*.json")
    named = [(path.name, read_json_object(path, RESULT_FIX)) for path in paths]
    named.sort(key=lambda item: (after_training(item[1]), item[1].get("step", 0), item[0]))
    return [record for _, record in named]


def run_results(run_dir: str | os.PathLike) -> dict[str, float]:
    """Every metric of a run's result records, the one measured last winning."""
    metrics: dict[str, float] = {}
    for record in result_records(run_dir):
        metrics.update(record.get("metric_names", {}))
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``clip-ping eval`` flags."""
    parser.add_argument("--model", required=True, help="run folder, checkpoint .pt or hf/ folder")
    parser.add_argument("--task", required=True, choices=list(TASKS))
    parser.add_argument(
        "--dataset",
        required=True,
        help=f"built-in ({', '.join(builtin_datasets())}), .csv/.tsv file, or class folder",
    )
    parser.add_argument("--out", default=None, help="result JSON file (default: print only)")
    parser.add_argument(
        "--train-dataset", default=None, help="linear probe: labelled set to fit the probe on"
    )
    parser.add_argument(
        "--classnames",
        default=None,
        help="class names file or imagenet1k (default: classnames.txt beside)",
    )
    parser.add_argument(
        "--templates",
        default=None,
        help="prompt templates file or imagenet1k (default: templates.txt beside)",
    )
    from ..data.loader import DataSpec
    from ..flags import Range, typed
    from ..flags import add_arguments as add_field_arguments

    parser.add_argument("--batch-size", type=typed(int, Range(1)), default=256)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--workers",
        type=typed(int, Range(0)),
        default=0,
        help="data loader workers (at most what the machine can run)",
    )

    data_flags = ("csv_img_key", "csv_caption_key", "csv_separator")
    data_flags += ("on_bad_sample", "max_bad_share")  # bad images: as in training
    add_field_arguments(parser, DataSpec, only=data_flags, suppress_defaults=False)
    parser.add_argument(
        "--wd",
        type=typed(float, Range(0, min_open=True)),
        nargs="+",
        default=list(DEFAULT_WEIGHT_DECAYS),
        help="linear probe: weight decays to sweep",
    )
    parser.add_argument(
        "--feature-cache", default=None, help="linear probe: .pt file caching frozen features"
    )
    parser.add_argument(
        "--merge-identical-captions",
        action="store_true",
        help="retrieval: score identical caption texts as one caption with several images "
        "(not CLIP_benchmark's protocol; results go under the dataset name <name>-merged)",
    )


def main(args: argparse.Namespace) -> dict:
    """Run ``clip-ping eval`` from parsed flags and print the metrics."""
    record = run_eval(
        args.model,
        args.task,
        args.dataset,
        out=args.out,
        train_dataset=args.train_dataset,
        classnames=args.classnames,
        templates=args.templates,
        batch_size=args.batch_size,
        device=args.device,
        workers=args.workers,
        csv_img_key=args.csv_img_key,
        csv_caption_key=args.csv_caption_key,
        csv_separator=args.csv_separator,
        weight_decays=tuple(args.wd),
        feature_cache=args.feature_cache,
        merge_identical_captions=args.merge_identical_captions,
        on_bad_sample=args.on_bad_sample,
        max_bad_share=args.max_bad_share,
    )
    print(json.dumps(record["metric_names"], indent=2))
    if args.out:
        print(f"result: {args.out}")
    return record
