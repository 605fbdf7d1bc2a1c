"""The bank folder: its file names, reading, validation and neighbour tables, in one place.

A bank is a folder; row i of every array is sample i of the training data (its stable index)::

    features.npy      (N, D) float16, L2-normalised rows; readers memory-map it
    meta.json         teacher, modality, dim, N, dataset fingerprint, preprocessing, versions;
                      written last, so its presence means the bank is complete
    progress.json     only while building: the chunks of rows already flushed to features.npy
    neighbors.npy     (N, K) int32: each row's K neighbour rows, most similar first
    similarities.npy  (N, K) float16: their similarities
    neighbors.json    K, backend, recall, settings, the bank's fingerprint; written after the
                      two tables, so its presence means the table is complete

:mod:`.build` writes the first three, :mod:`.mine` computes the tables and writes them with
:func:`write_neighbor_table`. Samples skipped as bad at build time have all-zero rows and
are listed in ``meta.json`` under ``"skipped"`` (:attr:`Bank.skipped`).

Examples:
    >>> import numpy as np
    >>> from clip_ping.bank import Bank, build_bank, mine_bank
    >>> from clip_ping.data.loader import DataSpec
    >>> from clip_ping.data.shapes import build_shapes
    >>> _ = build_shapes("shapes", num_train=6, num_val=2, image_size=16)
    >>> np.save("features.npy", np.eye(3, 4, dtype=np.float32)[[0, 0, 1, 1, 2, 2]])
    >>> spec = DataSpec("shapes/train.csv")
    >>> _ = build_bank(spec, "text", "bank", teacher="npy:features.npy", workers=0, progress=False)
    >>> _ = mine_bank("bank", k=1, backend="exact", device="cpu", progress=False)
    >>> bank = Bank("bank")
    >>> bank.check_dataset(spec, dim=4)  # the bank is of this data: no error
    >>> bank.teacher_spec.modality, bank.features.shape, bank.features.dtype
    ('text', (6, 4), dtype('float16'))
    >>> neighbors, similarities = bank.neighbors()  # (N, K) int32, (N, K) float16
    >>> neighbors.ravel().tolist()
    [1, 0, 3, 2, 5, 4]
"""

from __future__ import annotations

import json
import logging
import math
import mmap
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..data.loader import DataSpec
from ..io import atomic_write_text, reserved_memmap
from ..teachers import EfficientNetLite0
from .samples import dataset_fingerprint, fingerprint_covers

BANK_FORMAT = "clip-ping-bank/1"
FEATURES, META, PROGRESS = "features.npy", "meta.json", "progress.json"
NEIGHBORS, SIMILARITIES, NEIGHBORS_META = "neighbors.npy", "similarities.npy", "neighbors.json"

log = logging.getLogger("clip_ping")


# --------------------------------------------------------------------------- teacher


