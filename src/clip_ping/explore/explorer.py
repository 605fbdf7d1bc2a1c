"""The explorer's answers as JSON-ready dicts, shared by the server and the static folder.

An :class:`Explorer` holds the runs' embeddings of one evaluation set (and optionally the
teachers' banks). Every method checks its arguments and raises :class:`BadRequest` with a
one-line reason for a value out of bounds; nothing here reads a path a request names:
images are addressed by their index in the set, and :meth:`Explorer.image_file` serves a
file only when it lies, symlinks resolved, inside the folder holding the set's images.
"""

from __future__ import annotations

import io
import os
import re
import threading
from pathlib import Path

import torch

from ..evaluation.datasets import EvalDataset, ImageArrays
from .analysis import (
    correct_ranks,
    disagreement_counts,
    disagreement_order,
    positives_of_texts,
    recalls,
    spread,
    top_k,
    zeroshot_tables,
)
from .embeddings import RunEmbeddings, image_sources
from .neighbours import TeacherNeighbours

MAX_QUERY_CHARS = 300
MAX_K = 50
DEFAULT_K = 8
MAX_PAGE = 200


class BadRequest(ValueError):
    """A request the explorer refuses (HTTP 400), with the reason."""


def bounded_int(value, name: str, low: int, high: int) -> int:
    """``value`` as an int in ``[low, high]``, else :class:`BadRequest` naming it.

    Examples:
        >>> bounded_int("5", "k", 1, 50)
        5
        >>> bounded_int("500", "k", 1, 50)
        Traceback (most recent call last):
        ...
        clip_ping.explore.explorer.BadRequest: k must be an integer from 1 to 50, not '500'
    """
    text = str(value)
    number = int(text) if re.fullmatch("[0-9]{1,12}", text) else None
    if number is None or not low <= number <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}, not {str(value)[:20]!r}")
    return number


