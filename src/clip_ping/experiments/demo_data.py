"""What the demo, the results page, the sweeps and the curve share: the size of a demo
(:class:`DemoSize`, :data:`FULL`, :data:`QUICK`), where its data is (:class:`DemoData`) and
its one number per method (:func:`mean_recall` over :func:`retrieval_keys`).

Examples:
    >>> from clip_ping.experiments.demo_data import QUICK, mean_recall, retrieval_keys
    >>> QUICK.epochs, len(retrieval_keys("val"))
    (5, 18)
    >>> retrieval_keys()[0]
    'retrieval/test_google/image_to_text_R@1'
    >>> mean_recall({key: 0.5 for key in retrieval_keys("val")}, "val")
    0.5
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

STUDENT = "cpu-mini-32"


@dataclass(frozen=True)
class DemoSize:
    """How much of the corpus and how long to train."""

    max_concepts: int | None  # emoji concepts kept (None: all)
    max_clipart: int | None  # clip-art images kept (None: all)
    epochs: int
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 50
    aug_scale_min: float = 0.9  # random resized crop: smallest share of the area
    model: str = STUDENT
    probes: tuple[str, ...] = ("mnist5k", "digits")  # linear-probe datasets (built-ins)


# The recipe chosen on val by the recipe sweep (:mod:`.sweep`, docs/method.md): warm-up 200
# with 8 or 10 epochs led for both methods and tied over two seeds (mean of the two methods'
# val mean recall 0.1888 vs 0.1894, seed std ~0.01); 8 is the cheaper of the tie.
FULL = DemoSize(max_concepts=None, max_clipart=None, epochs=8, warmup=200)
QUICK = DemoSize(max_concepts=300, max_clipart=600, epochs=5, batch_size=64, probes=("digits",))

RETRIEVAL_SOURCES = ("google", "twitter", "clipart")  # one retrieval set each, per split
# The style no model trains on (OpenMoji): its retrieval set per split gives the off-style
# mean recall, reported beside the in-style one.
OFF_STYLE_SOURCES = ("openmoji",)
ZEROSHOT_SETS = ("unseen", "seen", "subgroups")


def retrieval_keys(split: str = "test", sources: tuple[str, ...] = RETRIEVAL_SOURCES) -> list[str]:
    """The retrieval metrics of a split: R@1, 5, 10 both ways on each of its sets (the
    in-style ones by default)."""
    return [
        f"retrieval/{split}_{source}/{direction}_R@{k}"
        for source in sources
        for direction in ("image_to_text", "text_to_image")
        for k in (1, 5, 10)
    ]


def mean_recall(
    metrics: dict[str, float], split: str = "test", sources: tuple[str, ...] = RETRIEVAL_SOURCES
) -> float:
    """A method's one number: the mean of :func:`retrieval_keys` (18 recalls, in-style)."""
    keys = retrieval_keys(split, sources)
    missing = [key for key in keys if key not in metrics]
    if missing:
        raise KeyError(f"{len(missing)} {split} retrieval metrics missing, e.g. {missing[0]}")
    return sum(metrics[key] for key in keys) / len(keys)


def off_style_recall(metrics: dict[str, float], split: str = "test") -> float:
    """The mean of the 6 recalls on the split's OpenMoji set: a style never trained on."""
    return mean_recall(metrics, split, OFF_STYLE_SOURCES)


@dataclass
class DemoData:
    """Where a demo's corpus, banks and evaluation sets are."""

    corpus: Path
    banks: Path
    train_file: Path | None = None  # another training CSV (a subset): the corpus's by default

    @property
    def train(self) -> Path:
        return self.train_file or self.corpus / "train.csv"

    def bank(self, modality: str, variant: str = "default") -> Path:
        return self.banks / (modality if variant == "default" else f"{modality}-{variant}")

    def split_rows(self) -> dict[str, int]:
        """The row count of each split of the corpus (``train.csv``: ...), from ``corpus.json``."""
        return dict(json.loads((self.corpus / "corpus.json").read_text())["splits"])

    def train_rows(self) -> int:
        """Training pairs: the corpus's, or those of the other training CSV."""
        if self.train_file is None:
            return self.split_rows()["train.csv"]
        import csv

        with open(self.train_file, newline="", encoding="utf-8") as f:
            return sum(1 for _ in csv.reader(f)) - 1

    def eval_jobs(self, probes: tuple[str, ...], split: str = "test") -> list[tuple[str, str]]:
        """(task, dataset) pairs a run is evaluated on: retrieval on the ``split``'s sets (the
        in-style ones and the off-style OpenMoji one); for
        ``test`` also zero-shot on OpenMoji and the linear probes; ``all``: val and test."""
        if split == "all":
            return self.eval_jobs(probes, "val") + self.eval_jobs(probes, "test")
        if split not in ("val", "test"):
            raise ValueError(f"split {split!r}: choose val, test or all")
        c = self.corpus
        sources = (*RETRIEVAL_SOURCES, *OFF_STYLE_SOURCES)
        jobs = [("retrieval", str(c / f"{split}_{source}.csv")) for source in sources]
        if split == "test":
            jobs += [("zeroshot", str(c / "zeroshot" / n / "test.csv")) for n in ZEROSHOT_SETS]
            jobs += [("linear-probe", name) for name in probes]
        return jobs
