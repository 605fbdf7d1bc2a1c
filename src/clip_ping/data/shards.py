"""WebDataset shards as a training dataset (:class:`ShardDataset`: each rank and worker reads
its shards, shuffled in a buffer, yielding the samples' stable indices), and a writer of
shards from a CSV (tests, benchmarks)."""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch.distributed as dist
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from ..io import atomic_write, atomic_write_text
from .bad_samples import (
    BadSample,
    bad_record,
    check_policy,
)
from .datasets import IMAGE_EXTENSIONS, CsvDataset, Tokenizer, Transform, make_sample
from .tars import (
    KeyIndex,
    build_key_index,
    decode_shard_sample,
    expand_urls,
    iter_shard,
    shard_name,
)


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _shuffle_buffer(items: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    """WebDataset's shuffle: fill ``size`` slots, then emit a random slot per new item."""
    buffer = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        slot = int(rng.integers(size))
        yield buffer[slot]
        buffer[slot] = item
    rng.shuffle(buffer)
    yield from buffer


class ShardDataset(IterableDataset):
    """WebDataset shards as an ``IterableDataset`` of ``{"image", "text", "index"}`` dicts.

    Each epoch the shard order is shuffled with ``(seed, epoch)``; the resulting stream of
    samples is cut into one contiguous range per rank (``num_samples // world_size`` samples)
    and, within a rank, one per DataLoader worker, sized in whole batches so that the
    DataLoader's round-robin over workers yields batch ``b`` from worker ``b % workers``.
    Ranges may start mid-shard (the members before are seeked over), so ranks and workers get
    equal shares whatever the shard sizes, and every index of the first ``num_samples`` of
    the epoch's stream is yielded exactly once (the tail that does not fill a batch is
    dropped). A shuffle buffer mixes samples within a worker's range.

    ``resampled=True`` (open_clip's ``--dataset-resampled``): each epoch's stream is shards
    drawn *with replacement* (seeded by ``(seed, epoch)``) until it holds ``num_samples``
    samples, which may exceed the shards' total: epochs become virtual ("samples seen"), a
    sample may occur twice in one and not at all in another, and the split by rank and worker
    is unchanged. Stable indices still come from the key index, so banks line up.

    Determinism: the same (seed, epoch, world_size, batch_size, workers) gives the same
    batches; another worker count gives other batches (each sample still exactly once).
    ``set_epoch(epoch, start_batch)`` resumes mid-epoch: each worker replays its shuffle
    buffer on undecoded bytes and discards the batches already consumed, and workers take
    their roles rotated by ``start_batch`` so the DataLoader's first batch is ``start_batch``.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        transform: Transform | None = None,
        tokenizer: Tokenizer | None = None,
        key_index: KeyIndex | None = None,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        shuffle: bool = True,
        batch_size: int = 1,
        num_samples: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        on_bad_sample: str = "error",
        resampled: bool = False,
    ):
        check_policy(on_bad_sample)
        self.on_bad_sample = on_bad_sample
        self.urls = expand_urls(urls)
        self.key_index = key_index if key_index is not None else build_key_index(self.urls)
        if list(self.key_index.shards) != [shard_name(u) for u in self.urls]:
            raise ValueError("key_index was built for other shards; rebuild it for these urls")
        self.resampled = resampled
        self.num_samples = len(self.key_index) if num_samples is None else num_samples
        limit = math.inf if resampled and len(self.key_index) else len(self.key_index)
        if not 0 < self.num_samples <= limit:
            raise ValueError(
                f"num_samples={self.num_samples} but the shards hold {len(self.key_index)} "
                "samples; use a positive number no larger than that, or --dataset-resampled "
                "for virtual epochs of any size"
            )
        default_rank, default_world = _rank_and_world()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        self.transform, self.tokenizer, self.seed = transform, tokenizer, seed
        self.shuffle, self.shuffle_buffer, self.batch_size = shuffle, shuffle_buffer, batch_size
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Iterate ``epoch`` from batch ``start_batch`` on (this rank's batches, in order)."""
        self.epoch, self.start_batch = epoch, start_batch

    @property
    def batches_per_epoch(self) -> int:
        """Full batches of ``batch_size`` this rank yields per epoch."""
        return self.num_samples // self.world_size // self.batch_size

    def _shard_order(self) -> np.ndarray:
        """This epoch's shards in stream order (resampled: drawn until ``num_samples``)."""
        if self.resampled:
            rng = np.random.default_rng([self.seed, self.epoch, 2])
            counts = np.asarray(self.key_index.counts)
            drawn = np.empty(0, dtype=np.int64)
            while counts[drawn].sum() < self.num_samples:  # whole rounds: fixed by the seed
                drawn = np.concatenate([drawn, rng.integers(len(counts), size=len(counts))])
            needed = np.searchsorted(np.cumsum(counts[drawn]), self.num_samples) + 1
            return drawn[:needed]
        if not self.shuffle:
            return np.arange(len(self.urls))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.urls))

    def segments(self, start: int, stop: int) -> list[tuple[int, int, int]]:
        """Positions ``[start, stop)`` of this epoch's stream as ``(shard, first, end)`` parts."""
        parts, position = [], 0
        for shard in self._shard_order().tolist():
            count = self.key_index.counts[shard]
            lo, hi = max(start, position), min(stop, position + count)
            if lo < hi:
                parts.append((shard, lo - position, hi - position))
            position += count
        return parts

    def worker_range(self, worker: int, num_workers: int) -> tuple[int, int]:
        """Stream positions ``[start, stop)`` read by ``worker`` of this rank."""
        num_batches = self.batches_per_epoch
        batches = [len(range(w, num_batches, num_workers)) for w in range(num_workers)]
        start = self.rank * (self.num_samples // self.world_size)
        start += self.batch_size * sum(batches[:worker])
        return start, start + self.batch_size * batches[worker]

    def _raw_samples(self, start: int, stop: int) -> Iterator[tuple[int, dict[str, bytes]]]:
        for shard, first, end in self.segments(start, stop):
            offset = self.key_index.offsets[shard]
            for position, key, files in iter_shard(self.urls[shard], first, end):
                index = offset + position
                if self.key_index.keys[index] != key:
                    raise RuntimeError(
                        f"shard {self.urls[shard]} changed since its key index was built "
                        f"(sample {position} is {key!r}, expected {self.key_index.keys[index]!r})"
                        "; delete the keys-*.json beside the shards to rebuild it"
                    )
                yield index, files

    def _decode(self, index: int, files: dict[str, bytes]) -> dict:
        try:
            image, caption = decode_shard_sample(files)
        except BadSample as bad:
            key = self.key_index.keys[index]
            if self.on_bad_sample == "skip":
                return bad_record(index, key, bad.reason)
            raise bad.at(f"sample {key!r} (index {index}) of {self.urls}") from None
        return make_sample(
            image, caption, index, self.epoch, self.seed, self.transform, self.tokenizer
        )

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        physical, num_workers = (info.id, info.num_workers) if info else (0, 1)
        worker = (physical + self.start_batch) % num_workers
        start, stop = self.worker_range(worker, num_workers)
        stream = self._raw_samples(start, stop)
        if self.shuffle and self.shuffle_buffer > 1:
            rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker, 1])
            stream = _shuffle_buffer(stream, self.shuffle_buffer, rng)
        # This worker's batches of the epoch are worker, worker + num_workers, ...; those
        # before start_batch were consumed already.
        consumed = len(range(worker, self.start_batch, num_workers))
        samples = itertools.islice(stream, self.batch_size * consumed, None)
        for index, files in samples:
            yield self._decode(index, files)


