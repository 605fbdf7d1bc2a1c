"""Per-step cost of CLIP-PING over plain CLIP: same student, batch and data, interleaved.

    .venv/bin/python benchmarks/overhead.py [--model cpu-small-64] [--batch-size 64]

Builds (once, cached under --work) a shapes corpus, its EfficientNet-Lite0 / MiniLM banks and
top-5 neighbour tables, loads a few real batches into memory, then times full training steps —
neighbour draw and target fetch from the memory-mapped banks (or the student memory),
forward, all loss terms, backward, AdamW — for `clip`, `clip-ping` with bank targets and with
memory targets, and with the active source (teachers on the batch + online search), and the
guidance family (`distill`, `fd`, `distill-fd`, `relational`, `distill-nn` at its full
neighbour weight, the start of its decay; `--variants` picks).
Variants take turns step by step (round-robin) so machine noise hits them
alike; prints the median ms/step and the ratio to CLIP. Data loading is excluded: it is
the same for every variant.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from clip_ping.bank import build_bank, has_neighbor_table, mine_bank
from clip_ping.data.loader import DataSpec, build_train_data
from clip_ping.data.shapes import build_shapes
from clip_ping.data.transforms import TrainTransform
from clip_ping.models import create_model
from clip_ping.training.config import build_config
from clip_ping.training.schedule import create_optimizer
from clip_ping.training.task import create_task

TEACHER_SIZE = 128  # the image bank's input size
VARIANTS = ["clip", "clip-ping-bank", "clip-ping-memory", "clip-ping-bank-active"]
OTHER_METHODS = ["distill", "fd", "distill-fd", "relational", "distill-nn"]


def prepare(work: Path, image_size: int, num_train: int) -> DataSpec:
    corpus = work / "shapes"
    build_shapes(corpus, num_train=num_train, num_val=64, image_size=image_size, seed=0)
    spec = DataSpec(str(corpus / "train.csv"))
    for modality in ("image", "text"):
        bank = work / modality
        build_bank(spec, modality, bank, image_size=TEACHER_SIZE if modality == "image" else None)
        if not has_neighbor_table(bank):
            mine_bank(bank, k=5, backend="exact")
    return spec


def variant(name: str, spec: DataSpec, work: Path, args):
    overrides = dict(train_data=spec.train_data, model=args.model, batch_size=args.batch_size)
    if name in OTHER_METHODS:  # the guidance family: their own --loss, the same banks
        banks = dict(image_bank=str(work / "image"), text_bank=str(work / "text"))
        overrides.update(loss=name, **banks)
    elif name != "clip":
        overrides.update(
            loss="clip-ping",
            image_bank=str(work / "image"),
            text_bank=str(work / "text"),
            neighbor_target="memory" if name.endswith("memory") else "bank",
            neighbor_source="active" if name.endswith("active") else "offline",
        )
    cfg = build_config(overrides=overrides)
    model, _ = create_model(args.model, seed=0)
    task = create_task(cfg, model, spec, torch.device("cpu"))
    return task, create_optimizer(task, cfg)


def run_step(task, optimizer, batch, step_index: int) -> None:
    loss, _, out = task(batch, step_index)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    task.remember(batch["index"], out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cpu-small-64")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--warmup-rounds", type=int, default=2)
    parser.add_argument("--work", default="/tmp/clip_ping_overhead")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=VARIANTS + OTHER_METHODS,
        choices=VARIANTS + OTHER_METHODS,
        help="what to time (clip is always timed, as the baseline)",
    )
    args = parser.parse_args()
    work = Path(args.work)
    model, tokenizer = create_model(args.model)
    spec = prepare(work, model.image_size, num_train=2048)
    # Teacher views ride along for the active variant (the others ignore them).
    transform = TrainTransform(model.image_size, teacher_size=TEACHER_SIZE)
    data = build_train_data(spec, transform, tokenizer, seed=0)
    loader = data.loader(0, 0, args.batch_size, workers=0)
    batches = [b for _, b in zip(range(8), loader, strict=False)]
    names = ["clip", *(n for n in args.variants if n != "clip")]
    variants = {n: variant(n, spec, work, args) for n in names}
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name, (task, optimizer) in variants.items():
            batch = batches[r % len(batches)]
            start = time.perf_counter()
            run_step(task, optimizer, batch, r)
            seconds[name].append(time.perf_counter() - start)
    base = statistics.median(seconds["clip"][args.warmup_rounds :])
    print(f"{args.model}, batch {args.batch_size}, {args.rounds - args.warmup_rounds} rounds")
    print("| variant | ms/step (median) | vs CLIP |\n|---|---:|---:|")
    for name, values in seconds.items():
        median = statistics.median(values[args.warmup_rounds :])
        print(f"| {name} | {1000 * median:.0f} | {median / base:.3f}× |")


if __name__ == "__main__":
    main()
