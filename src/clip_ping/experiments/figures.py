"""The figures' shared plotting: matplotlib without a display, grouped bars, atomic PNG saves.

Used by the run report (:mod:`.report`), the demo (:mod:`.demo`) and the results page
(:mod:`.results`), so every figure has the same look.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bars(
    metrics: Mapping[str, Mapping[str, float]],
    keys: Sequence[str],
    out_png: str | Path,
    errors: Mapping[str, Mapping[str, float]] | None = None,
    title: str = "final held-out metrics",
) -> Path:
    """Grouped bars: one group per metric in ``keys``, one bar per run (± ``errors``)."""
    import numpy as np

    plt = pyplot()
    labels = list(metrics)
    width = 0.8 / max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(keys) * max(len(labels), 2) / 2), 4))
    x = np.arange(len(keys))
    for i, label in enumerate(labels):
        values = [metrics[label].get(k, math.nan) for k in keys]
        err = [errors[label].get(k, 0.0) for k in keys] if errors else None
        ax.bar(x + (i - (len(labels) - 1) / 2) * width, values, width, yerr=err, label=label)
    ax.set_xticks(x, [k.split("/", 1)[1] for k in keys], rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="score", title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, out_png)


def save_figure(fig, out_png: str | Path) -> Path:
    """Lay out ``fig``, write it to ``out_png`` atomically (110 dpi) and close it."""
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(out_png)
    pyplot().close(fig)
    return out_png
