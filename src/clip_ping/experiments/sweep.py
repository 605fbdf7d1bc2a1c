"""Sweeps on val: how the demo's recipe and CLIP-PING's defaults were chosen (docs/design.md:
benchmark protocol).

    clip-ping results --sweep recipe    # CLIP and CLIP-PING alike: lr, epochs, batch, ...
    clip-ping results --sweep method    # CLIP-PING's own settings on top of the recipe

Every point is trained with the same seeds and scored by its **val** mean recall
(:func:`.demo_data.mean_recall` on ``val_{google,twitter,clipart}``); test sets are never read
here. The recipe sweep gives the CLIP baseline exactly the points CLIP-PING gets: first one
setting changed at a time from the starting recipe (:data:`RECIPE_START`), then
combinations of the settings that helped both. The method sweep changes CLIP-PING's own
settings one at a time on top of the chosen recipe (:data:`.demo_data.FULL`). A run folder is
named by its complete settings (:func:`run_slug`), so a point reached again from another
starting recipe reuses the finished run, and an interrupted sweep resumes.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from ..models import is_exported
from .demo_data import DemoSize, mean_recall, off_style_recall
from .runs import VARIANTS, Planned
from .stats import interval_cell

# The recipe the recipe sweep starts from: the demo's until 2026-11-29.
RECIPE_START = DemoSize(max_concepts=None, max_clipart=None, epochs=6)
# Settings changed from RECIPE_START; each point is trained for CLIP and CLIP-PING.
RECIPE_POINTS: dict[str, dict] = {
    "starting recipe": {},
    "lr 5e-4": {"lr": 5e-4},
    "lr 2e-3": {"lr": 2e-3},
    "lr 4e-3": {"lr": 4e-3},
    "4 epochs": {"epochs": 4},
    "8 epochs": {"epochs": 8},
    "batch 64": {"batch_size": 64},
    "batch 256": {"batch_size": 256},
    "no warm-up": {"warmup": 0},
    "warm-up 200": {"warmup": 200},
    "crop ≥ 50% of the area": {"aug_scale_min": 0.5},
    "no crop": {"aug_scale_min": 1.0},
    "cpu-micro-32, 12 epochs": {"model": "cpu-micro-32", "epochs": 12},
    "cpu-small-64 (64 px), 3 epochs": {"model": "cpu-small-64", "epochs": 3},
    # Second round: warm-up 200 helped both methods (seed 0); combined with what else helped.
    "warm-up 100": {"warmup": 100},
    "warm-up 200, 8 epochs": {"warmup": 200, "epochs": 8},
    "warm-up 200, 10 epochs": {"warmup": 200, "epochs": 10},
    "warm-up 200, lr 2e-3": {"warmup": 200, "lr": 2e-3},
}
# CLIP-PING's own settings, one at a time from its defaults, on top of the chosen recipe.
# In the order they are trained: the control a reviewer asks for first, then the cheap
# points, and the active source (teachers on every batch, the slowest) last.
METHOD_POINTS: dict[str, dict] = {
    "defaults": {},
    "self-targets (no neighbours)": {"neighbor_self": "only"},
    "self + neighbours": {"neighbor_self": "include"},
    "λ_NN = λ_XNN = 0.5": {"nn_weight": 0.5, "xnn_weight": 0.5},
    "λ_NN = λ_XNN = 2": {"nn_weight": 2.0, "xnn_weight": 2.0},
    "NN only (λ_XNN = 0)": {"xnn_weight": 0.0},
    "XNN only (λ_NN = 0)": {"nn_weight": 0.0},
    "K = 1": {"neighbor_k": 1},
    "K = 3": {"neighbor_k": 3},
    "τ_aux = 0.05": {"aux_temperature": 0.05},
    "τ_aux = 0.2": {"aux_temperature": 0.2},
    "neighbour warm-up 200 steps": {"neighbor_warmup": 200},
    "memory targets": {"neighbor_target": "memory"},
    "no same-caption neighbours": {"banks": "no-same-caption"},
    "active source": {"neighbor_source": "active"},
}
# The teachers' ceiling (the locked teachers, models/locked.py): its own recipe on val. It
# trains in seconds per epoch, so epochs, lr and the head are swept together; warm-up is
# short (3 epochs are 171 steps).
CEILING_POINTS: dict[str, dict] = {
    "linear, 3 epochs, lr 1e-3": {"model": "locked-teachers", "epochs": 3, "warmup": 20},
    "linear, 3 epochs, lr 3e-3": {
        "model": "locked-teachers",
        "epochs": 3,
        "warmup": 20,
        "lr": 3e-3,
    },
    "linear, 8 epochs, lr 1e-3": {"model": "locked-teachers", "epochs": 8, "warmup": 20},
    "linear, 8 epochs, lr 3e-4": {
        "model": "locked-teachers",
        "epochs": 8,
        "warmup": 20,
        "lr": 3e-4,
    },
    "linear, 20 epochs, lr 1e-3": {"model": "locked-teachers", "epochs": 20, "warmup": 20},
    "MLP, 3 epochs, lr 1e-3": {"model": "locked-teachers-mlp", "epochs": 3, "warmup": 20},
    "MLP, 8 epochs, lr 3e-4": {
        "model": "locked-teachers-mlp",
        "epochs": 8,
        "warmup": 20,
        "lr": 3e-4,
    },
    # Second round: lr 3e-3, the grid's highest, led at 3 epochs (seeds 0-2): higher rates,
    # and 3e-3 with more epochs and with the MLP head.
    "linear, 3 epochs, lr 1e-2": {
        "model": "locked-teachers",
        "epochs": 3,
        "warmup": 20,
        "lr": 1e-2,
    },
    "linear, 3 epochs, lr 3e-2": {
        "model": "locked-teachers",
        "epochs": 3,
        "warmup": 20,
        "lr": 3e-2,
    },
    "linear, 8 epochs, lr 3e-3": {
        "model": "locked-teachers",
        "epochs": 8,
        "warmup": 20,
        "lr": 3e-3,
    },
    "MLP, 3 epochs, lr 3e-3": {
        "model": "locked-teachers-mlp",
        "epochs": 3,
        "warmup": 20,
        "lr": 3e-3,
    },
}
# The guidance family (docs/method.md, beyond the paper): each method's own settings on top
# of the chosen recipe, with CLIP and CLIP-PING's defaults at the same seeds for reference.
# A point's ``variant`` is the method (a key of .runs.VARIANTS) it trains.
FAMILY_POINTS: dict[str, dict] = {
    "CLIP": {"variant": "clip"},
    "CLIP-PING (defaults)": {"variant": "clip-ping"},
    "distill": {"variant": "distill"},
    "distill, τ_aux = 0.05": {"variant": "distill", "aux_temperature": 0.05},
    "distill, τ_aux = 0.2": {"variant": "distill", "aux_temperature": 0.2},
    "distill, λ = 2": {"variant": "distill", "nn_weight": 2.0, "xnn_weight": 2.0},
    "distill, λ = 0.5": {"variant": "distill", "nn_weight": 0.5, "xnn_weight": 0.5},
    "fd, λ_FD = 1": {"variant": "fd"},
    "fd, λ_FD = 4": {"variant": "fd", "fd_weight": 4.0},
    "fd, λ_FD = 16": {"variant": "fd", "fd_weight": 16.0},
    "distill-fd, λ_FD = 1": {"variant": "distill-fd"},
    "distill-fd, λ_FD = 4": {"variant": "distill-fd", "fd_weight": 4.0},
    "relational, τ_R = 0.05": {"variant": "relational"},
    "relational, τ_R = 0.02": {"variant": "relational", "rel_temperature": 0.02},
    "relational, τ_R = 0.1": {"variant": "relational", "rel_temperature": 0.1},
    "relational, λ_R = 4": {"variant": "relational", "rel_weight": 4.0},
    # Neighbours that add: distillation plus decaying neighbour terms (λ_nbr, the decay).
    "distill-nn, λ_nbr = 0.5, linear decay": {"variant": "distill-nn"},
    "distill-nn, λ_nbr = 0.25, linear decay": {"variant": "distill-nn", "neighbor_weight": 0.25},
    "distill-nn, λ_nbr = 1, linear decay": {"variant": "distill-nn", "neighbor_weight": 1.0},
    "distill-nn, λ_nbr = 0.5, cosine decay": {"variant": "distill-nn", "neighbor_decay": "cosine"},
    "distill-nn, λ_nbr = 0.5, no decay": {"variant": "distill-nn", "neighbor_decay": "none"},
}
SWEEPS = {
    "recipe": RECIPE_POINTS,
    "method": METHOD_POINTS,
    "ceiling": CEILING_POINTS,
    "family": FAMILY_POINTS,
}
# The methods each sweep trains at every point (a variant of .runs.VARIANTS; "student": the
# point's own ``variant``).
# The "method" of a sweep whose points each name their own (``variant``).
OWN_METHOD = "own"
# The point each point of a sweep is compared with, seed by seed (paired differences).
SWEEP_REFERENCE = {"family": "CLIP-PING (defaults)"}
SWEEP_METHODS = {
    "recipe": ("clip", "clip-ping"),
    "method": ("clip-ping",),
    "ceiling": ("ceiling",),
    "family": (OWN_METHOD,),
}
RECIPE_KEYS = ("model", "epochs", "batch_size", "lr", "warmup", "aug_scale_min")
_SHORT = {
    "epochs": "e",
    "batch_size": "b",
    "lr": "lr",
    "warmup": "w",
    "aug_scale_min": "crop",
    "nn_weight": "nn",
    "xnn_weight": "xnn",
    "neighbor_k": "k",
    "aux_temperature": "tau",
    "neighbor_warmup": "nw",
    "neighbor_target": "",
    "neighbor_source": "",
    "banks": "",
    "neighbor_self": "self-",
    "fd_weight": "fd",
    "rel_weight": "rel",
    "rel_temperature": "tr",
    "neighbor_weight": "nbr",
    "neighbor_decay": "decay-",
}


def recipe_of(size: DemoSize, settings: dict) -> dict:
    """The complete recipe of a run: ``size``'s, with ``settings`` applied."""
    base = {key: getattr(size, key) for key in RECIPE_KEYS}
    return {key: settings.get(key, value) for key, value in base.items()}


