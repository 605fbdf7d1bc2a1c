"""Neighbour-guidance terms against slow, loop-over-the-batch references."""

import math

import pytest
import torch
import torch.nn.functional as F

from clip_ping.losses import NeighborLoss, NeighborTargets, neighbor_contrast, target_keys


def reference_contrast(queries, targets, ids, valid, scale):
    """-log softmax of the own target over the batch's targets, skipping invalid targets and
    other columns holding the same sample as the positive; mean over valid anchors."""
    total, count = 0.0, 0
    for a in range(len(queries)):
        if not valid[a]:
            continue
        count += 1
        denominator = 0.0
        for b in range(len(queries)):
            if valid[b] and (b == a or ids[b] != ids[a]):
                denominator = denominator + torch.exp(scale * torch.dot(queries[a], targets[b]))
        positive = scale * torch.dot(queries[a], targets[a])
        total = total - (positive - torch.log(denominator))
    return total / max(count, 1)


def unit(*shape):
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


def test_contrast_matches_reference_with_shared_neighbours_and_unwritten_rows():
    torch.manual_seed(0)
    queries = unit(8, 6).requires_grad_()
    targets = unit(8, 6)
    ids = torch.tensor([3, 7, 3, 1, 9, 7, 2, 5])  # anchors 0/2 and 1/5 share a neighbour
    valid = torch.tensor([True, True, False, True, True, True, False, True])
    scale = torch.tensor(9.0, dtype=torch.float64, requires_grad=True)
    ours = neighbor_contrast(queries, targets, ids, valid, scale)
    ref = reference_contrast(queries, targets, ids, valid, scale)
    torch.testing.assert_close(ours, ref)
    for g, r in zip(
        torch.autograd.grad(ours, (queries, scale)),
        torch.autograd.grad(ref, (queries, scale)),
        strict=True,
    ):
        torch.testing.assert_close(g, r)


def test_contrast_is_log_batch_at_zero_scale_and_zero_when_nothing_is_valid():
    q, t = unit(5, 4), unit(5, 4)
    ids = torch.arange(5)
    assert math.isclose(neighbor_contrast(q, t, ids, None, 0.0).item(), math.log(5), rel_tol=1e-9)
    none_valid = torch.zeros(5, dtype=torch.bool)
    assert neighbor_contrast(q, t, ids, none_valid, 5.0).item() == 0.0


def make_targets(batch, image_dim, text_dim, with_validity, num_samples=6):
    """Targets as a real batch has them: a neighbour drawn twice has the same target rows
    (each sample's image-side and caption-side rows are fixed)."""
    valid = (lambda: torch.rand(batch) > 0.3) if with_validity else (lambda: None)
    image_rows, text_rows = unit(num_samples, image_dim), unit(num_samples, text_dim)
    image_nbr = torch.randint(0, num_samples, (batch,))
    text_nbr = torch.randint(0, num_samples, (batch,))
    return NeighborTargets(
        image_neighbors=image_nbr,
        text_neighbors=text_nbr,
        nn_image=image_rows[image_nbr],
        nn_text=text_rows[text_nbr],
        xnn_image=text_rows[image_nbr],
        xnn_text=image_rows[text_nbr],
        nn_image_valid=valid(),
        nn_text_valid=valid(),
        xnn_image_valid=valid(),
        xnn_text_valid=valid(),
    )


