"""Loader workers: capped at what the machine can run, and never outliving their parent."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clip_ping.workers import check_workers, loader_workers, max_workers

ORPHANS = """
import os, signal, sys, time
from torch.utils.data import DataLoader, Dataset
from clip_ping.workers import loader_workers

class Busy(Dataset):  # a worker stays inside __getitem__, away from PyTorch's parent check
    def __len__(self):
        return 4

    def __getitem__(self, i):
        open(os.path.join(sys.argv[1], str(os.getpid())), "w").close()
        time.sleep(300)
        return i

batches = iter(DataLoader(Busy(), batch_size=1, **loader_workers(2)))
while len(os.listdir(sys.argv[1])) < 2:
    time.sleep(0.05)
os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_loader_workers_die_with_their_killed_parent(tmp_path):
    script = tmp_path / "orphans.py"
    script.write_text(ORPHANS)
    (tmp_path / "pids").mkdir()
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "pids")], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    pids = [int(name) for name in os.listdir(tmp_path / "pids")]
    assert len(pids) == 2
    try:
        # The kernel kills them as the parent exits; without that they sleep 300 s as orphans.
        deadline = time.monotonic() + 60
        while any(map(_alive, pids)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_alive, pids)), "loader workers outlived their parent"
    finally:
        for pid in filter(_alive, pids):
            os.kill(pid, signal.SIGKILL)


def test_worker_count_above_the_machine_cap_is_refused_naming_flag_value_and_maximum():
    cap, reason = max_workers()
    assert cap >= 2 and "per usable CPU core" in reason
    assert check_workers(cap) == cap
    with pytest.raises(ValueError, match=rf"--workers 100,000 .* at most {cap} \("):
        check_workers(100_000)
    with pytest.raises(ValueError, match="--workers -1: must be a whole number, 0 or more"):
        loader_workers(-1)
    with pytest.raises(ValueError, match=f"--eval-workers {cap + 1:,} .*at most {cap}"):
        loader_workers(cap + 1, flag="--eval-workers")
    assert loader_workers(0) == {"num_workers": 0}


def test_torchrun_processes_share_the_cap(monkeypatch):
    alone, _ = max_workers()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")
    shared, reason = max_workers()
    assert shared <= max(2, alone // 64 + 1) and "shared by 64 processes" in reason
