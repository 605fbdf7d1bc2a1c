"""Cost of ``--accum-freq`` with the whole batch's negatives against plain accumulation.

Plain accumulation (what the trainer did before): each micro-batch is embedded once with
gradient and scored against itself alone. The trainer's accumulation
(:func:`clip_ping.training.accumulate.accumulate_gradients`, open_clip's way): every micro-batch is first
embedded without gradient, then again with gradient, scored against the whole batch. The
extra cost is one forward without gradient per micro-batch, plus logits over the whole
batch. Both run in one process, in alternating rounds, on the same inputs; the table gives
the median time of an optimiser step's gradients and the ratio.

    python benchmarks/accumulation.py --model cpu-mini-32 --batch-size 128 --accum-freq 4
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from clip_ping.guidance import bank_targets
from clip_ping.losses import ClipLoss, NeighborLoss, NeighborTargets, total
from clip_ping.models import create_model
from clip_ping.training.accumulate import accumulate_gradients
from clip_ping.training.task import ContrastiveStep

BANK_DIMS = (1280, 384)  # EfficientNet-Lite0 and MiniLM features
NUM_SAMPLES = 4096


def inputs(model, tokenizer, batch: int, accum: int, generator: torch.Generator):
    size, micro = model.image_size, batch // accum
    images = torch.randn(batch, 3, size, size, generator=generator)
    texts = torch.randint(
        0, tokenizer.vocab_size, (batch, tokenizer.context_length), generator=generator
    )
    parts = [
        (images[i * micro : (i + 1) * micro], texts[i * micro : (i + 1) * micro])
        for i in range(accum)
    ]
    image_bank = F.normalize(torch.randn(NUM_SAMPLES, BANK_DIMS[0], generator=generator), dim=-1)
    text_bank = F.normalize(torch.randn(NUM_SAMPLES, BANK_DIMS[1], generator=generator), dim=-1)
    neighbors = torch.randint(0, NUM_SAMPLES, (2, batch), generator=generator)
    targets = bank_targets(image_bank.numpy(), text_bank.numpy(), *neighbors)
    return parts, targets


def plain(step, parts, targets: NeighborTargets | None) -> None:
    micro = len(parts[0][0])
    for i, (images, texts) in enumerate(parts):
        part = None
        if targets is not None:
            part = NeighborTargets(
                **{
                    k: None if v is None else v[i * micro : (i + 1) * micro]
                    for k, v in vars(targets).items()
                }
            )
        terms, _ = step(images, texts, part)
        (total(terms, step.summed) / len(parts)).backward()


def whole_batch(step, parts, targets: NeighborTargets | None) -> None:
    accumulate_gradients(
        step, step.model, parts, targets, 1.0, step.summed, lambda loss: loss.backward()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cpu-mini-32")
    parser.add_argument("--batch-size", type=int, default=128, help="the accumulated batch")
    parser.add_argument("--accum-freq", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--warmup-rounds", type=int, default=2)
    args = parser.parse_args()
    model, tokenizer = create_model(args.model, seed=0)
    parts, targets = inputs(
        model, tokenizer, args.batch_size, args.accum_freq, torch.Generator().manual_seed(0)
    )
    print(
        f"{args.model}, batch {args.batch_size} = {args.accum_freq} × "
        f"{args.batch_size // args.accum_freq}, {torch.get_num_threads()} threads, "
        f"{args.rounds - args.warmup_rounds} rounds\n"
    )
    print("| objective | plain accumulation (ms) | whole-batch negatives (ms) | ratio |")
    print("|---|---:|---:|---:|")
    for objective in ("clip", "clip-ping"):
        terms = {"clip": ClipLoss()}
        if objective == "clip-ping":
            terms["neighbor"] = NeighborLoss(
                model.embed_dim, image_bank_dim=BANK_DIMS[0], text_bank_dim=BANK_DIMS[1]
            )
        step = ContrastiveStep(model, terms)
        batch_targets = targets if objective == "clip-ping" else None
        seconds: dict[str, list[float]] = {"plain": [], "whole": []}
        for _ in range(args.rounds):
            for name, run in (("plain", plain), ("whole", whole_batch)):
                start = time.perf_counter()
                run(step, parts, batch_targets)
                seconds[name].append(time.perf_counter() - start)
                step.zero_grad(set_to_none=True)
        plain_ms, whole_ms = (
            1e3 * statistics.median(seconds[n][args.warmup_rounds :]) for n in ("plain", "whole")
        )
        print(f"| {objective} | {plain_ms:.0f} | {whole_ms:.0f} | {whole_ms / plain_ms:.2f}× |")


if __name__ == "__main__":
    main()
