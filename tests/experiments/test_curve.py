"""The data-efficiency curve: nested group subsets, banks of the subset alone, the ratio read
off CLIP's curve, and the command end to end on a tiny slice of the demo corpus."""

import json
import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from clip_ping.bank import Bank
from clip_ping.experiments.curve import (
    nested_subsets,
    pairs_to_match,
    ratio_interval,
    ratio_read,
    ratio_text,
    render_curve,
    run_curve,
    seed_ratios,
)
from clip_ping.experiments.demo_data import DemoSize
from clip_ping.experiments.markdown import carry_sections, replace_section, section


def test_subsets_are_nested_whole_groups_of_their_share():
    keys = [f"k{i}" for i in range(200)]
    group_of = {k: f"g{i % 37 if i < 180 else 99}" for i, k in enumerate(keys)}  # one big group
    subsets = nested_subsets(keys, group_of, (0.1, 0.25, 0.5, 1.0))
    assert subsets[1.0] == set(keys)
    assert subsets[0.1] <= subsets[0.25] <= subsets[0.5] <= subsets[1.0]
    assert len(subsets[0.1]) < len(subsets[0.5]) < len(subsets[1.0])
    for fraction, taken in subsets.items():
        assert len(taken) >= math.ceil(fraction * len(keys))
        groups = {group_of[k] for k in taken}
        assert taken == {k for k in keys if group_of[k] in groups}  # whole groups only
    assert nested_subsets(keys, group_of, (0.25,))[0.25] == subsets[0.25]  # a fixed order
    with pytest.raises(ValueError, match="have no group"):
        nested_subsets([*keys, "stray"], group_of)
    with pytest.raises(ValueError, match="fraction 0"):
        nested_subsets(keys, group_of, (0.0,))


def test_pairs_to_match_interpolates_in_log_pairs():
    pairs, clip = [100, 1000, 10000], [0.1, 0.2, 0.25]
    assert pairs_to_match(pairs, clip, 0.15) == pytest.approx(math.sqrt(100 * 1000))
    assert pairs_to_match(pairs, clip, 0.2) == pytest.approx(1000)
    assert pairs_to_match(pairs, clip, 0.05) == 100  # already reached at the first point
    assert math.isinf(pairs_to_match(pairs, clip, 0.3))
    assert ratio_text(math.sqrt(10), 0.1, 4.0) == "3.2×"
    assert ratio_text(math.inf, 0.1, 4.0) == "more than 4.0×"
    assert ratio_text(0.1, 0.1, 4.0) == "at most 0.1×"


def test_ratios_seed_by_seed_with_an_interval_over_log_ratios():
    pairs = {0.25: 100, 0.5: 200, 1.0: 400}
    # Seed s: CLIP scores 0.1, 0.2, 0.3 (+ s/100); CLIP-PING at 25% reaches CLIP's 50% score
    # of seed 0, between CLIP's 50% and 100% of seed 1.
    scores = {
        f: {
            "clip": {s: base + s / 100 for s in (0, 1)},
            "clip-ping": {0: 0.2, 1: 0.26} if f == 0.25 else {0: 0.5, 1: 0.5},
        }
        for f, base in ((0.25, 0.1), (0.5, 0.2), (1.0, 0.3))
    }
    ratios = seed_ratios(scores, pairs, 0.25)
    assert ratios[0] == pytest.approx(2.0)  # seed 0 reaches 0.2 at 200 pairs
    assert ratios[1] == pytest.approx(2**1.5)  # seed 1: halfway from 200 to 400, in log
    mean, low, high = ratio_interval(ratios, smallest=1.0)
    assert mean == pytest.approx(2**1.25) and low < mean < high
    # by hand: t(0.975, 1 df) = 12.706, std of the log ratios = 0.25·ln 2·√2
    half = 12.706 * (0.25 * math.log(2) * math.sqrt(2)) / math.sqrt(2)
    assert math.log(high) == pytest.approx(1.25 * math.log(2) + half, rel=1e-4)
    assert ratio_interval([2.0, math.inf], smallest=1.0) is None  # past the data
    assert ratio_interval([2.0, 1.0], smallest=1.0) is None  # censored at the first point
    line = ratio_read(scores, pairs, 0.25)
    assert "CLIP-PING at 25% (100 pairs) scores 0.2300" in line
    assert "Seed by seed: 2.0×, 2.8×" in line and "not shown to differ from 1×" in line
    assert "needs **more than 2.0× the pairs**" in ratio_read(scores, pairs, 0.5)  # never reached
    assert "no interval" in ratio_read(scores, pairs, 0.5)
    # The page says plainly when no point is ahead (here 50% and 100% are).
    page = partial(
        render_curve,
        pairs=pairs,
        epochs=dict.fromkeys(pairs, 1),
        size=TINY,
        command="c",
        figure=Path("f.png"),
        markdown=Path("r.md"),
    )
    plain = "No point's difference is shown"
    assert plain not in page(scores)
    level = {
        f: {"clip": s["clip"], "clip-ping": {0: s["clip"][0] + 0.01, 1: s["clip"][1] - 0.01}}
        for f, s in scores.items()
    }
    assert plain in page(level)


