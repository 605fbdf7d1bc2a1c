"""CLIP vs CLIP-PING per student tower, end to end on a tiny slice of the demo corpus: each
student's rate chosen on val, then seeds at that rate on test, in a section of the page."""

import json

from clip_ping.experiments.architectures import (
    choose_lrs,
    edge_rates,
    lr_plan,
    run_architectures,
)
from clip_ping.experiments.demo_data import DemoSize, retrieval_keys
from clip_ping.models import is_exported

TINY = DemoSize(
    max_concepts=40,
    max_clipart=30,
    epochs=1,
    batch_size=16,
    model="cpu-micro-32",
    probes=("digits",),
)
STUDENTS = {"cpu-micro-32": ("ViT", 1.0), "cpu-convnext-micro-32": ("ConvNeXt", 2.0)}


def test_the_rate_is_chosen_per_student_and_method_on_val():
    plan = lr_plan(TINY, STUDENTS, lrs=(1e-3, 2e-3))
    assert len(plan) == 2 * 2 * 2 and all(run.split == "val" for *_, run in plan)
    epochs = {s: run.settings["epochs"] for s, _, _, run in plan}
    assert epochs == {"cpu-micro-32": 1, "cpu-convnext-micro-32": 2}  # the same time budget
    best = {("cpu-micro-32", "clip"): 2e-3, ("cpu-micro-32", "clip-ping"): 1e-3}
    metrics = {}
    for student, method, lr, run in plan:
        score = 0.5 if best.get((student, method), 1e-3) == lr else 0.1
        metrics[run.name] = {k: score for k in retrieval_keys("val")}
    chosen = choose_lrs(plan, metrics)
    assert chosen[("cpu-micro-32", "clip")] == 2e-3
    assert chosen[("cpu-micro-32", "clip-ping")] == 1e-3
    assert chosen[("cpu-convnext-micro-32", "clip")] == 1e-3


def test_a_rate_at_the_edge_of_the_grid_is_named():
    chosen = {("vit", "clip"): 1e-3, ("vit", "clip-ping"): 2e-3, ("cnn", "clip"): 5e-4}
    assert edge_rates(chosen, lrs=(5e-4, 1e-3, 2e-3)) == {
        "highest": ["vit clip-ping"],
        "lowest": ["cnn clip"],
    }
    assert edge_rates({("vit", "clip"): 1e-3}, lrs=(5e-4, 1e-3, 2e-3)) == {}


def test_architectures_end_to_end_on_a_tiny_corpus(tmp_path):
    out, md = tmp_path / "demo", tmp_path / "docs" / "results.md"
    md.parent.mkdir()
    md.write_text("# Results\n\nhand-written\n")
    summary = run_architectures(
        out,
        seeds=2,
        markdown=md,
        figures=tmp_path / "docs" / "figures",
        students=STUDENTS,
        lrs=(1e-3, 2e-3),
        size=TINY,
    )
    assert set(summary["final"]) == set(STUDENTS)
    for student, by_method in summary["final"].items():
        for method in ("clip", "clip-ping"):
            runs = by_method[method]
            assert sorted(runs) == ["0", "1"]
            for metrics in runs.values():  # read on test, and on val
                assert all(k in metrics for k in retrieval_keys("test") + retrieval_keys("val"))
            lr = summary["lrs"][f"{student}/{method}"]
            assert lr in (1e-3, 2e-3)
    convnext = [p for p in (out / "sweep").iterdir() if "convnext" in p.name]
    assert convnext and all(is_exported(p) for p in convnext)  # trained and exported
    assert json.loads((out / "architectures.json").read_text())["lrs"] == summary["lrs"]
    text = md.read_text()
    assert text.startswith("# Results\n\nhand-written\n")
    assert "## Other students (test)" in text and "| `cpu-convnext-micro-32` | ConvNeXt |" in text
    assert "![per student](figures/architectures.png)" in text
    assert (tmp_path / "docs" / "figures" / "architectures.png").read_bytes()[:4] == b"\x89PNG"
