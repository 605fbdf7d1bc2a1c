"""The accuracy–cost table and figure: what a user trades between the students and the
teachers' ceiling → the ``frontier`` section of ``docs/results.md``.

    python benchmarks/model_costs.py --out docs/data/model_costs.json   # the costs
    clip-ping results --frontier                                         # the section

Costs come from the benchmark's JSON (parameters, image-tower GFLOPs, CPU images/s and
texts/s at batch 1 and 64); accuracy from the finished runs in ``<out>``: the final runs of
``make results`` (the demo's ViT, CLIP and CLIP-PING), those of ``make architectures`` (the
other students) and those of ``make ceiling``. Nothing is trained here: a model whose runs
are not finished shows no accuracy, and the figure leaves it out.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .demo_data import mean_recall
from .stats import Runs, t_interval

COSTS = Path("docs/data/model_costs.json")
METHOD_LABELS = {"clip": "CLIP", "clip-ping": "CLIP-PING", "ceiling": "ceiling"}


def accuracy_rows(out: Path) -> list[tuple[str, str, Runs]]:
    """``(model, method, runs)`` of every finished result in ``out``."""
    from .ceiling import read_ceiling, student_runs
    from .demo_data import STUDENT

    rows = [(STUDENT, m, runs) for m, runs in student_runs(out / "sweep", 5).items()]
    architectures = out / "architectures.json"
    if architectures.is_file():
        final = json.loads(architectures.read_text())["final"]
        for student, by_method in final.items():
            if student == STUDENT and rows:
                continue  # the headline's 5 seeds, not the per-student 3
            for method, runs in by_method.items():
                rows.append((student, method, {int(s): m for s, m in runs.items()}))
    if ceiling := read_ceiling(out):
        rows.append(("locked-teachers", "ceiling", ceiling))
    return rows


def frontier_section(costs: dict, rows: list[tuple[str, str, Runs]], figure: Path, page: Path):
    """The section's markdown (and its figure, when any row has accuracy)."""
    by_model = {row["model"]: row for row in costs["rows"]}
    scored = {(model, method): runs for model, method, runs in rows}
    ceiling = scored.get(("locked-teachers", "ceiling"))
    lines = [
        "| model | method | image / text params | image GFLOPs | images/s b1 / b64 | "
        "texts/s b1 / b64 | test mean recall [95% CI] | seeds | fraction of the ceiling |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    points = []
    for model, cost in by_model.items():
        methods = [m for (name, m) in scored if name == model] or ["—"]
        for method in methods:
            runs = scored.get((model, method), {})
            cells = "— | — | —"
            if runs:
                values = [mean_recall(m, "test") for m in runs.values()]
                mean, low, high = t_interval(values)
                share = "1" if method == "ceiling" else "—"
                if ceiling and method != "ceiling":
                    from .ceiling import fraction_cell

                    share = fraction_cell(runs, ceiling)
                cells = f"{mean:.4f} [{low:.4f}, {high:.4f}] | {len(values)} | {share}"
                points.append((model, method, cost, mean, low, high))
            lines.append(
                f"| `{model}` | {METHOD_LABELS.get(method, method)} | "
                f"{cost['image_params'] / 1e6:.2f} M / {cost['text_params'] / 1e6:.2f} M | "
                f"{cost['image_gflops']:.3f} | {cost['images_per_s_b1']:.0f} / "
                f"{cost['images_per_s_b64']:.0f} | {cost['texts_per_s_b1']:.0f} / "
                f"{cost['texts_per_s_b64']:.0f} | {cells} |"
            )
    machine = costs["machine"]
    text = [
        "## Accuracy and cost (test)",
        "",
        "Produced by `clip-ping results --frontier` from the finished runs and the costs of "
        f"`{costs['command']}` ({machine['cpu']}, {machine['threads']} threads, torch "
        f"{machine['torch']}). Parameters of each tower (a student's with its projection, the "
        "ceiling's frozen teacher with its head); image-tower GFLOPs per image at the model's "
        "input size; CPU throughput at inference. A model without finished runs shows —.",
        "",
        *lines,
        "",
    ]
    if points:
        plot_frontier(points, figure)
        text += [f"![accuracy and cost]({os.path.relpath(figure, page.parent)})", ""]
    return "\n".join(text)


def plot_frontier(points, out: Path) -> Path:
    """Test mean recall (95% interval) against the image tower's time per image at batch 1."""
    from .figures import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {"clip": "tab:blue", "clip-ping": "tab:orange", "ceiling": "tab:green"}
    for model, method, cost, mean, low, high in points:
        x = 1000.0 / cost["images_per_s_b1"]
        error = [[mean - low], [high - mean]] if low == low else None  # NaN: one seed
        ax.errorbar(x, mean, yerr=error, fmt="o", color=colours.get(method, "gray"), capsize=3)
        ax.annotate(
            f"{model} {METHOD_LABELS.get(method, method)}",
            (x, mean),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set(
        xlabel="image tower, ms per image at batch 1 (CPU, log scale)",
        ylabel="test mean recall",
        title="accuracy against inference cost",
    )
    ax.grid(alpha=0.3)
    return save_figure(fig, out)


def run_frontier(
    out: str | Path = "runs/demo",
    markdown: str | Path = "docs/results.md",
    figures: str | Path = "docs/figures",
    costs: str | Path = COSTS,
) -> str:
    """Write the section from the costs file and the finished runs in ``out``."""
    from .markdown import write_section

    costs = Path(costs)
    if not costs.is_file():
        raise FileNotFoundError(
            f"{costs} does not exist: run python benchmarks/model_costs.py --out {costs} first"
        )
    body = frontier_section(
        json.loads(costs.read_text()),
        accuracy_rows(Path(out)),
        Path(figures) / "accuracy_cost.png",
        Path(markdown),
    )
    write_section(markdown, "frontier", body)
    print(body)
    return body
