"""Training-step throughput of the CPU students, measured against this machine's matmul peak.

    .venv/bin/python benchmarks/train_step.py --out /tmp/train_step.json

One step is what ``clip_ping.training.train`` does per batch in fp32: forward both towers, ``ClipLoss``,
backward, AdamW step (``create_optimizer`` with the default ``TrainConfig``), ``zero_grad``,
``model.clamp_logit_scale()``. Inputs are random pixels and real token ids from the model's own
tokenizer (the default MiniLM WordPiece); no data loading is timed. After warm-up steps, each
round times a step of every configuration in turn (round-robin) and one large ``torch.mm``, so
that noise from other processes on a shared machine falls on all of them alike; the table reports
medians over rounds (and, for a sense of the noise, the best round). Threads: torch's default
(one per core) unless ``--threads``. ``--profile MODEL`` adds a torch.profiler top-ops table.

Training FLOPs per sample are counted analytically, as 3 x the forward matmul FLOPs (backward
costs two matmuls per forward matmul: one for the input gradient, one for the weight gradient).
With ``P = (image_size / patch)^2`` patches, ``mlp_ratio = r`` and a multiply-add = 2 FLOPs:

    block(S, W)  = 2 * S * (4 + 2r) * W^2      q, k, v, out projections and the two MLP layers
                 + 4 * S^2 * W                  attention scores Q K^T and weights x V
    vision       = 2 * P * (3 * patch^2) * W_v  patch embedding (a strided convolution)
                 + L_v * block(P + 1, W_v)      (+1: the class token)
                 + 2 * W_v * d                  projection of the pooled token
    text         = L_t * block(C, W_t)          C = context length (padded; attention is dense)
                 + 2 * W_t * d
    train/sample = 3 * (vision + text)

These are the model's FLOPs as transformers runs it. clip-ping's step does less: it runs each
tower's last block for the pooled token only (``clip_ping.models.vit_fast``), which skips about 5/6 of
that block, so "% of mm peak" understates how busy the matmuls are by that much.

Not counted: the token-embedding lookup (a gather, not a matmul), layer norms, softmax, GELU,
the AdamW update and the ``B x B`` contrastive logits (``2 * B * d`` per sample, < 0.1% here).
The count is checked against ``torch.utils.flop_counter.FlopCounterMode`` on one forward of an
eager-attention copy (the counter has no formula for CPU scaled-dot-product attention).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from clip_ping.losses import ClipLoss
from clip_ping.models import MODEL_SPECS, ClipStudent, ModelSpec, create_model
from clip_ping.training.config import TrainConfig
from clip_ping.training.schedule import autocast_context, create_optimizer

# The ViT students (the FLOP formula below is theirs); models/towers.py's are in model_sizes.py.
CPU_MODELS = [n for n, s in MODEL_SPECS.items() if n.startswith("cpu-") and s.tower == "vit"]
MATMUL_SIZE = 2048  # square fp32 torch.mm whose speed stands for the machine's peak
BACKWARD_FACTOR = 3  # forward + backward = 3 x forward matmul FLOPs
SEED = 0

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
SHAPES = ["circle", "square", "triangle", "star", "heart", "hexagon", "cross", "ring"]
SCENES = ["a photo of a {} {}", "a small {} {} on a plain background", "an emoji of a {} {}"]


# --------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------


def block_flops(seq_len: int, width: int, mlp_ratio: int) -> int:
    """Forward matmul FLOPs of one pre-norm transformer block on ``seq_len`` tokens."""
    projections = 2 * seq_len * (4 + 2 * mlp_ratio) * width**2
    attention = 4 * seq_len**2 * width
    return projections + attention


def forward_flops(spec: ModelSpec) -> dict[str, int]:
    """Forward matmul FLOPs per sample of each tower (formula in the module docstring)."""
    patches = (spec.image_size // spec.patch_size) ** 2
    vision = (
        2 * patches * 3 * spec.patch_size**2 * spec.vision_width
        + spec.vision_layers * block_flops(patches + 1, spec.vision_width, spec.mlp_ratio)
        + 2 * spec.vision_width * spec.embed_dim
    )
    text = spec.text_layers * block_flops(spec.context_length, spec.text_width, spec.mlp_ratio) + (
        2 * spec.text_width * spec.embed_dim
    )
    return {"vision": vision, "text": text}


def counted_forward_flops(name: str, images: torch.Tensor, texts: torch.Tensor) -> float:
    """FLOPs per sample that ``FlopCounterMode`` sees in one forward of an eager-attention copy."""
    model, _ = create_model(name, seed=SEED)
    model.eval()  # BatchNorm towers cannot train on one sample of 1 x 1 maps; same FLOPs
    if model.tower == "vit":
        model.pooled_only = False  # the formula counts whole last blocks, as transformers runs
    text = model.clip if model.tower == "vit" else model.text
    text.set_attn_implementation("eager")  # SDPA on CPU has no flop formula
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images, texts)
    return counter.get_total_flops() / images.shape[0]


def parameter_count(model: ClipStudent) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------


def captions(count: int, rng: random.Random) -> list[str]:
    return [
        rng.choice(SCENES).format(rng.choice(COLOURS), rng.choice(SHAPES)) for _ in range(count)
    ]


@dataclass
class StepBench:
    """One (model, batch size) configuration, ready to run training steps."""

    name: str
    batch_size: int
    model: ClipStudent
    optimizer: torch.optim.Optimizer
    loss_fn: ClipLoss
    images: torch.Tensor  # (B, 3, H, W)
    texts: torch.Tensor  # (B, context_length)
    precision: str = "fp32"  # --precision: amp_bf16 steps under bf16 autocast

    @classmethod
    def create(
        cls,
        name: str,
        batch_size: int,
        variant: Callable[[ClipStudent], object] | None = None,
        device: str = "cpu",
        precision: str = "fp32",
    ) -> StepBench:
        """``variant`` changes the model ``create_model`` gives (``levers.VARIANTS``)."""
        model, tokenizer = create_model(name, seed=SEED)
        if variant is not None:
            variant(model)
        model.to(device).train()
        generator = torch.Generator().manual_seed(SEED)
        size = model.image_size
        images = torch.randn(batch_size, 3, size, size, generator=generator).to(device)
        texts = tokenizer(captions(batch_size, random.Random(SEED))).to(device)
        optimizer = create_optimizer(model, TrainConfig())
        return cls(name, batch_size, model, optimizer, ClipLoss(), images, texts, precision)

    def step(self) -> None:
        with autocast_context(self.precision, self.images.device):
            out = self.model(self.images, self.texts)
            terms = self.loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        sum(terms.values()).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.clamp_logit_scale()

    def samples_per_second(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        return steps * self.batch_size / (time.perf_counter() - start)


def matmul_gflops(size: int = MATMUL_SIZE) -> float:
    """fp32 GFLOP/s of one ``(size, size) @ (size, size)`` ``torch.mm``."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    start = time.perf_counter()
    torch.mm(a, b)
    return 2 * size**3 / (time.perf_counter() - start) / 1e9


