"""Compare finished runs: a markdown table of their final metrics and PNG figures.

    clip-ping report logs/clip logs/clip-ping --out reports/clip-vs-ping

A run's final metrics are the last value of every eval metric logged in
``RUN/metrics.jsonl`` during training, overridden by the evaluation records in
``RUN/results/*.json`` (written by training, ``clip-ping eval --out`` or the demo). Where
several records hold a metric, the one measured last wins, by what the records say, not by
when the files were written: training's periodic evaluations carry their ``step`` (a later
step wins); a record without ``step`` evaluates the finished run and wins over them; between
records measured alike, the file name that sorts last wins (:func:`~clip_ping.evaluation.run.result_records`). Figures:
the training loss terms against step, the periodic eval metrics against step, and the final
metrics as grouped bars.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..evaluation.run import run_results
from ..io import atomic_write_text
from .figures import plot_bars, pyplot, save_figure

EVAL_PREFIXES = ("zeroshot", "retrieval", "linear_probe")
# The metrics a short table shows first, when a run has them (named as in docs/design.md).
HEADLINE_SUFFIXES = ("/acc1", "/acc5", "_R@1", "_R@5", "/lp_acc1")


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of ``RUN/metrics.jsonl``, in order (``[]`` when the run logged none)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def is_eval_metric(name: str) -> bool:
    return name.split("/", 1)[0] in EVAL_PREFIXES


def final_metrics(run_dir: str | Path) -> dict[str, float]:
    """Every eval metric of a run: the last logged value, overridden by the result records
    (:func:`~clip_ping.evaluation.run.result_records`; the one measured last wins)."""
    final: dict[str, float] = {}
    for record in read_metrics(run_dir):
        final.update({k: v for k, v in record.items() if is_eval_metric(k)})
    final.update(run_results(run_dir))
    return final


def headline(keys: Sequence[str]) -> list[str]:
    """The keys worth a table row: top-1/top-5, R@1/R@5 and probe top-1, in sorted order."""
    return sorted(k for k in keys if k.endswith(HEADLINE_SUFFIXES))


def metrics_table(metrics: Mapping[str, Mapping[str, float]], keys: Sequence[str]) -> str:
    """A markdown table, one row per metric and one column per run; with exactly two runs a
    last column gives the second minus the first."""
    labels = list(metrics)
    header = "| metric | " + " | ".join(labels) + " |"
    rule = "|---|" + "---:|" * len(labels)
    if len(labels) == 2:
        header += " difference |"
        rule += "---:|"
    rows = [header, rule]
    for key in keys:
        values = [metrics[label].get(key, math.nan) for label in labels]
        row = f"| {key} | " + " | ".join(f"{v:.3f}" for v in values) + " |"
        if len(labels) == 2:
            row += f" {values[1] - values[0]:+.3f} |"
        rows.append(row)
    return "\n".join(rows) + "\n"


def plot_curves(runs: Mapping[str, str | Path], out_png: str | Path) -> Path:
    """Left: every ``train/*_loss`` term against step (one colour per run, one line style
    per term). Right: the periodic eval metrics with the most points against step."""
    plt = pyplot()
    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"train/clip_loss": "-", "train/nn_loss": "--", "train/xnn_loss": ":"}
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, (label, run_dir) in zip(colours * 4, runs.items(), strict=False):
        records = read_metrics(run_dir)
        for term, style in styles.items():
            points = [(r["step"], r[term]) for r in records if term in r]
            if points:
                steps, values = zip(*points, strict=True)
                name = term.split("/", 1)[1]
                ax_loss.plot(steps, values, style, color=colour, label=f"{label} {name}")
        evals = [r for r in records if any(is_eval_metric(k) for k in r)]
        keys = headline({k for r in evals for k in r})[:2]
        for key, style in zip(keys, ("-o", "--s")[: len(keys)], strict=True):
            points = [(r["step"], r[key]) for r in evals if key in r]
            steps, values = zip(*points, strict=True)
            short = key.split("/", 1)[1]
            ax_eval.plot(steps, values, style, color=colour, label=f"{label} {short}")
    ax_loss.set(xlabel="step", ylabel="loss", title="training loss terms")
    ax_eval.set(xlabel="step", ylabel="score", title="held-out metrics during training")
    for ax in (ax_loss, ax_eval):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return save_figure(fig, out_png)


def write_report(runs: Mapping[str, str | Path], out_dir: str | Path) -> Path:
    """``out_dir/report.md`` comparing ``runs`` (label → run folder), with its figures."""
    out_dir = Path(out_dir)
    metrics = {label: final_metrics(run_dir) for label, run_dir in runs.items()}
    for label, values in metrics.items():
        if not values:
            raise ValueError(
                f"run {label} ({runs[label]}) has no evaluation results: evaluate it with "
                "`clip-ping eval --model RUN ... --out RUN/results/NAME.json` or train with "
                "--val-data"
            )
    keys = headline(set().union(*(m.keys() for m in metrics.values())))
    plot_bars(metrics, keys, out_dir / "figures" / "metrics.png")
    plot_curves(runs, out_dir / "figures" / "curves.png")
    runs_list = "\n".join(f"- **{label}**: `{path}`" for label, path in runs.items())
    text = (
        "# Run comparison\n\n"
        f"{runs_list}\n\n"
        + metrics_table(metrics, keys)
        + "\n![final metrics](figures/metrics.png)\n\n![curves](figures/curves.png)\n"
    )
    out = out_dir / "report.md"
    atomic_write_text(out, text)
    return out


def main(run_dirs: Sequence[str], out_dir: str) -> Path:
    """``clip-ping report``: label each run by its folder name."""
    runs: dict[str, Path] = {}
    for run_dir in run_dirs:
        path = Path(run_dir)
        if not (path / "metrics.jsonl").is_file() and not (path / "results").is_dir():
            raise FileNotFoundError(
                f"{run_dir} is not a run folder (no metrics.jsonl or results/); pass folders "
                "written by `clip-ping train`, e.g. logs/<name>"
            )
        runs[path.name if path.name not in runs else str(path)] = path
    out = write_report(runs, out_dir)
    print(f"report: {out}")
    return out
