"""CLIP vs CLIP-PING on the demo corpus's test sets, with paired 95% intervals, and every
setting of CLIP-PING on val → ``docs/results.md`` (docs/design.md: benchmark protocol).

    clip-ping results --seeds 5 --sweep-seeds 3    # make results: the command of the page
    clip-ping results --sweep recipe               # the recipe sweep on val (docs/method.md)

- **Final runs.** CLIP and CLIP-PING with the recipe and defaults chosen on val
  (:data:`.demo_data.FULL`, :mod:`.sweep`), ``--seeds`` seeds each. A seed fixes the initial
  weights and the batch order, so a CLIP and a CLIP-PING run of one seed differ only in
  their objective. Each is evaluated once on the test sets (and on val, for the ablations).
- **Statistics.** Per metric: mean ± std over seeds, and the paired difference CLIP-PING −
  CLIP with its 95% confidence interval (paired t over seeds). "Ahead" only where the
  interval excludes 0. A method's one number is its mean recall over the 18 test retrieval
  metrics (:func:`.demo_data.mean_recall`).
- **Ablations** are the method sweep (:data:`.sweep.METHOD_POINTS`) on val, ``--sweep-seeds``
  seeds each, each against the defaults by the val mean recall, paired over seeds.

Runs are cached in ``<out>/sweep/<settings>`` (:func:`.sweep.run_slug`), shared with the
sweeps: an interrupted call resumes, and a second call only renders the page.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

from ..io import atomic_write_text
from .markdown import has_section, write_section
from .stats import (  # noqa: F401 - the page's statistics, imported from here too
    CONFIDENCE,
    Runs,
    interval_cell,
    mean_std,
    paired_diffs,
    t_interval,
    verdict,
)


def with_mean_recall(runs: Runs, split: str) -> Runs:
    """``runs`` with the split's mean recall added as ``mean_recall/<split>``, and its
    off-style mean recall (OpenMoji) as ``off_style_recall/<split>`` where evaluated."""
    from .demo_data import mean_recall, off_style_recall

    def added(metrics: dict[str, float]) -> dict[str, float]:
        out = {**metrics, f"mean_recall/{split}": mean_recall(metrics, split)}
        try:
            out[f"off_style_recall/{split}"] = off_style_recall(metrics, split)
        except KeyError:  # evaluated before the off-style sets existed
            pass
        return out

    return {s: added(m) for s, m in runs.items()}


def headline_table(clip: Runs, ping: Runs, keys: Sequence[str]) -> str:
    rows = [
        "| metric | CLIP | CLIP-PING | CLIP-PING − CLIP [95% CI] | verdict |",
        "|---|---:|---:|---:|---|",
    ]
    for key in keys:
        diffs = paired_diffs(ping, clip, key)
        clip_mean, clip_std = mean_std([r[key] for r in clip.values()])
        ping_mean, ping_std = mean_std([r[key] for r in ping.values()])
        name = f"**{key}**" if key.startswith(("mean_recall", "off_style_recall")) else key
        rows.append(
            f"| {name} | {clip_mean:.4f} ± {clip_std:.4f} | {ping_mean:.4f} ± {ping_std:.4f} | "
            f"{interval_cell(diffs)} | {verdict(diffs)} |"
        )
    return "\n".join(rows) + "\n"


def ablation_table(points: dict[str, Runs], clip: Runs, default: str = "defaults") -> str:
    """Val mean recall per point (mean ± std, seeds), its paired difference to the defaults
    and to CLIP with 95% intervals."""
    key = "mean_recall/val"
    rows = [
        "| setting | seeds | val mean recall | − defaults [95% CI] | verdict | − CLIP [95% CI] |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for point, runs in points.items():
        mean, std = mean_std([r[key] for r in runs.values()])
        if point == default:
            to_default, said = "—", "—"
        else:
            diffs = paired_diffs(runs, points[default], key)
            to_default, said = interval_cell(diffs), verdict(diffs)
        to_clip = interval_cell(paired_diffs(runs, clip, key))
        rows.append(
            f"| {point} | {len(runs)} | {mean:.4f} ± {std:.4f} | {to_default} | {said} | "
            f"{to_clip} |"
        )
    return "\n".join(rows) + "\n"


SELF = "self-targets (no neighbours)"
SELF_AND_NEIGHBORS = "self + neighbours"


def control_answer(points: dict[str, Runs], clip: Runs) -> str:
    """The answer to the reviewer's first question, from the val mean recall paired over
    seeds: do the *neighbours* add anything over the teachers' own features?"""
    key = "mean_recall/val"
    if SELF not in points or "defaults" not in points:
        return "The self-target control has not been run yet."
    ping = paired_diffs(points["defaults"], points[SELF], key)
    teachers = paired_diffs(points[SELF], clip, key)
    said = verdict(ping)
    mean, low, high = t_interval(ping)
    answer = {
        "ahead": "the neighbours add to what the teachers' own features give",
        "behind": "the teachers' own features do better than the neighbours: the gain over "
        "CLIP is distillation, and the neighbours cost some of it",
        "no clear difference": "the neighbours are not shown to add anything over the "
        "teachers' own features: on this corpus the gain over CLIP cannot be credited to the "
        "neighbours",
    }.get(said, "one seed cannot tell")
    t_mean, t_low, t_high = t_interval(teachers)
    text = (
        f"**Neighbours or teachers?** Neighbour targets (the defaults) − self-targets = "
        f"{mean:+.4f} [95% CI {low:+.4f}, {high:+.4f}] val mean recall over {len(ping)} seeds: "
        f"{answer}. Self-targets − CLIP = {t_mean:+.4f} [{t_low:+.4f}, {t_high:+.4f}] "
        f"({verdict(teachers)})."
    )
    if SELF_AND_NEIGHBORS in points:
        both = paired_diffs(points[SELF_AND_NEIGHBORS], points[SELF], key)
        b_mean, b_low, b_high = t_interval(both)
        text += (
            f" Self plus neighbours − self-targets = {b_mean:+.4f} [{b_low:+.4f}, {b_high:+.4f}] "
            f"({verdict(both)})."
        )
    return text


