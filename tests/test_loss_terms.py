"""Loss terms as modules: the registry, a method's terms, and a new term added without
touching the step, the task, the logs or the model card."""

import pytest
import torch

from clip_ping.errors import UserError
from clip_ping.losses import TERMS, ClipLoss, LossTerm, NeighborLoss, method_terms, methods, total
from clip_ping.losses.distill import DistillLoss
from clip_ping.models import create_model
from clip_ping.training.config import build_config
from clip_ping.training.task import TrainingTask


@pytest.fixture
def toy_term():
    """A term defined here, as a user's module would: a feature-norm penalty that also
    logs a component it does not add to the loss."""

    class NormPenalty(LossTerm):
        name = "test_norm_penalty"
        methods = ("test-method",)
        reads = ("image_features", "logit_scale")
        summed = ("norm_loss",)

        def __init__(self, weight: float):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.tensor(weight))

        def forward(self, image_features, logit_scale):
            mean = image_features.mean(0).pow(2).sum()
            return {"norm_loss": self.weight * mean, "norm_scale": logit_scale.detach()}

    yield NormPenalty
    del TERMS[NormPenalty.name]


def test_each_method_lists_its_terms_in_the_order_they_add_up():
    assert methods() == (
        "clip",
        "clip-ping",
        "distill",
        "distill-fd",
        "distill-nn",
        "fd",
        "relational",
    )
    assert method_terms("clip") == [ClipLoss]
    assert method_terms("clip-ping") == [ClipLoss, NeighborLoss]
    assert method_terms("distill") == [ClipLoss, DistillLoss]
    with pytest.raises(ValueError, match="--loss 'clip-kd': choose one of clip, clip-ping, di"):
        method_terms("clip-kd")


def test_a_new_term_registers_itself_and_the_task_sums_only_its_summed_names(toy_term):
    assert TERMS["test_norm_penalty"] is toy_term
    assert method_terms("test-method") == [ClipLoss, toy_term]  # with the CLIP term
    model, tokenizer = create_model("cpu-micro-32", seed=0)
    task = TrainingTask(model, {"clip": ClipLoss(), "test_norm_penalty": toy_term(0.5)})
    batch = {
        "image": torch.randn(4, 3, 32, 32),
        "text": tokenizer(["a red circle", "a blue square", "green", "small"]),
        "index": torch.arange(4),
    }
    loss, terms, out = task(batch, step=0)
    assert list(terms) == ["clip_loss", "norm_loss", "norm_scale"]
    assert task.summed == ("clip_loss", "norm_loss")
    torch.testing.assert_close(loss, terms["clip_loss"] + terms["norm_loss"])
    loss.backward()
    assert task.terms["test_norm_penalty"].weight.grad is not None  # its parameter trains
    assert "terms.test_norm_penalty.weight" in task.state_dict()


def test_two_terms_cannot_share_a_name():
    with pytest.raises(ValueError, match="two loss terms are named 'clip'"):

        class Another(LossTerm):
            name = "clip"


def test_total_adds_the_summed_names_in_their_order():
    terms = {"a": torch.tensor(1.0), "b": torch.tensor(2.0), "c": torch.tensor(4.0)}
    assert total(terms, ("a", "c")).item() == 5.0


def test_a_term_reading_targets_needs_a_guidance():
    model, _ = create_model("cpu-micro-32", seed=0)
    heads = NeighborLoss(model.embed_dim, image_bank_dim=8, text_bank_dim=8)
    with pytest.raises(ValueError, match=r"terms reading neighbour targets \(\['neighbor'\]\)"):
        TrainingTask(model, {"clip": ClipLoss(), "neighbor": heads})


def test_settings_a_method_never_reads_are_named_from_the_terms(tmp_path):
    cfg = build_config(overrides=dict(train_data="x.csv", nn_weight=2.0, neighbor_k=3))
    warnings = cfg.unused_settings()
    assert any(
        "--nn-weight, --neighbor-k set, but --loss clip does not use them" in w for w in warnings
    ), warnings
    memory = build_config(
        overrides=dict(
            train_data="x.csv",
            loss="clip-ping",
            image_bank="i",
            text_bank="t",
            neighbor_target="memory",
            aux_temperature=0.2,
        )
    )
    assert memory.unused_settings() == [
        "--aux-temperature set, but memory targets use the CLIP logit scale: ignored"
    ]


def test_a_terms_own_check_runs_with_the_config():
    with pytest.raises(UserError, match="--image-bank=None: --loss clip-ping needs it"):
        build_config(overrides=dict(train_data="x.csv", loss="clip-ping"))


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("loss", "clip-kd", "clip, clip-ping, distill, distill-fd, distill-nn, fd, relational"),
        ("neighbor_self", "all", "exclude, only, include"),
        ("neighbor_target", "teacher", "bank, memory"),
        ("neighbor_source", "online", "offline, active"),
        ("precision", "fp16", "fp32, amp, amp_bf16"),
        ("dataset_type", "parquet", "csv, webdataset, auto"),
        ("on_bad_sample", "ignore", "skip, error"),
    ],
)
def test_each_choice_is_declared_once_and_checked_with_its_allowed_values(
    field, value, allowed, capsys
):
    flag = "--" + field.replace("_", "-")
    with pytest.raises(UserError, match=f"{flag}='{value}': choose one of {allowed}"):
        build_config(overrides={"train_data": "x.csv", field: value})
    from clip_ping.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"one of {allowed})" in help_text  # the same tuple in the flag's help