def inside(root: Path, path: Path) -> Path | None:
    """``path`` resolved, if it is a file inside ``root`` (resolved), else None."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return real if real.is_file() and real.is_relative_to(root) else None


def images_root(paths: list[Path]) -> Path:
    """The folder holding every one of ``paths`` (read as written, not following links)."""
    absolute = [os.path.normpath(os.path.abspath(p)) for p in paths]
    common = os.path.commonpath(absolute) if absolute else "/"
    root = Path(common if len(absolute) > 1 else os.path.dirname(common))
    return root.resolve()


class Explorer:
    """The runs' answers on one set (see the module docstring)."""

    def __init__(
        self,
        runs: list[RunEmbeddings],
        data: EvalDataset,
        neighbours: TeacherNeighbours | None = None,
    ):
        self.runs, self.data, self.neighbours = runs, data, neighbours
        self.lock = threading.Lock()  # one text-tower forward at a time
        self.sources = image_sources(data)
        self.root = images_root(self.sources) if self.sources else None
        self.train_root = neighbours.train.root.resolve() if neighbours else None
        self.ranks: dict[str, torch.Tensor] = {}
        self.positives: list[list[int]] = []
        if data.captions:
            self.positives = positives_of_texts(data.captions, data.caption_image)
            own = list(data.caption_image)  # one positive a row, as clip-ping eval scores it
            self.ranks = {run.name: correct_ranks(run.images, run.captions, own) for run in runs}
        self.captions_of: list[list[int]] = [[] for _ in range(len(data))]
        for row, image in enumerate(data.caption_image or []):
            self.captions_of[image].append(row)
        self.rows_of_text: dict[str, list[int]] = {}
        for row, text in enumerate(data.captions or []):
            self.rows_of_text.setdefault(text, []).append(row)
        self.order = disagreement_order(self.ranks) if self.ranks else []

    # ----------------------------------------------------------------- pages

    def meta(self) -> dict:
        data = self.data
        runs = []
        for run in self.runs:
            mine = {k: v for k, v in run.metrics.items() if f"/{data.name}/" in k}
            runs.append(
                {
                    "name": run.name,
                    "path": str(run.path),
                    "metrics": mine or dict(sorted(run.metrics.items())[:12]),
                    "recalls": recalls(self.ranks[run.name]) if self.ranks else {},
                    "cached": run.cached,
                }
            )
        return {
            "dataset": data.name,
            "images": len(data),
            "captions": list(data.captions or []),
            "caption_image": list(data.caption_image or []),
            "runs": runs,
            "zeroshot": self.has_zeroshot,
            "banks": self.neighbours is not None,
            "max_k": MAX_K,
            "max_query": MAX_QUERY_CHARS,
        }

    @property
    def has_zeroshot(self) -> bool:
        return all(run.classes is not None for run in self.runs) and bool(self.runs)

    def search(self, query: str, k=DEFAULT_K) -> dict:
        """Each run's top-``k`` images for ``query``; for a caption of the set, its correct
        images (those of every row with its text) and per run the best rank of a row's own
        image, as ``clip-ping eval`` ranks it (from the set's own caption embeddings)."""
        k = bounded_int(k, "k", 1, MAX_K)
        if not isinstance(query, str) or not query.strip():
            raise BadRequest("q must be a non-empty text")
        if len(query) > MAX_QUERY_CHARS:
            raise BadRequest(f"q must be at most {MAX_QUERY_CHARS} characters, not {len(query)}")
        rows = self.rows_of_text.get(query, [])
        correct = self.positives[rows[0]] if rows else []
        out = []
        for run in self.runs:
            if rows:
                query_emb = run.captions[rows[0]]
            else:
                with self.lock:
                    query_emb = run.encode_query(query)
            scores = run.images @ query_emb
            entry = {"name": run.name, "results": top_k(scores, k)}
            if rows:  # a text on several rows: the best of their ranks
                entry["rank"] = int(self.ranks[run.name][rows].min())
            out.append(entry)
        return {"query": query, "caption_rows": rows, "correct": correct, "runs": out}

    def image_view(self, image, k=DEFAULT_K) -> dict:
        """Each run's top-``k`` captions of set image ``image`` (and the teachers' view)."""
        image = bounded_int(image, "image", 0, len(self.data) - 1)
        k = bounded_int(k, "k", 1, MAX_K)
        own = self.captions_of[image]
        texts = self.data.captions or []
        own_texts = {texts[r] for r in own}
        out = []
        for run in self.runs:
            if run.captions is None:
                continue
            ranked = top_k(run.captions @ run.images[image], k)
            out.append(
                {
                    "name": run.name,
                    "results": [[r, texts[r], s, texts[r] in own_texts] for r, s in ranked],
                }
            )
        view = {"image": image, "captions": [texts[r] for r in own], "runs": out}
        if self.data.labels is not None:
            view["label"] = self._classname(self.data.labels[image])
        if self.neighbours is not None:
            view["nearest_training"] = self.neighbours.nearest(image)
        return view

    def disagreements(self, offset=0, limit=50) -> dict:
        """The counts, and the set's queries from ``offset``, most disputed first."""
        if not self.ranks:
            raise BadRequest(f"{self.data.name} has no captions: nothing to rank")
        offset = bounded_int(offset, "offset", 0, max(0, len(self.order)))
        limit = bounded_int(limit, "limit", 1, MAX_PAGE)
        rows = []
        for row in self.order[offset : offset + limit]:
            ranks = {name: int(r[row]) for name, r in self.ranks.items()}
            rows.append(
                {
                    "row": row,
                    "caption": self.data.captions[row],
                    "image": int(self.data.caption_image[row]),
                    "ranks": ranks,
                    "spread": spread(list(ranks.values())),
                }
            )
        return {"counts": disagreement_counts(self.ranks), "offset": offset, "rows": rows}

    def zeroshot(self) -> dict:
        """Per-class accuracy and the most confused pairs of each run."""
        if not self.has_zeroshot:
            raise BadRequest(f"{self.data.name} is no class dataset (labels and class names)")
        return {
            "classnames": list(self.data.classnames),
            "counts": [self.data.labels.count(c) for c in range(len(self.data.classnames))],
            "runs": [
                {"name": run.name, **zeroshot_tables(run.images, run.classes, *self._classes())}
                for run in self.runs
            ],
        }

    def _classes(self):
        return self.data.labels, self.data.classnames

    def _classname(self, label: int) -> str:
        names = self.data.classnames
        return names[label] if names and 0 <= label < len(names) else str(label)

    # ----------------------------------------------------------------- files

    def image_file(self, index) -> Path | None:
        """The set's image file ``index``, or None: no such index, not a file, or outside
        the folder of the set's images once symlinks are resolved."""
        if self.sources is None:
            return None
        try:
            index = bounded_int(index, "image", 0, len(self.sources) - 1)
        except BadRequest:
            return None
        return inside(self.root, self.sources[index])

    def train_file(self, row) -> Path | None:
        """A training sample's image (only with banks), under the same rule."""
        if self.neighbours is None:
            return None
        try:
            row = bounded_int(row, "row", 0, len(self.neighbours.train) - 1)
        except BadRequest:
            return None
        return inside(self.train_root, self.neighbours.train_image(row))

    def image_png(self, index) -> bytes | None:
        """PNG bytes of a built-in set's image ``index`` (arrays, no files), or None."""
        if not isinstance(self.data.images, ImageArrays):
            return None
        try:
            index = bounded_int(index, "image", 0, len(self.data) - 1)
        except BadRequest:
            return None
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(self.data.images.pixels[index]).save(buffer, format="PNG")
        return buffer.getvalue()