@dataclass(frozen=True)
class TeacherSpec:
    """The teacher a bank was built with, as its ``meta.json`` records it.

    ``name``, ``modality`` and ``dim`` are top-level entries of ``meta.json``; the other
    fields come from its ``"preprocessing"`` entry (the teacher's ``info``) and are None
    where that teacher records no such field. Fields this version does not know are kept in
    ``extra``, so ``spec.preprocessing`` gives back the entry it was read from.
    """

    name: str
    modality: str
    dim: int
    image_size: int | None = None  # efficientnet-lite0: side of the square input, pixels
    resize: str | None = None
    normalize: str | None = None
    pooling: str | None = None
    weights: str | None = None  # efficientnet-lite0: the weights file's name
    image_processor: dict | None = None  # hf: image teachers: their processor's settings
    max_tokens: int | None = None  # text teachers: captions are cut to this many tokens
    source: str | None = None  # npy: teachers: the features file
    dtype: str | None = None  # npy: teachers: its dtype
    extra: dict = field(default_factory=dict)
    _NOT_PREPROCESSING = ("name", "modality", "dim", "extra")  # (not annotated: not a field)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> TeacherSpec:
        """The spec recorded in a bank's ``meta.json`` (``meta``: its parsed content)."""
        preprocessing = dict(meta.get("preprocessing") or {})
        known = {f.name for f in fields(cls)} - set(cls._NOT_PREPROCESSING)
        typed = {key: preprocessing.pop(key) for key in list(preprocessing) if key in known}
        return cls(
            meta["teacher"], meta["modality"], int(meta["dim"]), **typed, extra=preprocessing
        )

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The ``"preprocessing"`` entry of ``meta.json`` (fields that are not None)."""
        recorded = (f.name for f in fields(self) if f.name not in self._NOT_PREPROCESSING)
        values = {name: getattr(self, name) for name in recorded}
        return {**{k: v for k, v in values.items() if v is not None}, **self.extra}

    @property
    def online_image_size(self) -> int | None:
        """Side in pixels at which this teacher can embed an augmented ``(B, 3, s, s)``
        batch itself (pixels in [0, 1] resized to it, then ``(x - 0.5) / 0.5``), as the
        active neighbour source needs; None where it cannot: text teachers, ``hf:`` image
        teachers (they resize with their own processor), ``npy:`` features (no model)."""
        if self.modality == "image" and self.name == EfficientNetLite0.name:
            return self.image_size
        return None


# --------------------------------------------------------------------------- arrays


def open_array(path: str | Path, random_access: bool = False) -> np.ndarray:
    """The ``.npy`` file ``path``, memory-mapped read-only.

    ``random_access``: tell the kernel the array is read at scattered rows
    (``madvise(MADV_RANDOM)``), so a page fault reads that page, not a readahead window
    (128 KiB by default: ~170 rows of a 384-d float16 bank for the one row a step needs).
    The result is then a plain ndarray over its own ``mmap`` (kept alive as its ``base``)
    rather than an ``np.memmap``. Raises ``ValueError`` or ``OSError`` for a file that is
    not a whole ``.npy`` array.
    """
    if not random_access:
        return np.load(path, mmap_mode="r")
    with open(path, "rb") as file:
        version = np.lib.format.read_magic(file)
        # Versions 2.0 and 3.0 share one header layout (3.0 only allows UTF-8 field names).
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(file)
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(file)
        if dtype.hasobject:
            raise ValueError("an array of Python objects cannot be memory-mapped")
        offset = file.tell()
        mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    if len(mapping) < offset + dtype.itemsize * math.prod(shape):
        mapping.close()
        raise ValueError("mmap length is greater than file size")
    if hasattr(mmap, "MADV_RANDOM"):
        mapping.madvise(mmap.MADV_RANDOM)
    order = "F" if fortran_order else "C"
    return np.ndarray(shape, dtype, buffer=mapping, offset=offset, order=order)


# --------------------------------------------------------------------------- reading

INDEX_CHECK_ROWS = 1 << 20  # neighbour rows checked at a time (4 MiB per neighbour column)


def read_json(path: Path, fix: str) -> dict[str, Any]:
    """A bank folder's JSON object at ``path``; ``ValueError`` naming the file and ``fix``
    when it is not one."""
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, not an object; {fix}")
    return value


def has_neighbor_table(folder: str | Path) -> bool:
    """Whether the bank folder holds a complete neighbour table."""
    return (Path(folder) / NEIGHBORS_META).is_file()


class Bank:
    """A finished bank folder, memory-mapped: ``bank.features`` is ``(N, D)`` float16."""

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
        self.meta = read_json(self.path / META, self._rebuild)
        try:
            self.modality, self.teacher = str(self.meta["modality"]), str(self.meta["teacher"])
            self.teacher_spec = TeacherSpec.from_meta(self.meta)
            self.num_rows, self.dim = int(self.meta["num_rows"]), int(self.meta["dim"])
            self.fingerprint = str(self.meta["fingerprint"])
            # Rows of samples skipped as bad at build time: zeros, never to be neighbours.
            self.skipped = np.asarray(self.meta.get("skipped", []), dtype=np.int64).reshape(-1)
        except KeyError as exc:
            raise ValueError(
                f"{self.path / META} has no {exc} entry, so it was not written by clip-ping bank "
                f"build or is damaged; {self._rebuild}"
            ) from None
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"{self.path / META} holds a wrong value ({exc}); {self._rebuild}"
            ) from None
        if len(self.skipped) and not (
            0 <= self.skipped.min() <= self.skipped.max() < self.num_rows
        ):
            raise ValueError(
                f"{self.path / META} lists skipped rows outside 0..{self.num_rows - 1}; "
                f"{self._rebuild}"
            )
        self.features = self._open(FEATURES, (self.num_rows, self.dim), np.float16)

    @property
    def _rebuild(self) -> str:
        return (
            f"rebuild the bank: delete {self.path} and rerun clip-ping bank build --out {self.path}"
        )

    def _remine(self, k: int | str = "K") -> str:
        return f"rebuild the table: clip-ping bank neighbors {self.path} --k {k}"

    def _open(
        self, name: str, shape: tuple[int, ...], dtype: type, random_access: bool = False
    ) -> np.ndarray:
        path = self.path / name
        expected = np.dtype(dtype).itemsize * math.prod(shape)
        fix = self._rebuild if name == FEATURES else self._remine(shape[1])
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing from the bank; {fix}")
        try:
            array = open_array(path, random_access)
        except (ValueError, OSError) as exc:  # e.g. "mmap length is greater than file size"
            raise ValueError(
                f"{path} is unreadable or truncated ({exc}; {path.stat().st_size:,} bytes for "
                f"{expected:,} of data); {fix}"
            ) from None
        if array.shape != shape or array.dtype != dtype:
            raise ValueError(
                f"{path} holds {array.shape} {array.dtype} but {META} says {shape} "
                f"{np.dtype(dtype)}; the folder is inconsistent: rebuild it"
            )
        return array

    def __len__(self) -> int:
        return self.num_rows

    def random_access_features(self) -> np.ndarray:
        """``features`` mapped once more for reads of a few scattered rows at a time (see
        :func:`open_array`); ``features`` itself keeps the kernel's readahead for scans."""
        return self._open(FEATURES, (self.num_rows, self.dim), np.float16, random_access=True)

    def validate(
        self, fingerprint: str | None, num_rows: int, dim: int | None = None, data: str = ""
    ) -> None:
        """Raise ``ValueError`` unless this bank covers ``num_rows`` samples with this
        fingerprint (see :func:`.samples.dataset_fingerprint`) and, if given,
        has ``dim`` columns."""
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
            covers = self.meta.get("fingerprint_covers", "sample keys")
            raise ValueError(
                f"{what} was built from other data than {data}: same count ({num_rows:,}) but "
                f"another fingerprint of the {covers} ({self.fingerprint[:12]} ≠ "
                f"{fingerprint[:12]}), so samples or files changed since it was built; {fix}"
            )
        if dim is not None and dim != self.dim:
            raise ValueError(
                f"{what} holds {self.dim}-d features but the config expects {dim}-d; set the "
                f"bank dim to {self.dim} or build a bank with a {dim}-d teacher"
            )

    def check_dataset(self, spec: DataSpec, dim: int | None = None) -> None:
        """:meth:`validate` against ``spec`` (see :func:`.samples.dataset_fingerprint`:
        keys, CSV captions for text, file sizes and modification times)."""
        legacy = "fingerprint_covers" not in self.meta  # a bank of an earlier clip-ping
        fingerprint = dataset_fingerprint(spec, self.modality, file_stamps=not legacy)
        self.validate(fingerprint.digest, fingerprint.num_samples, dim, str(spec.train_data))
        if legacy and fingerprint_covers(spec, self.modality) != fingerprint.covers:
            log.warning(
                "%s was built by an earlier clip-ping: its fingerprint covers only the %s, "
                "so data files rewritten since cannot be detected. Rebuild it to have them "
                "checked too: delete it and rerun clip-ping bank build --out %s",
                self.path,
                fingerprint.covers,
                self.path,
            )

    @property
    def has_neighbors(self) -> bool:
        return has_neighbor_table(self.path)

    def neighbor_info(self) -> dict[str, Any]:
        """The neighbour table's ``neighbors.json``: ``k``, ``backend``, ``recall``, ..."""
        if not self.has_neighbors:
            raise FileNotFoundError(
                f"{self.path} has no neighbour table; run clip-ping bank neighbors {self.path} --k K"
            )
        info = read_json(self.path / NEIGHBORS_META, self._remine())
        k = info.get("k")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"{self.path / NEIGHBORS_META} holds no valid 'k'; {self._remine()}")
        if info.get("bank", self.fingerprint) != self.fingerprint:
            raise ValueError(
                f"the neighbour table in {self.path} was mined from another build of the bank "
                f"({NEIGHBORS_META} names fingerprint {str(info['bank'])[:12]}, the bank has "
                f"{self.fingerprint[:12]}); {self._remine(k)}"
            )
        return info

    def neighbors(
        self, random_access: bool = False, check: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Memory-mapped ``(N, K)`` int32 neighbour indices and float16 similarities
        (``random_access``: mapped for reads of scattered rows, see :func:`open_array`).
        Every index is checked to be a row of the bank (one pass over the table) unless
        ``check`` is False: for a process that reopens a table another one has checked."""
        shape = (self.num_rows, self.neighbor_info()["k"])
        neighbors = self._open(NEIGHBORS, shape, np.int32)
        if check:
            self._check_indices(neighbors)
        if random_access:
            neighbors = self._open(NEIGHBORS, shape, np.int32, random_access)
        return neighbors, self._open(SIMILARITIES, shape, np.float16, random_access)

    def _check_indices(self, neighbors: np.ndarray) -> None:
        for start in range(0, len(neighbors), INDEX_CHECK_ROWS):
            block = np.asarray(neighbors[start : start + INDEX_CHECK_ROWS])
            bad = (block < 0) | (block >= self.num_rows)
            if bad.any():
                row, column = np.argwhere(bad)[0]
                raise ValueError(
                    f"{self.path / NEIGHBORS} holds index {block[row, column]} at row "
                    f"{start + row}, outside the bank's rows 0..{self.num_rows - 1}: the table is "
                    f"damaged or belongs to another bank; {self._remine(neighbors.shape[1])}"
                )


# --------------------------------------------------------------------------- writing


def write_neighbor_table(
    bank: Bank, neighbors: np.ndarray, similarities: np.ndarray, **details: Any
) -> None:
    """Write ``(N, K)`` neighbour rows and their similarities into ``bank``'s folder.

    ``neighbors.json`` (K, then ``details``, e.g. backend, seconds, recall and settings,
    then the bank's fingerprint) is removed first and written last, so a table is never
    read half-written. Read it back with :meth:`Bank.neighbors`.
    """
    if neighbors.ndim != 2 or neighbors.shape != similarities.shape or len(neighbors) != len(bank):
        raise ValueError(
            f"a neighbour table of {bank.path} is two (N, K) arrays with N = {len(bank):,}; "
            f"got {neighbors.shape} neighbours and {similarities.shape} similarities"
        )
    (bank.path / NEIGHBORS_META).unlink(missing_ok=True)
    for name, array in (
        (NEIGHBORS, neighbors.astype(np.int32, copy=False)),
        (SIMILARITIES, similarities.astype(np.float16, copy=False)),
    ):
        tmp = bank.path / f".{name}.tmp"
        try:  # space reserved first: a write into a sparse map on a full disk is a SIGBUS
            out = reserved_memmap(tmp, array.dtype, array.shape)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        out[:] = array
        out.flush()
        del out
        tmp.replace(bank.path / name)
    info = {"k": int(neighbors.shape[1]), **details, "bank": bank.fingerprint}
    atomic_write_text(bank.path / NEIGHBORS_META, json.dumps(info, indent=1) + "\n")
