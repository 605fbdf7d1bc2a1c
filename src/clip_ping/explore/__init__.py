"""``clip-ping explore``: look at what runs learned, side by side, on one evaluation set.

    clip-ping explore runs/demo/clip runs/demo/clip-ping --dataset data/test_google.csv
    clip-ping explore RUN [RUN ...] --dataset SET --static DIR   # a folder that opens from disk

A local page (127.0.0.1, a free port by default) with a search box (each run's top-k
images, the correct image of a caption of the set marked with its rank per run), an image
view (each run's top-k captions; with ``--image-bank``, ``--text-bank`` and
``--train-data`` the teachers' neighbours of the nearest training samples), the queries the
runs disagree on most, zero-shot per-class accuracy and confusions for a class set, and each
run's metrics at the top. Plain HTML, CSS and JavaScript shipped in the package: nothing is
loaded from, or sent to, another machine.

Modules: :mod:`.embeddings` (each run's embeddings of the set, cached beside the run),
:mod:`.analysis` (ranks, disagreements, confusions), :mod:`.neighbours` (the teachers'
view), :mod:`.explorer` (the answers), :mod:`.server` and :mod:`.static_site`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import UserError
from .embeddings import SetSpec, check_run, embed_run, unique_names
from .explorer import Explorer
from .neighbours import TeacherNeighbours, open_banks, teacher_features
from .server import serve, start_server
from .static_site import write_static

__all__ = ["Explorer", "SetSpec", "open_explorer", "serve", "start_server", "write_static"]


def open_explorer(
    runs: Sequence[str | os.PathLike],
    spec: SetSpec,
    image_bank: str | None = None,
    text_bank: str | None = None,
    train_data: str | None = None,
    workers: int = 0,
) -> Explorer:
    """Load every run and embed the set (or read the cached embeddings); open the banks.

    Every argument is checked before any model runs, with a one-line error naming it.
    """
    if not runs:
        raise UserError("clip-ping explore needs at least one RUN (a run folder)")
    paths = [check_run(run) for run in runs]
    spec.load(lambda image: image)  # the set's errors before any model loads
    banks = (image_bank, text_bank, train_data)
    if any(banks) and not all(banks):
        raise UserError(
            "--image-bank, --text-bank and --train-data go together (the teachers' banks of "
            "the training data and its CSV); pass all three or none"
        )
    opened = open_banks(*banks) if all(banks) else None
    names = unique_names([str(p) for p in paths])
    loaded, data = [], None
    for path, name in zip(paths, names, strict=True):
        run, data = embed_run(path, spec, name, workers)
        loaded.append(run)
    if data.captions is None and data.labels is None:
        raise UserError(
            f"--dataset {spec.dataset}: the set has neither captions nor labels; pass a CSV with "
            "a caption column (--csv-caption-key) or a labelled class set"
        )
    neighbours = None
    if opened is not None:
        cache = Path(paths[0] if paths[0].is_dir() else paths[0].parent) / "explore"
        features = teacher_features(opened[0], data, cache / f"{data.name}-teacher.pt")
        neighbours = TeacherNeighbours(*opened, set_features=features)
    return Explorer(loaded, data, neighbours)