def run_slug(variant: str, size: DemoSize, settings: dict, seed: int) -> str:
    """A run folder name holding every setting that differs between sweep runs."""
    recipe = recipe_of(size, settings)
    parts = [variant, recipe["model"]]
    parts += [f"{_SHORT[k]}{recipe[k]:g}" for k in RECIPE_KEYS[1:]]
    extra = {k: v for k, v in settings.items() if k not in RECIPE_KEYS}
    parts += [
        f"{_SHORT[k]}{v:g}" if isinstance(v, float | int) else f"{_SHORT[k]}{v}"
        for k, v in sorted(extra.items())
    ]
    return "_".join(parts) + f"_s{seed}"


def sweep_plan(
    sweep: str, size: DemoSize, seeds: int, points: Sequence[str] | None = None
) -> list[tuple[str, str, Planned]]:
    """``(point, method, run)`` for every point, method and seed of ``sweep``, on val.
    ``points``: only these points (names as in the table), e.g. more seeds for the leaders."""
    if sweep not in SWEEPS:
        raise ValueError(f"--sweep {sweep}: choose one of {', '.join(SWEEPS)}")
    unknown = [p for p in points or () if p not in SWEEPS[sweep]]
    if unknown:
        names = "; ".join(f"'{p}'" for p in SWEEPS[sweep])
        raise ValueError(
            f"--sweep-points {unknown[0]!r} is not a point of the {sweep} sweep; "
            f"its points are: {names}"
        )
    methods = SWEEP_METHODS[sweep]
    plan = []
    for point, settings in SWEEPS[sweep].items():
        if points and point not in points:
            continue
        settings = dict(settings)
        own = settings.pop("variant", None)
        for seed in range(seeds):  # seeds outermost within a point: a point finishes early
            for method in methods:
                if method == OWN_METHOD and own is None:
                    raise ValueError(f"sweep point {point!r} names no variant")
                variant = own or (method if method in VARIANTS else "clip-ping")
                name = run_slug(variant, size, settings, seed)
                plan.append((point, method, Planned(variant, seed, name, settings, "val")))
    return plan


