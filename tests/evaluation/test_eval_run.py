"""End to end: a tiny shapes model trained once, evaluated by every task and every loader."""

import json
from pathlib import Path

import pytest

from clip_ping.cli import main
from clip_ping.evaluation.run import result_path, run_eval
from clip_ping.training.config import build_config
from clip_ping.training.train import train

EPOCHS = 4
NUM_SHAPE_CLASSES = 30


@pytest.fixture(scope="module")
def run_dir(shapes_corpus, tmp_path_factory):
    cfg = build_config(
        overrides=dict(
            train_data=str(shapes_corpus / "train.csv"),
            val_data=str(shapes_corpus / "val.csv"),
            zeroshot_data="digits",
            val_frequency=2,
            model="cpu-micro-32",
            batch_size=64,
            epochs=EPOCHS,
            lr=2e-3,
            warmup=10,
            workers=0,
            seed=0,
            progress=False,
            logs=str(tmp_path_factory.mktemp("eval-logs")),
            name="shapes",
            save_every_steps=0,
        )
    )
    return train(cfg)


def test_periodic_eval_logs_retrieval_on_val_and_zero_shot_on_digits(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "retrieval/val/image_to_text_R@1" in r]
    assert [r["epoch"] for r in evals] == [2, 4]  # --val-frequency 2
    last = evals[-1]
    assert {"zeroshot/digits/acc1", "zeroshot/digits/mean_per_class_recall"} <= set(last)
    assert "zeroshot/val/acc1" not in last  # --zeroshot-data replaces val's labels
    for task, dataset in (("retrieval", "val"), ("zeroshot", "digits")):
        saved = json.loads((run_dir / "results" / f"{task}_{dataset}.json").read_text())
        assert {"dataset", "model", "task", "metrics"} <= set(saved)
        for name, value in saved["metric_names"].items():
            assert last[name] == value


def test_result_path_names_one_file_per_task_and_dataset(run_dir):
    assert result_path("logs/a", "retrieval", "val_concepts") == Path(
        "logs/a/results/retrieval_val_concepts.json"
    )
    assert result_path(Path("r"), "zeroshot", "concepts").name == "zeroshot_concepts.json"
    assert result_path("r", "linear-probe", "digits").name == "linear_probe_digits.json"
    with pytest.raises(ValueError, match="'linear_probe'.*zeroshot, retrieval, linear-probe"):
        result_path("r", "linear_probe", "digits")  # the CLI task name, not the prefix
    # Training's periodic evaluations are written where result_path says.
    for task, dataset in (("retrieval", "val"), ("zeroshot", "digits")):
        assert json.loads(result_path(run_dir, task, dataset).read_text())["dataset"] == dataset


def test_trained_model_beats_chance_on_every_task(run_dir, shapes_corpus):
    val = str(shapes_corpus / "val.csv")
    chance = 1 / NUM_SHAPE_CLASSES
    zs = run_eval(run_dir, "zeroshot", val)["metrics"]
    assert zs["acc1"] > 3 * chance and zs["mean_per_class_recall"] > 3 * chance, zs
    # 300 val images with one caption each: R@10 by chance is 10 / 300.
    rt = run_eval(run_dir, "retrieval", val)["metrics"]
    assert rt["image_to_text_R@10"] > 5 * 10 / 300 and rt["text_to_image_R@10"] > 5 * 10 / 300, rt
    lp = run_eval(run_dir, "linear-probe", val, train_dataset=str(shapes_corpus / "train.csv"))
    assert lp["metrics"]["lp_acc1"] > 5 * chance, lp
    assert lp["weight_decay"] in lp["weight_decays"] and lp["train_size"] == 1536


def test_hf_export_checkpoint_and_run_dir_give_the_same_numbers(run_dir, shapes_corpus):
    # load(run_dir) opens hf/ when it exists, so the checkpoint is the independent path.
    val = str(shapes_corpus / "val.csv")
    for task in ("zeroshot", "retrieval"):
        results = [
            run_eval(path, task, val)["metrics"]
            for path in (run_dir, run_dir / "hf", run_dir / "checkpoints" / "latest.pt")
        ]
        assert results[0] == results[1] == results[2], (task, results)


def test_cli_linear_probe_on_digits_equal_for_hf_and_checkpoint_and_cached(
    run_dir, tmp_path, capsys, monkeypatch
):
    out, cache = tmp_path / "lp.json", tmp_path / "features.pt"
    argv = [
        "eval",
        "--model",
        str(run_dir / "hf"),
        "--task",
        "linear-probe",
        "--dataset",
        "digits",
        "--out",
        str(out),
        "--feature-cache",
        str(cache),
        "--wd",
        "1e-4",
        "1e-2",
    ]
    assert main(argv) == 0
    assert "linear_probe/digits/lp_acc1" in capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["dataset"] == "digits" and record["task"] == "linear_probe"
    assert record["train_size"] == 1437 and record["num_images"] == 360
    assert record["metrics"]["lp_acc1"] > 3 * 0.1  # ten balanced digit classes: chance 0.1
    assert record["metric_names"]["linear_probe/digits/lp_acc1"] == record["metrics"]["lp_acc1"]
    assert record["weight_decay"] in (1e-4, 1e-2)

    checkpoint = run_eval(
        run_dir / "checkpoints" / "latest.pt", "linear-probe", "digits", weight_decays=(1e-4, 1e-2)
    )
    assert checkpoint["metrics"] == record["metrics"]

    def no_encoding(*args, **kwargs):
        raise AssertionError("features should come from the cache")

    monkeypatch.setattr("clip_ping.evaluation.run.encode_images", no_encoding)
    argv[argv.index("--out") + 1] = str(tmp_path / "again.json")
    assert main(argv) == 0
    assert json.loads((tmp_path / "again.json").read_text())["metrics"] == record["metrics"]


def test_cli_errors_are_actionable(run_dir, shapes_corpus, capsys):
    common = ["eval", "--model", str(run_dir)]
    val = str(shapes_corpus / "val.csv")
    assert main([*common, "--task", "linear-probe", "--dataset", val]) == 2
    assert "needs --train-dataset" in capsys.readouterr().err
    assert main([*common, "--task", "zeroshot", "--dataset", "cifar10"]) == 2
    assert "digits, mnist5k" in capsys.readouterr().err
    assert main([*common, "--task", "zeroshot", "--dataset", val, "--classnames", "x.txt"]) == 2
    assert "--classnames x.txt: no such file" in capsys.readouterr().err
