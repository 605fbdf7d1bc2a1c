"""One training-data interface over CSV files and WebDataset shards.

The training loop asks for ``batches_per_epoch(batch_size)`` and for
``loader(epoch, start_batch, batch_size, workers, prepare)``, which yields this rank's
batches::

    {"image": (B, 3, H, W) float, "text": (B, L) long, "index": (B,) long,
     "bad_samples": [(index, key, reason), ...]}

``start_batch`` is the first batch a resumed loader yields. ``prepare(batch, epoch) ->
batch``, if given, runs on each collated batch in the loader's worker processes (in this
process with ``workers=0``): the training loop has its neighbours drawn and their bank rows
read there, a function of each sample's index and the epoch
(:class:`clip_ping.guidance.NeighborTransform`). It must be picklable where workers are
spawned rather than forked.

With ``on_bad_sample="skip"`` a batch may hold fewer than ``batch_size`` samples: the bad
ones are listed in ``bad_samples`` instead (see :mod:`.bad_samples`).

Batches are a function of (seed, epoch, rank, world_size, batch_size) and, for shards only,
the worker count; resuming at ``start_batch`` yields exactly the rest of the epoch.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch.utils.data import DataLoader

from ..flags import Range, check_ranges
from ..workers import loader_workers
from .bad_samples import BAD_SAMPLE_POLICIES, DEFAULT_MAX_BAD_SHARE, check_policy, collate_good
from .csv_table import check_separator
from .datasets import CsvDataset, Tokenizer, Transform
from .shards import ShardDataset
from .tars import build_key_index, expand_urls, iter_shard

DATASET_TYPES = ("csv", "webdataset", "auto")
Prepare = Callable[[dict, int], dict]


def _flag(default, help: str, **kw):
    return field(default=default, metadata={"help": help, "group": "data", **kw})


@dataclass
class DataSpec:
    """Where the training pairs are and how to read them (open_clip's flag names).

    The one source of these flags: ``clip-ping train`` (``TrainConfig``), ``bank build``,
    ``bank show`` and ``tokenizer train`` take them from these fields, defaults and help
    (:func:`clip_ping.training.config.add_arguments`).
    """

    train_data: str = _flag(None, "training CSV/TSV or WebDataset shards")
    dataset_type: str = _flag(
        "auto", "csv | webdataset | auto (by extension)", choices=DATASET_TYPES
    )
    csv_img_key: str = _flag("filepath", "CSV column with image paths")
    csv_caption_key: str = _flag("title", "CSV column with captions")
    csv_separator: str | None = _flag(None, "CSV separator (default: tab for .tsv, else comma)")
    train_num_samples: int | None = _flag(
        None, "webdataset: samples per epoch (default: all the shards hold)", range=Range(1)
    )
    on_bad_sample: str = _flag(
        "skip",
        "skip (log with the key, count) | error: unreadable images, empty captions",
        choices=BAD_SAMPLE_POLICIES,
    )
    max_bad_share: float = _flag(
        DEFAULT_MAX_BAD_SHARE,
        "skip: stop when more of the samples are bad",
        range=Range(0, 1, max_open=True, hint="a fraction such as 0.01"),
    )
    dataset_resampled: bool = _flag(
        False, "webdataset: draw shards with replacement; epochs of --train-num-samples"
    )

    def __post_init__(self):
        if not self.train_data:
            raise ValueError("--train-data is required: a CSV/TSV file or WebDataset shards")
        if self.csv_separator is not None:
            check_separator(self.csv_separator)  # before any work, not at the first read
        check_ranges(self)

    def resolved_type(self) -> str:
        if self.dataset_type != "auto":
            return self.dataset_type
        data = self.train_data
        looks_sharded = ".tar" in data or "{" in data or "::" in data
        return "webdataset" if looks_sharded else "csv"


class TrainData(Protocol):
    """What the training loop needs from a dataset (see the module docstring)."""

    num_samples: int

    def batches_per_epoch(self, batch_size: int) -> int: ...

    def loader(
        self,
        epoch: int,
        start_batch: int,
        batch_size: int,
        workers: int,
        prepare: Prepare | None = None,
    ) -> Iterable[dict]: ...


def _collate(samples: list[dict], prepare: Prepare | None, epoch: int) -> dict:
    batch = collate_good(samples)
    return prepare(batch, epoch) if prepare is not None else batch


def _loader_options(workers: int, prepare: Prepare | None, epoch: int) -> dict:
    """What the training loaders share: workers, collation (then ``prepare``), pinning."""
    return dict(
        **loader_workers(workers),
        collate_fn=functools.partial(_collate, prepare=prepare, epoch=epoch),
        pin_memory=torch.cuda.is_available(),
    )


def _check_sizes(num_samples: int, batch_size: int, world_size: int, source: str) -> int:
    """Full global batches per epoch (drop_last); an error if there is none."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {batch_size}")
    global_batch = batch_size * world_size
    if num_samples < global_batch:
        raise ValueError(
            f"--batch-size {batch_size} x {world_size} ranks = {global_batch} exceeds the "
            f"{num_samples} samples of {source}; lower --batch-size or use more data"
        )
    return num_samples // global_batch