def sweep_table(
    plan: Sequence[tuple[str, str, Planned]],
    metrics: dict[str, dict[str, float]],
    reference: str | None = None,
) -> str:
    """Markdown: one row per point, the val mean recall of each method (mean ± std over
    seeds, n) and its off-style val mean recall (OpenMoji, never trained on; mean over the
    seeds evaluated on it). The best point of a method is marked by its in-style mean over
    the seeds that every point of that method has, so a point with an extra lucky seed does
    not win by it. With a ``reference`` point, each point's paired difference to it (in- and
    off-style, over the seeds both have) with its 95% t interval."""
    scores: dict[tuple[str, str], dict[int, float]] = {}
    off: dict[tuple[str, str], dict[int, float]] = {}
    for point, method, run in plan:
        if run.name in metrics:
            found = metrics[run.name]
            scores.setdefault((point, method), {})[run.seed] = mean_recall(found, "val")
            try:
                off.setdefault((point, method), {})[run.seed] = off_style_recall(found, "val")
            except KeyError:  # evaluated before the off-style sets existed
                pass
    methods = list(dict.fromkeys(method for _, method, _ in plan))
    points = list(dict.fromkeys(point for point, _, _ in plan))
    best, common = {}, {}
    for m in methods:
        done = {p: scores[(p, m)] for p in points if (p, m) in scores}
        common[m] = sorted(set.intersection(*map(set, done.values()))) if done else []
        by_common = {p: statistics.fmean(s[seed] for seed in common[m]) for p, s in done.items()}
        best[m] = max(by_common, key=by_common.get) if common[m] else None
    # A sweep whose points each train their own method names no method in its columns.
    label = {m: "" if m == OWN_METHOD else f"{m} " for m in methods}
    header = [f"{label[m]}val mean recall | {label[m]}off-style" for m in methods]
    if reference:
        header += [f"{label[m]}− {reference}: in-style [95% CI] | off-style" for m in methods]
    rows = ["| point | " + " | ".join(header) + " |"]
    rows.append("|---|" + "---:|---:|" * len(methods) * (2 if reference else 1))
    for point in points:
        cells = []
        for method in methods:
            values = list(scores.get((point, method), {}).values())
            if not values:
                cells += ["—", "—"]
                continue
            mark = " **best**" if best[method] == point else ""
            cells.append(f"{_mean_std(values)} (n={len(values)}){mark}")
            away = list(off.get((point, method), {}).values())
            cells.append(f"{_mean_std(away)} (n={len(away)})" if away else "—")
        for method in methods if reference else ():
            for table in (scores, off):
                cells.append(_paired_cell(table, (point, method), (reference, method)))
        rows.append(f"| {point} | " + " | ".join(cells) + " |")
    shared = " / ".join(sorted({", ".join(map(str, c)) or "none" for c in common.values()}))
    rows.append(
        f"\n**best**: the highest in-style mean over the seeds every point has (seeds "
        f"{shared}). Off-style: the same runs on `val_openmoji` (a style never trained on)."
    )
    return "\n".join(rows) + "\n"


