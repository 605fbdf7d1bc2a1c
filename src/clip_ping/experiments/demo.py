"""The main job, end to end and offline: corpus → banks → neighbours → CLIP and CLIP-PING
→ evaluation → report.

    clip-ping demo            # the full demo (make demo)
    clip-ping demo --quick    # a smaller corpus and budget: minutes, not tens of minutes

Stages, each cached (a second call reuses what is finished, and a killed call resumes):

1. the demo corpus (``clip-ping data demo``): emoji in two styles with CLDR captions plus
   clip-art for training; held-out concepts and held-out clip-art for retrieval; the OpenMoji
   style, never trained on, for zero-shot;
2. teacher banks (EfficientNet-Lite0 images, MiniLM captions) and top-K neighbour tables;
3. a contact sheet of the neighbours;
4. CLIP and CLIP-PING trained with the same student, data, budget and seed (so the same
   initial weights and batch order): only the objective differs;
5. every run evaluated: zero-shot on OpenMoji (concept names; subgroups), retrieval on
   held-out concepts and clip-art, linear probe on MNIST-5k and scikit-learn digits;
6. ``summary.json`` (DESIGN.md §4 metric names) and ``report.md`` with figures.

``run_variant`` trains and evaluates any variant of :data:`VARIANTS` for any seed: the
results command (:mod:`clip_ping.experiments.results`) uses it for its seeds and ablations.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

from ..io import atomic_write_text

# Teacher input: emoji are 64 px and clip-art 128 px; 128 px costs a third of 224 px and the
# neighbours look as sensible on the contact sheet.
IMAGE_TEACHER_SIZE = 128
NEIGHBOR_K = 5
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
    model: str = STUDENT
    probes: tuple[str, ...] = ("mnist5k", "digits")  # linear-probe datasets (built-ins)


FULL = DemoSize(max_concepts=None, max_clipart=None, epochs=6)
QUICK = DemoSize(max_concepts=300, max_clipart=600, epochs=5, batch_size=64, probes=("digits",))

# Training overrides of each variant (on top of the shared settings). "clip-ping" is the
# default method; the others change one thing each.
VARIANTS: dict[str, dict] = {
    "clip": {"loss": "clip"},
    "clip-ping": {"loss": "clip-ping"},
    "nn-only": {"loss": "clip-ping", "xnn_weight": 0.0},
    "xnn-only": {"loss": "clip-ping", "nn_weight": 0.0},
    "memory": {"loss": "clip-ping", "neighbor_target": "memory"},
    "active": {"loss": "clip-ping", "neighbor_source": "active"},
    "k1": {"loss": "clip-ping", "neighbor_k": 1},
    "lambda-0.5": {"loss": "clip-ping", "nn_weight": 0.5, "xnn_weight": 0.5},
    "lambda-2": {"loss": "clip-ping", "nn_weight": 2.0, "xnn_weight": 2.0},
    "no-same-caption": {"loss": "clip-ping", "banks": "no-same-caption"},
}
DEMO_RUNS = ("clip", "clip-ping")


def _stage(name: str):
    print(f"\n== {name} ==", flush=True)
    return time.perf_counter()


@dataclass
class DemoData:
    """Where a demo's corpus, banks and evaluation sets are."""

    corpus: Path
    banks: Path

    @property
    def train(self) -> Path:
        return self.corpus / "train.csv"

    def bank(self, modality: str, variant: str = "default") -> Path:
        return self.banks / (modality if variant == "default" else f"{modality}-{variant}")

    def eval_jobs(self, probes: tuple[str, ...]) -> list[tuple[str, str]]:
        """(task, dataset) pairs every run is evaluated on."""
        c = self.corpus
        return [
            ("zeroshot", str(c / "zeroshot" / "concepts" / "test.csv")),
            ("zeroshot", str(c / "zeroshot" / "subgroups" / "test.csv")),
            ("retrieval", str(c / "val_concepts.csv")),
            ("retrieval", str(c / "val_clipart.csv")),
        ] + [("linear-probe", name) for name in probes]


