"""Train and evaluate variants of CLIP and CLIP-PING on the demo corpus, one process or
several side by side.

:func:`run_variant` trains (or finishes training) any variant of :data:`VARIANTS` for any
seed and evaluates it; :func:`run_variants` runs a plan of them. The demo (:mod:`.demo`) runs
CLIP and CLIP-PING once; the results page (:mod:`.results`) runs every seed and ablation.
Both stages are cached in the run folder: a run with ``hf/`` is not trained again, an
evaluation with its result record is not run again.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ..models import is_exported

if TYPE_CHECKING:
    from .demo_data import DemoData, DemoSize

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
    # The guidance family (docs/method.md): other uses of the same banks.
    "distill": {"loss": "distill"},
    "fd": {"loss": "fd"},
    "distill-fd": {"loss": "distill-fd"},
    "relational": {"loss": "relational"},
    "distill-nn": {"loss": "distill-nn"},
    # Not a student: the frozen teachers with trained heads (the ceiling), trained on the
    # banks' rows; no evaluation during training (the teachers would run at every epoch).
    "ceiling": {"loss": "clip", "model": "locked-teachers", "val_frequency": 0},
}


class Planned(NamedTuple):
    """One run of a plan: a variant of :data:`VARIANTS` and a seed, in ``logs/name``, with
    ``settings`` overriding the recipe or the variant (e.g. ``{"lr": 2e-3}``), evaluated on
    the ``split``'s sets (:meth:`DemoData.eval_jobs`)."""

    variant: str
    seed: int
    name: str
    settings: dict = {}
    split: str = "test"


def train_config(
    data: DemoData,
    size: DemoSize,
    variant: str,
    seed: int,
    logs: Path,
    name: str,
    extra: dict | None = None,
):
    """The resolved training config of ``variant``: the recipe of ``size``, the variant's
    overrides, then ``extra``. Training evaluates on ``val_google`` only (never a test set)."""
    from ..training.config import build_config

    overrides = {**VARIANTS[variant], **(extra or {})}
    banks = overrides.pop("banks", "default")
    settings = dict(
        train_data=str(data.train),
        val_data=str(data.corpus / "val_google.csv"),
        model=size.model,
        batch_size=size.batch_size,
        epochs=size.epochs,
        lr=size.lr,
        warmup=size.warmup,
        aug_scale_min=size.aug_scale_min,
        wd=0.1,
        seed=seed,
        logs=str(logs),
        name=name,
        resume="latest",
        workers=0,
        save_every_steps=100,
        log_every_steps=10,
        # latest.pt only: a sweep trains dozens of runs, and a checkpoint per epoch holds
        # the optimiser too (~95 MB for cpu-mini-32), ~0.8 GB a run.
        save_frequency=0,
    )
    if overrides.get("loss", "clip") != "clip" or variant == "ceiling":  # reads the banks
        settings.update(
            image_bank=str(data.bank("image", banks)), text_bank=str(data.bank("text", banks))
        )
    return build_config(overrides={**settings, **overrides})


def evaluate_run(
    run_dir: Path, data: DemoData, probes: tuple[str, ...], split: str = "test"
) -> dict[str, float]:
    """Every evaluation of :meth:`DemoData.eval_jobs` of the finished run, each cached in its
    ``result_path`` file; the run's final metrics.

    Training writes its periodic evaluations of the same metrics to the same files (with their
    ``step``): those are evaluated again, on the finished run, and replaced."""
    from ..evaluation.datasets import csv_dataset_name
    from ..evaluation.run import after_training, result_path, run_eval
    from ..training.model_card import write_model_card
    from .report import final_metrics

    evaluated = False
    for task, dataset in data.eval_jobs(probes, split):
        name = csv_dataset_name(Path(dataset))  # built-in names pass through unchanged
        out = result_path(run_dir, task, name)
        legacy = out.with_name(f"{task}-{name}.json")  # the demo's file name before result_path
        if legacy.is_file():
            legacy.replace(out)
        if not (out.is_file() and after_training(json.loads(out.read_text()))):
            run_eval(run_dir, task, dataset, out=out, device="cpu")
            evaluated = True
    if evaluated or not (run_dir / "hf" / "README.md").is_file():
        write_model_card(run_dir)  # with the numbers of the finished run
    return final_metrics(run_dir)


