"""Feature banks: every training sample embedded once by a frozen teacher, row i = sample i.

A bank is a folder::

    features.npy      (N, D) float16, L2-normalised rows; readers memory-map it
    meta.json         teacher, modality, dim, N, dataset fingerprint, preprocessing, versions;
                      written last, so its presence means the bank is complete
    progress.json     only while building: the chunks of rows already flushed to features.npy
    neighbors.npy, similarities.npy, neighbors.json      added by ``clip-ping bank neighbors``

Bad samples (unreadable images, empty captions; see :mod:`.data.bad_samples`) follow
``--on-bad-sample``: with ``skip`` their rows stay zero, they are printed with their keys, and
``meta.json`` lists them under ``"skipped"``; :class:`Bank` exposes them as ``bank.skipped``
and neighbour mining never returns them. With ``error`` the build stops at the first one.

Building is resumable: rows are extracted in chunks of ``chunk_rows``; after each chunk is
written and flushed, ``progress.json`` is replaced atomically. A killed build rerun with the
same flags redoes at most the chunks in flight.

Under ``torchrun`` the ranks extract interleaved chunks and **rank 0 alone writes**: each round
every rank contributes one finished chunk to an all-gather. We chose this over "every rank
writes its range of one shared memmap" (which needs a page-coherent filesystem shared by all
nodes: rows at chunk edges share a page) and over "per-rank files merged by rank 0" (an extra
pass over a bank that is 31 GB for CC12M at 1280-d, and parts tied to one world size). The
progress file records chunks, not ranks, so a build may resume with another world size.

    clip-ping bank build --train-data shapes/train.csv --modality image --out banks/image
    torchrun --nproc_per_node 8 -m clip_ping.cli bank build --train-data 'cc3m/{00000..00331}.tar' \
        --modality text --out banks/cc3m-text
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from .data.bad_samples import BadSample, check_caption, check_policy
from .data.datasets import (
    CsvDataset,
    KeyIndex,
    build_key_index,
    decode_shard_sample,
    expand_urls,
    iter_shard,
)
from .data.loader import DataSpec
from .data.transforms import to_rgb
from .distributed import is_distributed, resolve_device
from .io import atomic_write_text
from .teachers import Teacher, create_teacher

BANK_FORMAT = "clip-ping-bank/1"
FEATURES, META, PROGRESS = "features.npy", "meta.json", "progress.json"
DEFAULT_CHUNK_ROWS = 4096  # rows per flushed chunk: the most work a killed build loses
VERSIONED_PACKAGES = ("clip-ping", "torch", "numpy", "transformers", "efficientnet-lite-pytorch")


# --------------------------------------------------------------------------- dataset identity


class Fingerprint(NamedTuple):
    digest: str  # sha256 hex
    num_samples: int


def _open_csv(spec: DataSpec) -> CsvDataset:
    return CsvDataset(
        spec.train_data, spec.csv_img_key, spec.csv_caption_key, spec.csv_separator,
        on_bad_sample="skip",  # SampleReader applies the policy itself
    )  # fmt: skip


def dataset_fingerprint(spec: DataSpec, modality: str) -> Fingerprint:
    """What a bank of ``modality`` over ``spec`` depends on, hashed, and the sample count.

    CSV: the image paths (+ the captions for text banks). Shards: the sample keys and shard
    names, read from the key index (captions are not read: that would mean reading every
    shard; the key index is rebuilt whenever a shard's size changes).
    """
    digest = hashlib.sha256(f"{modality}\n".encode())
    if spec.resolved_type() == "csv":
        dataset = _open_csv(spec)
        keys = dataset.keys()
        texts = dataset.captions if modality == "text" else None
    else:
        index = build_key_index(expand_urls(spec.train_data))
        keys, texts = list(index.keys), None
        digest.update("\n".join(index.shards).encode() + b"\0")
    for i, key in enumerate(keys):
        digest.update(key.encode() + b"\t")
        if texts is not None:
            digest.update((texts[i] or "").encode())  # None: a short CSV row
        digest.update(b"\n")
    return Fingerprint(digest.hexdigest(), len(keys))


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


# --------------------------------------------------------------------------- extraction


class _ChunkStream(IterableDataset):
    """Batches ``{"chunk", "index": (B,), "inputs"}`` of the given chunks; DataLoader worker
    w takes chunks w, w + W, ... so each chunk is finished by one worker."""

    def __init__(
        self, read, chunks, chunk_rows, num_rows, batch_size, preprocess, collate, sort_text=False
    ):
        self.read, self.chunks, self.chunk_rows, self.num_rows = read, chunks, chunk_rows, num_rows
        self.batch_size, self.preprocess, self.collate = batch_size, preprocess, collate
        self.sort_text = sort_text

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for chunk in self.chunks[worker::workers]:
            start = chunk * self.chunk_rows
            stop = min(start + self.chunk_rows, self.num_rows)
            rows: Iterable[tuple[int, Any]] = self.read(start, stop)
            if self.sort_text:
                # Captions of similar length share a batch: far less padding to encode.
                rows = sorted(rows, key=lambda row: len(row[1]) if isinstance(row[1], str) else 0)
            indices, items, skipped = [], [], 0
            for position, (index, item) in enumerate(rows, 1):
                if isinstance(item, BadSample):  # its row stays zero: that marks it skipped
                    print(f"skipped bad sample {item.where}: {item.reason}", file=sys.stderr)
                    skipped += 1
                else:
                    indices.append(index)
                    items.append(self.preprocess(item))
                if len(items) == self.batch_size or position == stop - start:
                    inputs = self.collate(items) if items else None
                    yield {"chunk": chunk, "index": indices, "inputs": inputs, "skipped": skipped}
                    indices, items, skipped = [], [], 0


def _unbatched(batch: Any) -> Any:
    return batch


class _Reader:
    """``read(start, stop)`` of one modality (dataset samples or the rows of an npy file)."""

    def __init__(self, spec: DataSpec, modality: str, teacher: Teacher):
        self.samples, self.modality = SampleReader(spec), modality
        self.npy = getattr(teacher, "path", None)

    def __call__(self, start: int, stop: int) -> Iterator[tuple[int, Any]]:
        if self.npy is not None:
            rows = np.load(self.npy, mmap_mode="r")
            yield from ((i, np.asarray(rows[i])) for i in range(start, stop))
        else:
            yield from self.samples.read(start, stop, self.modality)


def _extract(teacher: Teacher, stream: _ChunkStream, workers: int, bar: tqdm | None):
    """Yield ``(chunk, (rows, D) float16)`` as chunks finish."""
    loader = DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=_unbatched)
    pending: dict[int, list] = {}  # chunk → [features, rows still missing]
    for batch in loader:
        chunk, indices = batch["chunk"], np.asarray(batch["index"])
        if chunk not in pending:
            rows = min(stream.chunk_rows, stream.num_rows - chunk * stream.chunk_rows)
            pending[chunk] = [np.zeros((rows, teacher.dim), np.float16), rows]
        if len(indices):
            features = teacher.encode(batch["inputs"]).numpy().astype(np.float16)
            pending[chunk][0][indices - chunk * stream.chunk_rows] = features
        pending[chunk][1] -= len(indices) + batch["skipped"]
        if bar is not None:
            bar.update(len(indices) + batch["skipped"])
        if pending[chunk][1] == 0:
            yield chunk, pending.pop(chunk)[0]


def _gather_round(item, chunk_rows: int, dim: int, device: torch.device) -> list:
    """Every rank's finished chunk of this round (``item`` None: this rank has none left)."""
    if not is_distributed():
        return [item] if item is not None else []
    chunk, features = item if item is not None else (-1, np.zeros((0, dim), np.float16))
    padded = torch.zeros(chunk_rows, dim, dtype=torch.float16, device=device)
    padded[: len(features)] = torch.from_numpy(features).to(device)
    header = torch.tensor([chunk, len(features)], device=device)
    headers = [torch.empty_like(header) for _ in range(dist.get_world_size())]
    parts = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(headers, header)
    dist.all_gather(parts, padded)  # all-gather, not gather: NCCL and gloo both have it
    return [
        (int(h[0]), p[: int(h[1])].cpu().numpy())
        for h, p in zip(headers, parts, strict=True)
        if h[0] >= 0
    ]


def _versions() -> dict[str, str]:
    versions = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _prepare(
    out: Path, job: dict, num_rows: int, chunk_rows: int
) -> tuple[list[int], int, list[int]]:
    """Rank 0: create or resume the folder → (chunks done, chunk_rows, skipped rows); errors
    if it holds something else."""
    if (out / META).is_file():
        meta = json.loads((out / META).read_text())
        if {k: meta.get(k) for k in job} == job:
            chunks = list(range(math.ceil(num_rows / meta["chunk_rows"])))
            return chunks, meta["chunk_rows"], meta.get("skipped", [])
        raise ValueError(
            f"{out} already holds a complete {meta.get('modality')} bank of {meta.get('teacher')} "
            f"over other data or settings; choose another --out or delete {out}"
        )
    if (out / PROGRESS).is_file():
        progress = json.loads((out / PROGRESS).read_text())
        if progress["job"] != job:
            changed = sorted(k for k in job if progress["job"].get(k) != job[k])
            raise ValueError(
                f"{out} holds a partial bank built with other {', '.join(changed)}; rerun with "
                f"the same flags to resume it, or delete {out} to start over"
            )
        if (out / FEATURES).is_file():
            if chunk_rows != progress["chunk_rows"]:
                print(f"resuming with the interrupted build's {progress['chunk_rows']} chunk rows")
            return sorted(progress["done"]), progress["chunk_rows"], progress["skipped"]
    out.mkdir(parents=True, exist_ok=True)
    np.lib.format.open_memmap(out / FEATURES, "w+", np.float16, (num_rows, job["dim"])).flush()
    _write_progress(out, job, chunk_rows, [], [])
    return [], chunk_rows, []


def _write_progress(
    out: Path, job: dict, chunk_rows: int, done: list[int], skipped: list[int]
) -> None:
    payload = {"job": job, "chunk_rows": chunk_rows, "done": sorted(done)}
    payload["skipped"] = sorted(skipped)
    atomic_write_text(out / PROGRESS, json.dumps(payload))


def _broadcast(value: Any) -> Any:
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def build_bank(
    spec: DataSpec,
    modality: str,
    out: str | Path,
    teacher: str | None = None,
    image_size: int | None = None,
    batch_size: int = 64,
    workers: int = 2,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> Path:
    """Embed every sample of ``spec`` with ``teacher`` into the bank folder ``out``.

    Resumes a partial build in ``out``; returns at once if ``out`` already holds this bank.
    Under torchrun every rank calls this (see the module docstring). Bad samples follow
    ``spec.on_bad_sample`` and ``spec.max_bad_share`` (module docstring). Returns ``out``.
    """
    check_policy(spec.on_bad_sample, spec.max_bad_share)
    out, started = Path(out), time.perf_counter()
    rank = dist.get_rank() if is_distributed() else 0
    world = dist.get_world_size() if is_distributed() else 1
    device = resolve_device(device) if isinstance(device, str) else device
    if batch_size < 1 or chunk_rows < 1:
        raise ValueError(
            f"--batch-size and --chunk-rows must be positive ({batch_size}, {chunk_rows})"
        )
    model = create_teacher(teacher, modality, image_size, str(device))
    fingerprint = dataset_fingerprint(spec, modality)
    num_rows = fingerprint.num_samples
    if num_rows == 0:
        raise ValueError(f"--train-data {spec.train_data} has no samples")
    if hasattr(model, "features") and len(model.features) != num_rows:
        raise ValueError(
            f"--teacher {model.name} has {len(model.features):,} rows but --train-data "
            f"{spec.train_data} has {num_rows:,} samples; row i must hold sample i's features"
        )
    job = {
        "format": BANK_FORMAT, "teacher": model.name, "modality": modality, "dim": model.dim,
        "num_rows": num_rows, "fingerprint": fingerprint.digest, "preprocessing": model.info,
    }  # fmt: skip
    state = None
    if rank == 0:
        try:
            state = _prepare(out, job, num_rows, chunk_rows)
        except ValueError as exc:
            state = str(exc)
    state = _broadcast(state)
    if isinstance(state, str):
        raise ValueError(state)
    done, chunk_rows, skipped = state
    num_chunks = math.ceil(num_rows / chunk_rows)
    todo = [c for c in range(num_chunks) if c not in set(done)]
    if not todo and (out / META).is_file():
        if rank == 0:
            print(f"{out} already holds this bank ({num_rows:,} × {model.dim}); nothing to do")
        return out

    read = _Reader(spec, modality, model)
    stream = _ChunkStream(
        read, todo[rank::world], chunk_rows, num_rows, batch_size, model.preprocess,
        model.collate, sort_text=modality == "text" and getattr(model, "path", None) is None,
    )  # fmt: skip
    bar = None
    if rank == 0 and progress:
        initial = num_rows - sum(min(chunk_rows, num_rows - c * chunk_rows) for c in todo)
        bar = tqdm(
            total=num_rows, initial=initial, unit="rows", desc=f"{modality} bank", smoothing=0.1
        )
    finished = _extract(model, stream, workers, bar)
    features = np.load(out / FEATURES, mmap_mode="r+") if rank == 0 else None
    for _ in range(math.ceil(len(todo) / world)):
        parts = _gather_round(next(finished, None), chunk_rows, model.dim, device)
        if rank == 0:
            for chunk, rows in parts:
                features[chunk * chunk_rows : chunk * chunk_rows + len(rows)] = rows
                done.append(chunk)
                # Teacher features are unit vectors: an all-zero row is a skipped sample.
                skipped.extend((chunk * chunk_rows + np.flatnonzero(~rows.any(1))).tolist())
            features.flush()  # the rows reach the file before progress.json says they did
            _write_progress(out, job, chunk_rows, done, skipped)
        too_many = rank == 0 and len(skipped) > spec.max_bad_share * num_rows
        if _broadcast(too_many):
            raise ValueError(
                f"{len(skipped):,} of the {num_rows:,} samples of {spec.train_data} are bad "
                f"(more than --max-bad-share {spec.max_bad_share} allows); repair the data or "
                f"raise --max-bad-share, then rerun the same command to resume {out}"
            )
    if bar is not None:
        bar.close()
    if rank == 0:
        meta = dict(job, chunk_rows=chunk_rows, dtype="float16", train_data=str(spec.train_data))
        meta["skipped"] = sorted(skipped)  # zero rows: never a neighbour (see Bank.skipped)
        if skipped:
            print(
                f"{out}: {len(skipped):,} bad samples skipped; their rows are zero and listed "
                f"in {META} under 'skipped' (first: {sorted(skipped)[:5]})"
            )
        meta.update(versions=_versions(), wall_seconds=round(time.perf_counter() - started, 1))
        atomic_write_text(out / META, json.dumps(meta, indent=1) + "\n")
        (out / PROGRESS).unlink(missing_ok=True)
    if is_distributed():
        dist.barrier()
    return out


# --------------------------------------------------------------------------- reading


class Bank:
    """A finished bank folder, memory-mapped: ``bank.features`` is ``(N, D)`` float16.

    Examples:
        >>> bank = Bank("banks/image")
        >>> bank.check_dataset(DataSpec("shapes/train.csv"), dim=1280)
        >>> bank.features[17]  # sample 17's teacher feature, (1280,)
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / META).is_file():
            partial = (self.path / PROGRESS).is_file()
            raise FileNotFoundError(
                f"{self.path} is not a finished bank (no {META}"
                + ("; its build was interrupted" if partial else "")
                + "); run (or rerun, to resume) clip-ping bank build --out "
                + f"{self.path} --train-data ... --modality image|text"
            )
        self.meta = json.loads((self.path / META).read_text())
        self.modality, self.teacher = self.meta["modality"], self.meta["teacher"]
        self.num_rows, self.dim = int(self.meta["num_rows"]), int(self.meta["dim"])
        self.fingerprint = self.meta["fingerprint"]
        self.features = self._open(FEATURES, (self.num_rows, self.dim), np.float16)
        # Rows of samples skipped as bad at build time: zeros, never to be chosen as neighbours.
        self.skipped = np.asarray(self.meta.get("skipped", []), dtype=np.int64)

    def _open(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        path = self.path / name
        expected = np.dtype(dtype).itemsize * math.prod(shape)
        try:
            array = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as exc:  # e.g. "mmap length is greater than file size"
            raise ValueError(
                f"{path} is unreadable or truncated ({exc}; {path.stat().st_size:,} bytes for "
                f"{expected:,} of data); rebuild it (delete {self.path}, rerun the command)"
            ) from None
        if array.shape != shape or array.dtype != dtype:
            raise ValueError(
                f"{path} holds {array.shape} {array.dtype} but {META} says {shape} "
                f"{np.dtype(dtype)}; the folder is inconsistent: rebuild it"
            )
        return array

    def __len__(self) -> int:
        return self.num_rows

    def validate(
        self, fingerprint: str | None, num_rows: int, dim: int | None = None, data: str = ""
    ) -> None:
        """Raise ``ValueError`` unless this bank covers ``num_rows`` samples with this
        fingerprint (see :func:`dataset_fingerprint`) and, if given, has ``dim`` columns."""
        fix = (
            f"rebuild it with clip-ping bank build --train-data {data or '...'} --modality "
            f"{self.modality} --teacher {self.teacher} --out NEW_DIR"
        )
        what = f"{self.modality} bank {self.path} ({self.teacher})"
        data = f"--train-data {data}" if data else "the training data"
        if num_rows != self.num_rows:
            raise ValueError(
                f"{what} has {self.num_rows:,} rows but {data} has {num_rows:,} samples; {fix}"
            )
        if fingerprint is not None and fingerprint != self.fingerprint:
            raise ValueError(
                f"{what} was built from other samples than {data} (same count, {num_rows:,}, "
                f"but dataset fingerprint {self.fingerprint[:12]} ≠ {fingerprint[:12]}); {fix}"
            )
        if dim is not None and dim != self.dim:
            raise ValueError(
                f"{what} holds {self.dim}-d features but the config expects {dim}-d; set the "
                f"bank dim to {self.dim} or build a bank with a {dim}-d teacher"
            )

    def check_dataset(self, spec: DataSpec, dim: int | None = None) -> None:
        """:meth:`validate` against ``spec`` (hashes its keys and, for CSV text, captions)."""
        fingerprint = dataset_fingerprint(spec, self.modality)
        self.validate(fingerprint.digest, fingerprint.num_samples, dim, str(spec.train_data))

    @property
    def has_neighbors(self) -> bool:
        return (self.path / "neighbors.json").is_file()

    def neighbors(self) -> tuple[np.ndarray, np.ndarray]:
        """Memory-mapped ``(N, K)`` int32 neighbour indices and float16 similarities."""
        if not self.has_neighbors:
            raise FileNotFoundError(
                f"{self.path} has no neighbour table; run clip-ping bank neighbors {self.path} --k K"
            )
        info = json.loads((self.path / "neighbors.json").read_text())
        shape = (self.num_rows, int(info["k"]))
        return (
            self._open("neighbors.npy", shape, np.int32),
            self._open("similarities.npy", shape, np.float16),
        )
