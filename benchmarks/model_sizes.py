"""Shapes and parameter counts of every student size, as the markdown tables in docs/models.md.

    .venv/bin/python benchmarks/model_sizes.py

Counts come from instantiating each model with the default tokenizer (MiniLM WordPiece,
30,522 tokens). The vision tower includes ``visual_projection``, the text tower
``text_projection``; the total adds the logit scale (one parameter). The "total, small vocab"
column is the total with a vocabulary of ``SMALL_VOCAB`` tokens (``train_tokenizer``'s default):
only the token embedding (vocab x text width) depends on the vocabulary, as CLIP's text tower
has no output head. Training GFLOP/sample is 3 x the forward FLOPs: for ViT students the
matmul formula in ``train_step.py``; for other image towers ``FlopCounterMode``'s count of one
forward (convolutions and matmuls; ``train_step.counted_forward_flops``).
"""

from __future__ import annotations

import argparse

import torch

from clip_ping.models import FAMILIES, MODEL_SPECS, ModelSpec, Student, TowerSpec, create_model
from train_step import BACKWARD_FACTOR, counted_forward_flops, forward_flops

SMALL_VOCAB = 2000
SIZE_ORDER = ["cpu-micro-32", "cpu-mini-32", "cpu-small-64", "vit-ti-16", "vit-xs-16", "vit-s-16"]


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tower_counts(model: Student) -> dict[str, int]:
    """Parameters of each tower of ``model`` and of the text tower's token embedding."""
    if model.tower == "vit":
        clip = model.clip
        vision = count(clip.vision_model) + count(clip.visual_projection)
        text, text_model = count(clip.text_model) + count(clip.text_projection), clip.text_model
    else:
        vision = count(model.vision) + count(model.visual_projection)
        text, text_model = count(model.text), model.text.text_model
    return {
        "vision": vision,
        "text": text,
        "token_embedding": text_model.embeddings.token_embedding.weight.numel(),
        "total": count(model),
    }


def millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def text_columns(spec, model: Student, vocab_size: int) -> str:
    """The cells every table shares: text shape, embedding, context, parameter counts."""
    n = tower_counts(model)
    share = n["token_embedding"] / n["total"]
    small_vocab_total = n["total"] - (vocab_size - SMALL_VOCAB) * spec.text_width
    return (
        f"| {spec.text_width} / {spec.text_layers} / {spec.text_heads} "
        f"| {spec.embed_dim} | {spec.context_length} | {millions(n['vision'])} "
        f"| {millions(n['text'])} ({millions(n['token_embedding'])}, {share:.0%} of total) "
        f"| {millions(n['total'])} | {millions(small_vocab_total)}"
    )


def vit_table(names: list[str]) -> None:
    print(
        "| model | image | patch | vision width / depth / heads | text width / depth / heads "
        "| embed dim | context | vision params | text params (token emb.) | total params "
        f"| total, {SMALL_VOCAB:,}-token vocab | train GFLOP/sample |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for name in names:
        spec = MODEL_SPECS[name]
        model, tokenizer = create_model(name)
        train_flops = BACKWARD_FACTOR * sum(forward_flops(spec).values())
        print(
            f"| `{name}` | {spec.image_size} | {spec.patch_size} "
            f"| {spec.vision_width} / {spec.vision_layers} / {spec.vision_heads} "
            f"{text_columns(spec, model, tokenizer.vocab_size)} | {train_flops / 1e9:.2f} |"
        )


def tower_table(names: list[str]) -> None:
    print(
        "| model | image tower | image | tower shape | text width / depth / heads "
        "| embed dim | context | vision params | text params (token emb.) | total params "
        f"| total, {SMALL_VOCAB:,}-token vocab | train GFLOP/sample |\n"
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for name in names:
        spec = MODEL_SPECS[name]
        model, tokenizer = create_model(name)
        family = FAMILIES[spec.tower]
        size = spec.image_size
        texts = tokenizer(["a small red circle on the left"])
        forward = counted_forward_flops(name, torch.zeros(1, 3, size, size), texts)
        print(
            f"| `{name}` | {family.title} | {size} | {family.shape(model.vision.config)} "
            f"{text_columns(spec, model, tokenizer.vocab_size)} "
            f"| {BACKWARD_FACTOR * forward / 1e9:.2f} |"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    vits = [n for n in MODEL_SPECS if isinstance(MODEL_SPECS[n], ModelSpec)]
    vit_table([n for n in SIZE_ORDER if n in vits] + sorted(set(vits) - set(SIZE_ORDER)))
    print()
    towers = [n for n in MODEL_SPECS if isinstance(MODEL_SPECS[n], TowerSpec)]
    tower_table(sorted(towers, key=lambda n: (MODEL_SPECS[n].tower, MODEL_SPECS[n].image_size, n)))
    _, tokenizer = create_model("cpu-micro-32")
    print(f"\nvocabulary: {tokenizer.vocab_size:,} tokens (default MiniLM WordPiece)")


if __name__ == "__main__":
    main()
