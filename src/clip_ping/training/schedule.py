"""Optimiser, learning-rate schedule and numeric precision of a training run."""

from __future__ import annotations

import contextlib
import math

import torch

from .config import TrainConfig


def create_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on gains, biases, embeddings' norms or the logit scale
    (1-d parameters), as in CLIP and open_clip."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "logit_scale" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.wd}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel was the fastest AdamW here (benchmarks/optimizer_variants.py).
    fused = all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in decay + no_decay
    )
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused or None
    )


def cosine_lr(step: int, base_lr: float, warmup: int, total_steps: int) -> float:
    """Linear warm-up to ``base_lr`` over ``warmup`` steps, then cosine decay to 0."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def neighbor_ramp(step: int, warmup_steps: int) -> float:
    """Weight of the neighbour terms at ``step``: linear from 1/warmup to 1 (0: always 1)."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


def ramp_warning(warmup_steps: int, total_steps: int) -> str | None:
    """The warning for a neighbour warm-up the run never finishes (None if it does)."""
    if warmup_steps <= total_steps:
        return None
    return (
        f"--neighbor-warmup {warmup_steps} is longer than the run ({total_steps} steps): the "
        f"neighbour weights end at {neighbor_ramp(total_steps - 1, warmup_steps):.2f} of their "
        "value; shorten the warm-up or train longer"
    )


def autocast_context(precision: str, device: torch.device):
    """The autocast of ``--precision`` on ``device`` (fp32: none)."""
    if precision == "amp":
        if device.type != "cuda":
            raise ValueError("--precision amp (fp16) needs CUDA; use amp_bf16 or fp32 on CPU")
        return torch.autocast("cuda", dtype=torch.float16)
    if precision == "amp_bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def create_scaler(precision: str) -> torch.amp.GradScaler:
    """fp16 needs loss scaling; other precisions get a scaler that passes through."""
    return torch.amp.GradScaler("cuda", enabled=precision == "amp")
