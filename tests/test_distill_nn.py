"""``--loss distill-nn``: distillation plus neighbour terms through the same heads, with a
decaying weight (against a slow reference), the own rows the guidance reads for it, and
a run that trains, resumes and exports."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clip_ping.bank import Bank
from clip_ping.errors import UserError
from clip_ping.guidance import NeighborGuidance
from clip_ping.losses import NeighborTargets, method_terms
from clip_ping.losses.added import DistillNeighborLoss, decay
from clip_ping.models import load_checkpoint_file
from clip_ping.training.config import build_config
from clip_ping.training.train import train
from test_distill import config
from test_neighbor_loss import reference_contrast, unit


def test_the_decays_fall_from_one_to_zero_over_the_run():
    assert [decay("linear", t) for t in (0.0, 0.25, 1.0)] == [1.0, 0.75, 0.0]
    assert decay("cosine", 0.0) == 1.0 and math.isclose(decay("cosine", 0.5), 0.5)
    assert decay("cosine", 1.0) == pytest.approx(0.0, abs=1e-12)
    assert decay("none", 0.9) == 1.0
    with pytest.raises(ValueError, match="--neighbor-decay 'step'"):
        decay("step", 0.5)


def own_and_drawn(batch, image_dim, text_dim, num_samples=7):
    """Targets with each anchor's own rows and its drawn neighbours' rows of fixed banks,
    one anchor skipped in a bank (no own target) and one without a usable neighbour."""
    image_rows, text_rows = unit(num_samples, image_dim), unit(num_samples, text_dim)
    anchors = torch.randperm(num_samples)[:batch]
    image_nbr = torch.randint(0, num_samples, (batch,))
    text_nbr = torch.randint(0, num_samples, (batch,))
    own_valid = torch.ones(batch, dtype=torch.bool)
    own_valid[2] = False
    nbr_valid = torch.ones(batch, dtype=torch.bool)
    nbr_valid[4] = False
    return NeighborTargets(
        image_nbr,
        text_nbr,
        nn_image=image_rows[image_nbr],
        nn_text=text_rows[text_nbr],
        xnn_image=text_rows[image_nbr],
        xnn_text=image_rows[text_nbr],
        nn_image_valid=nbr_valid,
        nn_text_valid=nbr_valid,
        xnn_image_valid=nbr_valid,
        xnn_text_valid=nbr_valid,
        anchors=anchors,
        own_image=image_rows[anchors],
        own_text=text_rows[anchors],
        own_valid=own_valid,
    )


@pytest.mark.parametrize("schedule", ["linear", "cosine", "none"])
def test_distill_nn_matches_the_reference_and_its_gradients(schedule):
    torch.manual_seed(3)
    batch, d, image_dim, text_dim = 6, 8, 10, 5
    loss = DistillNeighborLoss(
        d,
        image_bank_dim=image_dim,
        text_bank_dim=text_dim,
        nn_weight=0.7,
        xnn_weight=0.4,
        aux_temperature=0.2,
        neighbor_weight=0.6,
        neighbor_decay=schedule,
    ).double()
    z_image, z_text = unit(batch, d).requires_grad_(), unit(batch, d).requires_grad_()
    scale = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    targets = own_and_drawn(batch, image_dim, text_dim)
    progress, ramp = 0.3, 0.8
    terms = loss(z_image, z_text, scale, targets, ramp=ramp, progress=progress)

    def term(name, z, rows, ids, valid):
        query = F.normalize(loss.heads[name](z), dim=-1)  # the one head of its kind
        return reference_contrast(query, rows, ids, valid, 1 / 0.2)

    t = targets
    own_ids, own_ok = t.anchors, t.own_valid
    distill_nn = (
        0.7
        * ramp
        * 0.5
        * (
            term("nn_image", z_image, t.own_image, own_ids, own_ok)
            + term("nn_text", z_text, t.own_text, own_ids, own_ok)
        )
    )
    distill_xnn = (
        0.4
        * ramp
        * 0.5
        * (
            term("xnn_image", z_image, t.own_text, own_ids, own_ok)
            + term("xnn_text", z_text, t.own_image, own_ids, own_ok)
        )
    )
    ok = t.nn_image_valid
    drawn = 0.7 * 0.5 * (
        term("nn_image", z_image, t.nn_image, t.image_neighbors, ok)
        + term("nn_text", z_text, t.nn_text, t.text_neighbors, ok)
    ) + 0.4 * 0.5 * (
        term("xnn_image", z_image, t.xnn_image, t.image_neighbors, ok)
        + term("xnn_text", z_text, t.xnn_text, t.text_neighbors, ok)
    )
    factor = {"linear": 0.7, "cosine": 0.5 * (1 + math.cos(math.pi * 0.3)), "none": 1.0}
    neighbors = 0.6 * factor[schedule] * ramp * drawn
    torch.testing.assert_close(terms["nn_loss"], distill_nn)
    torch.testing.assert_close(terms["xnn_loss"], distill_xnn)
    torch.testing.assert_close(terms["nbr_loss"], neighbors)
    ours_total = terms["nn_loss"] + terms["xnn_loss"] + terms["nbr_loss"]
    ref_total = distill_nn + distill_xnn + neighbors
    params = [z_image, z_text, *loss.parameters()]
    for g, r in zip(
        torch.autograd.grad(ours_total, params), torch.autograd.grad(ref_total, params), strict=True
    ):
        torch.testing.assert_close(g, r)


def test_at_the_end_of_a_linear_decay_only_distillation_is_left():
    torch.manual_seed(4)
    loss = DistillNeighborLoss(8, image_bank_dim=10, text_bank_dim=5).double()
    plain = DistillNeighborLoss(8, image_bank_dim=10, text_bank_dim=5).double()
    plain.load_state_dict(loss.state_dict())
    z_image, z_text, scale = unit(6, 8), unit(6, 8), torch.tensor(10.0, dtype=torch.float64)
    targets = own_and_drawn(6, 10, 5)
    end = loss(z_image, z_text, scale, targets, progress=1.0)
    assert end["nbr_loss"].item() == 0.0
    # The distillation part is that of the own targets alone: what --loss distill computes.
    own_only = super(DistillNeighborLoss, plain).forward(z_image, z_text, scale, targets.own())
    torch.testing.assert_close(end["nn_loss"], own_only["nn_loss"])


def test_the_guidance_reads_each_anchors_own_rows_beside_its_neighbours(shapes_banks):
    image_bank, text_bank = Bank(shapes_banks / "image"), Bank(shapes_banks / "text")
    guidance = NeighborGuidance(image_bank, text_bank, k=3, target="bank", own_rows=True)
    index = torch.tensor([5, 0, 17, 3])
    via_loader = guidance.transform()({"index": index}, epoch=1)
    for batch in (via_loader, {"index": index}):  # the loader's rows, or read in the loop
        targets = guidance.targets(batch, epoch=1, device="cpu")
        u, v = image_bank.features, text_bank.features
        assert torch.equal(targets.anchors, index)
        np.testing.assert_array_equal(targets.own_image.numpy(), u[index.numpy()])
        np.testing.assert_array_equal(targets.own_text.numpy(), v[index.numpy()])
        np.testing.assert_array_equal(targets.nn_image.numpy(), u[targets.image_neighbors])
        assert not torch.equal(targets.image_neighbors, index)  # neighbours, not the anchors
    own = targets.own()
    assert torch.equal(own.nn_image, targets.own_image) and torch.equal(own.xnn_text, own.nn_image)
    assert torch.equal(own.xnn_image, targets.own_text)
    without = NeighborGuidance(image_bank, text_bank, k=3, target="bank")
    plain = without.targets({"index": index}, epoch=1, device="cpu")
    assert plain.own_image is None and torch.equal(plain.nn_image, targets.nn_image)
    with pytest.raises(ValueError, match="carry no own rows"):
        plain.own()


def test_distill_nn_trains_resumes_and_checks_its_settings(small_corpus, shapes_banks, tmp_path):
    common = dict(loss="distill-nn", epochs=2, accum_freq=2, batch_size=32)
    full = train(config(small_corpus, shapes_banks, tmp_path, "full", **common))
    cut = dict(workers=2, save_every_steps=4, **common)
    train(config(small_corpus, shapes_banks, tmp_path, "cut", stop_after_steps=11, **cut))
    resumed = train(config(small_corpus, shapes_banks, tmp_path, "cut", resume="latest", **cut))
    a = load_checkpoint_file(full / "checkpoints" / "latest.pt")["task"]
    b = load_checkpoint_file(resumed / "checkpoints" / "latest.pt")["task"]
    assert any(key.startswith("terms.distill-nn.heads.") for key in a)
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key
    logged = (full / "metrics.jsonl").read_text()
    assert '"train/nbr_loss"' in logged and '"train/nn_loss"' in logged
    assert [t.name for t in method_terms("distill-nn")] == ["clip", "distill-nn"]
    with pytest.raises(UserError, match="--neighbor-weight=0.0 leaves no neighbour term"):
        build_config(
            overrides=dict(
                train_data="x.csv",
                loss="distill-nn",
                image_bank="i",
                text_bank="t",
                neighbor_weight=0.0,
            )
        )
    cfg = build_config(
        overrides=dict(
            train_data="x.csv",
            loss="distill",
            image_bank="i",
            text_bank="t",
            neighbor_decay="cosine",
        )
    )
    assert any("--neighbor-decay set, but --loss distill" in w for w in cfg.unused_settings())
