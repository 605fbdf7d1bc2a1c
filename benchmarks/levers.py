"""A/B of the student's speed levers on full fp32 training steps, in one process.

    .venv/bin/python benchmarks/levers.py --out /tmp/levers.json

Variants (:data:`VARIANTS`): ``plain`` = transformers' own CLIP forward; ``activation`` = the
fused QuickGELU only; ``pooled`` = each tower's last block for the pooled token only;
``shipped`` = both, what ``create_model`` returns (``clip_ping.models.vit_fast``); ``qkv`` = plain with
q, k and v from one matmul (:class:`FusedQKVAttention`, not shipped); ``compiled`` = shipped
with each transformer block ``torch.compile``d (``clip_ping.models.vit_fast.compile_blocks``) and
``compiled-model`` = shipped with ``model.compile()``, as ``--torch-compile`` does to the
whole step; compile time is paid in the warm-up steps and not timed. A step is ``train_step.StepBench.step`` (forward, ``ClipLoss``,
backward, fused AdamW, ``clamp_logit_scale``) on the same inputs for every variant. Every
round times ``--steps-per-round`` steps of each variant, the order reversed every other round;
the speed-up of a variant over ``plain`` is taken within each round, and the table gives its
median and range over rounds. Before timing, each variant's embeddings are compared with
``plain``'s (same seed, same weights).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers.models.clip import modeling_clip
from transformers.models.clip.modeling_clip import CLIPAttention

from clip_ping.models import MODEL_SPECS, ClipStudent
from clip_ping.models.vit_fast import compile_blocks, unfuse_activations
from train_step import StepBench

DEFAULT_CONFIGS = ["cpu-mini-32:128", "cpu-small-64:128"]


class FusedQKVAttention(CLIPAttention):
    """transformers' CLIP attention with q, k and v from one matmul through the concatenated
    weights. A lever that lost its A/B (docs/benchmarks.md), so it lives here only."""

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, **kwargs):
        projections = (self.q_proj, self.k_proj, self.v_proj)
        batch, length, _ = hidden_states.shape
        weight = torch.cat([p.weight for p in projections])
        bias = torch.cat([p.bias for p in projections])
        qkv = F.linear(hidden_states, weight, bias)
        qkv = qkv.view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        queries, keys, values = qkv.unbind(0)  # (B, heads, S, head_dim) each
        attention = modeling_clip.ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, modeling_clip.eager_attention_forward
        )
        out, weights = attention(
            self,
            queries,
            keys,
            values,
            attention_mask,
            scaling=self.scale,
            dropout=self.dropout if self.training else 0.0,
            **kwargs,
        )
        return self.out_proj(out.reshape(batch, length, -1).contiguous()), weights


def transformers_path(model: ClipStudent) -> None:
    model.pooled_only = False
    unfuse_activations(model.clip)


def activation_only(model: ClipStudent) -> None:
    model.pooled_only = False


def fused_qkv(model: ClipStudent) -> None:
    transformers_path(model)
    for module in model.clip.modules():
        if type(module) is CLIPAttention:
            module.__class__ = FusedQKVAttention


#: Changes to the model ``create_model`` returns, each a lever or a set of them.
VARIANTS = {
    "plain": transformers_path,  # transformers' own CLIP forward
    "activation": activation_only,  # + the fused QuickGELU
    "pooled": lambda model: unfuse_activations(model.clip),  # + pooled-token last blocks
    "shipped": lambda model: None,  # both: what create_model gives
    "qkv": fused_qkv,  # plain + one q/k/v matmul (lost)
    "compiled": lambda model: compile_blocks(model.clip),  # shipped + compiled blocks
    "compiled-model": lambda model: model.compile(),  # shipped + the whole model compiled
}
COMPILED = ("compiled", "compiled-model")


def parse_config(text: str) -> tuple[str, int]:
    name, _, batch = text.partition(":")
    if name not in MODEL_SPECS or not batch.isdigit():
        raise argparse.ArgumentTypeError(f"'{text}': expected MODEL:BATCH, e.g. cpu-small-64:128")
    return name, int(batch)


def add_round_flags(
    parser: argparse.ArgumentParser, warmup_steps: int = 3, steps_per_round: int = 1
) -> None:
    """The timing flags of the interleaved benchmarks: threads, warm-up, rounds."""
    parser.add_argument("--threads", type=int, default=2, help="torch threads on the CPU")
    parser.add_argument("--warmup-steps", type=int, default=warmup_steps)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps-per-round", type=int, default=steps_per_round)


def interleaved_rounds(
    steps: dict[str, Callable[[], None]],
    batch_size: int,
    rounds: int,
    steps_per_round: int,
    sync: Callable[[], None] = lambda: None,
    warmup_steps: int = 0,
) -> dict[str, list[float]]:
    """Samples/s of each step function per round, the order reversed every other round,
    after ``warmup_steps`` untimed steps of each; ``sync`` waits for queued device work
    (``torch.cuda.synchronize``)."""
    for step in steps.values():
        for _ in range(warmup_steps):
            step()
    speeds: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(rounds):
        for name in list(steps) if r % 2 == 0 else list(reversed(steps)):
            sync()
            start = time.perf_counter()
            for _ in range(steps_per_round):
                steps[name]()
            sync()
            speeds[name].append(steps_per_round * batch_size / (time.perf_counter() - start))
    return speeds


def write_record(out: Path, args: argparse.Namespace, load_before, results, **versions) -> None:
    """Write a benchmark's JSON record to ``out``: date, torch (and ``versions``), threads,
    settings (``args``), load averages before and after, ``results``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {**vars(args), "configs": [f"{n}:{b}" for n, b in args.configs], "out": str(out)}
    record = {
        "date": date.today().isoformat(),
        "torch": torch.__version__,
        **versions,
        "threads": torch.get_num_threads(),
        "settings": settings,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "results": results,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {out}")


def ratios(a: list[float], b: list[float]) -> list[float]:
    return [x / y for x, y in zip(a, b, strict=True)]


def ratio_cell(values: list[float]) -> str:
    """Median and range, e.g. ``1.12 (1.05–1.20)``."""
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def embedding_difference(a: StepBench, b) -> float:
    """Largest absolute difference between the normalised embeddings of two steps' models
    (a :class:`StepBench` and one with the same ``model``, ``images``, ``texts``)."""
    with torch.no_grad():
        out_a, out_b = a.model(a.images, a.texts), b.model(b.images, b.texts)
    return max(
        (out_a[k] - out_b[k]).abs().max().item() for k in ("image_features", "text_features")
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs",
        nargs="+",
        type=parse_config,
        default=[parse_config(c) for c in DEFAULT_CONFIGS],
        metavar="MODEL:BATCH",
        help=f"default: {' '.join(DEFAULT_CONFIGS)}",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=[v for v in VARIANTS if v != "plain" and v not in COMPILED],
        help="compared with plain (default: all but the compiled ones, slow to warm up)",
    )
    add_round_flags(parser)
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    variants = ["plain", *[v for v in args.variants if v != "plain"]]

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, {args.rounds} "
        f"rounds × {args.steps_per_round} steps, load {load_before[0]:.2f}\n"
    )
    print("| model | batch | variant | samples/s | speed-up over plain | max embedding diff |")
    print("|---|---:|---|---:|---:|---:|", flush=True)
    results = []
    started = time.perf_counter()
    for name, batch in args.configs:
        benches = {v: StepBench.create(name, batch, VARIANTS[v]) for v in variants}
        differences = {v: embedding_difference(benches["plain"], b) for v, b in benches.items()}
        speeds = interleaved_rounds(
            {v: b.step for v, b in benches.items()},
            batch,
            args.rounds,
            args.steps_per_round,
            warmup_steps=args.warmup_steps,
        )
        results.append(
            {
                "model": name,
                "batch_size": batch,
                "samples_per_second_rounds": speeds,
                "max_embedding_difference": differences,
            }
        )
        for v in variants:  # each configuration as soon as it is measured
            speed_up = ratio_cell(ratios(speeds[v], speeds["plain"])) if v != "plain" else "1"
            print(
                f"| {name} | {batch} | {v} | {statistics.median(speeds[v]):.0f} | {speed_up} "
                f"| {differences[v]:.1e} |",
                flush=True,
            )
    print(f"\nload {os.getloadavg()[0]:.2f} after {time.perf_counter() - started:.0f} s")
    if args.out:
        write_record(args.out, args, load_before, results)


if __name__ == "__main__":
    main()