def run_variant(data: DemoData, size: DemoSize, run: Planned, logs: Path) -> dict[str, float]:
    """Train (or finish training) one planned run and evaluate it; its final metrics."""
    from ..training.train import train

    run_dir = logs / run.name
    cfg = train_config(data, size, run.variant, run.seed, logs, run.name, run.settings)
    if not is_exported(run_dir):
        train(cfg)
    else:
        _check_same_settings(run_dir, cfg)
    return evaluate_run(run_dir, data, size.probes, run.split)


def _check_same_settings(run_dir: Path, cfg) -> None:
    """A finished run is reused only when it was trained with ``cfg``'s settings (those a
    resume may not change, and the same epochs)."""
    from ..training.checkpoint import settings_changes
    from ..training.config import RESUME_MAY_GROW
    from ..training.run_folder import run_settings

    changes, refused = settings_changes(run_settings(run_dir), cfg)
    refused += [
        f"--{name} was {changes[name]['was']}" for name in RESUME_MAY_GROW if name in changes
    ]
    if refused:
        raise ValueError(
            f"{run_dir} was trained with other settings ({'; '.join(refused[:4])}); delete "
            "the folder to retrain it, or use another --out"
        )


def _run_in_worker(
    data: DemoData, size: DemoSize, run: Planned, logs: Path, threads: int
) -> dict[str, float]:
    """One run of :func:`run_variants` in its own process, its console output in a file."""
    import torch

    torch.set_num_threads(threads)
    (logs / run.name).mkdir(parents=True, exist_ok=True)
    with open(logs / run.name / "console.log", "ab", buffering=0) as console:
        os.dup2(console.fileno(), 1)  # file descriptors: C libraries' output goes there too
        os.dup2(console.fileno(), 2)
        try:
            return run_variant(data, size, run, logs)
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


def _merge_duplicates(plan: list[Planned]) -> list[Planned]:
    """One entry per run folder: a run planned twice (a sweep point that is also a final run)
    is trained once and evaluated on every split asked for."""
    merged: dict[str, Planned] = {}
    for run in plan:
        seen = merged.get(run.name)
        if seen is None:
            merged[run.name] = run
            continue
        if (seen.variant, seen.seed, seen.settings) != (run.variant, run.seed, run.settings):
            raise ValueError(f"run {run.name} planned twice with different settings")
        if seen.split != run.split:
            merged[run.name] = seen._replace(split="all")
    return list(merged.values())


def run_variants(
    data: DemoData,
    size: DemoSize,
    plan: list[Planned] | list[tuple],
    logs: Path,
    jobs: int | None = None,
) -> dict[str, dict[str, float]]:
    """Train and evaluate every run of ``plan`` (:class:`Planned`, or its first fields as a
    tuple: ``(variant, seed, name)``); final metrics by name.

    Runs go ``jobs`` at a time (default: 2 when there are 2 cores or more), each process with
    an equal share of the cores. A small student does not use two cores well: on 2 cores two
    runs side by side, one thread each, finish in ~12 min where one after the other at two
    threads take ~16 min. Side by side, each run's output goes to ``<run>/console.log`` and one
    progress bar follows the training steps of all of them."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from multiprocessing import get_context

    from tqdm import tqdm

    from ..workers import die_with_parent, usable_cores

    plan = _merge_duplicates([Planned(*run) for run in plan])
    cores = usable_cores()
    jobs = max(1, min(jobs or min(2, cores), len(plan)))
    if jobs == 1:
        return {run.name: run_variant(data, size, run, logs) for run in plan}
    rows = data.train_rows()
    steps = {
        run.name: rows
        // run.settings.get("batch_size", size.batch_size)
        * run.settings.get("epochs", size.epochs)
        for run in plan
    }
    threads = max(1, cores // jobs)
    print(
        f"{len(plan)} runs, {jobs} at a time with {threads} thread(s) each; "
        f"their output: {logs}/<run>/console.log",
        flush=True,
    )
    results: dict[str, dict[str, float]] = {}
    context = get_context("spawn")  # a fresh interpreter: no inherited torch thread pools
    with (
        ProcessPoolExecutor(
            jobs, mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),)
        ) as pool,
        tqdm(total=sum(steps.values()), unit="step", desc="training", dynamic_ncols=True) as bar,
    ):
        futures = {
            pool.submit(_run_in_worker, data, size, run, logs, threads): run.name for run in plan
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
                steps[n] if n in results else min(steps[n], _last_step(logs / n))
                for n in futures.values()
            )
            bar.set_postfix_str(f"{len(results)}/{len(plan)} runs done", refresh=False)
            bar.refresh()
    return {run.name: results[run.name] for run in plan}  # one entry per folder
