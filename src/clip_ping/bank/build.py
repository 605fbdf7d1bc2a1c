"""Building a bank: every training sample embedded once by a frozen teacher, row i = sample i
(the folder's files: :mod:`.store`).

Bad samples (unreadable images, empty captions; see :mod:`clip_ping.data.bad_samples`; and
rows whose teacher features are NaN, inf or zero, e.g. from an ``npy:`` file) follow
``--on-bad-sample``: with ``skip`` their rows stay zero, they are printed with their keys, and
the bank's meta lists them under ``"skipped"``; :class:`.Bank` exposes them as ``bank.skipped``
and neighbour mining never returns them. With ``error`` the build stops at the first one.

Building is resumable: rows are extracted in chunks of ``chunk_rows``; after each chunk is
written and flushed, the progress file is replaced atomically. A killed build rerun with the
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

import json
import math
import sys
import time
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from ..data.bad_samples import BadSample, check_policy
from ..data.loader import DataSpec
from ..distributed import is_distributed, resolve_device
from ..io import atomic_write_text, reserved_memmap
from ..teachers import Teacher, create_teacher
from ..workers import check_workers, loader_workers
from .samples import SampleReader, dataset_fingerprint
from .store import BANK_FORMAT, FEATURES, META, PROGRESS, read_json

DEFAULT_CHUNK_ROWS = 4096  # rows per flushed chunk: the most work a killed build loses
VERSIONED_PACKAGES = ("clip-ping", "torch", "numpy", "transformers", "efficientnet-lite-pytorch")


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


def _unusable_rows(
    features: np.ndarray, indices: np.ndarray, teacher: Teacher, on_bad_sample: str
) -> np.ndarray:
    """Mask of the ``(B, D)`` rows that no unit vector can come from: NaN or inf anywhere
    (an ``npy:`` file with such rows, a teacher that overflowed) or all zero. They are bad
    samples: each is named, and with ``skip`` its row is zeroed by the caller."""
    finite = np.isfinite(features).all(axis=1)
    bad = ~finite | ~features.any(axis=1)
    for index, is_finite in zip(indices[bad], finite[bad], strict=True):
        reason = "teacher features are " + ("not finite (NaN or inf)" if not is_finite else "zero")
        where = f"row {int(index)} of the {teacher.name} features"
        if on_bad_sample == "error":
            raise BadSample(reason).at(where)
        print(f"skipped bad sample {where}: {reason}", file=sys.stderr)
    return bad


def _extract(
    teacher: Teacher, stream: _ChunkStream, workers: int, bar: tqdm | None, on_bad_sample: str
):
    """Yield ``(chunk, (rows, D) float16)`` as chunks finish."""
    loader = DataLoader(stream, batch_size=None, collate_fn=_unbatched, **loader_workers(workers))
    pending: dict[int, list] = {}  # chunk → [features, rows still missing]
    for batch in loader:
        chunk, indices = batch["chunk"], np.asarray(batch["index"])
        if chunk not in pending:
            rows = min(stream.chunk_rows, stream.num_rows - chunk * stream.chunk_rows)
            pending[chunk] = [np.zeros((rows, teacher.dim), np.float16), rows]
        if len(indices):
            features = teacher.encode(batch["inputs"]).numpy()
            # A skipped row stays zero; zero rows are what marks it skipped (see build_bank).
            features[_unusable_rows(features, indices, teacher, on_bad_sample)] = 0
            pending[chunk][0][indices - chunk * stream.chunk_rows] = features.astype(np.float16)
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
    fix = f"delete {out} and rerun to build it anew, or choose another --out"
    if (out / META).is_file():
        meta = read_json(out / META, fix)
        if _same_job(meta, job):
            chunks = list(range(math.ceil(num_rows / meta["chunk_rows"])))
            return chunks, meta["chunk_rows"], meta.get("skipped", [])
        what = (
            f"{out} already holds a complete {meta.get('modality')} bank of {meta.get('teacher')}"
        )
        raise ValueError(f"{what} {_difference(meta, job)}; {fix}")
    if (out / PROGRESS).is_file():
        progress = read_json(out / PROGRESS, f"delete {out} to start over")
        if not _same_job(progress["job"], job):
            raise ValueError(
                f"{out} holds a partial bank {_difference(progress['job'], job)}; rerun with "
                f"the same flags and data to resume it, or delete {out} to start over"
            )
        if (out / FEATURES).is_file():
            if chunk_rows != progress["chunk_rows"]:
                print(f"resuming with the interrupted build's {progress['chunk_rows']} chunk rows")
            return sorted(progress["done"]), progress["chunk_rows"], progress["skipped"]
    out.mkdir(parents=True, exist_ok=True)
    reserved_memmap(out / FEATURES, np.float16, (num_rows, job["dim"])).flush()  # no SIGBUS
    _write_progress(out, job, chunk_rows, [], [])
    return [], chunk_rows, []


def _same_job(recorded: dict, job: dict) -> bool:
    # Banks of earlier versions record no fingerprint_covers: where their digest agrees with
    # the job's, both hashed the same (CSV text banks), so the bank is this job's.
    recorded = {"fingerprint_covers": job["fingerprint_covers"], **recorded}
    return {k: recorded.get(k) for k in job} == job


def _difference(recorded: dict, job: dict) -> str:
    """How the bank ``recorded`` in a folder differs from ``job``, in words."""
    changed = [k for k in job if k != "fingerprint_covers" and recorded.get(k) != job[k]]
    if changed == ["fingerprint"] and "fingerprint_covers" not in recorded:
        return (
            "of an earlier clip-ping, whose fingerprint covers only the sample keys, so "
            "whether its files changed since cannot be told"
        )
    if changed == ["fingerprint"]:
        return (
            f"of other data: the fingerprint of the {job['fingerprint_covers']} of "
            "--train-data differs, so samples or files changed since it was built"
        )
    if changed == ["preprocessing"] and job["teacher"].startswith("npy:"):
        return "built from an earlier version of that file (its size or time changed since)"
    return f"built with other {', '.join(changed)}"


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


def _job(spec: DataSpec, modality: str, model: Teacher) -> dict:
    """What the bank depends on: compared when resuming, recorded in its meta."""
    fingerprint = dataset_fingerprint(spec, modality)
    num_rows = fingerprint.num_samples
    if num_rows == 0:
        raise ValueError(f"--train-data {spec.train_data} has no samples")
    if hasattr(model, "features") and len(model.features) != num_rows:
        raise ValueError(
            f"--teacher {model.name} has {len(model.features):,} rows but --train-data "
            f"{spec.train_data} has {num_rows:,} samples; row i must hold sample i's features"
        )
    return {
        "format": BANK_FORMAT,
        "teacher": model.name,
        "modality": modality,
        "dim": model.dim,
        "num_rows": num_rows,
        "fingerprint": fingerprint.digest,
        "fingerprint_covers": fingerprint.covers,
        "preprocessing": model.info,
    }


def _start(out: Path, job: dict, chunk_rows: int, rank: int) -> tuple[list[int], int, list[int]]:
    """:func:`_prepare` on rank 0; its result (or its error) on every rank."""
    state = None
    if rank == 0:
        try:
            state = _prepare(out, job, job["num_rows"], chunk_rows)
        except ValueError as exc:
            state = str(exc)
    state = _broadcast(state)
    if isinstance(state, str):
        raise ValueError(state)
    return state


def _finish(
    out: Path, job: dict, chunk_rows: int, spec: DataSpec, skipped: list[int], seconds: float
) -> None:
    """Rank 0, every chunk written: the meta file, which marks the bank complete."""
    meta = dict(job, chunk_rows=chunk_rows, dtype="float16", train_data=str(spec.train_data))
    meta["skipped"] = sorted(skipped)  # zero rows: never a neighbour (see Bank.skipped)
    if skipped:
        print(
            f"{out}: {len(skipped):,} bad samples skipped; their rows are zero and listed "
            f"in {META} under 'skipped' (first: {sorted(skipped)[:5]})"
        )
    meta.update(versions=_versions(), wall_seconds=round(seconds, 1))
    atomic_write_text(out / META, json.dumps(meta, indent=1) + "\n")
    (out / PROGRESS).unlink(missing_ok=True)


def _progress_bar(modality: str, num_rows: int, chunk_rows: int, todo: list[int]) -> tqdm:
    """A bar over the bank's rows, starting at those of the chunks already done."""
    initial = num_rows - sum(min(chunk_rows, num_rows - c * chunk_rows) for c in todo)
    return tqdm(
        total=num_rows, initial=initial, unit="rows", desc=f"{modality} bank", smoothing=0.1
    )


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
    check_workers(workers)  # before the teacher loads
    model = create_teacher(teacher, modality, image_size, str(device))
    job = _job(spec, modality, model)
    num_rows = job["num_rows"]
    done, chunk_rows, skipped = _start(out, job, chunk_rows, rank)
    num_chunks = math.ceil(num_rows / chunk_rows)
    todo = [c for c in range(num_chunks) if c not in set(done)]
    if not todo and (out / META).is_file():
        if rank == 0:
            print(f"{out} already holds this bank ({num_rows:,} × {model.dim}); nothing to do")
        return out

    read = _Reader(spec, modality, model)
    stream = _ChunkStream(
        read,
        todo[rank::world],
        chunk_rows,
        num_rows,
        batch_size,
        model.preprocess,
        model.collate,
        sort_text=modality == "text" and getattr(model, "path", None) is None,
    )
    bar = _progress_bar(modality, num_rows, chunk_rows, todo) if rank == 0 and progress else None
    finished = _extract(model, stream, workers, bar, spec.on_bad_sample)
    features = reserved_memmap(out / FEATURES) if rank == 0 else None  # a resumed sparse file
    for _ in range(math.ceil(len(todo) / world)):
        parts = _gather_round(next(finished, None), chunk_rows, model.dim, device)
        if rank == 0:
            for chunk, rows in parts:
                features[chunk * chunk_rows : chunk * chunk_rows + len(rows)] = rows
                done.append(chunk)
                # Teacher features are unit vectors: an all-zero row is a skipped sample.
                skipped.extend((chunk * chunk_rows + np.flatnonzero(~rows.any(1))).tolist())
            features.flush()  # the rows reach the file before the progress file says they did
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
        _finish(out, job, chunk_rows, spec, skipped, time.perf_counter() - started)
    if is_distributed():
        dist.barrier()
    return out
