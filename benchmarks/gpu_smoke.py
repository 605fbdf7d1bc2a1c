"""GPU smoke run of the 224 px recipe: bf16 ``vit-xs-16`` trained with CLIP and CLIP-PING.

    python3 benchmarks/gpu_smoke.py --out OUT_DIR            # on a CUDA machine, ~5 min
    python3 benchmarks/gpu_smoke.py --device cpu --model cpu-micro-32 --image-size 32 \\
        --num-train 512 --batch-size 32 --steps 6 --synthetic-steps 3 --workers 0 --out /tmp/s

Two measurements, each for CLIP, CLIP-PING with ``bank`` targets and with ``memory`` targets:

1. **The training loop** (``clip_ping.training.train.train``, as ``clip-ping train`` runs it) for
   ``--steps`` steps on a synthetic shapes corpus at ``--image-size`` px: samples/s (median of
   the logged windows after the first, which holds start-up), peak GPU memory allocated and
   reserved. Data loading is included: with few CPU workers it can be the limit.
2. **The step alone** on random pixels and token ids already on the GPU (no data loading):
   median ms per step over ``--synthetic-steps`` after 10 warm-up steps, so the ratio to
   CLIP is the compute overhead of the neighbour terms, heads, bank reads and memory writes.

Banks are random unit features stored as real banks (1280-d "image", 384-d "text": the sizes
of the offline teachers) built with ``--teacher npy:`` and mined exactly on the device, so no
teacher weights are needed; the neighbours are meaningless, their cost is real.

Writes ``OUT/gpu_smoke.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

VARIANTS = {
    "clip": {},
    "clip-ping bank": {"loss": "clip-ping", "neighbor_target": "bank"},
    "clip-ping memory": {"loss": "clip-ping", "neighbor_target": "memory"},
}
BANK_DIMS = {"image": 1280, "text": 384}


def prepare(work: Path, args) -> Path:
    """Shapes corpus and two random banks with top-10 tables; returns the train CSV."""
    from clip_ping.bank import build_bank, has_neighbor_table, mine_bank
    from clip_ping.data.loader import DataSpec
    from clip_ping.data.shapes import build_shapes

    info = build_shapes(work / "shapes", args.num_train, 64, args.image_size, seed=0)
    spec = DataSpec(str(info["train_csv"]))
    rng = np.random.default_rng(0)
    for modality, dim in BANK_DIMS.items():
        folder = work / f"{modality}_bank"
        if has_neighbor_table(folder):
            continue
        features = rng.standard_normal((args.num_train, dim)).astype(np.float32)
        np.save(work / f"{modality}.npy", features)
        teacher = f"npy:{work / f'{modality}.npy'}"
        build_bank(spec, modality, folder, teacher=teacher, workers=0, progress=False)
        mine_bank(folder, k=10, backend="exact", device=args.device, progress=False)
    return Path(info["train_csv"])


def config(work: Path, train_csv: Path, args, name: str, extra: dict):
    from clip_ping.training.config import build_config

    overrides = dict(
        train_data=str(train_csv),
        model=args.model,
        batch_size=args.batch_size,
        precision=args.precision,
        device=args.device,
        workers=args.workers,
        epochs=10_000,
        warmup=20,
        lr=1e-3,
        logs=str(work / "logs"),
        name=name,
        progress=False,
        log_every_steps=args.log_every,
        save_every_steps=0,
        val_frequency=0,
        stop_after_steps=args.steps,
        image_bank=str(work / "image_bank"),
        text_bank=str(work / "text_bank"),
        tokenizer=args.tokenizer,
    )
    overrides.update(extra)
    return build_config(overrides=overrides)


def peak_memory(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"peak_allocated_gib": float("nan"), "peak_reserved_gib": float("nan")}
    return {
        "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
    }


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def loop_run(work: Path, train_csv: Path, args, name: str, extra: dict) -> dict:
    """Phase 1: the real loop; samples/s and memory."""
    from clip_ping.training.train import train

    device = torch.device(args.device if args.device != "cuda" else "cuda:0")
    reset_peak(device)
    run_name = f"loop-{name.replace(' ', '-')}"
    started = time.perf_counter()
    run_dir = train(config(work, train_csv, args, run_name, extra))
    seconds = time.perf_counter() - started
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["train/samples_per_second"] for r in rows if "train/samples_per_second" in r]
    steady = rates[1:] or rates
    return {
        "variant": name,
        "samples_per_second": statistics.median(steady),
        "windows": len(rates),
        "wall_seconds": seconds,
        **peak_memory(device),
    }


def step_run(work: Path, train_csv: Path, args, name: str, extra: dict) -> dict:
    """Phase 2: the step alone on device-resident random inputs."""
    from clip_ping.data.loader import DataSpec
    from clip_ping.models import create_model
    from clip_ping.tokenizer import get_tokenizer
    from clip_ping.training.schedule import autocast_context, create_optimizer
    from clip_ping.training.task import create_task

    cfg = config(work, train_csv, args, f"step-{name}", extra)
    device = torch.device(args.device if args.device != "cuda" else "cuda:0")
    reset_peak(device)
    model, tokenizer = create_model(args.model, get_tokenizer(args.tokenizer), seed=0)
    model.to(device)
    task = create_task(cfg, model, DataSpec(str(train_csv)), device)
    optimizer = create_optimizer(task, cfg)
    g = torch.Generator().manual_seed(0)
    size, batch = model.image_size, args.batch_size
    images = torch.randn(batch, 3, size, size, generator=g).to(device)
    texts = torch.randint(0, tokenizer.vocab_size, (batch, tokenizer.context_length), generator=g)
    texts = texts.to(device)
    seconds = []
    for step in range(10 + args.synthetic_steps):
        indices = torch.randint(0, args.num_train, (batch,), generator=g)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with autocast_context(args.precision, device):
            loss, _, out = task({"image": images, "text": texts, "index": indices}, step, device)
        loss.backward()
        task.remember(indices, out)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= 10:
            seconds.append(time.perf_counter() - t0)
    ms = 1e3 * statistics.median(seconds)
    return {
        "variant": name,
        "ms_per_step": ms,
        "samples_per_second": batch / ms * 1e3,
        **peak_memory(device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_smoke_out")
    parser.add_argument("--work", default=None, help="scratch folder (default OUT/work)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="vit-xs-16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--precision", default="amp_bf16")
    parser.add_argument("--num-train", type=int, default=16384)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--synthetic-steps", type=int, default=50)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: MiniLM)")
    args = parser.parse_args()
    out = Path(args.out)
    work = Path(args.work) if args.work else out / "work"
    out.mkdir(parents=True, exist_ok=True)
    if args.device.startswith("cuda"):
        print("device:", torch.cuda.get_device_name(), "| torch", torch.__version__, flush=True)
    started = time.perf_counter()
    train_csv = prepare(work, args)
    print(f"corpus and banks ready in {time.perf_counter() - started:.0f} s", flush=True)
    loop, steps = [], []
    for name, extra in VARIANTS.items():
        loop.append(loop_run(work, train_csv, args, name, extra))
        print(json.dumps({"phase": "loop", **loop[-1]}), flush=True)
    for name, extra in VARIANTS.items():
        steps.append(step_run(work, train_csv, args, name, extra))
        print(json.dumps({"phase": "step", **steps[-1]}), flush=True)
    result = {"settings": vars(args), "loop": loop, "step": steps}
    (out / "gpu_smoke.json").write_text(json.dumps(result, indent=1) + "\n")
    clip_loop, clip_step = loop[0]["samples_per_second"], steps[0]["ms_per_step"]
    print(
        f"\n{args.model} {args.image_size} px, {args.precision}, batch {args.batch_size}, "
        f"{args.steps} loop steps, {args.workers} workers\n"
    )
    print(
        "| variant | loop samples/s | vs CLIP | peak alloc GiB | step ms (no data) "
        "| vs CLIP | peak alloc GiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for a, b in zip(loop, steps, strict=True):
        print(
            f"| {a['variant']} | {a['samples_per_second']:.0f} "
            f"| {a['samples_per_second'] / clip_loop:.3f} | {a['peak_allocated_gib']:.2f} "
            f"| {b['ms_per_step']:.1f} | {b['ms_per_step'] / clip_step:.3f} "
            f"| {b['peak_allocated_gib']:.2f} |"
        )


if __name__ == "__main__":
    main()
