"""One writer per run folder: concurrent trainings on one name, stale and foreign locks,
SIGTERM, torchrun, unnamed runs started together, names outside --logs, a read-only
checkpoints/ folder. Real trainings in real processes; each waits on a state of the other
process (its lock taken, its log open), never on a clock."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime

import pytest

from clip_ping.training.config import build_config
from clip_ping.training.run_folder import LOCK_FILE, RunFolderInUse, _new_folder, _process_start
from clip_ping.training.train import train
from short_runs import ENV, FLAGS, build_corpus
from unprivileged import bound_by_permissions


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory, "lock_shapes", seed=5)


def command(corpus, logs, *extra, name="same", **flags):
    cmd = [
        sys.executable,
        "-m",
        "clip_ping.cli",
        "train",
        "--train-data",
        str(corpus / "train.csv"),
        "--logs-dir",
        str(logs),
        "--no-progress",
    ]
    cmd += ["--name", name] if name else []
    cmd += [f"--{k.replace('_', '-')}={v}" for k, v in {**FLAGS, **flags}.items()]
    return cmd + list(extra)


def config(corpus, logs, **overrides):
    values = dict(FLAGS, train_data=str(corpus / "train.csv"), logs=str(logs), progress=False)
    return build_config(overrides={**values, **overrides})


def wait_for(condition, process, what, deadline_s=300):
    """Poll ``condition()`` until it holds; fail if ``process`` ends first."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {deadline_s} s")
        time.sleep(0.01)


def log_has(run_dir, text, count=1):
    path = run_dir / "out.log"
    return path.exists() and path.read_text().count(text) >= count


def steps_logged(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if "train/loss" in line]


def test_two_trainings_on_one_name_one_runs_and_the_other_refuses_at_once(corpus, tmp_path):
    """Two runs started on one --name: the second refuses at once, naming the folder and
    the first run's pid; the first runs to the end untouched. Then the same for two
    ``--resume latest`` (a requeued job started twice)."""
    run_dir = tmp_path / "same"
    first = subprocess.Popen(command(corpus, tmp_path, lr=2e-3), env=ENV, stderr=subprocess.DEVNULL)
    try:
        # out.log opens once the folder is claimed; stopping the first run there holds its
        # lock for as long as the second one needs, however slow the machine
        wait_for(lambda: log_has(run_dir, "model cpu-micro-32"), first, "the run log")
        first.send_signal(signal.SIGSTOP)
        second = subprocess.run(
            command(corpus, tmp_path, lr=1e-3), env=ENV, capture_output=True, text=True, timeout=300
        )
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=600) == 0
    finally:
        first.kill()
    assert second.returncode != 0
    message = second.stderr.strip().splitlines()[-1]
    assert f"run folder {run_dir} is in use by another run: pid {first.pid}" in message
    assert "Traceback" not in second.stderr
    assert build_config(str(run_dir / "config.yaml")).lr == 2e-3  # the first run's settings
    assert steps_logged(run_dir) == list(range(1, 17))  # each step once, by one writer
    assert not (run_dir / LOCK_FILE).exists()

    more = ("--resume", "latest")
    first = subprocess.Popen(
        command(corpus, tmp_path, *more, epochs=3), env=ENV, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: log_has(run_dir, "resumed from"), first, "the resume")
        first.send_signal(signal.SIGSTOP)
        second = subprocess.run(
            command(corpus, tmp_path, *more, epochs=3),
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=600) == 0
    finally:
        first.kill()
    assert second.returncode != 0
    assert f"is in use by another run: pid {first.pid}" in second.stderr
    assert steps_logged(run_dir) == list(range(1, 25))
    resumes = (run_dir / "resumes.jsonl").read_text().splitlines()
    assert len(resumes) == 1 and json.loads(resumes[0])["pid"] == first.pid


def write_lock(run_dir, pid, host=None, process_start=None):
    run_dir.mkdir(parents=True, exist_ok=True)
    holder = {
        "pid": pid,
        "host": host or socket.gethostname(),
        "process_start": process_start,
        "since": "2026-11-30T10:00:00",
        "command": "clip-ping train",
    }
    (run_dir / LOCK_FILE).write_text(json.dumps(holder))


