"""The statistics of the results pages: means, t intervals, paired differences, verdicts.

Examples:
    >>> from clip_ping.experiments.stats import t_interval, verdict
    >>> mean, low, high = t_interval([1.0, 2.0, 3.0])
    >>> mean, round(float(low), 3), round(float(high), 3)
    (2.0, -0.484, 4.484)
    >>> verdict([0.1, 0.2, 0.15])
    'ahead'
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

CONFIDENCE = 0.95
Runs = dict[int, dict[str, float]]  # seed → metrics


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, ...]:
    """``(mean, low, high)``: Student's t interval of the mean (NaN bounds below 2 values)."""
    from scipy.stats import t

    mean, std = mean_std(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = t.ppf(0.5 + confidence / 2, len(values) - 1) * std / math.sqrt(len(values))
    return mean, mean - half, mean + half


def paired_diffs(runs: Runs, baseline: Runs, key: str) -> list[float]:
    """``run − baseline`` of ``key`` for every seed both have."""
    return [runs[s][key] - baseline[s][key] for s in sorted(set(runs) & set(baseline))]


def verdict(diffs: Sequence[float]) -> str:
    """``ahead`` / ``behind`` when the 95% interval excludes 0, else ``no clear difference``."""
    _, low, high = t_interval(diffs)
    if low > 0:
        return "ahead"
    if high < 0:
        return "behind"
    return "no clear difference" if len(diffs) > 1 else "one seed: no interval"


def interval_cell(diffs: Sequence[float]) -> str:
    mean, low, high = t_interval(diffs)
    return f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]"
