"""Readers that yield each sample's stable index: CSV/TSV files and WebDataset tar shards.

Neighbour banks are indexed by sample, so every sample carries a **stable index** that does
not depend on shuffling, workers or ranks: the row number of a CSV (0-based, header
excluded), or for shards the position in "shards in list order, then members in tar order"
(:class:`KeyIndex`). Both readers yield the same dict::

    {"image": (3, H, W) float tensor, "text": (L,) LongTensor, "index": int}

Augmentation randomness comes from ``numpy.random.default_rng([seed, epoch, index])``, so a
sample's pixels depend on nothing else (resume and worker count leave them unchanged).

Shards follow img2dataset's layout: ``KEY.jpg|.png|.webp`` + ``KEY.txt`` (+ ``KEY.json``).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import math
import os
import tarfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import braceexpand
import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ..io import atomic_write, atomic_write_text
from .bad_samples import (
    BadSample,
    bad_record,
    check_caption,
    check_policy,
    decode_image,
    inside_root,
)
from .transforms import to_rgb

Transform = Callable[[Image.Image, np.random.Generator], torch.Tensor]
Tokenizer = Callable[[list[str]], torch.Tensor]

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTENSION = "txt"
KEY_INDEX_FORMAT = "clip-ping-key-index/1"


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator a sample's transform draws from: a function of (seed, epoch, index) only."""
    return np.random.default_rng([seed, epoch, index])


def _make_sample(
    image: Image.Image,
    caption: str,
    index: int,
    epoch: int,
    seed: int,
    transform: Transform | None,
    tokenizer: Tokenizer | None,
) -> dict:
    # Without a transform / tokenizer the raw RGB image / caption string is returned, which is
    # what feature extractors with their own preprocessing want.
    pixels = transform(image, sample_rng(seed, epoch, index)) if transform else to_rgb(image)
    text = tokenizer([caption])[0] if tokenizer else caption
    # The caption string rides along for online text teachers (--neighbor-source active).
    return {"image": pixels, "text": text, "index": index, "caption": caption}


def _split_item(item: int | tuple[int, int]) -> tuple[int, int]:
    """``index`` or ``(epoch, index)`` → ``(epoch, index)``."""
    if isinstance(item, tuple):
        epoch, index = item
        return int(epoch), int(index)
    return 0, int(item)


class CsvDataset(Dataset):
    """Image-caption pairs listed in a CSV/TSV file (open_clip's ``--csv-*`` conventions).

    ``dataset[i]`` or ``dataset[(epoch, i)]`` returns ``{"image": (3, H, W), "text": (L,),
    "index": i}`` where ``i`` is the CSV row (0-based, header excluded). Image paths are read
    relative to ``root``, by default the CSV's folder. A ``label`` column, if present, is
    exposed as :attr:`labels` (zero-shot and linear-probe evaluation use it).

    A bad sample (see :mod:`.bad_samples`) raises :class:`BadSample` with
    ``on_bad_sample="error"``; with ``"skip"`` it is returned as a ``bad_record``. When
    ``root`` is given, paths that lead outside it are bad samples and never opened.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        img_key: str = "filepath",
        caption_key: str = "title",
        separator: str | None = None,
        root: str | os.PathLike | None = None,
        transform: Transform | None = None,
        tokenizer: Tokenizer | None = None,
        seed: int = 0,
        on_bad_sample: str = "error",
    ):
        check_policy(on_bad_sample)
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"CSV file {self.path} not found; pass --train-data a .csv/.tsv file (e.g. "
                "from `clip-ping data shapes --out DIR`: DIR/train.csv) or WebDataset shards"
            )
        if separator is None:
            separator = "\t" if self.path.suffix.lower() == ".tsv" else ","
        with open(self.path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter=separator)
            columns = list(reader.fieldnames or [])
            for key, flag in ((img_key, "--csv-img-key"), (caption_key, "--csv-caption-key")):
                if key not in columns:
                    raise ValueError(
                        f"{self.path}: no column {key!r}; columns found (separator "
                        f"{separator!r}): {columns}. Name the right column with {flag}, or "
                        "set --csv-separator if the columns look merged"
                    )
            rows = list(reader)
        self.root = Path(root) if root is not None else self.path.parent
        self.confined = root is not None  # a given root is a boundary, the default is not
        self._keys = [row[img_key] for row in rows]
        self.captions: list[str] = [row[caption_key] for row in rows]
        self.labels: list[int] | None = (
            [int(row["label"]) for row in rows] if "label" in columns else None
        )
        self.transform, self.tokenizer, self.seed = transform, tokenizer, seed
        self.on_bad_sample = on_bad_sample

    def __len__(self) -> int:
        return len(self._keys)

    def keys(self) -> list[str]:
        """Image paths as written in the CSV, in row order: the samples' stable keys."""
        return list(self._keys)

    def image_path(self, index: int) -> Path:
        if self.confined:
            return inside_root(self.root, self._keys[index])
        return self.root / self._keys[index]

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        epoch, index = _split_item(item)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.path} ({len(self)} rows)")
        try:
            caption = check_caption(self.captions[index])
            image = decode_image(self.image_path(index))
        except BadSample as bad:
            if self.on_bad_sample == "skip":
                return bad_record(index, self._keys[index], bad.reason)
            if bad.reason == "file not found":
                bad = BadSample(f"not found (image paths are read relative to {self.root})")
            raise bad.at(f"image {self._keys[index]!r} (row {index} of {self.path})") from None
        return _make_sample(image, caption, index, epoch, self.seed, self.transform, self.tokenizer)


