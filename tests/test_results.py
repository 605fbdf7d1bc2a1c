"""Seed statistics of the results tables: paired differences and the verdict."""

import math

import pytest

from clip_ping import results

KEY = "zeroshot/concepts/acc1"


def runs(*values):
    return {seed: {KEY: v} for seed, v in enumerate(values)}


def test_paired_difference_is_per_seed():
    clip, ping = runs(0.10, 0.30, 0.20), runs(0.15, 0.33, 0.19)
    mean, std, wins, n = results.paired(ping, clip, KEY)
    diffs = [0.05, 0.03, -0.01]
    assert mean == pytest.approx(sum(diffs) / 3)
    assert std == pytest.approx(math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2))
    assert (wins, n) == (2, 3)


def test_verdict_compares_the_difference_with_the_spread():
    clip = runs(0.10, 0.11, 0.12)
    assert "more than the spread" in results.verdict(KEY, runs(0.20, 0.21, 0.22), clip)
    assert "within the spread" in results.verdict(KEY, runs(0.05, 0.13, 0.25), clip)
    assert results.verdict(KEY, runs(0.09, 0.10, 0.11), clip).startswith("not ahead")


def test_tables_show_mean_and_std():
    table = results.headline_table(runs(0.1, 0.3), runs(0.2, 0.4), [KEY])
    assert f"| {KEY} | 0.200 ± 0.141 | 0.300 ± 0.141 | +0.100 ± 0.000 | 2/2 |" in table
    ablations = results.ablation_table({"clip": runs(0.1, 0.3), "k1": runs(0.3, 0.3)}, [KEY])
    assert "| k1 | 2 | 0.300 | +0.100 |" in ablations
    assert results.run_name("clip", 0) == "clip"
    assert results.run_name("k1", 2) == "k1-seed2"
