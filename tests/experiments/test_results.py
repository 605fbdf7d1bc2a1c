"""Seed statistics of the results tables: paired differences and the verdict."""

import math

import pytest

from clip_ping.cli import build_parser
from clip_ping.experiments import results

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
    # Per-seed differences +0.2 and 0.0: mean +0.100, std 0.141.
    assert "| k1 | 2 | 0.300 | +0.100 ± 0.141 |" in ablations
    assert results.run_name("clip", 0) == "clip"
    assert results.run_name("k1", 2) == "k1-seed2"


def test_ablation_verdict_needs_more_than_the_spread():
    clip = runs(0.10, 0.10, 0.10)
    default = runs(0.20, 0.22, 0.18)  # +0.10 ± 0.02
    tie = {"clip": clip, "clip-ping": default, "k1": runs(0.21)}  # +0.11: inside the spread
    assert "No ablation beats" in results.ablation_verdict(tie, [KEY])
    assert "`k1` (+0.110, 1 seed)" in results.ablation_verdict(tie, [KEY])
    better = {"clip": clip, "clip-ping": default, "k1": runs(0.25)}  # +0.15
    assert "candidate for the default" in results.ablation_verdict(better, [KEY])
    one_seed = {"clip": runs(0.1), "clip-ping": runs(0.2), "k1": runs(0.3)}
    assert "one seed" in results.ablation_verdict(one_seed, [KEY])


def test_ablation_seeds_per_name():
    assert results.ablation_seed_counts(["k1:3", "memory"], 1) == {"k1": 3, "memory": 1}
    with pytest.raises(ValueError, match="k9.*choose from"):
        results.ablation_seed_counts(["k9"], 1)
    with pytest.raises(ValueError, match="k1:0.*≥ 1"):
        results.ablation_seed_counts(["k1:0"], 1)


def test_results_page_has_both_tables_and_its_figures(tmp_path):
    from clip_ping.experiments.demo import FULL, DemoData

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "corpus.json").write_text('{"splits": {"train.csv": 10}}')
    keys = (KEY, *results.ABLATION_KEYS)
    grid = {
        variant: {s: {k: 0.1 * s + shift for k in keys} for s in range(2)}
        for variant, shift in (("clip", 0.0), ("clip-ping", 0.05), ("k1", -0.02))
    }
    summary = {
        "size": FULL.__dict__, "wall_seconds": 60.0, "samples_per_second": {"clip": 1.0},
        "command": "clip-ping demo --seeds 2 --ablations k1",
    }  # fmt: skip
    md = tmp_path / "docs" / "results.md"
    text = results.render_results(
        grid, summary, DemoData(corpus, tmp_path), md, tmp_path / "docs" / "figures", False
    )
    assert (
        "| zeroshot/concepts/acc1 | 0.050 ± 0.071 | 0.100 ± 0.071 | +0.050 ± 0.000 | 2/2 |" in text
    )
    assert "| k1 | 2 |" in text and "-0.020" in text
    assert "![CLIP vs CLIP-PING](figures/results_clip_vs_ping.png)" in text
    for png in ("results_clip_vs_ping.png", "results_ablations.png"):
        assert (tmp_path / "docs" / "figures" / png).is_file()


def test_results_command_and_its_flags(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit) as shown:
        parser.parse_args(["results", "--help"])
    assert shown.value.code == 0
    usage = capsys.readouterr().out
    for flag in ("--seeds", "--ablations", "--ablation-seeds", "--quick", "--out", "--assets",
                 "--jobs", "--markdown"):  # fmt: skip
        assert flag in usage
    args = parser.parse_args(["results", "--seeds", "2", "--ablations", "k1:3", "memory"])
    assert (args.seeds, args.ablations, args.ablation_seeds) == (2, ["k1:3", "memory"], None)
    assert (args.out, args.markdown, args.quick) == ("runs/demo", "docs/results.md", False)
    assert parser.parse_args(["results", "--ablations"]).ablations == []  # all of them
    assert parser.parse_args(["results"]).ablations is None  # none