def test_generated_sections_replace_their_block_and_survive_a_rewrite():
    page = "# Results\n\ntext\n"
    page = replace_section(page, "curve", "old curve")
    assert section(page, "curve") == "<!-- curve -->\nold curve\n<!-- /curve -->"
    page = replace_section(page, "curve", "new curve")
    assert "old curve" not in page and page.count("<!-- curve -->") == 1
    rewritten = carry_sections(
        "# Results, again\n",
        page,
        ("architectures", "curve"),
        {"architectures": "none yet", "curve": "none yet"},
    )
    assert section(rewritten, "curve") == "<!-- curve -->\nnew curve\n<!-- /curve -->"
    assert "none yet" in section(rewritten, "architectures")


TINY = DemoSize(
    max_concepts=40,
    max_clipart=30,
    epochs=1,
    batch_size=16,
    model="cpu-micro-32",
    probes=("digits",),
)


def test_curve_end_to_end_on_a_tiny_corpus(tmp_path):
    out, md = tmp_path / "demo", tmp_path / "docs" / "results.md"
    md.parent.mkdir()
    md.write_text("# Results\n\nhand-written\n")
    summary = run_curve(
        out,
        seeds=2,
        markdown=md,
        figures=tmp_path / "docs" / "figures",
        fractions=(0.5, 1.0),
        size=TINY,
    )
    pairs = summary["pairs"]
    full = sum(1 for _ in open(out / "data" / "corpus" / "train.csv")) - 1
    assert pairs["1.0"] == full and full / 2 <= pairs["0.5"] < full
    # The subset's banks hold its pairs only, and its neighbours are among them.
    for modality in ("image", "text"):
        bank = Bank(out / "curve" / "p050" / "banks" / modality)
        assert len(bank) == pairs["0.5"]
        neighbors, _ = bank.neighbors()
        assert neighbors.max() < pairs["0.5"]
    # The same number of steps: the subset trains for more epochs.
    full_steps = full // TINY.batch_size  # full batches only
    assert summary["epochs"]["1.0"] == 1
    assert summary["epochs"]["0.5"] == round(full_steps / (pairs["0.5"] // TINY.batch_size))
    last = [
        json.loads(line)
        for line in open(out / "curve" / "p050" / "runs" / "clip_s0" / "metrics.jsonl")
    ]
    steps = max(r["step"] for r in last)
    evals = [r["epoch"] for r in last if "retrieval/val_google/image_to_text_R@1" in r]
    assert evals == [summary["epochs"]["0.5"]]  # val once, after the last epoch
    assert steps == summary["epochs"]["0.5"] * (pairs["0.5"] // TINY.batch_size)
    assert abs(steps - full_steps) <= pairs["0.5"] // TINY.batch_size / 2
    for fraction in ("0.5", "1.0"):
        for method in ("clip", "clip-ping", "ceiling"):  # each point has its own ceiling
            scores = summary["scores"][fraction][method]
            assert len(scores) == 2 and all(0 <= v <= 1 for v in scores.values())
    text = md.read_text()
    assert text.startswith("# Results\n\nhand-written\n")  # the rest of the page is kept
    assert "## Data efficiency (test)" in text and "| 50% |" in text
    half = next(line for line in text.splitlines() if "| 50% |" in line)
    assert half.count(" / ") == 1 and half.rstrip().endswith("] |")  # the fractions, with CIs
    assert "CLIP-PING at 50%" in text and "× the pairs** to match it" in text
    assert "CLIP-PING at 25%" not in text  # no such point here
    assert "![data efficiency](figures/data_efficiency.png)" in text
    png = tmp_path / "docs" / "figures" / "data_efficiency.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    again = run_curve(
        out,
        seeds=2,
        markdown=md,
        figures=tmp_path / "docs" / "figures",
        fractions=(0.5, 1.0),
        size=TINY,
    )
    assert again["scores"] == summary["scores"]  # every run reused
    assert np.isfinite(list(again["scores"]["0.5"]["clip"].values())).all()
