"""The teachers' ceiling on the results page: its plan, the fractions, the accuracy–cost
section."""

import json

import pytest

from clip_ping.experiments.ceiling import (
    ceiling_plan,
    ceiling_section,
    fraction_cell,
    fractions,
    read_ceiling,
)
from clip_ping.experiments.demo_data import FULL, DemoData, retrieval_keys
from clip_ping.experiments.frontier import frontier_section
from clip_ping.experiments.runs import train_config
from clip_ping.experiments.sweep import sweep_plan


def runs(*recalls: float) -> dict[int, dict[str, float]]:
    """Seed → metrics whose every test retrieval recall is the given value."""
    return {seed: dict.fromkeys(retrieval_keys("test"), r) for seed, r in enumerate(recalls)}


def test_a_fraction_is_per_seed_student_over_ceiling():
    student, ceiling = runs(0.10, 0.12, 0.11), runs(0.20, 0.20, 0.22)
    assert fractions(student, ceiling) == pytest.approx([0.5, 0.6, 0.5])
    cell = fraction_cell(student, ceiling)
    assert cell.startswith("0.53 [") and cell.endswith("]")
    low, high = (float(x) for x in cell[6:-1].split(", "))
    assert low < 0.5333 < high
    assert fraction_cell(student, {}) == "—"


def test_the_section_gives_the_ceiling_and_each_student_s_fraction():
    text = ceiling_section(
        runs(0.25, 0.26), {"clip": runs(0.125, 0.13), "clip-ping": runs(0.15, 0.156)}, "cmd"
    )
    assert "Produced by `cmd`" in text
    ceiling_row = next(line for line in text.splitlines() if line.startswith("| **ceiling**"))
    assert "0.2550 ± 0.0071" in ceiling_row
    clip_row = next(line for line in text.splitlines() if line.startswith("| CLIP |"))
    assert "| 0.50 [" in clip_row  # 0.125/0.25 and 0.13/0.26
    assert "make results" not in text
    assert "make results" in ceiling_section(runs(0.25), {}, "cmd")


def test_the_ceiling_is_its_own_sweep_and_trains_on_the_banks(tmp_path):
    plan = sweep_plan("ceiling", FULL, 2)
    assert {method for _, method, _ in plan} == {"ceiling"}
    assert all(run.name.startswith("ceiling_locked-teachers") for _, _, run in plan)
    assert len({run.name for _, _, run in plan}) == len(plan)
    (final,) = ceiling_plan(1)
    data = DemoData(tmp_path / "corpus", tmp_path / "banks")
    cfg = train_config(data, FULL, "ceiling", 0, tmp_path, final.name, final.settings)
    assert cfg.model == "locked-teachers" and cfg.loss == "clip"
    assert cfg.image_bank == str(tmp_path / "banks" / "image")
    assert cfg.text_bank == str(tmp_path / "banks" / "text")
    assert cfg.val_frequency == 0  # the teachers do not run at each epoch


def test_the_accuracy_cost_section_joins_costs_and_finished_runs(tmp_path):
    def cost(model, rate):
        return {
            "model": model,
            "image_size": 32,
            "image_params": 2e6,
            "text_params": 5e6,
            "image_gflops": 0.1,
            "images_per_s_b1": rate,
            "images_per_s_b64": 10 * rate,
            "texts_per_s_b1": rate,
            "texts_per_s_b64": 10 * rate,
        }

    costs = {
        "command": "python benchmarks/model_costs.py",
        "machine": {"cpu": "a CPU", "threads": 2, "torch": "2"},
        "rows": [
            cost("cpu-mini-32", 400),
            cost("cpu-convnext-mini-32", 300),
            cost("locked-teachers", 40),
        ],
    }
    rows = [
        ("cpu-mini-32", "clip", runs(0.13, 0.14)),
        ("cpu-mini-32", "clip-ping", runs(0.15, 0.16)),
        ("locked-teachers", "ceiling", runs(0.26, 0.28)),
    ]
    figure = tmp_path / "figures" / "frontier.png"
    text = frontier_section(costs, rows, figure, tmp_path / "results.md")
    lines = text.splitlines()
    assert sum(line.startswith("| `cpu-mini-32` |") for line in lines) == 2
    convnext = next(line for line in lines if line.startswith("| `cpu-convnext-mini-32`"))
    assert convnext.endswith("| — | — | — |")  # no finished runs: no accuracy
    ping = next(line for line in lines if "CLIP-PING" in line)
    assert "0.1550 [" in ping and "| 0.57 [" in ping  # (0.15/0.26 + 0.16/0.28) / 2
    assert figure.is_file() and "](figures/frontier.png)" in text


def test_read_ceiling_is_none_before_the_runs(tmp_path):
    assert read_ceiling(tmp_path) is None
    (tmp_path / "ceiling.json").write_text(json.dumps({"ceiling": {"0": {"a": 1.0}}}))
    assert read_ceiling(tmp_path) == {0: {"a": 1.0}}
