"""Feature regression (CLIP-KD's FD) against a slow, sample-by-sample reference."""

import pytest
import torch

from clip_ping.errors import UserError
from clip_ping.losses import NeighborTargets, method_terms
from clip_ping.losses.regression import FeatureRegression
from clip_ping.training.config import build_config


def reference(model, image, text, u, v, image_ok, text_ok, weight, ramp):
    """The loss written out one sample at a time."""
    terms = []
    for name, z, targets, ok in (("image", image, u, image_ok), ("text", text, v, text_ok)):
        w = model.heads[name].weight
        total, count = 0.0, 0
        for k in range(len(z)):
            if not ok[k]:
                continue
            projected = w @ z[k]
            projected = projected / projected.norm()
            target = targets[k] / targets[k].norm()
            total = total + sum((projected[i] - target[i]) ** 2 for i in range(len(target)))
            count += 1
        terms.append(total / max(count, 1))
    return weight * ramp * 0.5 * (terms[0] + terms[1]), terms


def test_feature_regression_and_its_gradients_match_the_reference():
    g = torch.Generator().manual_seed(0)
    b, d, di, dt = 6, 8, 10, 7
    model = FeatureRegression(d, di, dt, weight=1.5).double()
    image = torch.nn.functional.normalize(
        torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1
    )
    text = torch.nn.functional.normalize(
        torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1
    )
    image.requires_grad_(), text.requires_grad_()
    u = torch.randn(b, di, generator=g, dtype=torch.float64)
    v = torch.randn(b, dt, generator=g, dtype=torch.float64)
    image_ok = torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool)  # a skipped image row
    text_ok = torch.tensor([1, 1, 1, 1, 0, 0], dtype=torch.bool)
    ids = torch.arange(b)
    targets = NeighborTargets(ids, ids, u, v, v, u, image_ok, text_ok, image_ok, text_ok)
    out = model(image, text, targets, ramp=0.5)
    expected, (image_term, text_term) = reference(
        model, image, text, u, v, image_ok, text_ok, 1.5, 0.5
    )
    torch.testing.assert_close(out["fd_loss"], expected)
    torch.testing.assert_close(out["fd_image_loss"], image_term.detach())
    torch.testing.assert_close(out["fd_text_loss"], text_term.detach())
    params = [image, text, *model.parameters()]
    ours = torch.autograd.grad(out["fd_loss"], params)
    theirs = torch.autograd.grad(expected, params)
    for a, b_ in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b_)
    assert ours[0][2].abs().sum() == 0  # the skipped image row gets no gradient


def test_the_fd_methods_and_their_checks():
    assert [t.name for t in method_terms("fd")] == ["clip", "fd"]
    assert [t.name for t in method_terms("distill-fd")] == ["clip", "distill", "fd"]
    with pytest.raises(UserError, match="--fd-weight=0.0: --loss fd regresses"):
        build_config(
            overrides=dict(
                train_data="x.csv", loss="fd", image_bank="i", text_bank="t", fd_weight=0.0
            )
        )
    cfg = build_config(overrides=dict(train_data="x.csv", loss="clip", fd_weight=2.0))
    assert any(
        "--fd-weight set, but --loss clip does not use them" in w for w in cfg.unused_settings()
    )