def prepare_data(out: Path, size: DemoSize, assets: str | None = None) -> DemoData:
    """The corpus, both banks and their neighbour tables (also without same-caption pairs)."""
    from ..bank import build_bank
    from ..data.loader import DataSpec, read_captions
    from ..neighbors import caption_groups, mine_bank
    from .demo_corpus import build_demo_corpus

    data = DemoData(out / "data" / "corpus", out / "banks")
    build_demo_corpus(
        data.corpus, assets=assets, max_concepts=size.max_concepts, max_clipart=size.max_clipart
    )
    spec = DataSpec(str(data.train))
    build_bank(spec, "image", data.bank("image"), image_size=IMAGE_TEACHER_SIZE, workers=0)
    build_bank(spec, "text", data.bank("text"), workers=0)
    captions = read_captions(spec)
    groups = caption_groups(captions)
    for modality in ("image", "text"):
        if not (data.bank(modality) / "neighbors.json").is_file():
            mine_bank(data.bank(modality), k=NEIGHBOR_K)
        alt = data.bank(modality, "no-same-caption")
        if not (alt / "neighbors.json").is_file():
            _link_bank(data.bank(modality), alt)
            mine_bank(alt, k=NEIGHBOR_K, exclude_groups=groups)
    return data


def _link_bank(source: Path, target: Path) -> None:
    """A bank folder sharing ``source``'s features (hard links), for another neighbour table."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("features.npy", "meta.json"):
        if not (target / name).exists():
            os.link(source / name, target / name)


def train_config(data: DemoData, size: DemoSize, variant: str, seed: int, logs: Path, name: str):
    """The resolved training config of ``variant`` (shared settings + its overrides)."""
    from ..config import build_config

    overrides = dict(VARIANTS[variant])
    banks = overrides.pop("banks", "default")
    settings = dict(
        train_data=str(data.train), val_data=str(data.corpus / "val_concepts.csv"),
        zeroshot_data=str(data.corpus / "zeroshot" / "concepts" / "test.csv"),
        model=size.model, batch_size=size.batch_size, epochs=size.epochs, lr=size.lr,
        warmup=size.warmup, wd=0.1, seed=seed, logs=str(logs), name=name, resume="latest",
        workers=0, save_every_steps=100, log_every_steps=10,
    )  # fmt: skip
    if overrides.get("loss") == "clip-ping":
        settings.update(
            image_bank=str(data.bank("image", banks)), text_bank=str(data.bank("text", banks))
        )
    return build_config(overrides={**settings, **overrides})


def evaluate_run(run_dir: Path, data: DemoData, probes: tuple[str, ...]) -> dict[str, float]:
    """Every evaluation of :meth:`DemoData.eval_jobs`, cached in ``run_dir/results/``."""
    from ..evaluation.datasets import csv_dataset_name
    from ..evaluation.run import run_eval
    from .report import final_metrics

    for task, dataset in data.eval_jobs(probes):
        name = csv_dataset_name(Path(dataset))  # built-in names pass through unchanged
        out = run_dir / "results" / f"{task}-{name}.json"
        if not out.is_file():
            run_eval(run_dir, task, dataset, out=out, device="cpu")
    return final_metrics(run_dir)


def run_variant(
    data: DemoData, size: DemoSize, variant: str, seed: int, logs: Path, name: str
) -> dict[str, float]:
    """Train (or finish training) one variant and evaluate it; its final metrics."""
    from ..train import train

    run_dir = logs / name
    if not (run_dir / "hf" / "config.json").is_file():
        train(train_config(data, size, variant, seed, logs, name))
    return evaluate_run(run_dir, data, size.probes)


def _run_in_worker(
    data: DemoData, size: DemoSize, variant: str, seed: int, logs: Path, name: str, threads: int
) -> dict[str, float]:
    """One run of :func:`run_variants` in its own process, its console output in a file."""
    import torch

    torch.set_num_threads(threads)
    (logs / name).mkdir(parents=True, exist_ok=True)
    with open(logs / name / "console.log", "ab", buffering=0) as console:
        os.dup2(console.fileno(), 1)  # file descriptors: C libraries' output goes there too
        os.dup2(console.fileno(), 2)
        try:
            return run_variant(data, size, variant, seed, logs, name)
        except BaseException:
            traceback.print_exc()  # the log the parent's error points to holds the cause
            sys.stderr.flush()
            raise


def _last_step(run_dir: Path) -> int:
    """The newest training step logged to ``metrics.jsonl`` (0 before the first)."""
    try:
        with open(run_dir / "metrics.jsonl", "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line).get("step", 0))
        except ValueError:  # a line cut by the read window or being written
            continue
    return 0


def run_variants(
    data: DemoData,
    size: DemoSize,
    plan: list[tuple[str, int, str]],
    logs: Path,
    jobs: int | None = None,
) -> dict[str, dict[str, float]]:
    """Train and evaluate every ``(variant, seed, name)`` of ``plan``; final metrics by name.

    Runs go ``jobs`` at a time (default: 2 when there are 2 cores or more), each process with
    an equal share of the cores. A small student does not use two cores well: on 2 cores two
    runs side by side, one thread each, finish in ~12 min where one after the other at two
    threads take ~16 min. Side by side, each run's output goes to ``<run>/console.log`` and one
    progress bar follows the training steps of all of them."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from multiprocessing import get_context

    from tqdm import tqdm

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    jobs = max(1, min(jobs or min(2, cores or 1), len(plan)))
    if jobs == 1:
        return {name: run_variant(data, size, v, s, logs, name) for v, s, name in plan}
    rows = corpus_counts(json.loads((data.corpus / "corpus.json").read_text()))["train.csv"]
    steps = (rows // size.batch_size) * size.epochs
    threads = max(1, (cores or jobs) // jobs)
    print(f"{len(plan)} runs, {jobs} at a time with {threads} thread(s) each; "
          f"their output: {logs}/<run>/console.log", flush=True)  # fmt: skip
    results: dict[str, dict[str, float]] = {}
    context = get_context("spawn")  # a fresh interpreter: no inherited torch thread pools
    with (
        ProcessPoolExecutor(jobs, mp_context=context) as pool,
        tqdm(total=steps * len(plan), unit="step", desc="training", dynamic_ncols=True) as bar,
    ):
        futures = {
            pool.submit(_run_in_worker, data, size, v, s, logs, name, threads): name
            for v, s, name in plan
        }
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=2.0, return_when=FIRST_COMPLETED)
            for future in done:
                name = futures[future]
                try:
                    results[name] = future.result()
                except Exception as exc:
                    for other in pending:  # runs not started yet; running ones finish
                        other.cancel()
                    raise RuntimeError(
                        f"run {name} failed ({exc}); its output is in {logs / name}/console.log"
                    ) from exc
            bar.n = sum(
                steps if futures[f] in results else min(steps, _last_step(logs / futures[f]))
                for f in futures
            )
            bar.set_postfix_str(f"{len(results)}/{len(plan)} runs done", refresh=False)
            bar.refresh()
    return {name: results[name] for _, _, name in plan}


def run_demo(
    out: str | Path = "runs/demo",
    quick: bool = False,
    seed: int = 0,
    assets: str | None = None,
    size: DemoSize | None = None,
    jobs: int | None = None,
) -> dict:
    """Build everything, train and evaluate both runs, write ``summary.json`` and ``report.md``.

    ``size`` overrides the corpus limits and budget of ``quick`` (tests use a tiny one);
    ``jobs`` is how many runs train at once (:func:`run_variants`)."""
    from ..data.loader import DataSpec
    from .contact_sheet import contact_sheet
    from .figures import plot_bars
    from .report import plot_curves

    started = time.perf_counter()
    out = Path(out)
    size = size or (QUICK if quick else FULL)
    stage_seconds: dict[str, float] = {}

    t = _stage("corpus, teacher banks and neighbour tables")
    data = prepare_data(out, size, assets)
    stage_seconds["data"] = time.perf_counter() - t
    figures = out / "figures"
    sheet = figures / "neighbours.png"
    if not sheet.is_file():
        contact_sheet(data.bank("image"), data.bank("text"), DataSpec(str(data.train)), sheet)

    t = _stage(f"train and evaluate {' and '.join(DEMO_RUNS)}")
    reused = [name for name in DEMO_RUNS if (out / name / "hf" / "config.json").is_file()]
    metrics = run_variants(data, size, [(name, seed, name) for name in DEMO_RUNS], out, jobs)
    stage_seconds["runs"] = time.perf_counter() - t
    keys = demo_keys(metrics)
    plot_curves({name: out / name for name in DEMO_RUNS}, figures / "curves.png")
    plot_bars(metrics, keys, figures / "metrics.png", title="held-out metrics, one seed")
    wall_seconds = time.perf_counter() - started
    corpus_info = json.loads((data.corpus / "corpus.json").read_text())
    summary = {
        "runs": metrics,
        "wall_seconds": round(wall_seconds, 1),
        "stage_seconds": {k: round(v, 1) for k, v in stage_seconds.items()},
        "reused_runs": reused,  # trained by an earlier call: their time is not in wall_seconds
        "quick": quick,
        "seed": seed,
        "size": asdict(size),
        "student": size.model,
        "corpus": corpus_counts(corpus_info),
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "report.md", render_report(summary, keys))
    print(f"\nreport: {out / 'report.md'}\nsummary: {out / 'summary.json'}")
    return summary


def demo_keys(metrics: dict[str, dict[str, float]]) -> list[str]:
    """The report's rows: top-1/top-5, R@1/R@5 and probe top-1 of every evaluation."""
    from .report import headline

    return headline(set().union(*(m.keys() for m in metrics.values())))


def corpus_counts(corpus_info: dict) -> dict:
    """The row counts of the corpus splits, from ``corpus.json``."""
    return dict(corpus_info["splits"])


def render_report(summary: dict, keys: list[str]) -> str:
    from .report import metrics_table

    size, corpus = summary["size"], summary["corpus"]
    counts = ", ".join(f"{name}: {n:,}" for name, n in corpus.items())
    timings = ", ".join(f"{name} {s:.0f} s" for name, s in summary["stage_seconds"].items())
    return (
        "# clip-ping demo: CLIP vs CLIP-PING\n\n"
        f"Both runs train the `{summary['student']}` student on the same pairs (emoji in the "
        "Google and Twitter styles with CLDR captions, plus clip-art) for the same budget "
        f"({size['epochs']} epochs of batch {size['batch_size']}, lr {size['lr']}) from the "
        f"same seed ({summary['seed']}): same initial weights, same batch order. CLIP-PING adds "
        f"the neighbour terms (bank targets, top-{NEIGHBOR_K} neighbours from EfficientNet-"
        "Lite0 and MiniLM banks, λ_NN = λ_XNN = 1).\n\n"
        f"Corpus rows — {counts}.\n\n"
        "Held-out evaluations: zero-shot on the OpenMoji style, never trained on (`concepts`: "
        "the emoji's name among all names; `subgroups`: its CLDR subgroup), retrieval on "
        "emoji concepts and clip-art held out of training (`val_concepts`, `val_clipart`), "
        "linear probe on real MNIST digits (`mnist5k`) and scikit-learn's 8×8 `digits`.\n\n"
        + metrics_table(summary["runs"], keys)
        + "\nOne seed: see docs/results.md for the mean ± std over seeds and the ablations "
        "before reading much into a single difference.\n\n"
        "![metrics](figures/metrics.png)\n\n![curves](figures/curves.png)\n\n"
        "Neighbours from the teachers (anchor, its image neighbours, its caption neighbours):\n\n"
        "![neighbours](figures/neighbours.png)\n\n"
        f"Wall time: {summary['wall_seconds']:.0f} s ({timings})"
        + (
            f"; reused from an earlier call, so not timed here: {', '.join(summary['reused_runs'])}"
            if summary["reused_runs"]
            else ""
        )
        + ".\n"
    )