@pytest.mark.parametrize("target", ["bank", "memory"])
def test_neighbor_loss_terms_match_the_reference(target):
    torch.manual_seed(1)
    batch, d, image_dim, text_dim = 10, 8, 12, 7
    if target == "memory":
        image_dim = text_dim = d
    loss = NeighborLoss(
        d,
        image_bank_dim=image_dim,
        text_bank_dim=text_dim,
        target=target,
        nn_weight=0.7,
        xnn_weight=0.3,
        aux_temperature=0.2,
    ).double()
    z_image, z_text = unit(batch, d).requires_grad_(), unit(batch, d).requires_grad_()
    scale = torch.tensor(12.0, dtype=torch.float64, requires_grad=True)
    targets = make_targets(batch, image_dim, text_dim, with_validity=target == "memory")
    terms = loss(z_image, z_text, scale, targets, ramp=0.5)

    def query(name, z):
        if target == "bank":
            return F.normalize(loss.heads[name](z), dim=-1), 1 / 0.2
        return z, scale

    expected = {}
    for name, z in (
        ("nn_image", z_image),
        ("nn_text", z_text),
        ("xnn_image", z_image),
        ("xnn_text", z_text),
    ):
        ids = targets.image_neighbors if name.endswith("image") else targets.text_neighbors
        valid = getattr(targets, f"{name}_valid")
        valid = torch.ones(batch, dtype=torch.bool) if valid is None else valid
        q, s = query(name, z)
        expected[name] = reference_contrast(q, getattr(targets, name), ids, valid, s)
    ref_nn = 0.7 * 0.5 * 0.5 * (expected["nn_image"] + expected["nn_text"])
    ref_xnn = 0.3 * 0.5 * 0.5 * (expected["xnn_image"] + expected["xnn_text"])
    torch.testing.assert_close(terms["nn_loss"], ref_nn)
    torch.testing.assert_close(terms["xnn_loss"], ref_xnn)
    for name in expected:
        torch.testing.assert_close(terms[f"{name}_loss"], expected[name].detach())
    params = [z_image, z_text, scale, *loss.parameters()]
    ours = torch.autograd.grad(terms["nn_loss"] + terms["xnn_loss"], params, allow_unused=True)
    ref = torch.autograd.grad(ref_nn + ref_xnn, params, allow_unused=True)
    for g, r in zip(ours, ref, strict=True):
        if r is None:
            assert g is None or torch.count_nonzero(g) == 0
        else:
            torch.testing.assert_close(g, r)


def test_a_zero_weight_skips_its_terms():
    loss = NeighborLoss(
        8, image_bank_dim=8, text_bank_dim=8, target="memory", nn_weight=1.0, xnn_weight=0.0
    )
    targets = make_targets(4, 8, 8, with_validity=False)
    terms = loss(unit(4, 8).float(), unit(4, 8).float(), torch.tensor(10.0), targets)
    assert terms["xnn_loss"].item() == 0.0 and "xnn_image_loss" not in terms
    assert terms["nn_loss"].item() > 0


def test_bank_mode_needs_the_bank_dimensions():
    with pytest.raises(ValueError, match="image_bank_dim"):
        NeighborLoss(8, target="bank")
    with pytest.raises(ValueError, match="--neighbor-target 'teacher'"):
        NeighborLoss(8, image_bank_dim=8, text_bank_dim=8, target="teacher")


def test_identical_targets_under_other_ids_are_not_negatives():
    """Two samples with one caption have identical text-bank rows: the row of one is not a
    negative for an anchor whose positive is the other (a tied false negative)."""
    torch.manual_seed(2)
    batch, d, image_dim, text_dim = 6, 8, 5, 4
    targets = make_targets(batch, image_dim, text_dim, with_validity=False)
    targets.text_neighbors = torch.arange(batch) + 10  # all different samples...
    targets.nn_text = unit(batch, text_dim)
    targets.nn_text[3] = targets.nn_text[1]  # ...but 1 and 3 share a caption
    loss = NeighborLoss(
        d,
        image_bank_dim=image_dim,
        text_bank_dim=text_dim,
        nn_weight=1.0,
        xnn_weight=0.0,
        aux_temperature=0.5,
    ).double()
    z_text = unit(batch, d)
    terms = loss(unit(batch, d), z_text, torch.tensor(1.0), targets=targets)
    query = F.normalize(loss.heads["nn_text"](z_text), dim=-1)
    content_ids = torch.tensor([0, 1, 2, 1, 4, 5])  # the same content, the same identity
    expected = reference_contrast(query, targets.nn_text, content_ids, [True] * batch, 2.0)
    torch.testing.assert_close(terms["nn_text_loss"], expected)
    by_sample = reference_contrast(query, targets.nn_text, torch.arange(batch), [True] * batch, 2.0)
    assert not torch.isclose(terms["nn_text_loss"], by_sample)  # the exclusion matters here


def test_target_keys_tell_equal_rows_only():
    rows = torch.randn(64, 384).half().float()
    rows[10] = rows[20]
    keys = target_keys(rows)
    equal = (keys[:, None] == keys[None, :]).all(-1)
    expected = torch.eye(64, dtype=torch.bool)
    expected[10, 20] = expected[20, 10] = True
    assert torch.equal(equal, expected)
    nudged = rows.clone()
    nudged[20, 0] = torch.nextafter(nudged[20, 0], torch.tensor(float("inf")))
    assert not torch.equal(target_keys(nudged)[20], keys[10])  # one ulp apart: not equal