# --------------------------------------------------------------------------- WebDataset shards


def expand_urls(spec: str | Sequence[str]) -> list[str]:
    """Shard URLs from ``"a/{00000..00009}.tar::b/{0..3}.tar"`` or a list of such strings."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    urls = []
    for part in itertools.chain.from_iterable(s.split("::") for s in specs):
        if part.strip():
            urls.extend(braceexpand.braceexpand(part.strip()))
    return urls


def _local_path(url: str) -> Path | None:
    """The file behind ``url``, or None for ``pipe:`` and remote URLs."""
    if url.startswith("file:"):  # file:///abs/x.tar or file:rel/x.tar
        return Path(url.removeprefix("file:").removeprefix("//")).expanduser()
    if url.startswith("pipe:") or "://" in url:
        return None
    return Path(url).expanduser()


def _shard_name(url: str) -> str:
    # Local shards are matched by file name, so a moved corpus keeps its key index.
    path = _local_path(url)
    return path.name if path is not None else url


@contextlib.contextmanager
def _open_tar(url: str) -> Iterator[tarfile.TarFile]:
    path = _local_path(url)
    if path is not None:
        # Random access: members we skip are seeked over, not read.
        with tarfile.open(path, mode="r:") as tar:
            yield tar
        return
    from webdataset.gopen import gopen  # only needed for pipe:/remote URLs

    stream = gopen(url, "rb")
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            yield tar
    finally:
        stream.close()


def _split_name(name: str) -> tuple[str, str] | None:
    """``"dir/000012.jpg"`` → ``("dir/000012", "jpg")`` (WebDataset: the key ends at the first
    dot of the file name); None for names that belong to no sample."""
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return None
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def decode_shard_sample(
    files: dict[str, bytes], image: bool = True
) -> tuple[Image.Image | None, str]:
    """``(image, caption)`` of a sample from :func:`iter_shard` (image None if not asked
    for); :class:`BadSample` if it is cut, undecodable or has an empty caption."""
    if "error" in files:
        raise BadSample(files["error"].decode())
    caption = check_caption(files[TEXT_EXTENSION])
    if not image:
        return None, caption
    return decode_image(files[next(e for e in IMAGE_EXTENSIONS if e in files)]), caption


def _is_sample(extensions: set[str]) -> bool:
    return TEXT_EXTENSION in extensions and any(e in extensions for e in IMAGE_EXTENSIONS)


def iter_shard(
    url: str, start: int = 0, stop: int | None = None, read: bool = True
) -> Iterator[tuple[int, str, dict[str, bytes]]]:
    """Yield ``(position, key, {ext: bytes})`` for the samples at ``start <= position < stop``
    of one shard. A sample is a run of members sharing a key with an image and a ``.txt``;
    positions count samples only. Members before ``start`` are not read (``read=False``: none
    are, for listing keys).

    A shard cut short (an interrupted download) ends at the cut with a warning; the sample
    it cut through is yielded with ``files["error"]`` set, read or not, so listing and
    reading agree on positions."""
    position, key, files, extensions = 0, None, {}, set()
    with _open_tar(url) as tar:
        for member in itertools.chain(_members(tar, url), [None]):  # None flushes the last
            if member is not None and member.name == _CUT:
                files["error"] = b"shard cut short inside this sample"
                member = None
            if member is not None:
                parsed = _split_name(member.name) if member.isfile() else None
                if parsed is None:
                    continue
                name_key, ext = parsed
            if member is None or name_key != key:
                if key is not None and _is_sample(extensions):
                    if position >= start:
                        yield position, key, files
                    position += 1
                    if stop is not None and position >= stop:
                        return
                if member is None:
                    return
                key, files, extensions = name_key, {}, set()
            extensions.add(ext)
            # A sample's position is known at its first member, so skipped ones cost no read.
            if read and position >= start:
                try:
                    files[ext] = tar.extractfile(member).read()
                except tarfile.ReadError:  # data cut; the next header read reports the cut
                    files["error"] = b"shard cut short inside this sample"


_CUT = "\0cut"  # a member name no tar holds: marks where a cut shard ends


def _members(tar: tarfile.TarFile, url: str) -> Iterator[tarfile.TarInfo]:
    """The shard's members; a cut shard ends with a marker member named :data:`_CUT`."""
    count, fix = 0, "download or write the shard again"
    try:
        for member in tar:
            count += 1
            yield member
    except tarfile.ReadError as exc:  # a member's data ends early
        warnings.warn(
            f"shard {url} is cut short after {count} members ({exc}); the samples after the "
            f"cut are missing and the one cut through is a bad sample: {fix}",
            stacklevel=3,
        )
        yield tarfile.TarInfo(_CUT)
        return
    path = _local_path(url)
    # tarfile ends quietly at a cut header; a whole archive has end-of-archive blocks there.
    if path is not None and path.stat().st_size - tar.offset < tarfile.BLOCKSIZE:
        warnings.warn(
            f"shard {url} is cut short after {count} members (no end-of-archive block); the "
            f"samples after the cut are missing: {fix}",
            stacklevel=3,
        )