# --------------------------------------------------------------------------- writing shards


def write_shards(
    csv_dataset_or_path: CsvDataset | str | os.PathLike,
    out_dir: str | os.PathLike,
    samples_per_shard: int = 1000,
) -> list[str]:
    """Copy a CSV corpus into img2dataset-layout shards ``out_dir/00000.tar, ...``.

    Samples keep CSV row order, so a sample's stable index is the same in both forms. Each
    sample is ``KEY.<image ext>`` (the original file bytes), ``KEY.txt`` (caption) and
    ``KEY.json`` (key, caption, CSV row, label); ``sizes.json`` maps shard name → count.
    Returns the shard paths.
    """
    dataset = (
        csv_dataset_or_path
        if isinstance(csv_dataset_or_path, CsvDataset)
        else CsvDataset(csv_dataset_or_path)
    )
    if len(dataset) == 0:
        raise ValueError(f"{dataset.path} has no rows; nothing to write")
    out = Path(out_dir)
    key_digits = len(str(samples_per_shard - 1))
    num_shards = math.ceil(len(dataset) / samples_per_shard)
    filepaths = dataset.keys()
    paths, sizes = [], {}
    for shard in range(num_shards):
        rows = range(shard * samples_per_shard, min(len(dataset), (shard + 1) * samples_per_shard))
        name = f"{shard:05d}.tar"

        def write(f, shard=shard, rows=rows):
            with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for row in rows:
                    key = f"{shard:05d}{row - rows.start:0{key_digits}d}"
                    for ext, data in _sample_files(dataset, row, key, filepaths[row]):
                        info = tarfile.TarInfo(f"{key}.{ext}")
                        info.size, info.mode, info.mtime = len(data), 0o644, 0  # reproducible
                        tar.addfile(info, io.BytesIO(data))

        atomic_write(out / name, write)
        paths.append(str(out / name))
        sizes[name] = len(rows)
    atomic_write_text(out / "sizes.json", json.dumps(sizes, indent=1) + "\n")
    return paths


def _sample_files(
    dataset: CsvDataset, row: int, key: str, filepath: str
) -> list[tuple[str, bytes]]:
    path = dataset.image_path(row)
    ext = path.suffix.lower().lstrip(".")
    if ext in IMAGE_EXTENSIONS:
        image_bytes = path.read_bytes()
    else:  # e.g. .bmp: re-encode losslessly, keeping any alpha
        buffer = io.BytesIO()
        with Image.open(path) as image:
            image.save(buffer, format="PNG")
        ext, image_bytes = "png", buffer.getvalue()
    caption = dataset.captions[row]
    meta = {"key": key, "caption": caption, "csv_row": row, "filepath": filepath}
    if dataset.labels is not None:
        meta["label"] = dataset.labels[row]
    return [(ext, image_bytes), ("txt", caption.encode()), ("json", json.dumps(meta).encode())]