def _check_start(start_batch: int, num_batches: int) -> None:
    if not 0 <= start_batch <= num_batches:
        raise ValueError(
            f"start_batch {start_batch} is outside the epoch's {num_batches} batches; was the "
            "checkpoint written with another --batch-size or number of ranks?"
        )


class CsvTrainData:
    """CSV pairs: a permutation of all rows per epoch, dealt round-robin to ranks.

    Exact for any worker count: the sampler fixes which rows form each batch and each row's
    augmentation depends only on (seed, epoch, row).
    """

    def __init__(self, dataset: CsvDataset, seed: int, rank: int = 0, world_size: int = 1):
        self.dataset, self.seed, self.rank, self.world_size = dataset, seed, rank, world_size
        self.num_samples = len(dataset)

    def batches_per_epoch(self, batch_size: int) -> int:
        return _check_sizes(self.num_samples, batch_size, self.world_size, str(self.dataset.path))

    def rank_indices(self, epoch: int, batch_size: int) -> list[int]:
        """Rows this rank reads in ``epoch``, in order (``batches_per_epoch * batch_size``)."""
        used = self.batches_per_epoch(batch_size) * batch_size * self.world_size
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.num_samples, generator=generator)[:used]
        return order[self.rank :: self.world_size].tolist()

    def loader(
        self,
        epoch: int,
        start_batch: int,
        batch_size: int,
        workers: int,
        prepare: Prepare | None = None,
    ) -> DataLoader:
        _check_start(start_batch, self.batches_per_epoch(batch_size))
        rows = self.rank_indices(epoch, batch_size)[start_batch * batch_size :]
        # (epoch, row) items: the dataset seeds each row's augmentation from both.
        items = [(epoch, row) for row in rows]
        return DataLoader(
            self.dataset,
            batch_size=batch_size,
            sampler=items,
            drop_last=True,
            **_loader_options(workers, prepare, epoch),
        )


class ShardTrainData:
    """WebDataset shards through :class:`ShardDataset`.

    Exact resume needs the same ``workers`` as the interrupted run: the worker count decides
    which samples share a shuffle buffer. Each sample is still read once per epoch, whatever
    the count.
    """

    def __init__(self, dataset: ShardDataset):
        self.dataset = dataset
        self.num_samples = dataset.num_samples

    def batches_per_epoch(self, batch_size: int) -> int:
        source = f"{len(self.dataset.urls)} shards ({self.dataset.urls[0]}, ...)"
        return _check_sizes(self.num_samples, batch_size, self.dataset.world_size, source)

    def loader(
        self,
        epoch: int,
        start_batch: int,
        batch_size: int,
        workers: int,
        prepare: Prepare | None = None,
    ) -> DataLoader:
        _check_start(start_batch, self.batches_per_epoch(batch_size))
        # A copy per loader: an earlier loader not yet iterated keeps its own epoch.
        dataset = copy.copy(self.dataset)
        dataset.batch_size = batch_size
        dataset.set_epoch(epoch, start_batch)
        return DataLoader(
            dataset, batch_size=batch_size, **_loader_options(workers, prepare, epoch)
        )