def plot_intervals(rows: dict[str, Sequence[float]], out: Path, title: str, xlabel: str) -> Path:
    """A forest plot: each row's mean paired difference with its 95% interval."""
    from .figures import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
    for y, diffs in enumerate(reversed(list(rows.values()))):
        mean, low, high = t_interval(diffs)
        colour = "tab:green" if low > 0 else ("tab:red" if high < 0 else "tab:gray")
        if not math.isnan(low):
            ax.plot([low, high], [y, y], color=colour, linewidth=2)
        ax.plot([mean], [y], "o", color=colour)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), list(reversed(list(rows))), fontsize=8)
    ax.set(xlabel=xlabel, title=title)
    ax.grid(alpha=0.3, axis="x")
    return save_figure(fig, out)


def run_results(
    out: str | Path = "runs/demo",
    seeds: int = 5,
    sweep_seeds: int = 3,
    ablations: bool = True,
    quick: bool = False,
    markdown: str | Path = "docs/results.md",
    figures: str | Path = "docs/figures",
    assets: str | None = None,
    jobs: int | None = None,
    readme: str | Path | None = "README.md",
) -> dict:
    """Train and evaluate the final runs (``seeds`` each, test and val) and, with
    ``ablations``, the method sweep on val (``sweep_seeds`` each); write ``markdown``, and
    the headline rows into ``readme``'s ``results`` section when it has one."""
    from .demo import prepare_data
    from .demo_data import FULL, QUICK
    from .runs import Planned, run_variants
    from .sweep import run_slug, sweep_plan

    started = time.perf_counter()
    out, size = Path(out), (QUICK if quick else FULL)
    data = prepare_data(out, size, assets)
    final = [
        Planned(v, s, run_slug(v, size, {}, s), {}, "all")
        for s in range(seeds)
        for v in ("clip", "clip-ping")
    ]
    sweep = sweep_plan("method", size, sweep_seeds) if ablations else []
    metrics = run_variants(data, size, final + [run for _, _, run in sweep], out / "sweep", jobs)
    by_variant: dict[str, Runs] = {}
    for run in final:
        by_variant.setdefault(run.variant, {})[run.seed] = metrics[run.name]
    points: dict[str, Runs] = {}
    for point, _, run in sweep:
        points.setdefault(point, {})[run.seed] = metrics[run.name]
    command = f"clip-ping results --seeds {seeds} --sweep-seeds {sweep_seeds}"
    command += (" --quick" if quick else "") + ("" if ablations else " --no-ablations")
    summary = {
        "command": command,
        "final": {v: {str(s): m for s, m in r.items()} for v, r in by_variant.items()},
        "ablations": {p: {str(s): m for s, m in r.items()} for p, r in points.items()},
        "size": size.__dict__,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2) + "\n")
    from .ceiling import read_ceiling

    text = render_results(
        by_variant, points, summary, data, Path(markdown), Path(figures), read_ceiling(out)
    )
    atomic_write_text(markdown, keep_sections(text, Path(markdown)))
    if readme is not None and has_section(Path(readme), "results"):
        write_section(readme, "results", readme_rows(by_variant, summary, Path(markdown)))
    print(f"\nresults: {markdown}")
    return summary


