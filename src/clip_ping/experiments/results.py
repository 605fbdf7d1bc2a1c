"""Seeds and ablations on the demo corpus → ``docs/results.md`` (DESIGN.md §6).

    clip-ping results --seeds 3 --ablations    # CLIP, CLIP-PING and every ablation, 3 seeds
    make results                               # the command that wrote docs/results.md

Every variant of :data:`clip_ping.experiments.runs.VARIANTS` is trained and evaluated exactly as
the demo's runs (same corpus, student, budget), once per seed. A seed fixes the initial weights
and the batch order, so a variant and CLIP trained with the same seed differ only in their
objective: the tables give each metric's mean ± std over seeds and the mean ± std of the
**paired** difference to CLIP (same seed), with how many seeds it was ahead. Runs are cached
in the demo folder (seed 0's CLIP and CLIP-PING are the demo's own runs), so an interrupted
results command resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from ..io import atomic_write_text

ABLATIONS = (
    "nn-only",
    "xnn-only",
    "memory",
    "active",
    "k1",
    "lambda-0.5",
    "lambda-2",
    "no-same-caption",
)
# The metrics the ablation table shows (the headline table shows every headline metric).
ABLATION_KEYS = (
    "zeroshot/concepts/acc1",
    "zeroshot/concepts/acc5",
    "zeroshot/subgroups/acc1",
    "retrieval/val_concepts/image_to_text_R@1",
    "retrieval/val_concepts/text_to_image_R@1",
    "retrieval/val_clipart/image_to_text_R@1",
    "retrieval/val_clipart/text_to_image_R@1",
    "linear_probe/mnist5k/lp_acc1",
)


def run_name(variant: str, seed: int, demo_seed: int = 0) -> str:
    """Seed ``demo_seed`` of a variant is the demo's own run folder; other seeds get a suffix."""
    return variant if seed == demo_seed else f"{variant}-seed{seed}"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired(
    runs: dict[int, dict[str, float]], baseline: dict[int, dict[str, float]], key: str
) -> tuple[float, float, int, int]:
    """(mean, std, wins, seeds) of ``run − baseline`` over the seeds both have."""
    seeds = sorted(set(runs) & set(baseline))
    diffs = [runs[s][key] - baseline[s][key] for s in seeds if key in runs[s]]
    if not diffs:
        return float("nan"), float("nan"), 0, 0
    mean, std = mean_std(diffs)
    return mean, std, sum(d > 0 for d in diffs), len(diffs)


def verdict(key: str, ping: dict[int, dict[str, float]], clip: dict[int, dict[str, float]]) -> str:
    """Whether CLIP-PING is ahead of CLIP on ``key`` by more than the seed-to-seed spread
    (the larger of the two methods' standard deviations)."""
    diff, _, wins, n = paired(ping, clip, key)
    spread = max(
        mean_std([r[key] for r in ping.values()])[1], mean_std([r[key] for r in clip.values()])[1]
    )
    if diff > spread:
        return f"ahead by {diff:+.3f}, more than the spread {spread:.3f} ({wins}/{n} seeds)"
    if diff > 0:
        return f"ahead by {diff:+.3f}, within the spread {spread:.3f} ({wins}/{n} seeds)"
    return f"not ahead: {diff:+.3f} (spread {spread:.3f}, {wins}/{n} seeds ahead)"


