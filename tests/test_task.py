"""The training task: one module owns the step, its state and its memory."""

import contextlib

import pytest
import torch
from torch import nn

from clip_ping.data.loader import build_train_data
from clip_ping.data.transforms import TrainTransform
from clip_ping.models import create_model
from clip_ping.training.config import build_config
from clip_ping.training.task import create_task


class Passthrough(nn.Module):
    """Stands for DDP or torch.compile: a wrapper that holds the step as ``module``."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.calls = 0

    def forward(self, *args):
        self.calls += 1
        return self.module(*args)


def make_task(corpus, banks, **overrides):
    cfg = build_config(
        overrides={
            "train_data": str(corpus / "train.csv"),
            "model": "cpu-micro-32",
            "loss": "clip-ping",
            "image_bank": str(banks / "image"),
            "text_bank": str(banks / "text"),
            **overrides,
        }
    )
    model, tokenizer = create_model(cfg.model, seed=0)
    data = build_train_data(cfg.data_spec(), TrainTransform(model.image_size), tokenizer, seed=0)
    batch = next(iter(data.loader(0, 0, batch_size=16, workers=0)))
    return create_task(cfg, model, cfg.data_spec(), torch.device("cpu")), batch


def test_one_state_dict_holds_student_heads_and_memory_and_wrapping_keeps_it(
    small_corpus, shapes_banks
):
    bank_task, _ = make_task(small_corpus, shapes_banks)
    parts = {key.split(".")[0] for key in bank_task.state_dict()}
    assert parts == {"model", "terms"}  # no memory in bank mode

    task, batch = make_task(small_corpus, shapes_banks, neighbor_target="memory")
    keys = set(task.state_dict())
    assert {key.split(".")[0] for key in keys} == {"model", "memory"}
    task.wrap(Passthrough)
    assert set(task.state_dict()) == keys  # no wrapper prefix in checkpoints
    loss, terms, out = task(batch, step=0)
    assert task.step_module.calls == 1
    assert task.summed == ("clip_loss", "nn_loss", "xnn_loss")
    assert torch.equal(loss, terms["clip_loss"] + terms["nn_loss"] + terms["xnn_loss"])
    # The memory stays in host memory and remembers the batch's embeddings.
    task.remember(batch["index"], out)
    assert task.memory.image.device.type == "cpu"
    rows = task.memory.image[batch["index"]].float()
    torch.testing.assert_close(rows, out["image_features"].detach(), atol=1e-3, rtol=0)
    assert int(task.memory.written.sum()) == len(batch["index"])


def test_the_neighbour_weights_ramp_up_over_the_warmup(small_corpus, shapes_banks):
    task, batch = make_task(small_corpus, shapes_banks, neighbor_warmup=4)
    _, early, _ = task(batch, step=0)
    _, late, _ = task(batch, step=3)
    # Each step draws other neighbours: compare each with its own unweighted terms.
    for kind in ("nn", "xnn"):
        unweighted = 0.5 * (early[f"{kind}_image_loss"] + early[f"{kind}_text_loss"])
        torch.testing.assert_close(early[f"{kind}_loss"].detach(), 0.25 * unweighted)
        unweighted = 0.5 * (late[f"{kind}_image_loss"] + late[f"{kind}_text_loss"])
        torch.testing.assert_close(late[f"{kind}_loss"].detach(), unweighted)


def micro_batches(batch: dict, parts: int) -> list[dict]:
    size = len(batch["index"]) // parts
    return [
        {key: value[i * size : (i + 1) * size] for key, value in batch.items()}
        for i in range(parts)
    ]


@pytest.mark.parametrize(
    "overrides",
    [
        dict(loss="clip", image_bank=None, text_bank=None),
        dict(neighbor_target="bank"),
        dict(neighbor_target="memory"),
        dict(loss="distill"),
        dict(loss="fd"),
        dict(loss="distill-fd"),
        dict(loss="relational"),
    ],
    ids=["clip", "bank", "memory", "distill", "fd", "distill-fd", "relational"],
)
def test_four_accumulated_micro_batches_give_the_loss_and_gradients_of_one_batch(
    small_corpus, shapes_banks, overrides
):
    task, batch = make_task(small_corpus, shapes_banks, **overrides)
    if task.memory is not None:  # half the memory written: valid and masked targets both
        with torch.no_grad():
            _, _, out = task(batch, step=0)
        task.remember(batch["index"][::2], {k: v[::2] for k, v in out.items() if v.ndim})
    parameters = dict(task.named_parameters())

    loss, terms, _ = task(batch, step=3)
    loss.backward()
    whole = {name: p.grad.clone() for name, p in parameters.items() if p.grad is not None}
    task.zero_grad(set_to_none=True)

    loss_acc, terms_acc, out = task.accumulate(
        micro_batches(batch, 4),
        3,
        "cpu",
        backward=lambda x: x.backward(),
        autocast=contextlib.nullcontext,
    )
    for name in task.summed:
        if name in terms:
            torch.testing.assert_close(terms_acc[name], terms[name], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss_acc, loss, atol=1e-5, rtol=1e-5)
    accumulated = {name: p.grad for name, p in parameters.items() if p.grad is not None}
    assert accumulated.keys() == whole.keys()
    if overrides.get("neighbor_target") == "bank":
        assert any(name.startswith("terms.neighbor.heads") for name in whole)
    for name, grad in whole.items():
        torch.testing.assert_close(accumulated[name], grad, atol=2e-5, rtol=1e-4, msg=name)
    assert out["image_features"].shape == (len(batch["index"]), task.model.embed_dim)
