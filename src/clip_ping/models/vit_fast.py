"""The student's towers as clip-ping runs them: transformers' CLIP layers, less the work that
the embeddings never see.

A CLIP tower's embedding is one token of its last block: the class token (image) or the first
eos token (text). transformers runs the last block on every token and then keeps one. Here
(:func:`image_features`, :func:`text_features`) the last block computes keys and values for
every token, as attention needs, but its query, attention output, MLP and final layer norm for
the pooled token only (:func:`pooled_block`). That skips about 5/6 of the last block's work: a
fifth of a 4-block tower, a fourteenth of a 12-block one. The function is the same (every
other token's output of the last block is discarded by transformers) and so is its gradient;
only float rounding differs.

Also, the MLP activation becomes :class:`QuickGELU` (:func:`fuse_activations`): transformers'
forward ops bit for bit, one saved tensor instead of two and a one-pass backward, where
autograd of ``x * sigmoid(1.702 x)`` spends five passes over the ``(B, S, 4W)`` activations.

Parameters, their names and the config are untouched: checkpoints, ``save_pretrained`` and
``CLIPModel.from_pretrained`` see a plain CLIPModel, and ``CLIPModel.get_image_features`` /
``get_text_features`` give the same embeddings (tests/models/test_vit_fast.py).

Examples:
    >>> import torch
    >>> from transformers import CLIPConfig, CLIPModel
    >>> from clip_ping.models.vit_fast import fuse_activations, image_features
    >>> tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...     num_attention_heads=2)
    >>> config = CLIPConfig(projection_dim=16, text_config=tower,
    ...     vision_config=dict(tower, image_size=32, patch_size=8))
    >>> clip = fuse_activations(CLIPModel(config))
    >>> image_features(clip, torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 16])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers.activations import QuickGELUActivation
from transformers.models.clip.modeling_clip import CLIPMLP, CLIPEncoderLayer

QUICK_GELU_SLOPE = 1.702  # x * sigmoid(1.702 x) ≈ GELU(x) (Hendrycks & Gimpel), as in CLIP
LEGACY_EOS_ID = 2  # transformers pools CLIP text at the largest token id when eos_token_id is 2


class QuickGELUFunction(torch.autograd.Function):
    """``y = x * sigmoid(1.702 x)`` with the same forward ops as transformers' QuickGELU.

    Backward keeps only ``z = 1.702 x`` and computes ``dy/dx = silu'(z)`` in one pass
    (``silu(z) = z sigmoid(z) = 1.702 y``, so ``dy/dx = d silu / dz``).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        z = QUICK_GELU_SLOPE * x
        ctx.save_for_backward(z)
        return torch.sigmoid(z).mul_(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (z,) = ctx.saved_tensors
        return torch.ops.aten.silu_backward(grad, z)


class QuickGELU(nn.Module):
    """Drop-in for ``transformers.activations.QuickGELUActivation`` (no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return QuickGELUFunction.apply(x)


def fuse_activations(clip: nn.Module) -> nn.Module:
    """Swap ``clip``'s QuickGELU activations for :class:`QuickGELU`, in place (other
    activations stay). Returns ``clip``."""
    for module in clip.modules():
        if isinstance(module, CLIPMLP) and type(module.activation_fn) is QuickGELUActivation:
            module.activation_fn = QuickGELU()
    return clip


def unfuse_activations(clip: nn.Module) -> nn.Module:
    """Put transformers' QuickGELU back (the inverse of :func:`fuse_activations`)."""
    for module in clip.modules():
        if isinstance(module, CLIPMLP) and isinstance(module.activation_fn, QuickGELU):
            module.activation_fn = QuickGELUActivation()
    return clip


def pooled_path_supported() -> bool:
    """Whether :func:`image_features` and :func:`text_features` fit this transformers: they
    call its CLIP blocks and causal mask as transformers 5 does."""
    return int(transformers.__version__.split(".")[0]) >= 5


def pooled_block(
    layer: CLIPEncoderLayer,
    hidden: torch.Tensor,
    index: torch.Tensor,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``layer(hidden)[arange(B), index]`` without computing the other rows' outputs.

    ``hidden``: ``(B, S, W)``; ``index``: ``(B,)`` the pooled token of each row; ``key_mask``:
    ``(B, 1, 1, S)`` bool, the keys the pooled token attends to (None: all). Returns ``(B, W)``.
    """
    batch, length, width = hidden.shape
    attention = layer.self_attn
    heads, head_dim = attention.num_heads, attention.head_dim
    rows = torch.arange(batch, device=hidden.device)
    normed = layer.layer_norm1(hidden)
    query = attention.q_proj(normed[rows, index]).view(batch, heads, 1, head_dim)
    keys = attention.k_proj(normed).view(batch, length, heads, head_dim).transpose(1, 2)
    values = attention.v_proj(normed).view(batch, length, heads, head_dim).transpose(1, 2)
    dropout = attention.dropout if attention.training else 0.0
    attended = F.scaled_dot_product_attention(
        query, keys, values, attn_mask=key_mask, scale=attention.scale, dropout_p=dropout
    )
    pooled = hidden[rows, index] + attention.out_proj(attended.reshape(batch, width))
    return pooled + layer.mlp(layer.layer_norm2(pooled))


def image_features(clip: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``clip.get_image_features(pixel_values=images).pooler_output``: ``(B, 3, H, W)`` →
    ``(B, projection_dim)``."""
    vision = clip.vision_model
    hidden = vision.pre_layrnorm(vision.embeddings(images))
    *blocks, last = vision.encoder.layers
    for block in blocks:
        hidden = block(hidden, None)
    cls = torch.zeros(hidden.shape[0], dtype=torch.long, device=hidden.device)
    return clip.visual_projection(vision.post_layernorm(pooled_block(last, hidden, cls)))


def text_features(clip: nn.Module, tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """``clip.get_text_features(input_ids=tokens, attention_mask=tokens != pad_id)
    .pooler_output``: ``(B, L)`` → ``(B, projection_dim)``."""
    from transformers.masking_utils import create_causal_mask

    text = clip.text_model
    hidden = text.embeddings(input_ids=tokens)
    keep = tokens != pad_id
    mask = create_causal_mask(
        config=text.config, inputs_embeds=hidden, attention_mask=keep.long(), cache=None
    )
    *blocks, last = text.encoder.layers
    for block in blocks:
        hidden = block(hidden, mask, is_causal=True)
    # transformers' pooled token: the first eos (the largest id for legacy configs)
    if text.eos_token_id == LEGACY_EOS_ID:
        eos = tokens.argmax(dim=-1)
    else:
        eos = (tokens == text.eos_token_id).int().argmax(dim=-1)
    # its row of the causal padding mask: keys at or before it that are not padding
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    key_mask = (keep & (positions <= eos[:, None]))[:, None, None, :]
    return clip.text_projection(text.final_layer_norm(pooled_block(last, hidden, eos, key_mask)))


def compile_blocks(clip: nn.Module, **options) -> nn.Module:
    """``torch.compile`` each transformer block in place (``nn.Module.compile``: parameter
    names unchanged), leaving embeddings, pooling and the loss eager. Returns ``clip``."""
    for module in clip.modules():
        if isinstance(module, CLIPEncoderLayer):
            module.compile(**options)
    return clip
