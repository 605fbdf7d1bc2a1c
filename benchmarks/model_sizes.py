"""Shapes and parameter counts of every student size, as the markdown table in docs/models.md.

    .venv/bin/python benchmarks/model_sizes.py

Counts come from instantiating each model with the default tokenizer (MiniLM WordPiece,
30,522 tokens). The vision tower includes ``visual_projection``, the text tower
``text_projection``; the total adds the logit scale (one parameter). The last column is the
total with a vocabulary of ``SMALL_VOCAB`` tokens (``train_tokenizer``'s default): only the token
embedding (vocab x text width) depends on the vocabulary, as CLIP's text tower has no output head.
Training GFLOP/sample is 3 x the forward matmul FLOPs (formula in ``train_step.py``).
"""

from __future__ import annotations

import argparse

import torch

from clip_ping.models import MODEL_SPECS, ClipStudent, create_model
from train_step import BACKWARD_FACTOR, forward_flops

SMALL_VOCAB = 2000
SIZE_ORDER = ["cpu-micro-32", "cpu-mini-32", "cpu-small-64", "vit-ti-16", "vit-xs-16", "vit-s-16"]


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tower_counts(model: ClipStudent) -> dict[str, int]:
    """Parameters of each tower of ``model`` and of the text tower's token embedding."""
    clip = model.clip
    return {
        "vision": count(clip.vision_model) + count(clip.visual_projection),
        "text": count(clip.text_model) + count(clip.text_projection),
        "token_embedding": clip.text_model.embeddings.token_embedding.weight.numel(),
        "total": count(model),
    }


def millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    names = [n for n in SIZE_ORDER if n in MODEL_SPECS] + sorted(set(MODEL_SPECS) - set(SIZE_ORDER))
    print(
        "| model | image | patch | vision width / depth / heads | text width / depth / heads "
        "| embed dim | context | vision params | text params (token emb.) | total params "
        f"| total, {SMALL_VOCAB:,}-token vocab | train GFLOP/sample |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for name in names:
        spec = MODEL_SPECS[name]
        model, tokenizer = create_model(name)
        n = tower_counts(model)
        share = n["token_embedding"] / n["total"]
        small_vocab_total = n["total"] - (tokenizer.vocab_size - SMALL_VOCAB) * spec.text_width
        train_flops = BACKWARD_FACTOR * sum(forward_flops(spec).values())
        print(
            f"| `{name}` | {spec.image_size} | {spec.patch_size} "
            f"| {spec.vision_width} / {spec.vision_layers} / {spec.vision_heads} "
            f"| {spec.text_width} / {spec.text_layers} / {spec.text_heads} "
            f"| {spec.embed_dim} | {spec.context_length} | {millions(n['vision'])} "
            f"| {millions(n['text'])} ({millions(n['token_embedding'])}, {share:.0%} of total) "
            f"| {millions(n['total'])} | {millions(small_vocab_total)} | {train_flops / 1e9:.2f} |"
        )
    print(f"\nvocabulary: {tokenizer.vocab_size:,} tokens (default MiniLM WordPiece)")


if __name__ == "__main__":
    main()
