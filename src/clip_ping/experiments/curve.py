"""The data-efficiency curve: CLIP and CLIP-PING trained on nested subsets of the training
groups, scored on the test sets (the paper's claim that neighbour guidance lowers the data a
small model needs).

    clip-ping results --curve          # make curve: the figure and ratio in docs/results.md

- **Subsets** (:func:`nested_subsets`): the training *groups* (an emoji concept with its
  counterparts, linked clip-art: :mod:`.corpus_splits`) in one fixed pseudo-random order;
  a subset takes groups in that order until it holds its share of the training pairs. So
  10% ⊂ 25% ⊂ 50% ⊂ 100%, and a group is never split.
- **Banks on the subset alone.** Each subset gets its own teacher banks and neighbour
  tables, built from its own CSV: the neighbours of a pair are found among the subset's
  pairs only, so the teachers never offer a pair the student cannot see.
- **The same number of optimisation steps** at every point, those of the recipe on all the
  data (:data:`.demo_data.FULL`): a subset trains for proportionally more epochs. With the same
  epochs instead, the 10% point would take 40 steps, fewer than the warm-up, and the curve
  would measure a shorter schedule as much as less data. Same steps asks the question the
  claim is about: with compute to spare, how many pairs does each method need?
- **Val once per run**, after its last epoch (``val_frequency`` = its epochs): the curve is
  read on test and nothing in it is chosen on val, while a subset's short epochs would
  otherwise evaluate 91 times at 10%. Evaluating does not change the training (tested).
- **Seeds.** The same seeds at every point and for both methods (a seed fixes the initial
  weights and the batch order); the subsets do not change with the seed. The 100% runs are
  :mod:`.results`' final runs, shared through their folders.
- **The ratio** (:func:`pairs_to_match`): on CLIP's curve, interpolated linearly in
  log(pairs), the number of pairs at which CLIP reaches CLIP-PING's score at 25% and 50%,
  divided by those points' pairs ("CLIP needs 1.8× the pairs"); "more than 4×" where CLIP
  never reaches it within the data we have. Read on the mean curves, then seed by seed
  (:func:`seed_ratios`), whose geometric mean gets a 95% t interval over log ratios.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from dataclasses import replace
from pathlib import Path

from ..io import atomic_write_text

FRACTIONS = (0.1, 0.25, 0.5, 1.0)
METHODS = ("clip", "clip-ping")


def group_order(groups: list[str]) -> list[str]:
    """``groups`` in a fixed pseudo-random order (by a hash of the name, not by Python's
    per-process salted ``hash``)."""
    return sorted(set(groups), key=lambda g: (hashlib.sha1(g.encode()).hexdigest(), g))


def nested_subsets(
    train_keys: list[str], group_of: dict[str, str], fractions=FRACTIONS
) -> dict[float, set[str]]:
    """The training keys of each fraction's subset: whole groups in :func:`group_order`,
    taken until the subset holds ``ceil(fraction × len(train_keys))`` pairs."""
    missing = [k for k in train_keys if k not in group_of]
    if missing:
        raise ValueError(f"{len(missing)} training keys have no group, e.g. {missing[0]!r}")
    members: dict[str, list[str]] = {}
    for key in train_keys:
        members.setdefault(group_of[key], []).append(key)
    order = group_order(list(members))
    subsets: dict[float, set[str]] = {}
    for fraction in sorted(fractions):
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction {fraction}: need 0 < fraction <= 1")
        wanted, taken = math.ceil(fraction * len(train_keys)), set()
        for group in order:
            if len(taken) >= wanted:
                break
            taken.update(members[group])
        subsets[fraction] = taken
    return subsets


def point_name(fraction: float) -> str:
    return f"p{round(fraction * 100):03d}"


def _write_if_changed(path: Path, text: str) -> None:
    """Rewrite ``path`` only when its text changes: its bank's fingerprint covers its mtime."""
    if not (path.is_file() and path.read_text(encoding="utf-8") == text):
        atomic_write_text(path, text)


