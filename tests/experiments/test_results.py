"""Seed statistics of the results page: paired 95% intervals and verdicts from them."""

import math
from pathlib import Path

import pytest

from clip_ping.cli import build_parser
from clip_ping.experiments import results
from clip_ping.experiments.demo_data import retrieval_keys

KEY = "zeroshot/unseen/acc1"


def runs(*values):
    return {seed: {KEY: v} for seed, v in enumerate(values)}


def test_t_interval_against_the_textbook_value():
    # Differences 1, 2, 3, 4, 5: mean 3, sd sqrt(2.5); t(0.975, 4) = 2.776445 (tables).
    mean, low, high = results.t_interval([1, 2, 3, 4, 5])
    half = 2.776445 * math.sqrt(2.5) / math.sqrt(5)
    assert mean == 3 and low == pytest.approx(3 - half, abs=1e-5)
    assert high == pytest.approx(3 + half, abs=1e-5)
    assert math.isnan(results.t_interval([0.3])[1])


def test_verdicts_come_from_the_interval_of_paired_differences():
    clip = runs(0.10, 0.30, 0.20, 0.25, 0.15)
    steady = runs(0.12, 0.32, 0.22, 0.26, 0.17)  # +0.02 every seed, small spread: ahead
    assert results.paired_diffs(steady, clip, KEY) == pytest.approx([0.02, 0.02, 0.02, 0.01, 0.02])
    assert results.verdict(results.paired_diffs(steady, clip, KEY)) == "ahead"
    # A mean difference larger than zero whose interval still includes 0.
    noisy = runs(0.15, 0.28, 0.27, 0.22, 0.16)  # diffs +.05 -.02 +.07 -.03 +.01
    assert results.verdict(results.paired_diffs(noisy, clip, KEY)) == "no clear difference"
    worse = runs(0.05, 0.26, 0.14, 0.21, 0.11)
    assert results.verdict(results.paired_diffs(worse, clip, KEY)) == "behind"
    assert results.verdict([0.1]) == "one seed: no interval"


def test_headline_table_shows_means_and_the_interval():
    table = results.headline_table(runs(0.1, 0.3), runs(0.2, 0.4), [KEY])
    # Differences +0.1 twice: sd 0, so the interval is the point itself.
    assert (
        f"| {KEY} | 0.2000 ± 0.1414 | 0.3000 ± 0.1414 | +0.1000 [+0.1000, +0.1000] | ahead |"
        in (table)
    )


def _grid(shift: float, seeds: int = 3) -> dict:
    keys = [*retrieval_keys("val"), *retrieval_keys("test"), KEY, "linear_probe/digits/lp_acc1"]
    return {
        s: {k: 0.2 + 0.01 * s + shift + 0.001 * (s * s % 3) for k in keys} for s in range(seeds)
    }


def test_results_page_has_headline_tables_and_figures(tmp_path):
    from clip_ping.experiments.demo_data import FULL, DemoData

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "corpus.json").write_text('{"splits": {"train.csv": 10}}')
    final = {"clip": _grid(0.0), "clip-ping": _grid(0.03)}
    points = {
        "defaults": _grid(0.03),
        "K = 1": _grid(0.01),
        "self-targets (no neighbours)": _grid(0.03),
    }
    summary = {"size": FULL.__dict__, "command": "clip-ping results --seeds 3 --sweep-seeds 3"}
    md = tmp_path / "docs" / "results.md"
    text = results.render_results(
        final, points, summary, DemoData(corpus, tmp_path), md, tmp_path / "docs" / "figures"
    )
    assert (
        "CLIP-PING − CLIP = **+0.0300** [95% CI +0.0300, +0.0300] over 3 seeds — **ahead**" in text
    )
    assert "| **mean_recall/test** |" in text and "| zeroshot/unseen/acc1 |" in text
    assert "retrieval/val_" not in text.split("## CLIP-PING's settings")[0]  # test only up top
    assert "| K = 1 | 3 | 0.2" in text and "| behind |" in text
    assert "![CLIP vs CLIP-PING](figures/results_clip_vs_ping.png)" in text
    assert "Neighbour targets (the defaults) − self-targets = +0.0000" in text
    assert "not shown to add anything over the teachers' own features" in text
    for png in ("results_clip_vs_ping.png", "results_ablations.png"):
        assert (tmp_path / "docs" / "figures" / png).read_bytes()[:4] == b"\x89PNG"


