"""The main job end to end on a tiny slice of the real demo corpus (packages from .assets)."""

import dataclasses
import json

import numpy as np
import pytest

from clip_ping.bank import Bank
from clip_ping.cli import build_parser
from clip_ping.data.loader import DataSpec, read_captions
from clip_ping.evaluation.run import result_path
from clip_ping.experiments.demo import prepare_data, run_demo
from clip_ping.experiments.demo_data import DemoData, DemoSize
from clip_ping.experiments.runs import run_variants

TINY = DemoSize(
    max_concepts=40,
    max_clipart=30,
    epochs=1,
    batch_size=32,
    model="cpu-micro-32",
    probes=("digits",),
)


def test_demo_writes_summary_report_and_figures_then_reuses_its_stages(tmp_path):
    out = tmp_path / "demo"
    summary = run_demo(out, size=TINY)
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["runs"] == summary["runs"]
    for run in ("clip", "clip-ping"):
        metrics = summary["runs"][run]
        for key in (
            "zeroshot/unseen/acc1",
            "zeroshot/seen/acc5",
            "zeroshot/subgroups/acc5",
            "retrieval/test_google/image_to_text_R@1",
            "retrieval/test_twitter/image_to_text_R@10",
            "retrieval/test_clipart/text_to_image_R@5",
            "linear_probe/digits/lp_acc1",
        ):
            assert 0.0 <= metrics[key] <= 1.0, (run, key)
        # Real digits are learnable from any image features: far above chance (0.1).
        assert metrics["linear_probe/digits/lp_acc1"] > 0.5
    records = [json.loads(line) for line in (out / "clip-ping" / "metrics.jsonl").open()]
    assert any("train/nn_loss" in r and "train/xnn_loss" in r for r in records)
    report = (out / "report.md").read_text()
    assert "| zeroshot/unseen/acc1 |" in report and "retrieval/val_" not in report
    # Both runs side by side in a folder that opens from disk, linked from the report.
    assert "(explore/index.html)" in report and (out / "explore" / "index.html").is_file()
    script = (out / "explore" / "data.js").read_text()
    assert '"name":"clip"' in script and '"name":"clip-ping"' in script
    assert '"dataset":"test_google"' in script
    # The two runs trained side by side (2 cores), each writing its own console log.
    for run in ("clip", "clip-ping"):
        assert "steps/epoch" in (out / run / "console.log").read_text()
    for png in ("metrics.png", "curves.png", "neighbours.png"):
        assert (out / "figures" / png).read_bytes()[:4] == b"\x89PNG"
    # Only latest.pt is kept: a sweep of dozens of runs would fill the disk with per-epoch
    # checkpoints (each holds the optimiser).
    for run in ("clip", "clip-ping"):
        assert [p.name for p in (out / run / "checkpoints").glob("*.pt")] == ["latest.pt"]

    # The ablation table without same-caption pairs holds none.
    captions = np.asarray(read_captions(DataSpec(str(out / "data" / "corpus" / "train.csv"))))
    neighbors, _ = Bank(out / "banks" / "text-no-same-caption").neighbors()
    assert not (captions[np.asarray(neighbors)] == captions[:, None]).any()

    # One result file per evaluation, named by result_path: the test sets once, after
    # training; val_google only by training's periodic evaluation (which carries its step).
    results = out / "clip-ping" / "results"
    named = {
        ("retrieval", "test_google"),
        ("retrieval", "test_twitter"),
        ("retrieval", "test_clipart"),
        ("retrieval", "test_openmoji"),  # off-style: a style never trained on
        ("zeroshot", "unseen"),
        ("zeroshot", "seen"),
        ("zeroshot", "subgroups"),
        ("linear-probe", "digits"),
        ("retrieval", "val_google"),
    }
    assert {p.name for p in results.iterdir()} == {
        result_path(out / "clip-ping", task, name).name for task, name in named
    }
    periodic = json.loads(result_path(out / "clip-ping", "retrieval", "val_google").read_text())
    assert "step" in periodic
    record = json.loads(result_path(out / "clip-ping", "retrieval", "test_google").read_text())
    assert "step" not in record
    for key, value in record["metric_names"].items():
        assert summary["runs"]["clip-ping"][key] == value

    # A second call trains nothing and evaluates nothing again, also where a result file
    # still has the demo's earlier name (task-dataset.json): it is renamed, not redone.
    checkpoint = out / "clip-ping" / "checkpoints" / "latest.pt"
    stamp = checkpoint.stat().st_mtime_ns
    (results / "zeroshot_subgroups.json").rename(results / "zeroshot-subgroups.json")
    written = {p.name: p.stat().st_mtime_ns for p in results.iterdir()}
    written["zeroshot_subgroups.json"] = written.pop("zeroshot-subgroups.json")
    again = run_demo(out, size=TINY)
    assert again["runs"] == summary["runs"]
    assert checkpoint.stat().st_mtime_ns == stamp
    assert summary["reused_runs"] == [] and sorted(again["reused_runs"]) == ["clip", "clip-ping"]
    assert {p.name: p.stat().st_mtime_ns for p in results.iterdir()} == written

    # A run that fails in its worker process is reported with where its output went.
    data = DemoData(out / "data" / "corpus", out / "banks")
    too_big = dataclasses.replace(TINY, batch_size=100_000)  # not one batch in the data
    plan = [("clip", 0, "too-big"), ("clip", 1, "too-big-2")]
    with pytest.raises(
        RuntimeError, match=r"run too-big(-2)? failed \(--batch-size 100000.*console"
    ):
        run_variants(data, too_big, plan, out)
    logs = [(out / name / "console.log").read_text() for _, _, name in plan]
    assert any("--batch-size 100000" in log for log in logs)

    # A corpus built anew (here: other options) makes new image files, so the banks of the
    # old one are rebuilt rather than refused as stale.
    smaller = dataclasses.replace(TINY, max_clipart=TINY.max_clipart - 10)
    data = prepare_data(out, smaller)
    assert data.train_rows() < len(captions)
    for modality in ("image", "text"):
        bank = Bank(data.bank(modality))
        assert len(bank) == data.train_rows() and bank.neighbors()[0].shape[0] == len(bank)
        bank.check_dataset(DataSpec(str(data.train)))
    # The same corpus from an older clip-ping (another format version) is built anew: its
    # image files are new, so the image banks are rebuilt; the text banks (the same paths and
    # captions) still match and are kept.
    meta = json.loads((data.corpus / "corpus.json").read_text())
    (data.corpus / "corpus.json").write_text(json.dumps({**meta, "format_version": 3}))
    stamps = {m: (data.bank(m) / "meta.json").stat().st_mtime_ns for m in ("image", "text")}
    data = prepare_data(out, smaller)
    assert (data.bank("text") / "meta.json").stat().st_mtime_ns == stamps["text"]
    assert (data.bank("image") / "meta.json").stat().st_mtime_ns != stamps["image"]
    Bank(data.bank("image")).check_dataset(DataSpec(str(data.train)))


def test_demo_command_is_the_demo_only():
    parser = build_parser()
    args = parser.parse_args(["demo", "--quick", "--out", "x", "--jobs", "1"])
    assert (args.quick, args.out, args.jobs, args.assets) == (True, "x", 1, None)
    for flags in (
        ["--seeds", "3"],
        ["--sweep", "recipe"],
        ["--sweep-seeds", "1"],
        ["--results", "r"],
    ):
        with pytest.raises(SystemExit) as refused:  # results flags: `clip-ping results`
            parser.parse_args(["demo", *flags])
        assert refused.value.code == 2
