"""CLIP vs CLIP-PING for each family of student image tower on the demo corpus's test sets:
does the gain hold beyond the ViT?

    clip-ping results --architectures      # make architectures: a section of docs/results.md

- **Students** (:data:`STUDENTS`): the demo's ViT and a ConvNeXt and a MobileViT of about its
  size (docs/models.md). The text tower is the same for all.
- **The same wall-clock budget per run.** A student's epochs are the ViT recipe's scaled by
  its measured training speed relative to the ViT (:data:`STUDENTS`, from
  ``benchmarks/train_step.py``, docs/models.md), so a faster tower trains for more epochs.
- **Learning rate chosen on val**, for each student and each method alike, among
  :data:`LRS` by the val mean recall of seed 0. Then ``--seeds`` seeds (≥ 3) at the chosen
  rates, evaluated once on test, paired CLIP-PING − CLIP with 95% intervals.
- Runs live in ``<out>/sweep/<settings>`` (:func:`.sweep.run_slug`), shared with the sweeps
  and the results page: the ViT's runs at the recipe's rate are the final runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..io import atomic_write_text

# Student → (tower family, training speed over the ViT's: samples/s at one thread, by
# benchmarks/train_step.py, docs/models.md).
STUDENTS = {
    "cpu-mini-32": ("ViT", 1.0),
    "cpu-convnext-mini-32": ("ConvNeXt", 1.18),
    "cpu-mobilevit-mini-64": ("MobileViT", 0.99),
}
LRS = (5e-4, 1e-3, 2e-3, 4e-3)
METHODS = ("clip", "clip-ping")


def student_settings(student: str, speed: float, size, lr: float) -> dict:
    """A student's settings: its model, its epochs within the ViT's budget, ``lr``."""
    return {"model": student, "epochs": max(1, round(size.epochs * speed)), "lr": lr}


def lr_plan(size, students=STUDENTS, lrs=LRS):
    """``(student, method, lr, Planned)`` of the learning-rate choice on val (seed 0)."""
    from .runs import Planned
    from .sweep import run_slug

    return [
        (student, method, lr, Planned(method, 0, run_slug(method, size, s, 0), s, "val"))
        for student, (_, speed) in students.items()
        for lr in lrs
        for method in METHODS
        for s in [student_settings(student, speed, size, lr)]
    ]


def choose_lrs(plan, metrics) -> dict[tuple[str, str], float]:
    """The best rate on val of each (student, method)."""
    from .demo_data import mean_recall

    best: dict[tuple[str, str], tuple[float, float]] = {}
    for student, method, lr, run in plan:
        score = mean_recall(metrics[run.name], "val")
        if (student, method) not in best or score > best[(student, method)][0]:
            best[(student, method)] = (score, lr)
    return {key: lr for key, (_, lr) in best.items()}


def edge_rates(chosen: dict[tuple[str, str], float], lrs=LRS) -> dict[str, list[str]]:
    """The (student, method) pairs whose chosen rate is the grid's lowest or highest, by
    edge ("lowest", "highest"): their best rate may lie outside the grid."""
    edges: dict[str, list[str]] = {}
    for (student, method), lr in chosen.items():
        for edge, bound in (("lowest", min(lrs)), ("highest", max(lrs))):
            if lr == bound:
                edges.setdefault(edge, []).append(f"{student} {method}")
    return edges


def run_architectures(
    out: str | Path = "runs/demo",
    seeds: int = 3,
    quick: bool = False,
    jobs: int | None = None,
    assets: str | None = None,
    markdown: str | Path = "docs/results.md",
    figures: str | Path = "docs/figures",
    students=STUDENTS,
    lrs=LRS,
    size=None,
) -> dict:
    """Choose every student's rate on val, train the final seeds, write the section
    (``students``, ``lrs``, ``size``: others than the demo's, for tests)."""
    from .demo import prepare_data
    from .demo_data import FULL, QUICK
    from .markdown import write_section
    from .runs import Planned, run_variants
    from .sweep import run_slug

    out, size = Path(out), size or (QUICK if quick else FULL)
    data = prepare_data(out, size, assets)
    plan = lr_plan(size, students, lrs)
    metrics = run_variants(data, size, [run for *_, run in plan], out / "sweep", jobs)
    chosen = choose_lrs(plan, metrics)
    final = []
    for (student, method), lr in chosen.items():
        settings = student_settings(student, students[student][1], size, lr)
        for seed in range(seeds):
            name = run_slug(method, size, settings, seed)
            final.append((student, method, Planned(method, seed, name, settings, "all")))
    metrics = run_variants(data, size, [run for *_, run in final], out / "sweep", jobs)
    scores: dict[str, dict[str, dict[int, dict[str, float]]]] = {}
    for student, method, run in final:
        scores.setdefault(student, {}).setdefault(method, {})[run.seed] = metrics[run.name]
    command = f"clip-ping results --architectures --seeds {seeds}" + (" --quick" if quick else "")
    figure = Path(figures) / "architectures.png"
    from .ceiling import read_ceiling

    body = render_architectures(
        scores, chosen, students, lrs, size, command, figure, Path(markdown), read_ceiling(out)
    )
    write_section(markdown, "architectures", body)
    summary = {
        "command": command,
        "lrs": {f"{s}/{m}": lr for (s, m), lr in chosen.items()},
        "final": {
            s: {m: {str(k): v for k, v in r.items()} for m, r in by.items()}
            for s, by in scores.items()
        },
    }
    atomic_write_text(out / "architectures.json", json.dumps(summary, indent=2) + "\n")
    print(f"\nper-architecture comparison: {markdown} (section 'architectures'), {figure}")
    return summary


def render_architectures(
    scores, chosen, students, lrs, size, command, figure: Path, markdown: Path, ceiling=None
) -> str:
    from ..models import create_model
    from .ceiling import fraction_cell
    from .results import interval_cell, mean_std, paired_diffs, plot_intervals, verdict
    from .results import with_mean_recall as with_mr

    key = "mean_recall/test"
    rows = [
        "| student | tower | parameters | epochs | lr CLIP / CLIP-PING | CLIP | CLIP-PING | "
        "CLIP-PING − CLIP [95% CI] | verdict | fraction of the ceiling CLIP / CLIP-PING |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    forest, held, not_held = {}, [], []

    def shares(clip, ping) -> str:
        if not ceiling:
            return "—"
        return f"{fraction_cell(clip, ceiling)} / {fraction_cell(ping, ceiling)}"

    for student, by_method in scores.items():
        clip, ping = with_mr(by_method["clip"], "test"), with_mr(by_method["clip-ping"], "test")
        diffs = paired_diffs(ping, clip, key)
        family, speed = students[student]
        forest[f"{family} ({student})"] = diffs
        said = verdict(diffs)
        (held if said == "ahead" else not_held).append(f"{family} ({said})")
        c, p = mean_std([m[key] for m in clip.values()]), mean_std([m[key] for m in ping.values()])
        model, _ = create_model(student)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        epochs = student_settings(student, speed, size, size.lr)["epochs"]
        rows.append(
            f"| `{student}` | {family} | {params:.2f}M | {epochs} | "
            f"{chosen[(student, 'clip')]:g} / {chosen[(student, 'clip-ping')]:g} | "
            f"{c[0]:.4f} ± {c[1]:.4f} | {p[0]:.4f} ± {p[1]:.4f} | {interval_cell(diffs)} | "
            f"{said} | {shares(clip, ping)} |"
        )
    seeds = len(next(iter(forest.values())))
    ceiling_note = (
        " Fractions: each student's test mean recall over the teachers' ceiling's (the same "
        "teachers and data; its section below), per seed."
        if ceiling
        else " Fractions of the teachers' ceiling appear once `make ceiling` has run."
    )
    plot_intervals(
        forest,
        figure,
        title=f"CLIP-PING − CLIP per student, {seeds} seeds, 95% intervals",
        xlabel="test mean recall difference",
    )
    rel = os.path.relpath(figure, markdown.parent)
    where = f"The gain holds (interval above 0) for {', '.join(held) or 'no student'}"
    where += f"; not shown for {', '.join(not_held)}." if not_held else "."
    for edge, pairs in edge_rates(chosen, lrs).items():
        where += (
            f" The {edge} rate of the grid won for {', '.join(pairs)}: their best rate may "
            "lie outside it."
        )
    return (
        "\n".join(
            [
                "## Other students (test)",
                "",
                f"Produced by `{command}`. The same data, splits and text tower; each student trains "
                f"within the ViT recipe's wall-clock budget ({size.epochs} epochs of the ViT, scaled "
                "by each tower's measured training speed, docs/models.md). Each student's learning "
                f"rate, for each method alike, was chosen on val among {', '.join(f'{x:g}' for x in lrs)} "
                f"(seed 0); then {seeds} seeds at that rate, read once on test. Headline: test mean "
                "recall (18 retrieval metrics)." + ceiling_note,
                "",
                *rows,
                "",
                where,
                "",
                f"![per student]({rel})",
            ]
        )
        + "\n"
    )
