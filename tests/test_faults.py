"""Faults: SIGKILL at random moments of training, a non-finite loss, a full disk, a crafted
checkpoint. Each run is a real training run; kills and the full disk hit real subprocesses."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from clip_ping.models import load_checkpoint_file
from clip_ping.training.config import build_config
from clip_ping.training.train import train

# 256 samples / 32 = 8 steps per epoch, 2 epochs, a checkpoint every 3 steps.
FLAGS = dict(
    model="cpu-micro-32",
    batch_size=32,
    epochs=2,
    lr=2e-3,
    warmup=2,
    workers=0,
    seed=0,
    save_every_steps=3,
    log_every_steps=1,
    val_frequency=0,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from clip_ping.data.shapes import build_shapes

    out = tmp_path_factory.mktemp("fault_shapes")
    build_shapes(out, num_train=256, num_val=8, image_size=32, seed=4)
    return out


def _command(corpus, logs, name, resume=False):
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
    cmd += [f"--{k.replace('_', '-')}={v}" for k, v in FLAGS.items()]
    return cmd + (["--resume", "latest"] if resume else [])


ENV = dict(os.environ, OMP_NUM_THREADS="1")  # the reference below runs with 1 thread too


def _reference(corpus, logs):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = build_config(
            overrides=dict(
                FLAGS,
                train_data=str(corpus / "train.csv"),
                logs=str(logs),
                name="whole",
                progress=False,
            )
        )
        return load_checkpoint_file(train(cfg) / "checkpoints" / "latest.pt")
    finally:
        torch.set_num_threads(threads)


def _kill_when(process, ready, deadline_s=600):
    """SIGKILL ``process`` once ``ready()`` holds; False if it ended first."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and process.poll() is None:
        if ready():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.001)
    return False


