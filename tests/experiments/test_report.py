"""Run comparison: final metrics from a run's logs and eval results, table and figures."""

import json
import os

import pytest

from clip_ping.evaluation.run import result_records
from clip_ping.experiments import report


def fake_run(path, records, results=None):
    """A run folder as training and `clip-ping eval --out` leave it."""
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for name, metrics in (results or {}).items():
        (path / "results").mkdir(exist_ok=True)
        (path / "results" / f"{name}.json").write_text(json.dumps({"metric_names": metrics}))
    return path


def test_final_metrics_take_the_last_logged_value_then_the_eval_results(tmp_path):
    run = fake_run(
        tmp_path / "a",
        [
            {"step": 10, "train/clip_loss": 3.0, "retrieval/val/image_to_text_R@1": 0.1},
            {"step": 20, "train/clip_loss": 2.0, "retrieval/val/image_to_text_R@1": 0.2},
            {"step": 20, "zeroshot/val/acc1": 0.3},
        ],
        {"zs": {"zeroshot/val/acc1": 0.35, "linear_probe/digits/lp_acc1": 0.9}},
    )
    assert report.final_metrics(run) == {
        "retrieval/val/image_to_text_R@1": 0.2,
        "zeroshot/val/acc1": 0.35,  # the result file overrides the log
        "linear_probe/digits/lp_acc1": 0.9,
    }


def test_table_rows_and_difference_column():
    table = report.metrics_table(
        {"clip": {"zeroshot/x/acc1": 0.25}, "clip-ping": {"zeroshot/x/acc1": 0.5}},
        ["zeroshot/x/acc1"],
    )
    assert "| zeroshot/x/acc1 | 0.250 | 0.500 | +0.250 |" in table
    assert report.headline(["a/b/acc1", "a/b/mean_per_class_recall", "r/c/image_to_text_R@10"]) == [
        "a/b/acc1"
    ]


def test_report_command_writes_markdown_and_figures(tmp_path):
    runs = []
    for name, acc in (("clip", 0.2), ("clip-ping", 0.4)):
        records = [{"step": s, "train/clip_loss": 4.0 - s / 10} for s in range(0, 30, 10)]
        records += [{"step": 30, "zeroshot/val/acc1": acc}]
        runs.append(str(fake_run(tmp_path / name, records)))
    out = report.main(runs, str(tmp_path / "report"))
    text = out.read_text()
    assert "| zeroshot/val/acc1 | 0.200 | 0.400 | +0.200 |" in text
    for png in ("metrics.png", "curves.png"):
        assert (tmp_path / "report" / "figures" / png).read_bytes()[:4] == b"\x89PNG"


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        report.main([str(tmp_path)], str(tmp_path / "out"))
    fake_run(tmp_path / "empty", [{"step": 1, "train/clip_loss": 1.0}])
    with pytest.raises(ValueError, match="has no evaluation results"):
        report.main([str(tmp_path / "empty")], str(tmp_path / "out"))


def test_the_record_measured_last_wins_whatever_the_file_times(tmp_path):
    key = "retrieval/val/image_to_text_R@1"
    run = fake_run(tmp_path / "run", [{"step": 30, key: 0.1}])
    (run / "results").mkdir()
    written = {  # file name → (record, mtime): the newest file is the earliest measurement
        "retrieval_val.json": ({"step": 20, "metric_names": {key: 0.2}}, 4),
        "a_periodic.json": ({"step": 30, "metric_names": {key: 0.3}}, 3),
        "retrieval-val.json": ({"metric_names": {key: 0.4}}, 2),  # after training
        "z_final.json": ({"metric_names": {key: 0.5}}, 1),  # after training, name sorts last
    }
    for name, (record, mtime) in written.items():
        (run / "results" / name).write_text(json.dumps(record))
        os.utime(run / "results" / name, ns=(mtime, mtime))
    assert [r["metric_names"][key] for r in result_records(run)] == [0.2, 0.3, 0.4, 0.5]
    assert report.final_metrics(run)[key] == 0.5
    (run / "results" / "z_final.json").unlink()
    assert report.final_metrics(run)[key] == 0.4
    (run / "results" / "retrieval-val.json").unlink()
    assert report.final_metrics(run)[key] == 0.3  # step 30 beats step 20