@dataclass(frozen=True)
class KeyIndex:
    """Sample key → stable index over a shard list: shards in list order, members in tar order.

    ``keys[i]`` is the key of stable index ``i``; shard ``s`` holds indices
    ``offsets[s] .. offsets[s] + counts[s] - 1``.
    """

    shards: tuple[str, ...]  # shard names (file names for local shards, else URLs)
    counts: tuple[int, ...]
    keys: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.keys)

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        return tuple(itertools.accumulate(self.counts, initial=0))[:-1]

    @cached_property
    def _index_of_key(self) -> dict[str, int]:
        return {key: i for i, key in enumerate(self.keys)}

    def index_of(self, key: str) -> int:
        try:
            return self._index_of_key[key]
        except KeyError:
            raise KeyError(
                f"sample key {key!r} is not in the key index of {self.shards[:3]}..."
            ) from None


def default_key_index_path(urls: Sequence[str]) -> Path | None:
    """``<first shard's folder>/keys-<hash of the shard list>.json``; None for remote shards."""
    first = _local_path(urls[0]) if urls else None
    if first is None:
        return None
    digest = hashlib.sha1("\n".join(_shard_name(u) for u in urls).encode()).hexdigest()[:12]
    return first.parent / f"keys-{digest}.json"


def _shard_bytes(urls: Sequence[str]) -> list[int | None]:
    """File size of each local shard (None for remote ones); an error if any is missing."""
    paths = [_local_path(url) for url in urls]
    missing = [u for u, p in zip(urls, paths, strict=True) if p is not None and not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"shard {missing[0]} not found ({len(missing)} of {len(urls)} shards missing); "
            "check --train-data: brace ranges like DIR/{00000..00009}.tar must match the "
            "files written (DIR/sizes.json lists them)"
        )
    return [path.stat().st_size if path is not None else None for path in paths]


def build_key_index(
    urls: str | Sequence[str], cache_path: str | os.PathLike | None = None
) -> KeyIndex:
    """Scan the shards once (headers only for local files) and map sample keys to indices.

    The result is cached as JSON (default :func:`default_key_index_path`) and reloaded while
    the shard names and local file sizes match; a stale cache is rebuilt.
    """
    urls = expand_urls(urls)
    if not urls:
        raise ValueError("no shards given; pass shard paths like DIR/{00000..00009}.tar")
    names = [_shard_name(u) for u in urls]
    sizes = _shard_bytes(urls)
    cache = Path(cache_path) if cache_path is not None else default_key_index_path(urls)
    if cache is not None and cache.is_file():
        stored = json.loads(cache.read_text())
        if (
            stored.get("format") == KEY_INDEX_FORMAT
            and stored["shards"] == names
            and stored["bytes"] == sizes
        ):
            return KeyIndex(tuple(names), tuple(stored["counts"]), tuple(stored["keys"]))

    counts, keys = [], []
    for url in urls:
        shard_keys = [key for _, key, _ in iter_shard(url, read=False)]
        counts.append(len(shard_keys))
        keys.extend(shard_keys)
    if len(set(keys)) != len(keys):
        seen, duplicate = set(), None
        for key in keys:
            if key in seen:
                duplicate = key
                break
            seen.add(key)
        raise ValueError(
            f"sample key {duplicate!r} occurs more than once in {len(urls)} shards; keys must "
            "be unique across shards for stable sample indices (rewrite the shards)"
        )
    index = KeyIndex(tuple(names), tuple(counts), tuple(keys))
    if cache is not None:
        payload = {"format": KEY_INDEX_FORMAT, "shards": names, "bytes": sizes}
        payload.update(counts=counts, keys=keys)
        try:
            atomic_write_text(cache, json.dumps(payload))
        except OSError as exc:  # read-only dataset folder: work on, rescan next time
            warnings.warn(f"could not cache the key index at {cache}: {exc}", stacklevel=2)
    return index


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
        if list(self.key_index.shards) != [_shard_name(u) for u in self.urls]:
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
        return _make_sample(
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
        consumed = self.batch_size * len(range(worker, self.start_batch, num_workers))
        for index, files in itertools.islice(stream, consumed, None):
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
