"""Two gloo processes under torchrun equal one process on the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("distributed_worker.py")


def run(cmd, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        cmd, check=True, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
    )


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ddp")
    run([sys.executable, str(WORKER), str(tmp_path / "single.pt")], tmp_path)
    run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", "29533", str(WORKER), str(tmp_path / "ddp.pt")],
        tmp_path,
    )  # fmt: skip
    load = lambda name: torch.load(tmp_path / name, weights_only=True)  # noqa: E731
    return load("single.pt"), load("ddp.pt")


@pytest.mark.parametrize(
    "case", ["clip", "clip-local", "bank", "bank-local", "memory", "memory-local"]
)
def test_two_processes_give_the_loss_and_gradients_of_one(results, case):
    single, ddp = results[0][case], results[1][case]
    assert single["terms"].keys() == ddp["terms"].keys()
    for name, value in single["terms"].items():
        torch.testing.assert_close(ddp["terms"][name], value, atol=1e-5, rtol=1e-4, msg=name)
    assert single["grads"].keys() == ddp["grads"].keys()
    assert any(k.startswith("neighbor_loss.heads") for k in single["grads"]) == case.startswith(
        "bank"
    )
    for name, grad in single["grads"].items():
        torch.testing.assert_close(ddp["grads"][name], grad, atol=1e-5, rtol=1e-4, msg=name)
    for name, value in single["memory"].items():
        assert torch.equal(ddp["memory"][name], value), name