def build_train_data(
    spec: DataSpec,
    transform: Transform,
    tokenizer: Tokenizer,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
) -> CsvTrainData | ShardTrainData:
    """Open ``spec.train_data`` as CSV or WebDataset shards for ``rank`` of ``world_size``."""
    check_policy(spec.on_bad_sample, spec.max_bad_share)
    if spec.resolved_type() == "csv":
        shard_only = {
            "--dataset-resampled": spec.dataset_resampled,
            f"--train-num-samples {spec.train_num_samples}": spec.train_num_samples is not None,
        }
        for flag in (flag for flag, given in shard_only.items() if given):
            raise ValueError(
                f"{flag} applies to WebDataset shards, but --train-data {spec.train_data} is "
                "read as CSV, whose epoch is every row once; drop the flag or pass shards"
            )
        if os.path.isdir(spec.train_data):
            raise ValueError(
                f"--train-data {spec.train_data} is a folder; pass its CSV file (e.g. "
                f"{spec.train_data}/train.csv) or its shards ({spec.train_data}/{{00000..00009}}.tar)"
            )
        dataset = CsvDataset(
            spec.train_data,
            img_key=spec.csv_img_key,
            caption_key=spec.csv_caption_key,
            separator=spec.csv_separator,
            transform=transform,
            tokenizer=tokenizer,
            seed=seed,
            on_bad_sample=spec.on_bad_sample,
        )
        if len(dataset) == 0:
            raise ValueError(f"--train-data {spec.train_data} has no rows")
        return CsvTrainData(dataset, seed, rank, world_size)

    urls = expand_urls(spec.train_data)
    key_index = build_key_index(urls)
    if len(key_index) == 0:
        raise ValueError(
            f"--train-data {spec.train_data}: the {len(urls)} shards hold no samples (a sample "
            "is KEY.jpg|png|webp with KEY.txt)"
        )
    dataset = ShardDataset(
        urls,
        transform,
        tokenizer,
        key_index,
        seed=seed,
        num_samples=spec.train_num_samples,
        rank=rank,
        world_size=world_size,
        on_bad_sample=spec.on_bad_sample,
        resampled=spec.dataset_resampled,
    )
    return ShardTrainData(dataset)


def read_captions(spec: DataSpec) -> list[str]:
    """Every training caption, in stable-index order (for training a tokenizer)."""
    if spec.resolved_type() == "csv":
        dataset = CsvDataset(
            spec.train_data,
            img_key=spec.csv_img_key,
            caption_key=spec.csv_caption_key,
            separator=spec.csv_separator,
        )
        return list(dataset.captions)
    captions = []
    for url in expand_urls(spec.train_data):
        for _, _, files in iter_shard(url):
            if "txt" in files:  # a cut shard's last sample may have none
                captions.append(files["txt"].decode("utf-8", errors="replace"))
    return captions


def data_fingerprint(data: CsvTrainData | ShardTrainData) -> dict:
    """What a run trains on, for its checkpoints: the sample count and a hash of each
    sample's key and caption (CSV), or of the shards' names and sample keys (shards). A
    resume on data that changed at the same path is refused (:func:`other_data`). Image
    files are not covered: the hash costs no reads beyond the listing."""
    digest = hashlib.sha256()
    if isinstance(data, CsvTrainData):
        count, dataset = len(data.dataset), data.dataset
        lines: Iterable[str] = map("{}\t{}".format, dataset.keys(), dataset.captions)
    else:
        index = data.dataset.key_index
        count, lines = len(index), [*index.shards, "", *index.keys]
    for line in lines:
        digest.update(line.encode("utf-8", "surrogatepass") + b"\n")
    return {"samples": count, "sha256": digest.hexdigest()}


def other_data(recorded: dict, spec: DataSpec) -> str | None:
    """How ``spec``'s data differs from the ``recorded`` :func:`data_fingerprint`, in words;
    None if it does not."""
    now = data_fingerprint(build_train_data(spec, transform=None, tokenizer=None, seed=0))
    if now == recorded:
        return None
    if now["samples"] != recorded["samples"]:
        return f"it held {recorded['samples']:,} samples then and holds {now['samples']:,} now"
    return f"it holds {now['samples']:,} samples as then, but their paths or captions changed"