def subset_data(data, fraction: float, keys: set[str], out: Path):
    """A :class:`.demo_data.DemoData` whose training CSV holds the rows of ``keys`` (image paths
    relative to it) and whose banks and neighbour tables are built on those rows alone."""
    from .demo import prepare_banks
    from .demo_data import DemoData

    folder = out / point_name(fraction)
    folder.mkdir(parents=True, exist_ok=True)
    with open(data.train, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, [r for r in reader if r["key"] in keys]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        image = data.train.parent / row["filepath"]
        writer.writerow({**row, "filepath": os.path.relpath(image, folder)})
    _write_if_changed(folder / "train.csv", text.getvalue())
    subset = DemoData(data.corpus, folder / "banks", train_file=folder / "train.csv")
    prepare_banks(subset, same_caption_variant=False)
    return subset


def pairs_to_match(pairs: list[int], clip: list[float], target: float) -> float:
    """The number of pairs at which CLIP's curve (``clip`` scores at ``pairs``, increasing
    pairs) reaches ``target``, interpolated linearly in log(pairs); ``inf`` when it never
    does within ``pairs``, the smallest point's pairs when it already does there."""
    if clip[0] >= target:
        return float(pairs[0])
    points = list(zip(pairs, clip, strict=True))
    for (n0, s0), (n1, s1) in zip(points, points[1:], strict=False):
        if s0 < target <= s1:
            t = (target - s0) / (s1 - s0)
            return math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0)))
    return math.inf


def ratio_text(ratio: float, smallest: float, largest: float) -> str:
    """``1.8×``; ``more than 4.0×`` past the data we have (``largest``: the most pairs CLIP
    saw, over the point's pairs); ``at most 0.4×`` where CLIP already matches at its
    smallest point (``smallest``: its pairs, over the point's)."""
    if math.isinf(ratio):
        return f"more than {largest:.1f}×"
    return f"at most {smallest:.1f}×" if ratio <= smallest else f"{ratio:.1f}×"


def seed_ratios(scores, pairs: dict[float, int], fraction: float) -> list[float]:
    """Seed by seed: the pairs at which that seed's CLIP curve reaches that seed's CLIP-PING
    score at ``fraction``, over the point's pairs (the seeds pair the runs, as in every
    interval of the results page)."""
    fractions = sorted(scores)
    x = [pairs[f] for f in fractions]
    ping = scores[fraction]["clip-ping"]
    seeds = sorted(set.intersection(*(set(scores[f]["clip"]) for f in fractions)) & set(ping))
    return [
        pairs_to_match(x, [scores[f]["clip"][s] for f in fractions], ping[s]) / pairs[fraction]
        for s in seeds
    ]


def ratio_interval(ratios: list[float], smallest: float) -> tuple[float, float, float] | None:
    """Geometric mean of ``ratios`` with its 95% t interval (over log ratios); ``None`` when
    a ratio lies outside the data (censored at ``smallest`` or infinite) or below 2 seeds."""
    from .results import t_interval

    if len(ratios) < 2 or any(math.isinf(r) or r <= smallest for r in ratios):
        return None
    mean, low, high = t_interval([math.log(r) for r in ratios])
    return math.exp(mean), math.exp(low), math.exp(high)


def ratio_read(scores, pairs: dict[float, int], fraction: float) -> str:
    """One line of the page: how many pairs CLIP needs to match CLIP-PING at ``fraction``,
    on the mean curves, then seed by seed with an interval."""
    from .results import mean_std

    fractions = sorted(scores)
    x = [pairs[f] for f in fractions]
    smallest, largest = x[0] / pairs[fraction], x[-1] / pairs[fraction]
    target = mean_std(scores[fraction]["clip-ping"].values())[0]
    clip_curve = [mean_std(scores[f]["clip"].values())[0] for f in fractions]
    ratio = pairs_to_match(x, clip_curve, target) / pairs[fraction]
    each = seed_ratios(scores, pairs, fraction)
    line = (
        f"- CLIP-PING at {fraction:.0%} ({pairs[fraction]:,} pairs) scores {target:.4f}: CLIP "
        f"needs **{ratio_text(ratio, smallest, largest)} the pairs** to match it. Seed by "
        f"seed: {', '.join(ratio_text(r, smallest, largest) for r in each)}"
    )
    interval = ratio_interval(each, smallest)
    if interval is None:
        return line + " (no interval: a seed's reading lies outside the data)."
    mean, low, high = interval
    shown = "not shown to differ from 1×"
    if low > 1 or high < 1:
        shown = "a saving shown" if low > 1 else "a cost shown"
    return line + f"; geometric mean {mean:.1f}× [95% CI {low:.1f}×, {high:.1f}×]: {shown}."


