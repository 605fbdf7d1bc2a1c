"""The teachers' ceiling on the demo corpus: the locked teachers over seeds on test, and each
student's fraction of it → the ``ceiling`` section of ``docs/results.md``.

    clip-ping results --sweep ceiling --sweep-seeds 3   # its recipe on val (docs/method.md)
    clip-ping results --ceiling --seeds 5               # the section (make ceiling)

The ceiling is the frozen teachers that every student of the page learns from
(EfficientNet-Lite0 and MiniLM, the demo's banks) with trained heads
(:mod:`clip_ping.models.locked`), trained on the same pairs with the recipe chosen on val
(:data:`CEILING`). A student's **fraction of the ceiling** is its test mean recall over the
ceiling's, per seed (seed s of the student over seed s of the ceiling), with the t interval
of those ratios.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from .demo_data import FULL, DemoSize, mean_recall
from .stats import Runs, mean_std, t_interval

# The ceiling's recipe, chosen on val by the ceiling sweep (sweep.CEILING_POINTS): 0.2965 ±
# 0.0023 val mean recall over 3 seeds, ahead of the rates around it (1e-3: 0.2781, 1e-2:
# 0.2906), of 8 and 20 epochs and of the MLP head.
CEILING_POINT = "linear, 3 epochs, lr 3e-3"


def ceiling_settings() -> dict:
    from .sweep import CEILING_POINTS

    return CEILING_POINTS[CEILING_POINT]


def ceiling_plan(seeds: int, size: DemoSize = FULL, settings: dict | None = None) -> list:
    """The ceiling's runs: ``seeds`` seeds, evaluated on val and test."""
    from .runs import Planned
    from .sweep import run_slug

    settings = settings or ceiling_settings()
    return [
        Planned("ceiling", s, run_slug("ceiling", size, settings, s), settings, "all")
        for s in range(seeds)
    ]


def student_runs(logs: Path, seeds: int, size: DemoSize = FULL) -> dict[str, Runs]:
    """The finished final runs of CLIP and CLIP-PING (``make results``) found in ``logs``."""
    from ..models import is_exported
    from .report import final_metrics
    from .sweep import run_slug

    found: dict[str, Runs] = {}
    for variant in ("clip", "clip-ping"):
        for seed in range(seeds):
            run_dir = logs / run_slug(variant, size, {}, seed)
            if not is_exported(run_dir):
                continue
            metrics = final_metrics(run_dir)
            try:
                mean_recall(metrics, "test")
            except KeyError:
                continue
            found.setdefault(variant, {})[seed] = metrics
    return found


def read_ceiling(out: Path) -> Runs | None:
    """The ceiling's final metrics by seed from ``<out>/ceiling.json`` (None before
    ``make ceiling``)."""
    path = Path(out) / "ceiling.json"
    if not path.is_file():
        return None
    return {int(s): m for s, m in json.loads(path.read_text())["ceiling"].items()}


def fractions(student: Runs, ceiling: Runs, split: str = "test") -> list[float]:
    """Per seed both have: the student's mean recall over the ceiling's."""
    return [
        mean_recall(student[s], split) / mean_recall(ceiling[s], split)
        for s in sorted(set(student) & set(ceiling))
    ]


def fraction_cell(student: Runs, ceiling: Runs) -> str:
    """``0.61 [0.58, 0.64]``, or ``—`` without common seeds."""
    ratios = fractions(student, ceiling)
    if not ratios:
        return "—"
    mean, low, high = t_interval(ratios)
    return f"{mean:.2f}" + (f" [{low:.2f}, {high:.2f}]" if len(ratios) > 1 else "")


def ceiling_section(ceiling: Runs, students: dict[str, Runs], command: str) -> str:
    """The markdown of the section: the ceiling per test set, then the fractions."""
    from .demo_data import RETRIEVAL_SOURCES

    rows = [
        "| model | seeds | test mean recall (mean ± std) | 95% CI | fraction of the ceiling |",
        "|---|---:|---:|---:|---:|",
    ]
    labels = {"ceiling": "**ceiling**: locked teachers", "clip": "CLIP", "clip-ping": "CLIP-PING"}
    for name, runs in {"ceiling": ceiling, **students}.items():
        values = [mean_recall(m, "test") for m in runs.values()]
        mean, std = mean_std(values)
        _, low, high = t_interval(values)
        interval = f"[{low:.4f}, {high:.4f}]" if len(values) > 1 else "—"
        share = "1" if name == "ceiling" else fraction_cell(runs, ceiling)
        rows.append(
            f"| {labels[name]} | {len(runs)} | {mean:.4f} ± {std:.4f} | {interval} | {share} |"
        )
    per_set = ["| test set | ceiling R@1 image→text | ceiling R@1 text→image |", "|---|---:|---:|"]
    for source in RETRIEVAL_SOURCES:
        cells = [
            statistics.fmean(m[f"retrieval/test_{source}/{d}_R@1"] for m in ceiling.values())
            for d in ("image_to_text", "text_to_image")
        ]
        per_set.append(f"| test_{source} | {cells[0]:.4f} | {cells[1]:.4f} |")
    missing = (
        ""
        if students
        else (
            "\n\nThe students' final runs are not in this output folder yet: `make results` trains "
            "them, and this section's fractions appear when it is regenerated."
        )
    )
    settings = ceiling_settings()
    return (
        f"## The teachers' ceiling (test)\n\nProduced by `{command}`. The **ceiling** is the "
        "frozen teachers every student here learns from (EfficientNet-Lite0 at 128 px and "
        "MiniLM, the demo's banks) with a trained "
        f"{'MLP' if settings['model'].endswith('mlp') else 'linear'} head each and a logit "
        f"scale, trained by the CLIP loss on the same {FULL.batch_size}-pair batches of the "
        f"same training pairs ({settings['epochs']} epochs, lr "
        f"{settings.get('lr', FULL.lr):g}; chosen on val, docs/method.md), "
        "`--model locked-teachers`. A student's fraction is its test mean recall over the "
        "ceiling's, per seed, with the 95% interval of those ratios."
        f"{missing}\n\n" + "\n".join(rows) + "\n\n" + "\n".join(per_set) + "\n"
    )


def run_ceiling(
    out: str | Path = "runs/demo",
    seeds: int = 5,
    jobs: int | None = None,
    assets: str | None = None,
    markdown: str | Path = "docs/results.md",
) -> str:
    """Train and evaluate the ceiling's runs; write its section of ``markdown``."""
    from .demo import prepare_data
    from .markdown import write_section
    from .runs import run_variants

    out = Path(out)
    data = prepare_data(out, FULL, assets)
    plan = ceiling_plan(seeds)
    metrics = run_variants(data, FULL, plan, out / "sweep", jobs)
    ceiling = {run.seed: metrics[run.name] for run in plan}
    students = student_runs(out / "sweep", seeds)
    command = f"clip-ping results --ceiling --seeds {seeds}"
    text = ceiling_section(ceiling, students, command)
    summary = {"command": command, "ceiling": {str(s): m for s, m in ceiling.items()}}
    from ..io import atomic_write_text

    atomic_write_text(out / "ceiling.json", json.dumps(summary, indent=2) + "\n")
    write_section(markdown, "ceiling", text)
    print(text)
    return text