def test_readme_gets_the_headline_rows_in_its_results_section(tmp_path):
    from clip_ping.experiments.markdown import has_section, write_section

    final = {"clip": _grid(0.0), "clip-ping": _grid(0.03)}
    summary = {"command": "clip-ping results --seeds 3 --sweep-seeds 3"}
    rows = results.readme_rows(final, summary, Path("docs/results.md"))
    assert "Test sets, 3 seeds, produced by `clip-ping results --seeds 3 --sweep-seeds 3`" in rows
    assert "| **mean_recall/test** | 0.2107 ± 0.0105 | 0.2407 ± 0.0105 | +0.0300" in rows
    assert "| retrieval/test_clipart/text_to_image_R@1 |" in rows
    assert "| zeroshot/unseen/acc1 |" in rows and "R@5" not in rows  # the excerpt only
    assert "zeroshot/seen/acc1" not in rows  # absent from the runs: no row, no error
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- results -->\nold\n<!-- /results -->\n\n## Usage\n")
    assert has_section(readme, "results") and not has_section(readme, "curve")
    write_section(readme, "results", rows)
    text = readme.read_text()
    assert "old" not in text and text.endswith("## Usage\n") and "+0.0300" in text


def test_the_control_answer_follows_the_interval():
    val = "mean_recall/val"
    clip = {s: {val: 0.10 + 0.01 * s} for s in range(3)}
    self_only = {s: {val: 0.12 + 0.01 * s + 0.001 * (s % 2)} for s in range(3)}
    better = {s: {val: 0.15 + 0.01 * s} for s in range(3)}  # +0.03 ± 0.001 over self
    said = results.control_answer({"defaults": better, results.SELF: self_only}, clip)
    assert "the neighbours add to what the teachers' own features give" in said
    assert "Self-targets − CLIP = +0.0203" in said and "(ahead)" in said
    worse = {s: {val: 0.11 + 0.01 * s} for s in range(3)}
    said = results.control_answer({"defaults": worse, results.SELF: self_only}, clip)
    assert "the teachers' own features do better than the neighbours" in said
    assert "has not been run" in results.control_answer({"defaults": worse}, clip)


def test_results_command_and_its_flags(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit) as shown:
        parser.parse_args(["results", "--help"])
    assert shown.value.code == 0
    usage = capsys.readouterr().out
    for flag in (
        "--seeds",
        "--sweep-seeds",
        "--sweep",
        "--curve",
        "--no-ablations",
        "--quick",
        "--out",
        "--assets",
        "--jobs",
        "--markdown",
    ):
        assert flag in usage
    args = parser.parse_args(["results"])
    assert (args.seeds, args.sweep_seeds, args.no_ablations, args.sweep) == (None, 3, False, None)
    assert not args.curve and parser.parse_args(["results", "--curve"]).curve
    assert parser.parse_args(["results", "--sweep", "recipe"]).sweep == "recipe"
    with pytest.raises(SystemExit):
        parser.parse_args(["results", "--sweep", "everything"])


def test_a_finished_run_is_reused_only_with_its_own_settings(tmp_path):
    from clip_ping.experiments.demo_data import FULL, DemoData
    from clip_ping.experiments.runs import _check_same_settings, train_config
    from clip_ping.training.config import save_yaml

    data = DemoData(tmp_path / "corpus", tmp_path / "banks")
    run = tmp_path / "sweep" / "clip-run"
    run.mkdir(parents=True)
    save_yaml(train_config(data, FULL, "clip", 0, run.parent, run.name), run / "config.yaml")
    _check_same_settings(run, train_config(data, FULL, "clip", 0, run.parent, run.name))
    for settings, said in (
        ({"lr": 2e-3}, "--lr was 0.001, now 0.002"),
        ({"epochs": 5}, "--epochs"),
    ):
        wanted = train_config(data, FULL, "clip", 0, run.parent, run.name, settings)
        with pytest.raises(ValueError, match=f"trained with other settings \\({said}"):
            _check_same_settings(run, wanted)