def _cell(values: Sequence[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.3f} ± {std:.3f}"


def headline_table(
    clip: dict[int, dict[str, float]], ping: dict[int, dict[str, float]], keys: Sequence[str]
) -> str:
    rows = [
        "| metric | CLIP | CLIP-PING | paired difference | seeds ahead |",
        "|---|---:|---:|---:|---:|",
    ]
    for key in keys:
        diff, std, wins, n = paired(ping, clip, key)
        rows.append(
            f"| {key} | {_cell([r[key] for r in clip.values()])} | "
            f"{_cell([r[key] for r in ping.values()])} | {diff:+.3f} ± {std:.3f} | {wins}/{n} |"
        )
    return "\n".join(rows) + "\n"


def ablation_table(
    results: dict[str, dict[int, dict[str, float]]], keys: Sequence[str], clip: str = "clip"
) -> str:
    """Mean over seeds per variant; the last column averages the paired differences to CLIP
    over ``keys`` (a one-number summary, every metric weighted alike), ± its std over seeds."""
    short = [
        k.split("/", 1)[1].replace("image_to_text", "i→t").replace("text_to_image", "t→i")
        for k in keys
    ]
    rows = [
        "| variant | seeds | " + " | ".join(short) + " | mean Δ vs CLIP |",
        "|---|---:|" + "---:|" * (len(keys) + 1),
    ]
    for variant, runs in results.items():
        cells = [f"{statistics.fmean(r[k] for r in runs.values()):.3f}" for k in keys]
        if variant == clip:
            delta = "—"
        else:
            mean, std, n = mean_delta(runs, results[clip], keys)
            delta = f"{mean:+.3f}" + (f" ± {std:.3f}" if n > 1 else "")
        rows.append(f"| {variant} | {len(runs)} | " + " | ".join(cells) + f" | {delta} |")
    return "\n".join(rows) + "\n"


def mean_delta(
    runs: dict[int, dict[str, float]], clip: dict[int, dict[str, float]], keys: Sequence[str]
) -> tuple[float, float, int]:
    """(mean, std, seeds) over seeds of the per-seed mean paired difference to CLIP."""
    seeds = sorted(set(runs) & set(clip))
    per_seed = [statistics.fmean(runs[s][k] - clip[s][k] for k in keys) for s in seeds]
    return (*mean_std(per_seed), len(per_seed))


def ablation_verdict(
    results: dict[str, dict[int, dict[str, float]]],
    keys: Sequence[str],
    default: str = "clip-ping",
    clip: str = "clip",
) -> str:
    """Whether any ablation beats the default by more than the default's seed-to-seed spread
    of the mean paired difference to CLIP."""
    base, spread, seeds = mean_delta(results[default], results[clip], keys)
    scores = {
        v: mean_delta(runs, results[clip], keys)
        for v, runs in results.items()
        if v not in (default, clip)
    }
    if not scores:
        return ""
    if seeds < 2:
        return "\nThe default has one seed, so no spread to judge the ablations by: use --seeds 3."
    best = max(scores, key=lambda v: scores[v][0])
    mean, _, n = scores[best]
    said = f"`{best}` ({mean:+.3f}, {n} seed{'s' if n > 1 else ''})"
    if mean - base > spread:
        return (
            f"\n{said} beats the default `{default}` ({base:+.3f} ± {spread:.3f}) by more than "
            "the default's seed-to-seed spread: a candidate for the default."
        )
    return (
        f"\nNo ablation beats the default `{default}` ({base:+.3f} ± {spread:.3f}) by more than "
        f"its seed-to-seed spread; the best is {said}. The defaults stay."
    )


def samples_per_second(run_dir: Path) -> float:
    """Median ``train/samples_per_second`` of a run (the machine is shared: medians, not means)."""
    from .report import read_metrics

    rates = [
        r["train/samples_per_second"]
        for r in read_metrics(run_dir)
        if "train/samples_per_second" in r
    ]
    return statistics.median(rates) if rates else float("nan")


def ablation_seed_counts(names: Sequence[str], default_seeds: int) -> dict[str, int]:
    """Seeds per ablation from ``NAME`` or ``NAME:SEEDS`` items (``k1:3``: three seeds)."""
    counts = {}
    for item in names:
        name, _, seeds = item.partition(":")
        if name not in ABLATIONS:
            raise ValueError(f"--ablations {item}: choose from {', '.join(ABLATIONS)}")
        if seeds and not (seeds.isdigit() and int(seeds) >= 1):
            raise ValueError(f"--ablations {item}: the seed count after ':' must be ≥ 1")
        counts[name] = int(seeds) if seeds else default_seeds
    return counts


def run_results(
    out: str | Path = "runs/demo",
    seeds: int = 3,
    ablations: bool | Sequence[str] = True,
    ablation_seeds: int | None = None,
    quick: bool = False,
    markdown: str | Path = "docs/results.md",
    figures: str | Path = "docs/figures",
    assets: str | None = None,
    jobs: int | None = None,
) -> dict:
    """Train and evaluate CLIP and CLIP-PING for ``seeds`` seeds and each ablation (all of
    :data:`ABLATIONS` for ``True``, or the named ones) for ``ablation_seeds`` (default:
    ``seeds``); write the tables to ``markdown``."""
    from .demo import FULL, QUICK, prepare_data
    from .runs import run_variants

    started = time.perf_counter()
    out, size = Path(out), (QUICK if quick else FULL)
    data = prepare_data(out, size, assets)
    plan = [(v, s) for s in range(seeds) for v in ("clip", "clip-ping")]
    chosen = ABLATIONS if ablations is True else tuple(ablations or ())
    counts = ablation_seed_counts(chosen, ablation_seeds or seeds)
    plan += [(v, s) for v, n in counts.items() for s in range(n)]
    metrics = run_variants(data, size, [(v, s, run_name(v, s)) for v, s in plan], out, jobs)
    results: dict[str, dict[int, dict[str, float]]] = {}
    speed: dict[str, list[float]] = {}
    for variant, seed in plan:
        name = run_name(variant, seed)
        results.setdefault(variant, {})[seed] = metrics[name]
        speed.setdefault(variant, []).append(samples_per_second(out / name))
    command = f"clip-ping results --seeds {seeds}" + (" --quick" if quick else "")
    if chosen:
        command += " --ablations" + ("" if ablations is True else " " + " ".join(chosen))
        command += f" --ablation-seeds {ablation_seeds}" if ablation_seeds else ""
    summary = {
        "command": command,
        "results": {v: {str(s): m for s, m in runs.items()} for v, runs in results.items()},
        "samples_per_second": {v: statistics.median(r) for v, r in speed.items()},
        "size": size.__dict__,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2) + "\n")
    text = render_results(results, summary, data, Path(markdown), Path(figures), quick)
    atomic_write_text(markdown, text)
    print(f"\nresults: {markdown}")
    return summary


