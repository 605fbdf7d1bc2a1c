"""Resume: changed settings are refused by name, safe ones recorded; an unreadable checkpoint
stops the run and is never overwritten, a damaged one is kept aside; checkpoints that do
not fit give one line; a torn metrics line; outputs readable as the umask says."""

import json
import os
import stat
import subprocess
import sys

import pytest
import torch
import yaml

import clip_ping
from clip_ping.models import load_checkpoint_file
from clip_ping.training.checkpoint import settings_changes
from clip_ping.training.config import build_config
from clip_ping.training.run_folder import run_settings
from clip_ping.training.train import train
from short_runs import ENV, FLAGS, build_corpus
from unprivileged import bound_by_permissions


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory, "resume_shapes", seed=6)


def config(corpus, logs, **overrides):
    values = dict(FLAGS, train_data=str(corpus / "train.csv"), logs=str(logs), progress=False)
    return build_config(overrides={**values, **overrides})


def cli(corpus, logs, name, **flags):
    cmd = [
        sys.executable,
        "-m",
        "clip_ping.cli",
        "train",
        "--train-data",
        str(corpus / "train.csv"),
        "--logs",
        str(logs),
        "--name",
        name,
        "--no-progress",
    ]
    return cmd + [f"--{k.replace('_', '-')}={v}" for k, v in {**FLAGS, **flags}.items()]


def test_resume_refuses_changed_settings_by_name_and_records_safe_changes(corpus, tmp_path):
    run_dir = train(config(corpus, tmp_path, name="r", stop_after_steps=5))
    first = (run_dir / "config.yaml").read_text()
    resume = dict(name="r", resume="latest")
    with pytest.raises(ValueError, match="--batch-size was 32, now 16; a resumed run must keep"):
        train(config(corpus, tmp_path, **resume, batch_size=16))
    other_csv = tmp_path / "other.csv"
    other_csv.write_text((corpus / "train.csv").read_text())
    with pytest.raises(ValueError) as refused:
        train(config(corpus, tmp_path, **resume, lr=1e-3, train_data=str(other_csv)))
    assert "--lr was 0.002, now 0.001" in str(refused.value)
    assert f"--train-data was {corpus / 'train.csv'}, now {other_csv}" in str(refused.value)
    with pytest.raises(ValueError, match=r"--epochs was 2, now 1 \(it may grow, not shrink\)"):
        train(config(corpus, tmp_path, **resume, epochs=1))
    # another loss (its banks are never opened) or neighbour target: this message, no KeyError
    banks = dict(image_bank=str(tmp_path / "no-bank"), text_bank=str(tmp_path / "no-bank"))
    with pytest.raises(ValueError, match="--loss was clip, now clip-ping; --image-bank was not"):
        train(config(corpus, tmp_path, **resume, loss="clip-ping", **banks))
    with pytest.raises(ValueError, match="--neighbor-target was bank, now memory"):
        train(config(corpus, tmp_path, **resume, neighbor_target="memory"))
    assert (run_dir / "config.yaml").read_text() == first
    assert load_checkpoint_file(run_dir / "checkpoints" / "latest.pt")["step"] == 5

    # safe changes: more workers, more epochs, another logging interval
    train(config(corpus, tmp_path, **resume, workers=1, epochs=3, log_every_steps=2))
    assert (run_dir / "config.yaml").read_text() == first  # the first part's record stays
    (record,) = [json.loads(line) for line in (run_dir / "resumes.jsonl").read_text().splitlines()]
    assert record["step"] == 5 and record["from"] == str(run_dir / "checkpoints" / "latest.pt")
    assert record["changed"] == {
        "workers": {"was": 0, "now": 1},
        "epochs": {"was": 2, "now": 3},
        "log_every_steps": {"was": 1, "now": 2},
        "stop_after_steps": {"was": 5, "now": None},
    }
    assert run_settings(run_dir)["epochs"] == 3
    assert load_checkpoint_file(run_dir / "checkpoints" / "latest.pt")["step"] == 24
    assert "| epochs | `3` |" in (run_dir / "hf" / "README.md").read_text()


def test_workers_may_change_on_resume_with_a_csv_but_not_with_shards():
    for data, refused in (
        ("train.csv", []),
        (
            "shards/{00000..00003}.tar",
            ["--workers was 2, now 4 (with WebDataset shards it decides the order of the samples)"],
        ),
    ):
        cfg = build_config(overrides=dict(train_data=data, workers=4))
        changes, refusals = settings_changes({**cfg.to_dict(), "workers": 2}, cfg)
        assert refusals == refused
        assert changes == ({} if refused else {"workers": {"was": 2, "now": 4}})