# Sections of the page that other commands write (:mod:`.markdown`), kept when it is rewritten.
OTHER_SECTIONS = {
    "ceiling": "## The teachers' ceiling (test)\n\nNot produced yet: `make ceiling`.",
    "architectures": "## Other students (test)\n\nNot produced yet: `make architectures`.",
    "curve": "## Data efficiency (test)\n\nNot produced yet: `make curve`.",
    "frontier": "## Accuracy and cost (test)\n\nNot produced yet: `make frontier`.",
}


def keep_sections(text: str, markdown: Path) -> str:
    """``text`` with the page's sections of :data:`OTHER_SECTIONS`, as they are now."""
    from .markdown import carry_sections

    old = markdown.read_text(encoding="utf-8") if markdown.is_file() else ""
    return carry_sections(text, old, tuple(OTHER_SECTIONS), OTHER_SECTIONS)


def readme_rows(final: dict[str, Runs], summary: dict, markdown: Path) -> str:
    """README's excerpt of the page: the headline and the R@1 and zero-shot top-1 rows."""
    from .demo_data import RETRIEVAL_SOURCES, ZEROSHOT_SETS

    clip = with_mean_recall(final["clip"], "test")
    ping = with_mean_recall(final["clip-ping"], "test")
    keys = ["mean_recall/test", "off_style_recall/test"]
    keys += [
        f"retrieval/test_{s}/{d}_R@1"
        for s in RETRIEVAL_SOURCES
        for d in ("image_to_text", "text_to_image")
    ]
    keys += [f"zeroshot/{z}/acc1" for z in ZEROSHOT_SETS]
    keys = [k for k in keys if all(k in m for m in (*clip.values(), *ping.values()))]
    return (
        f"Test sets, {len(clip)} seeds, produced by `{summary['command']}` (the whole table, "
        f"the settings on val and the figures: [{markdown}]({markdown})):\n\n"
        + headline_table(clip, ping, keys)
    )


def result_keys(metrics: dict[str, float]) -> list[str]:
    """The headline number, then every test retrieval R@1/R@5, zero-shot and probe metric."""
    from .demo import demo_keys

    off = ["off_style_recall/test"] if "off_style_recall/test" in metrics else []
    return ["mean_recall/test", *off, *demo_keys({"run": metrics})]