def test_a_stale_lock_is_replaced_with_a_message_and_a_live_or_foreign_one_refuses(
    corpus, tmp_path
):
    # a lock of a process that has ended (its pid may be reused: its start time tells)
    ended = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    started = _process_start(ended.pid)
    ended.kill()
    ended.wait()
    write_lock(tmp_path / "dead", ended.pid, process_start=started)
    run_dir = train(config(corpus, tmp_path, name="dead", stop_after_steps=1))
    assert log_has(run_dir, f"replaced the stale lock {run_dir / LOCK_FILE}: pid {ended.pid}")
    assert not (run_dir / LOCK_FILE).exists()

    # a live pid that now belongs to another process than the one that wrote the lock
    write_lock(tmp_path / "reused", os.getpid(), process_start=_process_start(os.getpid()) + 1)
    train(config(corpus, tmp_path, name="reused", stop_after_steps=1))

    # a live holder (this test process) and a holder on another host refuse at once
    write_lock(tmp_path / "live", os.getpid(), process_start=_process_start(os.getpid()))
    with pytest.raises(RunFolderInUse, match=f"pid {os.getpid()} on {socket.gethostname()}"):
        train(config(corpus, tmp_path, name="live"))
    write_lock(tmp_path / "far", 4242, host="elsewhere")
    with pytest.raises(RunFolderInUse, match=f"on elsewhere.*delete {tmp_path / 'far'}"):
        train(config(corpus, tmp_path, name="far"))
    assert (tmp_path / "far" / LOCK_FILE).exists()  # another host's lock is never removed
    write_lock(tmp_path / "odd", -1)  # not a pid: nothing to check, so nothing is removed
    with pytest.raises(RunFolderInUse, match="which is empty or damaged. If no run is writing"):
        train(config(corpus, tmp_path, name="odd"))
    assert not (tmp_path / "live" / "config.yaml").exists()


def test_sigterm_releases_the_lock(corpus, tmp_path):
    run_dir = tmp_path / "same"
    process = subprocess.Popen(command(corpus, tmp_path), env=ENV, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: log_has(run_dir, "model cpu-micro-32"), process, "the run log")
        assert (run_dir / LOCK_FILE).exists()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=300) == 128 + signal.SIGTERM
    finally:
        process.kill()
    assert not (run_dir / LOCK_FILE).exists()


def test_unnamed_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    now = datetime(2026, 11, 30, 14, 5, 9)
    folders = [_new_folder(tmp_path, now) for _ in range(3)]
    assert [f.name for f in folders] == [
        "2026_11_30-14_05_09",
        "2026_11_30-14_05_09-1",
        "2026_11_30-14_05_09-2",
    ]
    assert all(f.is_dir() for f in folders)


def test_under_torchrun_rank_0_holds_the_lock_and_the_other_ranks_follow(corpus, tmp_path):
    """An unnamed two-process run makes one folder (rank 0 names it); on a locked folder
    both ranks stop with the message instead of waiting for each other."""
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
    ]
    cli = command(corpus, tmp_path / "logs", name=None, batch_size=16, stop_after_steps=2)
    done = subprocess.run(
        [*torchrun, *cli[1:]], env=ENV, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (folder,) = (tmp_path / "logs").iterdir()
    assert (folder / "checkpoints" / "latest.pt").is_file()
    assert not (folder / LOCK_FILE).exists()

    write_lock(tmp_path / "logs" / "held", os.getpid(), process_start=_process_start(os.getpid()))
    cli = command(corpus, tmp_path / "logs", name="held", batch_size=16)
    refused = subprocess.run(
        [*torchrun, *cli[1:]], env=ENV, capture_output=True, text=True, timeout=600
    )
    assert refused.returncode != 0
    assert refused.stderr.count(f"is in use by another run: pid {os.getpid()}") == 2  # each rank


@pytest.mark.parametrize("name", ["../outside", "a/../../outside", "/tmp/outside", "."])
def test_a_name_outside_logs_is_refused(corpus, tmp_path, name):
    logs = tmp_path / "logs"
    with pytest.raises(ValueError, match="leads outside --logs"):
        train(config(corpus, logs, name=name))
    assert not (tmp_path / "outside").exists() and not logs.exists()


def test_the_error_that_ends_a_run_is_in_its_log_too(corpus, tmp_path):
    lines = (corpus / "train.csv").read_text().splitlines()
    lines[5] = "images/gone.png,a shape that is not there,0"  # a bad sample
    data = corpus / "gone.csv"
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as stopped:
        train(config(corpus, tmp_path, name="e", train_data=str(data), on_bad_sample="error"))
    assert "'images/gone.png' (row 4" in str(stopped.value)
    last = (tmp_path / "e" / "out.log").read_text().splitlines()[-1]
    assert last.endswith(f"| ERROR | {stopped.value}")


def test_a_blank_name_is_refused(corpus, tmp_path):
    logs = tmp_path / "logs"
    with pytest.raises(ValueError, match=r"--name '   ' is blank; name the run"):
        train(config(corpus, logs, name="   "))
    assert not logs.exists()  # no folder named by three spaces


def test_a_read_only_checkpoints_folder_fails_before_training(corpus, tmp_path):
    checkpoints = tmp_path / "ro" / "checkpoints"
    checkpoints.mkdir(parents=True)
    checkpoints.chmod(0o555)
    try:
        done = subprocess.run(
            command(corpus, tmp_path, name="ro"),
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
            **bound_by_permissions(),
        )
    finally:
        checkpoints.chmod(0o755)
    assert done.returncode == 1
    assert f"cannot write checkpoints into {checkpoints} (Permission denied)" in done.stderr
    assert "chmod u+w" in done.stderr and "space" not in done.stderr
    assert not (tmp_path / "ro" / "metrics.jsonl").exists()  # not a step was trained
    assert not (tmp_path / "ro" / LOCK_FILE).exists()