def test_a_path_spelled_another_way_is_the_same_setting(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    for name in ("train.csv", "copy.csv"):
        (tmp_path / "data" / name).write_text("filepath,title\n")
    monkeypatch.chdir(tmp_path)
    cfg = build_config(overrides=dict(train_data=str(tmp_path / "data" / "train.csv")))
    for spelling in ("data/train.csv", "./data/../data/train.csv"):
        assert settings_changes({**cfg.to_dict(), "train_data": spelling}, cfg) == ({}, [])
    _, refused = settings_changes({**cfg.to_dict(), "train_data": "data/copy.csv"}, cfg)
    assert refused == [f"--train-data was data/copy.csv, now {tmp_path}/data/train.csv"]
    _, refused = settings_changes({**cfg.to_dict(), "train_data": "gone/train.csv"}, cfg)
    assert len(refused) == 1  # a path that no longer exists is compared as written


def test_resume_refuses_a_changed_neighbour_target_of_a_clip_ping_run(
    small_corpus, shapes_banks, tmp_path
):
    ping = dict(
        FLAGS,
        train_data=str(small_corpus / "train.csv"),
        logs=str(tmp_path),
        name="p",
        progress=False,
        loss="clip-ping",
        image_bank=str(shapes_banks / "image"),
        text_bank=str(shapes_banks / "text"),
        neighbor_k=3,
    )
    train(build_config(overrides=dict(ping, stop_after_steps=3)))
    for change, message in (
        (dict(neighbor_target="memory"), "--neighbor-target was bank, now memory"),
        (dict(loss="clip"), "--loss was clip-ping, now clip"),
    ):
        with pytest.raises(ValueError, match=message + ".*a resumed run must keep"):
            train(build_config(overrides=dict(ping, resume="latest", **change)))


def test_an_unreadable_latest_stops_the_resume_and_is_never_overwritten(corpus, tmp_path):
    """latest.pt that cannot be read (permission denied) is not damaged: no fallback to
    epoch_1.pt, the error names the file and the cause, and nothing is written."""
    run_dir = train(config(corpus, tmp_path, name="u", stop_after_steps=10))
    checkpoints = run_dir / "checkpoints"
    before = {p.name: p.read_bytes() for p in checkpoints.iterdir()}
    assert sorted(before) == ["epoch_1.pt", "latest.pt"]
    (checkpoints / "latest.pt").chmod(0o000)
    try:
        done = subprocess.run(
            cli(corpus, tmp_path, "u", resume="latest"),
            env=ENV,
            capture_output=True,
            text=True,
            **bound_by_permissions(),
        )
        load = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, clip_ping; clip_ping.load(sys.argv[1])",
                str(checkpoints / "latest.pt"),
            ],
            env=ENV,
            capture_output=True,
            text=True,
            **bound_by_permissions(),
        )
    finally:
        (checkpoints / "latest.pt").chmod(0o644)
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"could not read checkpoint {checkpoints / 'latest.pt'} (Permission denied)" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr
    assert {p.name: p.read_bytes() for p in checkpoints.iterdir()} == before
    assert "PermissionError: could not read checkpoint" in load.stderr
    assert "Only" not in load.stderr and "not written by clip-ping" not in load.stderr


def test_a_damaged_latest_is_kept_aside_and_the_run_resumes_from_the_epoch_checkpoint(
    corpus, tmp_path
):
    run_dir = train(config(corpus, tmp_path, name="d", stop_after_steps=10))
    latest = run_dir / "checkpoints" / "latest.pt"
    cut = latest.read_bytes()[:100_000]
    latest.write_bytes(cut)  # cut short, as a failing disk or a bad copy leaves it
    train(config(corpus, tmp_path, name="d", resume="latest", stop_after_steps=12))
    assert (run_dir / "checkpoints" / "latest.pt.damaged").read_bytes() == cut
    assert "cut short or altered" in (run_dir / "out.log").read_text()
    assert load_checkpoint_file(latest)["step"] == 12
    (record,) = (run_dir / "resumes.jsonl").read_text().splitlines()
    assert json.loads(record)["from"].endswith("epoch_1.pt")


def test_resuming_an_older_checkpoint_never_overwrites_a_newer_one(corpus, tmp_path):
    run_dir = train(config(corpus, tmp_path, name="n", stop_after_steps=12))
    latest = run_dir / "checkpoints" / "latest.pt"
    before = latest.read_bytes()
    older = run_dir / "checkpoints" / "epoch_1.pt"
    with pytest.raises(ValueError, match="latest.pt \\(step 12\\) in the run folder is later"):
        train(config(corpus, tmp_path, name="n", resume=str(older)))
    assert latest.read_bytes() == before
    # into a new folder it continues (the config.yaml of that folder is this resume's)
    fork = train(config(corpus, tmp_path, name="fork", resume=str(older), stop_after_steps=9))
    assert load_checkpoint_file(fork / "checkpoints" / "latest.pt")["step"] == 9


def altered(state, how):
    """A checkpoint dict (or not a dict) altered as ``how`` says."""
    task = dict(state["task"])
    if how == "wrong shape":
        task["model.clip.logit_scale"] = torch.zeros(3)
    elif how == "missing tensor":
        del task["model.clip.text_projection.weight"]
    elif how == "task is a list":
        return {**state, "task": [1, 2]}
    elif how == "list":
        return [1, 2, 3]
    elif how == "dict of other keys":
        return {"weights": torch.zeros(2)}
    elif how == "no optimizer":
        return {k: v for k, v in state.items() if k != "optimizer"}
    return {**state, "task": task}


