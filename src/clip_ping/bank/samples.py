"""The training data as a bank sees it: samples read by stable index, and the dataset's
fingerprint (what a bank of it depends on, recorded at build time, checked before use).

Examples:
    >>> from clip_ping.bank.samples import SampleReader, dataset_fingerprint
    >>> from clip_ping.data.loader import DataSpec
    >>> from clip_ping.data.shapes import build_shapes
    >>> _ = build_shapes("shapes", num_train=8, num_val=4, image_size=16)
    >>> spec = DataSpec("shapes/train.csv")
    >>> dataset_fingerprint(spec, "text").num_samples
    8
    >>> next(SampleReader(spec).read(0, 1, "text"))
    (0, 'at the bottom there is a large red triangle')
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

from ..data.bad_samples import BadSample, check_caption
from ..data.datasets import CsvDataset
from ..data.loader import DataSpec
from ..data.tars import (
    KeyIndex,
    build_key_index,
    decode_shard_sample,
    expand_urls,
    iter_shard,
    local_path,
)
from ..data.transforms import to_rgb


class Fingerprint(NamedTuple):
    digest: str  # sha256 hex
    num_samples: int
    covers: str  # what the digest depends on, in words (recorded in the bank's meta.json)


def _open_csv(spec: DataSpec) -> CsvDataset:
    return CsvDataset(
        spec.train_data,
        spec.csv_img_key,
        spec.csv_caption_key,
        spec.csv_separator,
        on_bad_sample="skip",  # SampleReader applies the policy itself
    )


def _file_stamp(path: Path) -> str:
    """``size:mtime_ns`` of a file, or ``missing``: cheap, and changes when it is rewritten."""
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def fingerprint_covers(spec: DataSpec, modality: str, file_stamps: bool = True) -> str:
    """What :func:`dataset_fingerprint` hashes for ``spec`` and ``modality``, in words."""
    if spec.resolved_type() != "csv":
        stamps = ", shard sizes and modification times" if file_stamps else ""
        return "sample keys and shard names" + stamps
    if modality == "text":
        return "image paths and captions"
    return "image paths" + (", file sizes and modification times" if file_stamps else "")


def dataset_fingerprint(spec: DataSpec, modality: str, file_stamps: bool = True) -> Fingerprint:
    """What a bank of ``modality`` over ``spec`` depends on, hashed, and the sample count.

    CSV: the image paths, plus the captions for text banks, plus for image banks each image
    file's size and modification time. Shards: the sample keys and shard names (from the key
    index), plus each local shard's size and modification time. Overwriting an image or a
    shard therefore makes its banks stale. Content is not hashed (that would mean reading the
    whole dataset); a file rewritten with its old size *and* modification time goes
    unnoticed. ``file_stamps=False`` gives the fingerprint of banks written before sizes and
    times were covered (they record no ``fingerprint_covers``).
    """
    covers = fingerprint_covers(spec, modality, file_stamps)
    digest = hashlib.sha256(f"{modality}\n".encode())
    stamps: list[str] | None = None
    if spec.resolved_type() == "csv":
        dataset = _open_csv(spec)
        keys = dataset.keys()
        texts = dataset.captions if modality == "text" else None
        if file_stamps and modality == "image":
            stamps = [_file_stamp(dataset.root / key) for key in keys]
    else:
        urls = expand_urls(spec.train_data)
        index = build_key_index(urls)
        keys, texts = list(index.keys), None
        digest.update("\n".join(index.shards).encode() + b"\0")
        if file_stamps:
            local = [local_path(url) for url in urls]
            digest.update("\n".join(_file_stamp(p) for p in local if p is not None).encode())
    for i, key in enumerate(keys):
        digest.update(key.encode() + b"\t")
        if texts is not None:
            digest.update((texts[i] or "").encode())  # None: a short CSV row
        if stamps is not None:
            digest.update(stamps[i].encode())
        digest.update(b"\n")
    return Fingerprint(digest.hexdigest(), len(keys), covers)


@dataclass
class SampleReader:
    """Reads samples ``[start, stop)`` in stable-index order: ``(index, item)`` pairs where
    item is an RGB PIL image, a caption, or ``(image, caption)`` for ``modality="both"``.
    A bad sample's item is its :class:`BadSample` (naming it) with ``spec.on_bad_sample ==
    "skip"``; with ``"error"`` it is raised. Picklable: DataLoader workers open their own
    files."""

    spec: DataSpec

    @cached_property
    def _csv(self) -> CsvDataset:
        return _open_csv(self.spec)

    @cached_property
    def _key_index(self) -> KeyIndex:
        return build_key_index(expand_urls(self.spec.train_data))

    def read(self, start: int, stop: int, modality: str) -> Iterator[tuple[int, Any]]:
        for index, item in self._read(start, stop, modality):
            if isinstance(item, BadSample) and self.spec.on_bad_sample == "error":
                raise item
            yield index, item

    def _read(self, start: int, stop: int, modality: str) -> Iterator[tuple[int, Any]]:
        if self.spec.resolved_type() == "csv":
            dataset = self._csv
            for i in range(start, stop):
                where = f"image {dataset.keys()[i]!r} (row {i} of {dataset.path})"
                try:
                    caption = check_caption(dataset.captions[i])
                    sample = dataset[i] if modality != "text" else {"image": None}
                    if "bad" in sample:
                        raise BadSample(sample["bad"])
                except BadSample as bad:
                    yield i, bad.at(where)
                    continue
                yield i, _pick(sample["image"], caption, modality)
            return
        urls = expand_urls(self.spec.train_data)
        index = self._key_index
        for shard, offset in enumerate(index.offsets):
            first, end = max(start - offset, 0), min(stop - offset, index.counts[shard])
            if first >= end:
                continue
            for position, key, files in iter_shard(urls[shard], first, end):
                try:
                    image, caption = decode_shard_sample(files, image=modality != "text")
                except BadSample as bad:
                    yield offset + position, bad.at(f"sample {key!r} of shard {urls[shard]}")
                    continue
                rgb = to_rgb(image) if image is not None else None
                yield offset + position, _pick(rgb, caption, modality)


def _pick(image: Any, caption: str, modality: str) -> Any:
    return {"image": image, "text": caption, "both": (image, caption)}[modality]