def curve_plan(subsets: dict[float, set[str]], size, seeds: int, train_rows: int):
    """``(fraction, Planned)`` for every point, seed and method, and the teachers' ceiling
    of each point (its own data): the same steps everywhere."""
    from .ceiling import ceiling_plan, ceiling_settings
    from .runs import Planned
    from .sweep import run_slug

    full_steps = size.epochs * (train_rows // size.batch_size)  # full batches (drop_last)
    plan = []
    for fraction, keys in sorted(subsets.items()):
        epochs = max(1, round(full_steps / max(1, len(keys) // size.batch_size)))
        for seed in range(seeds):
            for method in METHODS:
                if fraction == 1.0:  # the final runs of the results page
                    plan.append((fraction, Planned(method, seed, run_slug(method, size, {}, seed))))
                else:
                    # val once, at the end: nothing is chosen on val here
                    settings = {"epochs": epochs, "val_frequency": epochs}
                    name = f"{method}_s{seed}"
                    plan.append((fraction, Planned(method, seed, name, settings)))
        if fraction == 1.0:  # the runs of make ceiling
            plan += [(fraction, run._replace(split="test")) for run in ceiling_plan(seeds, size)]
            continue
        recipe = ceiling_settings()
        scaled = max(1, round(recipe["epochs"] * recipe_steps_share(fraction, keys, train_rows)))
        for seed in range(seeds):
            settings = {**recipe, "epochs": scaled}
            plan.append((fraction, Planned("ceiling", seed, f"ceiling_s{seed}", settings)))
    return plan


def recipe_steps_share(fraction: float, keys: set[str], train_rows: int) -> float:
    """How many times more epochs a subset of ``keys`` takes for the steps of the whole."""
    return train_rows / max(1, len(keys))


def _train_keys(data) -> list[str]:
    with open(data.train, newline="", encoding="utf-8") as f:
        return [row["key"] for row in csv.DictReader(f)]


def _group_of(corpus: Path) -> dict[str, str]:
    with open(corpus / "groups.csv", newline="", encoding="utf-8") as f:
        return {row["key"]: row["group"] for row in csv.DictReader(f) if row["split"] == "train"}


def run_curve(
    out: str | Path = "runs/demo",
    seeds: int = 3,
    quick: bool = False,
    jobs: int | None = None,
    assets: str | None = None,
    markdown: str | Path = "docs/results.md",
    figures: str | Path = "docs/figures",
    fractions=FRACTIONS,
    size=None,
) -> dict:
    """Train and evaluate every point of the curve (cached like every run), then write its
    section of ``markdown`` and its figure (``size``: another recipe than the demo's, for
    tests)."""
    from .demo import prepare_data
    from .demo_data import FULL, QUICK, mean_recall
    from .markdown import write_section
    from .runs import run_variants

    out, size = Path(out), size or (QUICK if quick else FULL)
    data = prepare_data(out, size, assets)
    train_keys = _train_keys(data)
    subsets = nested_subsets(train_keys, _group_of(data.corpus), fractions)
    plan = curve_plan(subsets, size, seeds, len(train_keys))
    scores: dict[float, dict[str, dict[int, float]]] = {}
    epochs: dict[float, int] = {}
    for fraction in sorted(subsets):
        runs = [run for f, run in plan if f == fraction]
        if fraction == 1.0:
            point, logs = data, out / "sweep"
        else:
            point = subset_data(data, fraction, subsets[fraction], out / "curve")
            logs = point.train.parent / "runs"
        print(f"\n== {len(subsets[fraction]):,} training pairs ({fraction:.0%}) ==", flush=True)
        metrics = run_variants(point, replace(size, probes=()), runs, logs, jobs)
        for run in runs:
            scores.setdefault(fraction, {}).setdefault(run.variant, {})[run.seed] = mean_recall(
                metrics[run.name], "test"
            )
        epochs[fraction] = next(r for r in runs if r.variant == "clip").settings.get(
            "epochs", size.epochs
        )
    pairs = {f: len(keys) for f, keys in subsets.items()}
    command = f"clip-ping results --curve --seeds {seeds}" + (" --quick" if quick else "")
    figure = plot_curve(scores, pairs, Path(figures) / "data_efficiency.png")
    body = render_curve(scores, pairs, epochs, size, command, figure, Path(markdown))
    write_section(markdown, "curve", body)
    summary = {
        "command": command,
        "pairs": {str(f): n for f, n in pairs.items()},
        "epochs": {str(f): e for f, e in epochs.items()},
        "scores": {str(f): s for f, s in scores.items()},
    }
    atomic_write_text(out / "curve.json", json.dumps(summary, indent=2) + "\n")
    print(f"\ndata-efficiency curve: {markdown} (section 'curve'), {figure}")
    return summary


def plot_curve(scores, pairs: dict[float, int], out: Path) -> Path:
    """Test mean recall against training pairs (log scale), both methods, 95% intervals."""
    from .figures import pyplot, save_figure
    from .results import t_interval

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    fractions = sorted(scores)
    x = [pairs[f] for f in fractions]
    for method, colour in zip(METHODS, ("tab:blue", "tab:orange"), strict=True):
        stats = [t_interval(list(scores[f][method].values())) for f in fractions]
        means = [m for m, _, _ in stats]
        ax.plot(x, means, "o-", color=colour, label=method.upper())
        lows = [lo if not math.isnan(lo) else m for m, lo, _ in stats]
        highs = [hi if not math.isnan(hi) else m for m, _, hi in stats]
        ax.fill_between(x, lows, highs, color=colour, alpha=0.2)
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{n:,}\n({f:.0%})" for n, f in zip(x, fractions, strict=True)])
    ax.minorticks_off()
    seeds = len(scores[fractions[0]]["clip"])
    ax.set(
        xlabel="training pairs",
        ylabel="test mean recall",
        title=f"data efficiency: mean of {seeds} seeds, 95% intervals",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, out)


def _ceiling_cells(point: dict) -> str:
    """The ceiling of a point (its own teachers' banks and pairs) and each method's
    fraction of it, per seed with a 95% interval; dashes without its runs."""
    from .stats import mean_std, t_interval

    ceiling = point.get("ceiling")
    if not ceiling:
        return "— | —"

    def share(runs: dict) -> str:
        ratios = [runs[s] / ceiling[s] for s in sorted(set(runs) & set(ceiling))]
        mean, low, high = t_interval(ratios) if ratios else (math.nan,) * 3
        return f"{mean:.2f}" + (f" [{low:.2f}, {high:.2f}]" if len(ratios) > 1 else "")

    c = mean_std(ceiling.values())
    return f"{c[0]:.4f} ± {c[1]:.4f} | {share(point['clip'])} / {share(point['clip-ping'])}"


def render_curve(scores, pairs, epochs, size, command, figure: Path, markdown: Path) -> str:
    from .results import interval_cell, mean_std, verdict

    fractions = sorted(scores)
    seeds = len(scores[fractions[0]]["clip"])
    rows = [
        "| training pairs | share | epochs | CLIP | CLIP-PING | CLIP-PING − CLIP [95% CI] | verdict "
        "| ceiling | fraction of it CLIP / CLIP-PING |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    verdicts = []
    for f in fractions:
        clip, ping = scores[f]["clip"], scores[f]["clip-ping"]
        diffs = [ping[s] - clip[s] for s in sorted(set(clip) & set(ping))]
        c, p = mean_std(clip.values()), mean_std(ping.values())
        verdicts.append(verdict(diffs))
        rows.append(
            f"| {pairs[f]:,} | {f:.0%} | {epochs[f]} | {c[0]:.4f} ± {c[1]:.4f} | "
            f"{p[0]:.4f} ± {p[1]:.4f} | {interval_cell(diffs)} | {verdicts[-1]} | "
            f"{_ceiling_cells(scores[f])} |"
        )
    reads = [ratio_read(scores, pairs, f) for f in (0.25, 0.5) if f in scores]
    if reads and "ahead" not in verdicts:
        reads.append(
            "- No point's difference is shown (no interval lies above 0): the ratios read "
            "the mean curves and are not a demonstrated saving of data."
        )
    rel = os.path.relpath(figure, markdown.parent)
    return (
        "\n".join(
            [
                "## Data efficiency (test)",
                "",
                f"Produced by `{command}`. CLIP and CLIP-PING on nested subsets of the training "
                f"groups, {seeds} seeds each (the same seeds at every point), test mean recall. Every "
                f"point takes the same number of optimisation steps as {size.epochs} epochs on all the "
                "data, so a subset trains for more epochs; the banks and neighbour tables of a subset "
                "are built from that subset alone. The 100% point is the results page's final runs, "
                f"their first {seeds} seeds (the page's headline reads all of its seeds). The ratio "
                "reads CLIP's mean curve, interpolated in log(pairs), at CLIP-PING's mean score. "
                "Each point has its own teachers' ceiling (`--model locked-teachers` on the "
                "subset's banks and pairs, its recipe with the same-steps epochs), and each "
                "method's fraction of it, per seed.",
                "",
                *rows,
                "",
                *reads,
                "",
                f"![data efficiency]({rel})",
            ]
        )
        + "\n"
    )