@pytest.mark.parametrize(
    "how, resume_says, load_says",
    [
        (
            "wrong shape",
            "tensors 1 of another shape (model.clip.logit_scale (3,) instead of scalar)",
            "tensors 1 of another shape (clip.logit_scale (3,) instead of scalar)",
        ),
        (
            "missing tensor",
            "tensors 1 missing (model.clip.text_projection.weight)",
            "tensors 1 missing (clip.text_projection.weight)",
        ),
        ("task is a list", "lacks task", "holds no student"),
        ("list", "holds a list, not the dict", "holds a list, not the dict"),
        ("dict of other keys", "written by another clip-ping version", "holds no student"),
        ("no optimizer", "lacks optimizer", None),  # its student still loads
    ],
)
def test_a_checkpoint_that_does_not_fit_is_one_line_naming_it(
    corpus, tmp_path, how, resume_says, load_says
):
    source = train(config(corpus, tmp_path, name="src", stop_after_steps=3))
    bad = tmp_path / "bad.pt"
    torch.save(altered(load_checkpoint_file(source / "checkpoints" / "latest.pt"), how), bad)
    with pytest.raises(ValueError) as resumed:
        train(config(corpus, tmp_path, name="to", resume=str(bad)))
    assert resume_says in str(resumed.value)
    errors = [resumed.value]
    if load_says:
        with pytest.raises(ValueError) as loaded:
            clip_ping.load(bad)
        assert load_says in str(loaded.value)
        errors.append(loaded.value)
    for error in errors:
        assert str(bad) in str(error) and "\n" not in str(error)


def test_a_torn_last_metrics_line_is_dropped_on_resume(corpus, tmp_path):
    run_dir = train(config(corpus, tmp_path, name="t", stop_after_steps=3))
    metrics = run_dir / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 4, "epoch": 0, "train/lo')  # a writer killed mid-line
    train(config(corpus, tmp_path, name="t", resume="latest", stop_after_steps=6))
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert f"{metrics}: dropped its last line, cut short" in (run_dir / "out.log").read_text()
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "not json", *lines[1:]]) + "\n")  # not a kill's
    with pytest.raises(ValueError, match=f"{metrics} line 2 is not a JSON object"):
        train(config(corpus, tmp_path, name="t", resume="latest"))


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_a_run_s_outputs_get_the_permissions_of_a_plain_open(corpus, tmp_path, umask_022):
    run_dir = train(config(corpus, tmp_path, name="m", epochs=1))
    mode = lambda part: stat.S_IMODE((run_dir / part).stat().st_mode)  # noqa: E731
    for part in (
        "config.yaml",
        "metrics.jsonl",
        "checkpoints/latest.pt",
        "checkpoints/epoch_1.pt",
        "hf/model.safetensors",
        "hf/config.json",
        "hf/README.md",
    ):
        assert mode(part) == 0o644, part
    for part in (".", "checkpoints", "hf"):
        assert mode(part) == 0o755, part
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["name"] == "m"


def test_resume_on_a_training_csv_changed_at_the_same_path_is_refused(corpus, tmp_path):
    data = tmp_path / "pairs.csv"  # the corpus's images, listed from beside them
    lines = (corpus / "train.csv").read_text().splitlines()
    data.write_text("\n".join(lines) + "\n")
    (tmp_path / "images").symlink_to(corpus / "images")
    run_dir = train(config(corpus, tmp_path, name="d", stop_after_steps=3, train_data=str(data)))
    resume = dict(name="d", resume="latest", train_data=str(data))
    cases = (
        (lines[:129], "it held 256 samples then and holds 128 now"),  # once: 6 steps, not 12
        (lines[:17], "it held 256 samples then and holds 16 now"),  # once: "--batch-size or ranks"
        (
            [lines[0], *lines[1:][::-1]],
            "it holds 256 samples as then, but their paths or captions changed",
        ),
    )
    for kept, how in cases:
        data.write_text("\n".join(kept) + "\n")
        with pytest.raises(ValueError) as refused:
            train(config(corpus, tmp_path, **resume))
        assert str(refused.value) == (
            f"--resume latest ({run_dir / 'checkpoints' / 'latest.pt'}) would continue on other "
            f"data: --train-data {data} changed since the run started ({how}). Resume with the "
            "data it started with, or start a new run with another --name"
        )
    data.write_text("\n".join(lines) + "\n")  # the data it started with: it resumes
    train(config(corpus, tmp_path, **resume, stop_after_steps=5))
    assert load_checkpoint_file(run_dir / "checkpoints" / "latest.pt")["step"] == 5


def test_a_default_spelled_out_is_no_change_on_resume(corpus, tmp_path):
    from clip_ping.tokenizer import DEFAULT_TOKENIZER

    assert DEFAULT_TOKENIZER == "minilm"
    implied, spelled = config(corpus, tmp_path), config(corpus, tmp_path, tokenizer="minilm")
    assert implied.to_dict()["tokenizer"] is None  # was refused: "--tokenizer was None, now ..."
    assert settings_changes(implied.to_dict(), spelled) == ({}, [])
    assert settings_changes(spelled.to_dict(), implied) == ({}, [])
