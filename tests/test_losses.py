import math

import torch
import torch.nn.functional as F

from clip_ping.losses import ClipLoss


def reference_clip_loss(image, text, scale):
    """Loop over anchors: -log softmax of the matching pair, both directions."""
    n = image.shape[0]
    total = 0.0
    for i in range(n):
        image_logits = [scale * torch.dot(image[i], text[j]) for j in range(n)]
        text_logits = [scale * torch.dot(text[i], image[j]) for j in range(n)]
        total = total - torch.log(
            torch.exp(image_logits[i]) / sum(torch.exp(x) for x in image_logits)
        )
        total = total - torch.log(
            torch.exp(text_logits[i]) / sum(torch.exp(x) for x in text_logits)
        )
    return total / (2 * n)


def test_clip_loss_matches_the_loop_reference_in_value_and_gradient():
    torch.manual_seed(0)
    image = F.normalize(torch.randn(7, 5, dtype=torch.float64), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(7, 5, dtype=torch.float64), dim=-1).requires_grad_()
    scale = torch.tensor(14.0, dtype=torch.float64, requires_grad=True)
    ours = ClipLoss()(image, text, scale)["clip_loss"]
    grads = torch.autograd.grad(ours, (image, text, scale))
    ref = reference_clip_loss(image, text, scale)
    ref_grads = torch.autograd.grad(ref, (image, text, scale))
    torch.testing.assert_close(ours, ref)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r)


def test_clip_loss_is_log_batch_size_at_zero_scale_and_small_when_aligned():
    z = F.normalize(torch.randn(16, 8), dim=-1)
    loss = ClipLoss()
    assert math.isclose(
        loss(z, z, torch.tensor(0.0))["clip_loss"].item(), math.log(16), rel_tol=1e-6
    )
    eye = torch.eye(16)
    assert loss(eye, eye, torch.tensor(100.0))["clip_loss"].item() < 1e-6
