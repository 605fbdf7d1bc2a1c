"""The student's towers (clip_ping.models.vit_fast) compute transformers' CLIP function and gradient."""

import pytest
import torch
from transformers import CLIPModel
from transformers.activations import QuickGELUActivation

from clip_ping.losses import ClipLoss
from clip_ping.models import ClipStudent, create_model
from clip_ping.models.vit_fast import (
    QuickGELU,
    fuse_activations,
    image_features,
    text_features,
    unfuse_activations,
)

CAPTIONS = ["a red circle", "two large blue squares at the top left of a white page", ""]


def transformers_features(clip, images, tokens, pad_id):
    """transformers' own embeddings, as a user of the exported model gets them."""
    image = clip.get_image_features(pixel_values=images).pooler_output
    mask = (tokens != pad_id).long()
    text = clip.get_text_features(input_ids=tokens, attention_mask=mask).pooler_output
    return image, text


@pytest.mark.parametrize("name", ["cpu-micro-32", "cpu-mini-32"])
def test_pooled_towers_give_transformers_embeddings(name):
    model, tokenizer = create_model(name, seed=0)
    images = torch.randn(3, 3, model.image_size, model.image_size)
    tokens = tokenizer(CAPTIONS * 2)  # the long caption is cut at the context length
    tokens[3, 5:] = tokenizer.unk_id  # after [SEP]: ignored by the causal tower
    with torch.no_grad():
        ours = image_features(model.clip, images), text_features(model.clip, tokens, model.pad_id)
        theirs = transformers_features(model.clip, images, tokens, model.pad_id)
        assert model.pooled_only
        torch.testing.assert_close(model.encode_image(images), theirs[0])
        torch.testing.assert_close(model.encode_text(tokens), theirs[1])
    torch.testing.assert_close(ours[0], theirs[0])
    torch.testing.assert_close(ours[1], theirs[1])


def test_legacy_eos_id_pools_at_the_largest_token_id():
    model, tokenizer = create_model("cpu-micro-32", seed=0)
    model.clip.text_model.eos_token_id = 2  # as openai's CLIP configs say
    tokens = tokenizer(CAPTIONS)
    with torch.no_grad():
        expected = transformers_features(model.clip, torch.zeros(1, 3, 32, 32), tokens, 0)[1]
        torch.testing.assert_close(text_features(model.clip, tokens, model.pad_id), expected)


def test_pooled_towers_give_transformers_gradients():
    model, tokenizer = create_model("cpu-micro-32", seed=0)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens = tokenizer(["a red circle", "a blue square", "a star", "two green hearts"])
    grads = {}
    for pooled_only in (True, False):
        model.pooled_only = pooled_only
        model.zero_grad()
        out = model(images, tokens)
        ClipLoss()(out["image_features"], out["text_features"], out["logit_scale"])[
            "clip_loss"
        ].backward()
        grads[pooled_only] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for name, grad in grads[False].items():
        # k_proj's bias has no effect on softmax attention: its gradient is zero up to
        # rounding noise, ~1e-8 here and CPU-dependent
        tolerance = dict(atol=1e-7, rtol=0) if "k_proj.bias" in name else {}
        torch.testing.assert_close(grads[True][name], grad, **tolerance, msg=name)


def test_quick_gelu_forward_is_transformers_bit_for_bit_and_backward_matches():
    x = torch.randn(4, 7, 64) * 4
    plain, fused = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_plain, y_fused = QuickGELUActivation()(plain), QuickGELU()(fused)
    assert torch.equal(y_fused, y_plain)
    grad = torch.randn_like(x)
    y_plain.backward(grad)
    y_fused.backward(grad)
    torch.testing.assert_close(fused.grad, plain.grad)
    double = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(QuickGELU(), (double,))


def test_fusing_keeps_parameters_and_round_trips():
    clip = CLIPModel(create_model("cpu-micro-32", seed=0)[0].clip.config)
    before = {k: v.clone() for k, v in clip.state_dict().items()}
    student = ClipStudent(clip, pad_id=0)
    activations = [m.mlp.activation_fn for m in student.clip.vision_model.encoder.layers]
    assert all(isinstance(a, QuickGELU) for a in activations)
    assert student.clip.state_dict().keys() == before.keys()
    unfuse_activations(clip)
    assert all(
        type(m.mlp.activation_fn) is QuickGELUActivation for m in clip.text_model.encoder.layers
    )
    fuse_activations(clip)
    assert isinstance(clip.text_model.encoder.layers[0].mlp.activation_fn, QuickGELU)
