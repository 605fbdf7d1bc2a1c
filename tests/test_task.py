"""The training task: one module owns the step, its state and its memory."""

import torch
from torch import nn

from clip_ping.config import build_config
from clip_ping.data.loader import build_train_data
from clip_ping.data.transforms import TrainTransform
from clip_ping.losses import TOTAL_TERMS
from clip_ping.models import create_model
from clip_ping.task import create_task


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
        overrides=dict(
            train_data=str(corpus / "train.csv"), model="cpu-micro-32", loss="clip-ping",
            image_bank=str(banks / "image"), text_bank=str(banks / "text"), **overrides,
        )
    )  # fmt: skip
    model, tokenizer = create_model(cfg.model, seed=0)
    data = build_train_data(cfg.data_spec(), TrainTransform(model.image_size), tokenizer, seed=0)
    batch = next(iter(data.loader(0, 0, batch_size=16, workers=0)))
    return create_task(cfg, model, cfg.data_spec(), torch.device("cpu")), batch


def test_one_state_dict_holds_student_heads_and_memory_and_wrapping_keeps_it(
    small_corpus, shapes_banks
):
    bank_task, _ = make_task(small_corpus, shapes_banks)
    parts = {key.split(".")[0] for key in bank_task.state_dict()}
    assert parts == {"model", "neighbor_loss"}  # no memory in bank mode

    task, batch = make_task(small_corpus, shapes_banks, neighbor_target="memory")
    keys = set(task.state_dict())
    assert {key.split(".")[0] for key in keys} == {"model", "memory"}
    task.wrap(Passthrough)
    assert set(task.state_dict()) == keys  # no wrapper prefix in checkpoints
    loss, terms, out = task(batch, step=0)
    assert task.step_module.calls == 1
    assert torch.equal(loss, sum(v for k, v in terms.items() if k in TOTAL_TERMS))
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
