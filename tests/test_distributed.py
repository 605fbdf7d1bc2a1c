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


# A ViT and a ConvNeXt student. Towers with BatchNorm (MobileViT) normalise with each
# process's own batch statistics under DDP, so for them two processes cannot equal one.
@pytest.fixture(scope="module", params=["cpu-micro-32", "cpu-convnext-micro-32"])
def results(tmp_path_factory, request):
    tmp_path = tmp_path_factory.mktemp("ddp")
    model = request.param
    run([sys.executable, str(WORKER), str(tmp_path / "single.pt"), model], tmp_path)
    run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29533",
            str(WORKER),
            str(tmp_path / "ddp.pt"),
            model,
        ],
        tmp_path,
    )
    load = lambda name: torch.load(tmp_path / name, weights_only=True)  # noqa: E731
    return load("single.pt"), load("ddp.pt")


CASES = ["clip", "clip-local", "bank", "bank-local", "memory", "memory-local", "fd", "rel"]
CASES += ["rel-local", "dnn", "dnn-local"]
ACCUMULATED = ["clip-accum", "bank-accum", "bank-local-accum", "memory-accum", "fd-accum"]
ACCUMULATED += ["rel-accum", "dnn-accum"]


@pytest.mark.parametrize("case", CASES + ACCUMULATED)
def test_two_processes_give_the_loss_and_gradients_of_one(results, case):
    single, ddp = results[0][case], results[1][case]
    assert_same_step(single, ddp, case)


@pytest.mark.parametrize("case", ACCUMULATED)
def test_accumulated_micro_batches_give_the_whole_batch_under_both(results, case):
    """Two micro-batches per process (one process, and two under torchrun) give the loss
    terms and gradients of the whole global batch in one pass."""
    whole = results[0][case.removesuffix("-accum")]
    for world in results:
        assert_same_step(whole, world[case], case)


def assert_same_step(single, ddp, case):
    assert single["terms"].keys() == ddp["terms"].keys()
    for name, value in single["terms"].items():
        torch.testing.assert_close(ddp["terms"][name], value, atol=1e-5, rtol=1e-4, msg=name)
    assert single["grads"].keys() == ddp["grads"].keys()
    assert any(k.startswith("terms.neighbor.heads") for k in single["grads"]) == case.startswith(
        "bank"
    )
    assert any(k.startswith("terms.fd.heads") for k in single["grads"]) == case.startswith("fd")
    heads = any(k.startswith("terms.distill-nn.heads") for k in single["grads"])
    assert heads == case.startswith("dnn")
    for name, grad in single["grads"].items():
        torch.testing.assert_close(ddp["grads"][name], grad, atol=1e-5, rtol=1e-4, msg=name)
    for name, value in single["memory"].items():
        if case.endswith("-accum"):  # micro-batches of other sizes: float16 rounding may differ
            torch.testing.assert_close(ddp["memory"][name], value, atol=2e-3, rtol=0, msg=name)
        else:
            assert torch.equal(ddp["memory"][name], value), name


SHARDS_WORKER = Path(__file__).with_name("shards_worker.py")


@pytest.fixture(scope="module")
def shard_run(small_corpus, tmp_path_factory):
    """512 shapes pairs as 6 uneven shards, their banks (MiniLM text bank read from the
    shards, a random image bank) with top-3 tables, and shards_worker.py's output."""
    import numpy as np

    from clip_ping.bank import build_bank, mine_bank
    from clip_ping.data.loader import DataSpec
    from clip_ping.data.shards import write_shards

    tmp_path = tmp_path_factory.mktemp("ddp_shards")
    write_shards(small_corpus / "train.csv", tmp_path / "shards", samples_per_shard=100)
    shards = str(tmp_path / "shards" / "{00000..00005}.tar")
    spec = DataSpec(shards)
    build_bank(spec, "text", tmp_path / "text", workers=0, progress=False)
    image = np.random.default_rng(0).standard_normal((512, 8)).astype(np.float32)
    np.save(tmp_path / "image.npy", image)
    teacher = f"npy:{tmp_path / 'image.npy'}"
    build_bank(spec, "image", tmp_path / "image", teacher=teacher, workers=0, progress=False)
    for modality in ("image", "text"):
        mine_bank(tmp_path / modality, k=3, backend="exact", progress=False)
    run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29534",
            str(SHARDS_WORKER),
            shards,
            str(tmp_path / "image"),
            str(tmp_path / "text"),
            str(tmp_path),
        ],
        tmp_path,
    )
    return tmp_path


def test_shards_two_ranks_two_workers_see_each_index_once_with_its_bank_row(
    shard_run, small_corpus
):
    import json

    from clip_ping.bank import Bank
    from clip_ping.data.datasets import CsvDataset
    from clip_ping.teachers import create_teacher

    ranks = [json.loads((shard_run / f"rank{r}.json").read_text()) for r in range(2)]
    orders = []
    for epoch in range(2):
        per_rank = [[i for e, i, _ in seen if e == epoch] for seen in ranks]
        assert [len(p) for p in per_rank] == [256, 256]
        assert sorted(per_rank[0] + per_rank[1]) == list(range(512))  # each exactly once
        orders.append(per_rank[0] + per_rank[1])
    assert orders[0] != orders[1]  # reshuffled per epoch

    # The index names the sample: its CSV row (shards keep CSV order) and its bank row,
    # the text teacher's embedding of the caption delivered with it.
    captions = CsvDataset(small_corpus / "train.csv").captions
    triples = ranks[0] + ranks[1]
    assert all(captions[i] == caption for _, i, caption in triples)
    bank = Bank(shard_run / "text")
    teacher = create_teacher("minilm", "text")
    sample = triples[::7]
    expected = teacher.encode(teacher.collate([teacher.preprocess(c) for _, _, c in sample]))
    rows = torch.from_numpy(bank.features[[i for _, i, _ in sample]]).float()
    torch.testing.assert_close(rows, expected.float(), atol=2e-3, rtol=0)


def test_shards_training_writes_every_sample_once_per_epoch(shard_run):
    # 8 steps × 2 ranks × 32 = 512 slots and every one of the 512 memory rows written:
    # each sample was trained on exactly once.
    checkpoint = torch.load(
        shard_run / "logs" / "shards" / "checkpoints" / "latest.pt", weights_only=False
    )
    assert (checkpoint["step"], checkpoint["epoch"], checkpoint["batch"]) == (8, 1, 0)
    assert bool(checkpoint["task"]["memory.written"].all())
    assert checkpoint["task"]["memory.written"].shape == (512,)
    assert (shard_run / "logs" / "shards" / "hf").is_dir()