def render_results(
    final: dict[str, Runs],
    points: dict[str, Runs],
    summary: dict,
    data,
    markdown: Path,
    figures: Path,
    ceiling: Runs | None = None,
) -> str:
    clip = with_mean_recall(with_mean_recall(final["clip"], "test"), "val")
    ping = with_mean_recall(with_mean_recall(final["clip-ping"], "test"), "val")
    keys = result_keys(ping[min(ping)])
    forest = {k: paired_diffs(ping, clip, k) for k in keys}
    points = {p: with_mean_recall(r, "val") for p, r in points.items()}
    plots = _plot_results(forest, points, len(clip), figures)
    rel = [Path(os.path.relpath(p, markdown.parent)) for p in plots]
    headline = paired_diffs(ping, clip, "mean_recall/test")
    mean, low, high = t_interval(headline)
    ahead = [k for k in keys if verdict(forest[k]) == "ahead"]
    behind = [k for k in keys if verdict(forest[k]) == "behind"]
    size, corpus = summary["size"], data.split_rows()
    lines = [
        "# Results: CLIP vs CLIP-PING on the demo corpus",
        "",
        f"Produced by `{summary['command']}` on 2 CPU cores. Student `{size['model']}`, "
        f"{size['epochs']} epochs of batch {size['batch_size']}, lr {size['lr']}, warm-up "
        f"{size['warmup']} steps (the recipe chosen on val for both methods: docs/method.md). "
        "Splits: groups of the demo corpus (an emoji concept with its counterparts, clip-art "
        "linked by title or a near-duplicate image) in train / val / test, none shared; rows "
        + ", ".join(f"{k} {v:,}" for k, v in corpus.items())
        + ". Retrieval as CLIP_benchmark scores it: one caption per image, unique caption "
        "texts per set. Every setting was chosen on val; the test sets were read once per "
        "final run.",
        "",
        "## CLIP vs CLIP-PING (test)",
        "",
        f"The headline: **mean recall** over the 18 test retrieval metrics (R@1, 5, 10 both "
        f"ways on `test_google`, `test_twitter`, `test_clipart`): CLIP-PING − CLIP = "
        f"**{mean:+.4f}** [95% CI {low:+.4f}, {high:+.4f}] over {len(headline)} seeds — "
        f"**{verdict(headline)}**.",
        "",
        headline_table(clip, ping, keys),
        *_ceiling_line(final, ceiling),
        f"![CLIP vs CLIP-PING]({rel[0]})",
        "",
        f"Ahead (interval above 0) on {len(ahead)} of {len(keys)} metrics"
        + (f"; behind on {', '.join(f'`{k}`' for k in behind)}" if behind else "")
        + (
            f"; no clear difference on {', '.join(f'`{k}`' for k in keys if k not in ahead + behind)}."
            if len(ahead) + len(behind) < len(keys)
            else "."
        ),
        "",
    ]
    if len(points) > 1:
        lines += _settings_section(points, clip, rel[-1])
    return "\n".join(lines)


def _ceiling_line(final: dict[str, Runs], ceiling: Runs | None) -> list[str]:
    """The students' fractions of the teachers' ceiling, when its runs are finished."""
    if not ceiling:
        return []
    from .ceiling import fraction_cell

    shares = ", ".join(
        f"{name} {fraction_cell(final[variant], ceiling)}"
        for variant, name in (("clip", "CLIP"), ("clip-ping", "CLIP-PING"))
    )
    return [
        f"Fraction of the teachers' ceiling (test mean recall over the frozen teachers with "
        f"trained heads, per seed, 95% interval; its section below): {shares}.",
        "",
    ]


def _plot_results(forest: dict, points: dict[str, Runs], seeds: int, figures: Path) -> list[Path]:
    """The figure of CLIP-PING − CLIP per metric, and of each setting − the defaults when
    there are settings; their paths."""
    plots = [
        plot_intervals(
            forest,
            figures / "results_clip_vs_ping.png",
            xlabel="CLIP-PING − CLIP (test)",
            title=f"paired differences over {seeds} seeds, 95% intervals",
        )
    ]
    if len(points) > 1:
        rows = {
            p: paired_diffs(r, points["defaults"], "mean_recall/val")
            for p, r in points.items()
            if p != "defaults"
        }
        plots.append(
            plot_intervals(
                rows,
                figures / "results_ablations.png",
                xlabel="− defaults (val mean recall)",
                title="CLIP-PING's settings on val, 95% intervals",
            )
        )
    return plots


def _settings_section(points: dict[str, Runs], clip: Runs, figure: Path) -> list[str]:
    """The page's section on CLIP-PING's settings, scored on val."""
    return [
        "## CLIP-PING's settings (val)",
        "",
        "Each row changes one setting of CLIP-PING's defaults and is scored by the val "
        "mean recall, paired over seeds with the defaults and with CLIP. `self-targets` "
        "is the control for the neighbours: the same heads and terms with each anchor's "
        "own teacher features as targets (distillation without neighbours).",
        "",
        ablation_table(points, clip),
        f"![ablations]({figure})",
        "",
        control_answer(points, clip),
        "",
    ]