def _logged_steps(run_dir) -> int:
    """The newest training step in ``metrics.jsonl`` (a half-written last line is ignored)."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [0]
    for line in lines:
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError):
            pass
    return max(steps)


# Steps at which a run of FLAGS writes latest.pt: every 3 steps, each epoch's end (8), the end.
SAVED_STEPS = {3, 6, 8, 9, 12, 15, 16}
TOTAL_STEPS = 16


def test_sigkill_anywhere_then_resume_gives_the_uninterrupted_weights(corpus, tmp_path):
    """Kill once while latest.pt is being written, once at a random step of the resumed run
    (chosen by the run's progress, not by wall time: the test means the same on any
    machine), then resume to the end: the weights equal an uninterrupted run's."""
    run_dir = tmp_path / "killed"
    checkpoints = run_dir / "checkpoints"
    rng = random.Random(0)

    # 1. Kill while latest.pt is being written: its temporary file exists.
    process = subprocess.Popen(
        _command(corpus, tmp_path, "killed"), env=ENV, stderr=subprocess.DEVNULL
    )
    writing = lambda: any(p.name.startswith(".latest.pt") for p in checkpoints.glob(".*"))  # noqa: E731
    assert _kill_when(process, writing), "the run ended before any checkpoint write was seen"
    saved = 0
    if (checkpoints / "latest.pt").exists():
        saved = load_checkpoint_file(checkpoints / "latest.pt")["step"]
        assert saved in SAVED_STEPS

    # 2. Resume, and kill once the run has logged a random step past those already logged.
    target = rng.randint(max(saved, _logged_steps(run_dir)) + 1, TOTAL_STEPS - 1)
    process = subprocess.Popen(
        _command(corpus, tmp_path, "killed", resume=True), env=ENV, stderr=subprocess.DEVNULL
    )
    if not _kill_when(process, lambda: _logged_steps(run_dir) >= target):
        assert process.returncode == 0  # a slow poll may find the run already finished
    if (checkpoints / "latest.pt").exists():  # whatever the moment: a complete checkpoint
        assert load_checkpoint_file(checkpoints / "latest.pt")["step"] in SAVED_STEPS

    finished = subprocess.run(
        _command(corpus, tmp_path, "killed", resume=True), env=ENV, capture_output=True, text=True
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert not [p.name for p in checkpoints.glob(".*")]  # stale temporaries removed

    resumed = load_checkpoint_file(checkpoints / "latest.pt")
    whole = _reference(corpus, tmp_path)
    assert resumed["step"] == whole["step"] == TOTAL_STEPS
    for key, value in whole["task"].items():
        assert torch.equal(value, resumed["task"][key]), key


def test_nonfinite_loss_stops_keeping_the_last_good_checkpoint(corpus, tmp_path):
    # A learning rate of 1e30 makes the weights overflow after the first update.
    overrides = dict(
        FLAGS,
        train_data=str(corpus / "train.csv"),
        logs=str(tmp_path),
        progress=False,
        lr=1e30,
        save_every_steps=1,
    )
    with pytest.raises(FloatingPointError, match=r"at step 2; .* last good checkpoint .*step 1"):
        train(build_config(overrides=dict(overrides, name="stop")))
    kept = load_checkpoint_file(tmp_path / "stop" / "checkpoints" / "latest.pt")
    assert kept["step"] == 1
    assert all(torch.isfinite(v).all() for v in kept["task"].values())

    skip = dict(overrides, name="skip", skip_nonfinite=True, stop_after_steps=5)
    last = load_checkpoint_file(train(build_config(overrides=skip)) / "checkpoints" / "latest.pt")
    assert last["step"] == 5 and last["nonfinite_steps"] == 4
    assert all(torch.isfinite(v).all() for v in last["task"].values())


DISK_FULL = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))
from clip_ping.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_full_disk_while_saving_is_a_clear_error_and_keeps_the_previous_checkpoint(
    corpus, tmp_path
):
    cmd = _command(corpus, tmp_path, "Full")  # a capital: the message keeps the path's case
    overrides = dict(
        FLAGS,
        train_data=str(corpus / "train.csv"),
        logs=str(tmp_path),
        progress=False,
        name="Full",
        stop_after_steps=3,
    )
    train(build_config(overrides=overrides))
    checkpoints = tmp_path / "Full" / "checkpoints"
    before = (checkpoints / "latest.pt").read_bytes()
    # Resume where no file may grow past 4 MiB: the next checkpoint (~26 MB) cannot be written.
    full = subprocess.run(
        [sys.executable, "-c", DISK_FULL, *cmd[3:], "--resume", "latest"],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert full.returncode == 1, full.stderr[-2000:]
    assert "could not write the step-6 checkpoint" in full.stderr
    assert "previous checkpoint from step 3 is intact" in full.stderr
    assert "File too large); the previous" in full.stderr  # the cause, not torch's words
    assert f"Free space in {checkpoints}, then continue with --resume latest" in full.stderr
    assert "Traceback" not in full.stderr
    assert (checkpoints / "latest.pt").read_bytes() == before
    assert [p.name for p in checkpoints.iterdir()] == ["latest.pt"]  # no half-written file


def test_a_crafted_pickle_as_checkpoint_is_refused_not_run(corpus, tmp_path):
    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    overrides = dict(
        FLAGS,
        train_data=str(corpus / "train.csv"),
        logs=str(tmp_path),
        progress=False,
        name="evil",
        stop_after_steps=1,
    )
    train(build_config(overrides=overrides))
    latest = tmp_path / "evil" / "checkpoints" / "latest.pt"
    torch.save({"model": Payload(), "step": 1}, latest)
    resume = dict(overrides, resume="latest", stop_after_steps=None)
    with pytest.raises(ValueError, match="could not load checkpoint .*latest.pt"):
        train(build_config(overrides=resume))
    with pytest.raises(ValueError, match="could not load checkpoint"):
        train(build_config(overrides=dict(resume, name="other", resume=str(latest))))
    assert not (tmp_path / "pwned").exists()