def plot_results(
    results: dict[str, dict[int, dict[str, float]]], keys: Sequence[str], figures: Path
) -> list[Path]:
    """Bars of CLIP vs CLIP-PING (± std over seeds), and each ablation's paired difference."""
    from .figures import plot_bars, pyplot, save_figure

    means, stds = {}, {}
    for variant in ("clip", "clip-ping"):
        runs = results[variant]
        means[variant] = {k: mean_std([r[k] for r in runs.values()])[0] for k in keys}
        stds[variant] = {k: mean_std([r[k] for r in runs.values()])[1] for k in keys}
    seeds = len(results["clip"])
    paths = [
        plot_bars(
            means,
            keys,
            figures / "results_clip_vs_ping.png",
            errors=stds,
            title=f"demo corpus, mean ± std over {seeds} seeds",
        )  # fmt: skip
    ]
    variants = [v for v in results if v != "clip"]
    if len(variants) > 1:
        import numpy as np

        plt = pyplot()
        fig, ax = plt.subplots(figsize=(11, 4))
        width = 0.8 / len(variants)
        x = np.arange(len(ABLATION_KEYS))
        for i, variant in enumerate(variants):
            diffs = [paired(results[variant], results["clip"], k) for k in ABLATION_KEYS]
            ax.bar(
                x + (i - (len(variants) - 1) / 2) * width, [d[0] for d in diffs], width,
                yerr=[d[1] for d in diffs], label=variant,
            )  # fmt: skip
        ax.axhline(0, color="black", linewidth=0.8)
        labels = [k.split("/", 1)[1] for k in ABLATION_KEYS]
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
        ax.set(ylabel="paired difference to CLIP", title="variants of CLIP-PING against CLIP")
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3, axis="y")
        paths.append(save_figure(fig, figures / "results_ablations.png"))
    return paths


def render_results(results, summary, data, markdown: Path, figures: Path, quick: bool) -> str:
    from .demo import NEIGHBOR_K, demo_keys

    clip, ping = results["clip"], results["clip-ping"]
    keys = demo_keys({"clip": clip[min(clip)], "clip-ping": ping[min(ping)]})
    plots = plot_results(results, keys, figures)
    clear = [k for k in keys if "more than the spread" in verdict(k, ping, clip)]
    rel = [Path(os.path.relpath(p, markdown.parent)) for p in plots]
    corpus = data.split_rows()
    size = summary["size"]
    lines = [
        "# Results: CLIP vs CLIP-PING on the demo corpus",
        "",
        f"Produced by `{summary['command']}` on 2 CPU cores (runs finished by an earlier call "
        f"are reused, not re-timed). Student `{size['model']}`, "
        f"{size['epochs']} epochs of batch {size['batch_size']}, lr {size['lr']}; corpus "
        + ", ".join(f"{k} {v}" for k, v in corpus.items())
        + f". CLIP-PING: bank targets, top-{NEIGHBOR_K} neighbours, λ_NN = λ_XNN = 1 unless a "
        "variant says otherwise. Each seed fixes the initial weights and the batch order, so "
        "the paired difference compares the objectives alone.",
        "",
        "## CLIP vs CLIP-PING",
        "",
        headline_table(clip, ping, keys),
        f"![CLIP vs CLIP-PING]({rel[0]})",
        "",
        "Verdict per held-out metric (ahead by more than the seed-to-seed spread?):",
        "",
        *[f"- `{k}`: {verdict(k, ping, clip)}" for k in keys],
        "",
        f"In short: ahead by more than the spread on {len(clear)} of {len(keys)} metrics"
        + (
            f"; not on {', '.join(f'`{k}`' for k in keys if k not in clear)}."
            if len(clear) < len(keys)
            else "."
        ),
        "",
    ]
    missing = [v for v in ABLATIONS if v not in results]
    if missing:
        lines += [
            "## Ablations",
            "",
            f"Not in this run: {', '.join(missing)} (`clip-ping results --seeds N --ablations "
            "[NAME ...]` runs them; finished runs are reused).",
            "",
        ]
    if len(results) > 2:
        lines += [
            "" if missing else "## Ablations\n",
            "Each variant changes one setting of CLIP-PING: `nn-only` / `xnn-only` drop the "
            "cross-modal / intra-modal terms, `memory` uses student-memory targets instead of "
            "teacher-bank targets, `active` runs the teachers on each augmented batch and "
            "searches the bank online, `k1` always uses the nearest neighbour, `lambda-*` "
            "scales both neighbour weights, `no-same-caption` mines neighbours with rows of "
            "an identical caption (the same emoji in the other style) excluded.",
            "",
            ablation_table(results, ABLATION_KEYS),
            ablation_verdict(results, ABLATION_KEYS),
            "",
            f"![ablations]({rel[-1]})",
            "",
            "Training speed, median samples/s, as each run happened to share the machine (not "
            "comparable across variants; docs/benchmarks.md measures the step overhead): "
            + ", ".join(f"{v} {s:.0f}" for v, s in summary["samples_per_second"].items()),
            "",
        ]
    return "\n".join(lines)
