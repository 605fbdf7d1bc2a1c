"""Evaluation: zero-shot classification, retrieval and linear probe (CLIP_benchmark protocols).

``run_eval(model_path, task, dataset)`` is ``clip-ping eval``; the pieces below score
precomputed embeddings, so they serve periodic evaluation during training as well.
"""

from .datasets import EvalDataset, builtin_datasets, load_eval_dataset
from .features import encode_images, encode_texts
from .linear_probe import linear_probe
from .retrieval import group_captions, retrieval_metrics
from .run import evaluate_dataset, result_path, run_eval
from .zeroshot import class_embeddings, zero_shot_metrics

__all__ = [
    "EvalDataset",
    "builtin_datasets",
    "class_embeddings",
    "encode_images",
    "encode_texts",
    "evaluate_dataset",
    "group_captions",
    "linear_probe",
    "load_eval_dataset",
    "result_path",
    "retrieval_metrics",
    "run_eval",
    "zero_shot_metrics",
]
