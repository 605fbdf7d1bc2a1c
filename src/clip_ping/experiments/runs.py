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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .demo import DemoData, DemoSize

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
    """Every evaluation of :meth:`DemoData.eval_jobs` of the finished run, each cached in its
    ``result_path`` file; the run's final metrics.

    Training writes its periodic evaluations of the same metrics to the same files (with their
    ``step``): those are evaluated again, on the finished run, and replaced."""
    from ..evaluation.datasets import csv_dataset_name
    from ..evaluation.run import after_training, result_path, run_eval
    from ..model_card import write_model_card
    from .report import final_metrics

    evaluated = False
    for task, dataset in data.eval_jobs(probes):
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

    from ..workers import die_with_parent, usable_cores

    cores = usable_cores()
    jobs = max(1, min(jobs or min(2, cores), len(plan)))
    if jobs == 1:
        return {name: run_variant(data, size, v, s, logs, name) for v, s, name in plan}
    steps = (data.split_rows()["train.csv"] // size.batch_size) * size.epochs
    threads = max(1, cores // jobs)
    print(f"{len(plan)} runs, {jobs} at a time with {threads} thread(s) each; "
          f"their output: {logs}/<run>/console.log", flush=True)  # fmt: skip
    results: dict[str, dict[str, float]] = {}
    context = get_context("spawn")  # a fresh interpreter: no inherited torch thread pools
    with (
        ProcessPoolExecutor(
            jobs, mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),)
        ) as pool,
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
