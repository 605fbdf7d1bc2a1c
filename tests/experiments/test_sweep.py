"""The sweeps' plans, run names and tables (no training: metrics are made up)."""

from clip_ping.experiments.demo import FULL, retrieval_keys
from clip_ping.experiments.sweep import (
    METHOD_POINTS,
    RECIPE_POINTS,
    RECIPE_START,
    run_slug,
    sweep_plan,
    sweep_table,
)


def test_the_recipe_sweep_gives_both_methods_every_point_and_names_runs_by_settings():
    plan = sweep_plan("recipe", RECIPE_START, seeds=2)
    assert len(plan) == len(RECIPE_POINTS) * 2 * 2
    names = [run.name for _, _, run in plan]
    assert len(set(names)) == len(names)  # one folder per run
    for point in RECIPE_POINTS:
        methods = sorted(m for p, m, _ in plan if p == point)
        assert methods == ["clip", "clip", "clip-ping", "clip-ping"]
    assert all(run.split == "val" for _, _, run in plan)  # never the test sets
    combined = {p: run.name for p, m, run in plan if m == "clip" and run.seed == 1}
    assert combined["warm-up 200, 8 epochs"] == "clip_cpu-mini-32_e8_b128_lr0.001_w200_crop0.9_s1"
    # A point reached from another starting recipe is the same run.
    moved = RECIPE_START.__class__(None, None, epochs=8, warmup=200)
    assert run_slug("clip", moved, {}, 1) == combined["warm-up 200, 8 epochs"]


def test_the_method_sweep_is_clip_ping_only_on_top_of_the_chosen_recipe():
    plan = sweep_plan("method", FULL, seeds=3)
    assert len(plan) == len(METHOD_POINTS) * 3
    assert {m for _, m, _ in plan} == {"clip-ping"}
    names = {p: run.name for p, _, run in plan if run.seed == 0}
    assert names["defaults"] == run_slug("clip-ping", FULL, {}, 0)
    assert names["self-targets (no neighbours)"].endswith("_self-only_s0")
    assert len(set(names.values())) == len(names)


def test_sweep_table_gives_mean_spread_and_marks_the_best_per_method():
    plan = sweep_plan("recipe", RECIPE_START, seeds=2)
    score = {"starting recipe": 0.10, "lr 5e-4": 0.20, "warm-up 100": 0.15}
    metrics = {}
    for point, method, run in plan:
        if point in score:
            value = score[point] + 0.01 * run.seed + (0.05 if method == "clip-ping" else 0)
            metrics[run.name] = {k: value for k in retrieval_keys("val")}
    table = sweep_table(plan, metrics)
    assert "| lr 5e-4 | 0.2050 ± 0.0071 (n=2) **best** | 0.2550 ± 0.0071 (n=2) **best** |" in table
    assert "| starting recipe | 0.1050 ± 0.0071 (n=2) | 0.1550 ± 0.0071 (n=2) |" in table
    assert "| batch 64 | — | — |" in table  # not run yet
