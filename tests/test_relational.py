"""Relational guidance against a slow reference written one anchor at a time."""

import math

import pytest
import torch
import torch.nn.functional as F

from clip_ping.errors import UserError
from clip_ping.losses import NeighborTargets, method_terms
from clip_ping.losses.relational import RelationalLoss
from clip_ping.training.config import build_config


def kl(p_logits, q_logits, columns):
    """KL(softmax p ‖ softmax q) over ``columns``, with Python sums."""
    p_max = max(p_logits[j] for j in columns)
    q_max = max(q_logits[j] for j in columns)
    p_norm = sum(math.e ** (p_logits[j] - p_max) for j in columns)
    q_norm = sum(torch.exp(q_logits[j] - q_max) for j in columns)
    total = 0.0
    for j in columns:
        p = math.e ** (p_logits[j] - p_max) / p_norm
        log_q = q_logits[j] - q_max - torch.log(q_norm)
        total = total + p * (math.log(p) - log_q)
    return total


def reference(image, text, scale, u, v, ok, weight, temperature):
    n = len(u)
    keep = [k for k in range(n) if ok[k]]
    parts = {"image": 0.0, "text": 0.0, "cross": 0.0}
    for k in keep:
        others = [j for j in keep if j != k]
        uu = [float(u[k] @ u[j]) / temperature for j in range(n)]
        vv = [float(v[k] @ v[j]) / temperature for j in range(n)]
        related = [(uu[j] + vv[j]) / 2 for j in range(n)]
        parts["image"] = parts["image"] + kl(
            uu, [scale * image[k] @ image[j] for j in range(n)], others
        )
        parts["text"] = parts["text"] + kl(
            vv, [scale * text[k] @ text[j] for j in range(n)], others
        )
        to_text = kl(related, [scale * image[k] @ text[j] for j in range(n)], keep)
        to_image = kl(related, [scale * text[k] @ image[j] for j in range(n)], keep)
        parts["cross"] = parts["cross"] + 0.5 * (to_text + to_image)
    means = {name: value / len(keep) for name, value in parts.items()}
    return weight * (means["image"] + means["text"] + means["cross"]) / 3, means


def test_relational_loss_and_gradients_match_the_reference():
    g = torch.Generator().manual_seed(3)
    n, d = 6, 5
    image = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    image.requires_grad_(), text.requires_grad_()
    scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    u = F.normalize(torch.randn(n, 9, generator=g, dtype=torch.float64), dim=-1)
    v = F.normalize(torch.randn(n, 4, generator=g, dtype=torch.float64), dim=-1)
    image_ok = torch.tensor([1, 1, 1, 0, 1, 1], dtype=torch.bool)  # a skipped image
    text_ok = torch.tensor([1, 1, 1, 1, 1, 0], dtype=torch.bool)  # a skipped caption
    ids = torch.arange(n)
    targets = NeighborTargets(ids, ids, u, v, v, u, image_ok, text_ok, image_ok, text_ok)
    out = RelationalLoss(weight=1.3, temperature=0.2)(image, text, scale, targets, ramp=1.0)
    expected, means = reference(image, text, scale, u, v, image_ok & text_ok, 1.3, 0.2)
    torch.testing.assert_close(out["rel_loss"], expected)
    for name in ("image", "text", "cross"):
        torch.testing.assert_close(out[f"rel_{name}_loss"], means[name].detach())
    params = [image, text, scale]
    ours = torch.autograd.grad(out["rel_loss"], params)
    theirs = torch.autograd.grad(expected, params)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)
    assert ours[0][3].abs().sum() == 0 and ours[1][5].abs().sum() == 0  # skipped: no gradient


def test_the_student_that_copies_the_teachers_scores_zero_intra_modal():
    """When the student's embeddings are the teachers' features and its scale is 1/τ_R, the
    intra-modal distributions are the teachers' own: KL 0."""
    g = torch.Generator().manual_seed(4)
    u = F.normalize(torch.randn(5, 6, generator=g), dim=-1)
    v = F.normalize(torch.randn(5, 6, generator=g), dim=-1)
    ids = torch.arange(5)
    targets = NeighborTargets(ids, ids, u, v, v, u)
    out = RelationalLoss(temperature=0.1)(u, v, torch.tensor(10.0), targets)
    assert out["rel_image_loss"].abs() < 1e-6 and out["rel_text_loss"].abs() < 1e-6
    assert out["rel_cross_loss"] > 1e-3  # the cross-modal target is the mean relatedness


def test_the_relational_method_and_its_checks():
    assert [t.name for t in method_terms("relational")] == ["clip", "relational"]
    with pytest.raises(UserError, match="--rel-weight=0.0: --loss relational needs"):
        build_config(
            overrides=dict(
                train_data="x.csv", loss="relational", image_bank="i", text_bank="t", rel_weight=0.0
            )
        )
