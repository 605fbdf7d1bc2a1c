"""Data: corpus builders, readers that yield the stable sample index, and transforms.

The training loop uses :func:`build_train_data`; banks and evaluation read
:class:`CsvDataset` / :class:`ShardDataset` directly.
"""

from .datasets import CsvDataset, sample_rng
from .loader import CsvTrainData, DataSpec, ShardTrainData, TrainData, build_train_data
from .shapes import build_shapes
from .shards import ShardDataset, write_shards
from .tars import KeyIndex, build_key_index, expand_urls, iter_shard
from .transforms import CLIP_MEAN, CLIP_STD, EvalTransform, TrainTransform, to_rgb

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "CsvDataset",
    "CsvTrainData",
    "DataSpec",
    "EvalTransform",
    "KeyIndex",
    "ShardDataset",
    "ShardTrainData",
    "TrainData",
    "TrainTransform",
    "build_key_index",
    "build_shapes",
    "build_train_data",
    "expand_urls",
    "iter_shard",
    "sample_rng",
    "to_rgb",
    "write_shards",
]
