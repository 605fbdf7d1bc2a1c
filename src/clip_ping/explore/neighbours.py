"""What CLIP-PING's targets were for an image: the training samples nearest to it in the
image teacher's space, and the teachers' image and caption neighbours of each of them.

The evaluation image is embedded by the image bank's own teacher (as the bank was built),
the nearest bank rows are its nearest training samples, and the neighbour tables of both
banks (``clip-ping bank neighbors``) give their neighbours with the teachers' similarities.
The teacher's embeddings of the set are cached beside the first run, keyed like the runs'.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..bank import Bank
from ..data.bad_samples import decode_image
from ..data.datasets import CsvDataset
from ..data.loader import DataSpec
from ..data.transforms import to_rgb
from ..errors import UserError
from ..evaluation.datasets import EvalDataset
from .embeddings import _read_cache, _write_cache, image_sources, set_fingerprint

NEAREST = 3  # training samples shown per image
NEIGHBOURS = 4  # teacher neighbours shown per training sample and modality


@dataclass
class TeacherNeighbours:
    """The two banks of the training data, their tables, and the set seen by the teacher."""

    image_bank: Bank
    text_bank: Bank
    train: CsvDataset
    set_features: np.ndarray  # (N, D) float32: the set's images in the image teacher's space

    def __post_init__(self):
        self.image_tables = self.image_bank.neighbors()
        self.text_tables = self.text_bank.neighbors()
        self.rows, self.scores = nearest_rows(self.set_features, self.image_bank, NEAREST)

    def nearest(self, image: int, per: int = NEIGHBOURS) -> list[dict]:
        """The :data:`NEAREST` training samples of set image ``image``, each with its caption,
        similarity and ``per`` image and caption neighbours (row, caption, similarity)."""
        (image_nn, image_sim), (text_nn, text_sim) = self.image_tables, self.text_tables
        return [
            {
                "row": row,
                "caption": self.train.captions[row],
                "similarity": round(score, 4),
                "image_neighbours": self._listed(image_nn[row][:per], image_sim[row][:per]),
                "caption_neighbours": self._listed(text_nn[row][:per], text_sim[row][:per]),
            }
            for row, score in zip(self.rows[image], self.scores[image], strict=True)
        ]

    def _listed(self, rows, similarities) -> list[dict]:
        return [
            {"row": r, "caption": self.train.captions[r], "similarity": round(s, 4)}
            for r, s in zip(
                np.asarray(rows).tolist(), np.asarray(similarities).tolist(), strict=True
            )
        ]

    def train_image(self, row: int) -> Path:
        return self.train.image_path(row)


def nearest_rows(
    features: np.ndarray, bank: Bank, k: int, block: int = 256
) -> tuple[list[list[int]], list[list[float]]]:
    """For each row of ``(N, D)`` ``features``, the ``k`` most similar rows of ``bank``
    (skipped rows never), best first, and their similarities; scored ``block`` rows at a
    time, so memory stays at ``block`` × the bank's rows."""
    bank_features = np.asarray(bank.features, dtype=np.float32)
    k = min(k, len(bank_features))
    rows, scores = [], []
    for start in range(0, len(features), block):
        sims = features[start : start + block].astype(np.float32) @ bank_features.T
        sims[:, bank.skipped] = -np.inf
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top_sims = np.take_along_axis(sims, top, axis=1)
        order = np.lexsort((top, -top_sims), axis=1)  # best first, lower row on ties
        rows += np.take_along_axis(top, order, axis=1).tolist()
        scores += np.take_along_axis(top_sims, order, axis=1).tolist()
    return rows, scores


def open_banks(
    image_bank: str | os.PathLike, text_bank: str | os.PathLike, train_data: str | os.PathLike
) -> tuple[Bank, Bank, CsvDataset]:
    """The two banks, checked to be of ``train_data`` and to hold neighbour tables."""
    image, text = Bank(image_bank), Bank(text_bank)
    for bank, modality in ((image, "image"), (text, "text")):
        if bank.modality != modality:
            raise UserError(
                f"--{modality}-bank {bank.path} is a {bank.modality} bank; pass the {modality} "
                "bank of the training data"
            )
        bank.check_dataset(DataSpec(str(train_data)))
        bank.neighbor_info()  # one-line error without a table
    return image, text, CsvDataset(train_data)


@torch.no_grad()
def teacher_features(bank: Bank, data: EvalDataset, cache: Path | None) -> np.ndarray:
    """``(N, D)`` features of the set's images by ``bank``'s teacher (cached in ``cache``)."""
    from ..teachers import create_teacher

    sources = image_sources(data)
    if sources is None:
        raise UserError(
            f"--image-bank needs a set of image files; {data.name} is a built-in of arrays"
        )
    key = hashlib.sha1(f"{bank.fingerprint}|{set_fingerprint_light(data)}".encode()).hexdigest()
    stored = _read_cache(cache) if cache is not None else None
    if stored is not None and stored.get("key") == key:
        return stored["features"].numpy()
    spec = bank.teacher_spec
    teacher = create_teacher(spec.name, "image", spec.online_image_size)
    rows = []
    for start in range(0, len(sources), 64):
        batch = [teacher.preprocess(to_rgb(decode_image(p))) for p in sources[start : start + 64]]
        rows.append(teacher.encode(teacher.collate(batch)))
    features = torch.cat(rows)
    if cache is not None:
        _write_cache(cache, {"key": key, "features": features})
    return features.numpy()


def set_fingerprint_light(data: EvalDataset) -> str:
    """:func:`set_fingerprint` of ``data`` read as given (no spec)."""
    from .embeddings import SetSpec

    return set_fingerprint(SetSpec(dataset=data.name), data)
