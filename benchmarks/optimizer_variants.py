"""A/B of AdamW implementations on one cpu-small-64 training step (batch 64, fp32).

    .venv/bin/python benchmarks/optimizer_variants.py

The three variants take turns step by step (round-robin), so machine noise hits them alike;
the first two rounds are warm-up. Prints the median step time of each.
"""

from __future__ import annotations

import statistics
import time

import torch

from clip_ping.losses import ClipLoss
from clip_ping.models import create_model

VARIANTS = {
    "single-tensor": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


def main(rounds: int = 10, warmup: int = 2) -> None:
    runs = {}
    for name, options in VARIANTS.items():
        model, tokenizer = create_model("cpu-small-64", seed=0)
        runs[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4, **options))
    images = torch.randn(64, 3, 64, 64)
    texts = tokenizer(["a small red circle on the left"] * 64)
    loss_fn = ClipLoss()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (model, optimizer) in runs.items():
            start = time.perf_counter()
            out = model(images, texts)
            loss_fn(out["image_features"], out["text_features"], out["logit_scale"])[
                "clip_loss"
            ].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds[name].append(time.perf_counter() - start)
    for name, values in seconds.items():
        print(f"{name:14s} {1000 * statistics.median(values[warmup:]):6.0f} ms/step")


if __name__ == "__main__":
    main()