def _paired_cell(table: dict, key: tuple[str, str], reference: tuple[str, str]) -> str:
    """``mean [low, high]`` of the seed-paired differences ``key − reference`` in ``table``
    (point, method → seed → score); "—" below 2 shared seeds or for the reference itself."""
    runs, base = table.get(key, {}), table.get(reference, {})
    seeds = sorted(set(runs) & set(base))
    if key == reference or len(seeds) < 2:
        return "—"
    return interval_cell([runs[s] - base[s] for s in seeds]) + f" (n={len(seeds)})"


def _mean_std(values: list[float]) -> str:
    spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.4f}{spread}"


def run_sweep(
    sweep: str,
    out: str | Path = "runs/demo",
    seeds: int = 2,
    jobs: int | None = None,
    assets: str | None = None,
    markdown: str | Path | None = "docs/method.md",
    finished_only: bool = False,
    points: Sequence[str] | None = None,
) -> str:
    """Train and evaluate every run of the sweep on val; its table, also written into
    ``markdown`` between ``<!-- sweep:NAME -->`` and ``<!-- /sweep:NAME -->``.
    ``finished_only``: train nothing, tabulate the runs finished so far (a sweep that spans
    days can be read while it runs). ``points``: train only these points; the table still
    shows every point's finished runs."""
    from .demo import prepare_data
    from .demo_data import FULL
    from .markdown import write_section
    from .runs import run_variants

    out = Path(out)
    size = RECIPE_START if sweep == "recipe" else FULL
    plan = sweep_plan(sweep, size, seeds)
    command = f"clip-ping results --sweep {sweep} --sweep-seeds {seeds}"
    if not finished_only:
        data = prepare_data(out, FULL, assets)
        chosen = [run for _, _, run in sweep_plan(sweep, size, seeds, points)]
        run_variants(data, size, chosen, out / "sweep", jobs)
    metrics = finished_runs([run for _, _, run in plan], out / "sweep")
    note = "" if len(metrics) == len(plan) else f" ({len(metrics)} of {len(plan)} runs finished)"
    table = f"Val mean recall, produced by `{command}`{note}:\n\n" + sweep_table(
        plan, metrics, SWEEP_REFERENCE.get(sweep)
    )
    if markdown is not None and Path(markdown).is_file():
        write_section(markdown, f"sweep:{sweep}", table)
    print(table)
    return table


def finished_runs(plan: Sequence[Planned], logs: Path) -> dict[str, dict[str, float]]:
    """Final metrics of the runs of ``plan`` that are trained and evaluated on val."""
    from .report import final_metrics

    metrics = {}
    for run in plan:
        if is_exported(logs / run.name):  # either export layout
            found = final_metrics(logs / run.name)
            try:
                mean_recall(found, "val")
            except KeyError:  # trained, not evaluated yet
                continue
            metrics[run.name] = found
    return metrics