def profile_step(bench: StepBench, steps: int, rows: int) -> str:
    """Top ops by self CPU time over ``steps`` training steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            bench.step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def markdown_table(rows: list[dict]) -> str:
    header = (
        "| model | batch | params (M) | train GFLOP/sample | samples/s | GFLOP/s | % of mm peak "
        "| best round: samples/s |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [
        f"| {r['model']} | {r['batch_size']} | {r['params'] / 1e6:.2f} "
        f"| {r['train_flops_per_sample'] / 1e9:.3f} | {r['samples_per_second']:.0f} "
        f"| {r['achieved_gflops']:.1f} | {r['peak_share_percent']:.0f} "
        f"| {max(r['samples_per_second_rounds']):.0f} |"
        for r in rows
    ]
    return "\n".join([header, *lines])


def flop_check_table(rows: list[dict]) -> str:
    header = (
        "| model | fwd MFLOP/sample (formula) | fwd MFLOP/sample (FlopCounterMode) | ratio |\n"
        "|---|---:|---:|---:|"
    )
    per_model = {r["model"]: r for r in rows}  # the count does not depend on the batch
    lines = [
        f"| {r['model']} | {r['forward_flops_per_sample'] / 1e6:.1f} "
        f"| {r['counted_forward_flops_per_sample'] / 1e6:.1f} "
        f"| {r['counted_forward_flops_per_sample'] / r['forward_flops_per_sample']:.4f} |"
        for r in per_model.values()
    ]
    return "\n".join([header, *lines])


def parse_config(text: str) -> tuple[str, int]:
    name, _, batch = text.partition(":")
    if name not in MODEL_SPECS or not batch.isdigit():
        raise argparse.ArgumentTypeError(f"'{text}': expected MODEL:BATCH, e.g. cpu-small-64:128")
    return name, int(batch)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=CPU_MODELS, choices=sorted(MODEL_SPECS))
    parser.add_argument("--batch-size", type=int, default=64, help="batch of every --models")
    parser.add_argument(
        "--extra",
        nargs="*",
        type=parse_config,
        default=[("cpu-small-64", 128)],
        metavar="MODEL:BATCH",
        help="further configurations (default cpu-small-64:128)",
    )
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed steps per config")
    parser.add_argument("--rounds", type=int, default=9, help="round-robin rounds (median)")
    parser.add_argument("--steps-per-round", type=int, default=1)
    parser.add_argument("--matmul-repeats", type=int, default=1, help="torch.mm timings a round")
    parser.add_argument(
        "--profile",
        metavar="MODEL",
        choices=sorted(MODEL_SPECS),
        help="also print a torch.profiler top-ops table",
    )
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    configs = [(name, args.batch_size) for name in args.models] + list(args.extra)
    load_before = os.getloadavg()
    benches = [StepBench.create(name, batch) for name, batch in configs]

    checked: dict[str, float] = {}
    for bench in benches:
        if bench.name not in checked:
            checked[bench.name] = counted_forward_flops(bench.name, bench.images, bench.texts)

    for bench in benches:
        for _ in range(args.warmup_steps):
            bench.step()
    matmul_gflops()  # first call pays for allocation and thread start-up

    speeds: dict[int, list[float]] = {i: [] for i in range(len(benches))}
    peaks: list[float] = []
    started = time.perf_counter()
    for _ in range(args.rounds):
        peaks += [matmul_gflops() for _ in range(args.matmul_repeats)]
        for i, bench in enumerate(benches):
            speeds[i].append(bench.samples_per_second(args.steps_per_round))
    timed_seconds = time.perf_counter() - started
    peak = statistics.median(peaks)

    rows = []
    for i, bench in enumerate(benches):
        spec = MODEL_SPECS[bench.name]
        # Other image towers have no formula here: their counted FLOPs stand in.
        flops = forward_flops(spec) if spec.tower == "vit" else {"counted": checked[bench.name]}
        forward = sum(flops.values())
        train = BACKWARD_FACTOR * forward
        speed = statistics.median(speeds[i])
        rows.append(
            {
                "model": bench.name,
                "batch_size": bench.batch_size,
                "params": parameter_count(bench.model),
                "forward_flops_per_sample": forward,
                "forward_flops_per_sample_by_tower": flops,
                "counted_forward_flops_per_sample": checked[bench.name],
                "train_flops_per_sample": train,
                "samples_per_second": speed,
                "samples_per_second_rounds": speeds[i],
                "achieved_gflops": speed * train / 1e9,
                "peak_share_percent": 100 * speed * train / 1e9 / peak,
            }
        )

    result = {
        "date": date.today().isoformat(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "settings": {
            **{k: v for k, v in vars(args).items() if k not in {"out", "profile"}},
            "extra": [f"{name}:{batch}" for name, batch in args.extra],
        },
        "timed_seconds": timed_seconds,
        "matmul": {"size": MATMUL_SIZE, "gflops_median": peak, "gflops_runs": peaks},
        "results": rows,
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32")
    print(
        f"matmul peak ({MATMUL_SIZE}^3 torch.mm): median {peak:.1f} GFLOP/s over {len(peaks)}, "
        f"best {max(peaks):.1f}"
    )
    print(f"load average before/after: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f}\n")
    print(markdown_table(rows))
    print()
    print(flop_check_table(rows))

    if args.profile:
        bench = next((b for b in benches if b.name == args.profile), None)
        bench = bench or StepBench.create(args.profile, args.batch_size)
        print(f"\ntorch.profiler, {args.profile} batch {bench.batch_size}, 3 steps:")
        print(profile_step(bench, steps=3, rows=20))

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
