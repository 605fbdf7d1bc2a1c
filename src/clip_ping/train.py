"""The training loop: one process or torchrun, CPU or GPU.

    clip-ping train --train-data shapes/train.csv --val-data shapes/val.csv \\
        --model cpu-small-64 --epochs 4 --batch-size 64 --name shapes
    torchrun --nproc_per_node 8 -m clip_ping.cli train --config configs/cc3m-vit-xs.yaml

A run lives in ``logs/<name>/``: ``config.yaml`` (resolved), ``out.log``,
``metrics.jsonl``, ``tensorboard/``, ``checkpoints/latest.pt`` (every
``--save-every-steps`` and at the end of each epoch), ``hf/`` (the exported
``transformers.CLIPModel``) and ``results/``.

``--resume latest`` continues mid-epoch exactly: weights, AdamW moments, step count (the
learning rate is a function of it), the AMP scaler, RNG states and the data position are
all in the checkpoint, and a sample's augmentation depends only on (seed, epoch, index).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .config import TrainConfig, save_yaml
from .data.bad_samples import BadSampleLog
from .data.loader import DataSpec, build_train_data
from .data.transforms import TrainTransform
from .distributed import DistInfo, barrier, cleanup, init_distributed, is_distributed
from .io import atomic_torch_save, atomic_write, atomic_write_text
from .losses import TOTAL_TERMS, ClipLoss, NeighborLoss, NeighborTargets
from .models import create_model, export_hf, load_checkpoint_file
from .tokenizer import get_tokenizer

log = logging.getLogger("clip_ping")


# --------------------------------------------------------------------------------------
# Pieces the loop is assembled from
# --------------------------------------------------------------------------------------


def cosine_lr(step: int, base_lr: float, warmup: int, total_steps: int) -> float:
    """Linear warm-up to ``base_lr`` over ``warmup`` steps, then cosine decay to 0."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(1.0, progress)))


class TrainStep(torch.nn.Module):
    """Student and losses in one module, so DDP, ``torch.compile``, the optimiser and the
    checkpoint see every trained parameter (the neighbour heads too)."""

    def __init__(self, model, clip_loss: ClipLoss, neighbor_loss: NeighborLoss | None = None):
        super().__init__()
        self.model, self.clip_loss, self.neighbor_loss = model, clip_loss, neighbor_loss

    def forward(
        self,
        images: torch.Tensor,
        texts: torch.Tensor,
        targets: NeighborTargets | None = None,
        ramp: float = 1.0,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(named loss terms, model outputs)``; the loop sums ``TOTAL_TERMS``."""
        out = self.model(images, texts)
        features = (out["image_features"], out["text_features"], out["logit_scale"])
        terms = self.clip_loss(*features)
        if self.neighbor_loss is not None:
            terms.update(self.neighbor_loss(*features, targets, ramp))
        return terms, out


def build_guidance(cfg: TrainConfig, spec: DataSpec, embed_dim: int, device):
    """``(NeighborLoss, NeighborGuidance)`` for ``--loss clip-ping``; banks are validated
    against the training data before any step."""
    from .bank import Bank
    from .guidance import NeighborGuidance
    from .memory import StudentMemory

    image_bank, text_bank = Bank(cfg.image_bank), Bank(cfg.text_bank)
    for bank, modality in ((image_bank, "image"), (text_bank, "text")):
        if bank.modality != modality:
            raise ValueError(
                f"--{modality}-bank {bank.path} holds {bank.modality} features; pass the "
                f"{modality} bank"
            )
        bank.check_dataset(spec)
    memory = None
    if cfg.neighbor_target == "memory":
        # One row per bank row (= stable index), not per sample of an epoch, which
        # --train-num-samples may make smaller or larger. Kept in host memory: see memory.py.
        memory = StudentMemory(len(image_bank), embed_dim)
    loss = NeighborLoss(
        embed_dim, image_bank.dim, text_bank.dim, cfg.neighbor_target, cfg.nn_weight,
        cfg.xnn_weight, cfg.aux_temperature, cfg.local_loss, cfg.gather_with_grad,
    )  # fmt: skip
    active = None
    if cfg.neighbor_source == "active":
        from .guidance import ActiveTeachers

        active = ActiveTeachers(image_bank, text_bank, device)
    guidance = NeighborGuidance(
        image_bank, text_bank, cfg.neighbor_k, cfg.neighbor_target, memory, cfg.seed, active
    )
    return loss.to(device), guidance


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


def autocast_context(precision: str, device: torch.device):
    if precision == "amp":
        if device.type != "cuda":
            raise ValueError("--precision amp (fp16) needs CUDA; use amp_bf16 or fp32 on CPU")
        return torch.autocast("cuda", dtype=torch.float16)
    if precision == "amp_bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    random.setstate(state["python"])


def keep_copy(checkpoint: Path, name: str) -> Path:
    """Keep ``checkpoint`` under ``name`` too: a hard link (free; ``latest.pt`` is later
    replaced, not rewritten in place), or an atomic copy where links are not supported."""
    target = checkpoint.with_name(name)
    target.unlink(missing_ok=True)
    try:
        os.link(checkpoint, target)
    except OSError:
        atomic_write(target, lambda f: f.write(checkpoint.read_bytes()))
    return target


def setup_logging(run_dir: Path, is_main: bool) -> None:
    log.handlers.clear()
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    log.propagate = False
    fmt = logging.Formatter("%(asctime)s | %(levelname)s | %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if is_main:
        handlers.append(logging.FileHandler(run_dir / "out.log"))
    for handler in handlers:
        handler.setFormatter(fmt)
        log.addHandler(handler)


class MetricsLog:
    """``metrics.jsonl`` (one JSON object per logged step or eval) and TensorBoard."""

    def __init__(self, run_dir: Path, resumed_step: int | None):
        self.path = run_dir / "metrics.jsonl"
        if resumed_step is not None and self.path.exists():
            # A killed run may have logged steps after its last checkpoint: drop them so the
            # resumed run's lines are not duplicated.
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resumed_step
            ]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        from torch.utils.tensorboard import SummaryWriter

        self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, step: int, values: dict[str, float], **extra) -> None:
        record = {"step": step, **extra, **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in values.items():
            self.tensorboard.add_scalar(key, value, step)
        self.tensorboard.flush()

    def close(self) -> None:
        self.tensorboard.close()


def resolve_run_dir(cfg: TrainConfig) -> tuple[Path, Path | None]:
    """(run folder, checkpoint to resume from or None), with the errors a user can act on."""
    if cfg.resume == "latest" and not cfg.name:
        raise ValueError("--resume latest needs --name of the run to continue")
    name = cfg.name or datetime.now().strftime("%Y_%m_%d-%H_%M_%S")
    run_dir = Path(cfg.logs) / name
    if cfg.resume is None:
        if (run_dir / "config.yaml").exists():
            raise ValueError(
                f"run folder {run_dir} already exists; pass --resume latest to continue it "
                "or choose another --name"
            )
        return run_dir, None
    if cfg.resume == "latest":
        latest = run_dir / "checkpoints" / "latest.pt"
        return run_dir, latest if latest.is_file() else None
    checkpoint = Path(cfg.resume)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"--resume {cfg.resume}: no such checkpoint file")
    return run_dir, checkpoint


def load_resume_checkpoint(path: Path, latest: bool) -> tuple[dict, Path]:
    """Load the checkpoint to resume from. For ``--resume latest``, an unreadable
    ``latest.pt`` (written by another tool, damaged on disk) falls back to the newest
    readable ``epoch_N.pt`` beside it, with a warning."""
    try:
        return load_checkpoint_file(path), path
    except ValueError as exc:
        if not latest:
            raise
        error = exc
    epochs = sorted(path.parent.glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    for older in reversed(epochs):
        try:
            checkpoint = load_checkpoint_file(older)
        except ValueError:
            continue
        log.warning("%s is unreadable (%s); resuming from %s instead", path, error, older)
        return checkpoint, older
    raise error


def common_batch(batch: dict) -> dict:
    """Under torchrun, cut every rank's batch to the smallest good count of any rank: the
    gathered features must have one size per rank. Single process: ``batch`` unchanged.
    (Cut samples are not trained on this epoch; with few bad samples that is rare.)"""
    if not is_distributed():
        return batch
    size = torch.tensor(len(batch["index"]))
    torch.distributed.all_reduce(size, torch.distributed.ReduceOp.MIN)
    keep = int(size)
    if keep == len(batch["index"]):
        return batch
    return {k: v if k == "bad_samples" else v[:keep] for k, v in batch.items()}


def nonfinite_message(step: int, last_saved: int | None, run_dir: Path) -> str:
    saved = (
        f"the last good checkpoint is {run_dir / 'checkpoints' / 'latest.pt'} (step {last_saved})"
        if last_saved is not None
        else "no checkpoint was written yet"
    )
    return (
        f"non-finite loss (NaN or inf) at step {step + 1}; stopped without applying it, and "
        f"{saved}. Lower --lr, set --grad-clip-norm or --precision fp32, or pass "
        "--skip-nonfinite to skip such steps (counted as train/nonfinite_steps)"
    )


def remove_stale_temporaries(checkpoints: Path) -> None:
    """Delete the temporary files of checkpoint writes that a killed run left behind."""
    for stale in checkpoints.glob(".*.tmp"):
        stale.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------


def train(cfg: TrainConfig) -> Path:
    """Train a student with ``cfg``; return the run folder."""
    info = init_distributed(cfg.device)
    try:
        return _train(cfg, info)
    finally:
        cleanup()


def _train(cfg: TrainConfig, info: DistInfo) -> Path:
    autocast_context(cfg.precision, info.device)  # fail on an impossible precision before any work
    run_dir, resume_from = resolve_run_dir(cfg)
    if info.is_main:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir / "checkpoints")
    barrier()
    setup_logging(run_dir, info.is_main)
    device = info.device
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)

    checkpoint = None
    if resume_from:
        checkpoint, resume_from = load_resume_checkpoint(resume_from, cfg.resume == "latest")
    if checkpoint is not None and checkpoint["model_name"] != cfg.model:
        raise ValueError(
            f"--resume {resume_from} holds a '{checkpoint['model_name']}' model but --model is "
            f"'{cfg.model}'; resume with --model {checkpoint['model_name']} or start a new run"
        )
    from .models import get_model_spec

    context_length = get_model_spec(cfg.model).context_length
    tokenizer = get_tokenizer(cfg.tokenizer, context_length=context_length)
    model, tokenizer = create_model(cfg.model, tokenizer, seed=cfg.seed)
    model.to(device)

    spec = DataSpec(
        train_data=cfg.train_data,
        dataset_type=cfg.dataset_type,
        csv_img_key=cfg.csv_img_key,
        csv_caption_key=cfg.csv_caption_key,
        csv_separator=cfg.csv_separator,
        train_num_samples=cfg.train_num_samples,
        on_bad_sample=cfg.on_bad_sample,
        max_bad_share=cfg.max_bad_share,
        dataset_resampled=cfg.dataset_resampled,
    )
    data = build_train_data(
        spec, TrainTransform(model.image_size), tokenizer, cfg.seed, info.rank, info.world_size
    )
    steps_per_epoch = data.batches_per_epoch(cfg.batch_size) // cfg.accum_freq
    if steps_per_epoch < 1:
        raise ValueError(
            f"--batch-size {cfg.batch_size} × --accum-freq {cfg.accum_freq} × {info.world_size} "
            f"process(es) needs more than the {data.num_samples} training samples; lower them"
        )
    total_steps = steps_per_epoch * cfg.epochs

    neighbor_loss, guidance = None, None
    if cfg.loss == "clip-ping":
        neighbor_loss, guidance = build_guidance(cfg, spec, model.embed_dim, device)
    memory = guidance.memory if guidance else None
    train_step = TrainStep(model, ClipLoss(cfg.local_loss, cfg.gather_with_grad), neighbor_loss)
    optimizer = create_optimizer(train_step, cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "amp")
    step, epoch, batch_in_epoch = 0, 0, 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        if neighbor_loss is not None:
            neighbor_loss.load_state_dict(checkpoint["neighbor_loss"])
        if memory is not None:
            memory.load_state_dict(checkpoint["memory"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        set_rng_state(checkpoint["rng"])
        step, epoch, batch_in_epoch = checkpoint["step"], checkpoint["epoch"], checkpoint["batch"]
        log.info(
            "resumed from %s at step %d (epoch %d, batch %d)",
            resume_from,
            step,
            epoch,
            batch_in_epoch,
        )
    elif cfg.resume == "latest":
        log.info("no checkpoint in %s yet: starting a new run", run_dir / "checkpoints")

    # Each rank checks its share of the samples (a rank sees num_samples / world of them).
    bad_samples = BadSampleLog(
        data.num_samples // info.world_size, cfg.max_bad_share, cfg.train_data,
        checkpoint.get("bad_samples") if checkpoint else None,
    )  # fmt: skip
    nonfinite_steps = checkpoint.get("nonfinite_steps", 0) if checkpoint else 0
    last_saved_step = step if checkpoint else None
    if info.is_main:
        save_yaml(cfg, run_dir / "config.yaml")
    metrics = MetricsLog(run_dir, step if checkpoint else None) if info.is_main else None
    log.info(
        "model %s (%.2fM params), %d samples, %d steps/epoch × %d epochs, device %s, world %d",
        cfg.model, sum(p.numel() for p in model.parameters()) / 1e6, data.num_samples,
        steps_per_epoch, cfg.epochs, device, info.world_size,
    )  # fmt: skip

    step_model = train_step
    if info.world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        step_model = torch.nn.parallel.DistributedDataParallel(train_step, device_ids=ids)
    if cfg.torch_compile:
        step_model = torch.compile(step_model)

    def save_checkpoint(next_epoch: int, next_batch: int) -> None:
        nonlocal last_saved_step
        if not info.is_main:
            return
        state = {
            "model": model.state_dict(),
            "model_name": cfg.model,
            "clip_config": model.clip.config.to_dict(),
            "tokenizer": tokenizer.to_str(),
            "context_length": tokenizer.context_length,
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_state(),
            "step": step,
            "epoch": next_epoch,
            "batch": next_batch,
            "config": cfg.to_dict(),
            "bad_samples": bad_samples.state_dict(),
            "nonfinite_steps": nonfinite_steps,
        }
        if neighbor_loss is not None:
            state["neighbor_loss"] = neighbor_loss.state_dict()
        if memory is not None:
            state["memory"] = memory.state_dict()
        path = run_dir / "checkpoints" / "latest.pt"
        try:
            atomic_torch_save(state, path)
        except OSError as exc:  # disk full, quota, ...: the previous file was not touched
            kept = f"from step {last_saved_step} is intact" if last_saved_step else "is absent"
            raise OSError(
                exc.errno,
                f"could not write the step-{step} checkpoint {path} ({exc.strerror or exc}); "
                f"the previous checkpoint {kept}. Free space in {path.parent}, then continue "
                "with --resume latest",
            ) from exc
        last_saved_step = step

    global_batch = cfg.batch_size * cfg.accum_freq * info.world_size
    progress = tqdm(
        total=total_steps, initial=step, unit="step", dynamic_ncols=True,
        disable=not (info.is_main and cfg.progress), desc=run_dir.name,
    )  # fmt: skip
    model.train()
    stopped_early = False
    while epoch < cfg.epochs and not stopped_early:
        batches = data.loader(epoch, batch_in_epoch * cfg.accum_freq, cfg.batch_size, cfg.workers)
        window_start, window_samples = time.perf_counter(), 0
        micro = 0
        nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        for batch in batches:
            if batch["bad_samples"]:
                bad_samples.record(batch["bad_samples"])
            batch = common_batch(batch)
            if not len(batch["index"]):
                raise ValueError(
                    f"a batch of step {step + 1} has no good sample left ({len(batch['bad_samples'])}"
                    " bad on this rank); repair the data (--on-bad-sample error names each bad one)"
                )
            images = batch["image"].to(device, non_blocking=True)
            texts = batch["text"].to(device, non_blocking=True)
            targets, ramp = None, 1.0
            if guidance is not None:
                targets = guidance.targets(batch["index"], step, device, batch)
                ramp = min(1.0, (step + 1) / cfg.neighbor_warmup) if cfg.neighbor_warmup else 1.0
            with autocast_context(cfg.precision, device):
                terms, out = step_model(images, texts, targets, ramp)
                loss = sum(v for k, v in terms.items() if k in TOTAL_TERMS)
            nonfinite |= ~torch.isfinite(loss.detach())  # no sync here: read once per step
            scaler.scale(loss / cfg.accum_freq).backward()
            # After the loss: this batch's targets were the old rows. A skipped non-finite
            # step must not leave NaN rows behind.
            if memory is not None and (not cfg.skip_nonfinite or torch.isfinite(loss)):
                memory.update(batch["index"], out["image_features"], out["text_features"])
            micro += 1
            if micro < cfg.accum_freq:
                continue
            micro = 0
            lr = cosine_lr(step, cfg.lr, cfg.warmup, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if is_distributed():  # every rank takes the same decision
                torch.distributed.all_reduce(nonfinite, torch.distributed.ReduceOp.MAX)
            if nonfinite.item():
                if not cfg.skip_nonfinite:
                    raise FloatingPointError(nonfinite_message(step, last_saved_step, run_dir))
                nonfinite_steps += 1
                log.warning(
                    "step %d: non-finite loss, skipped (%d so far)", step + 1, nonfinite_steps
                )
                nonfinite.zero_()
            else:
                if cfg.grad_clip_norm is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(train_step.parameters(), cfg.grad_clip_norm)
                scaler.step(optimizer)
                scaler.update()
            optimizer.zero_grad(set_to_none=True)
            model.clamp_logit_scale()
            step += 1
            batch_in_epoch += 1
            window_samples += global_batch
            progress.update(1)

            if step % cfg.log_every_steps == 0 or batch_in_epoch == steps_per_epoch:
                elapsed = time.perf_counter() - window_start
                values = {f"train/{k}": v.item() for k, v in terms.items()}
                values.update({
                    "train/skipped_samples": bad_samples.skipped,
                    "train/nonfinite_steps": nonfinite_steps,
                    "train/loss": loss.item(),
                    "train/lr": lr,
                    "train/scale": out["logit_scale"].item(),
                    "train/samples_per_second": window_samples / max(elapsed, 1e-9),
                })  # fmt: skip
                progress.set_postfix(
                    loss=f"{values['train/loss']:.3f}",
                    samples_s=f"{values['train/samples_per_second']:.0f}",
                )
                if metrics:
                    metrics.write(step, values, epoch=epoch, samples=step * global_batch)
                log.debug("step %d %s", step, values)
                window_start, window_samples = time.perf_counter(), 0
            if batch_in_epoch == steps_per_epoch:
                break
            if cfg.save_every_steps and step % cfg.save_every_steps == 0:
                save_checkpoint(epoch, batch_in_epoch)
            if cfg.stop_after_steps is not None and step >= cfg.stop_after_steps:
                save_checkpoint(epoch, batch_in_epoch)
                stopped_early = True
                break
        if stopped_early:
            break
        epoch, batch_in_epoch = epoch + 1, 0
        evaluating = cfg.val_data or cfg.zeroshot_data
        if metrics and evaluating and cfg.val_frequency and epoch % cfg.val_frequency == 0:
            evaluate_during_training(model, tokenizer, cfg, device, metrics, step, epoch)
        save_checkpoint(epoch, 0)
        if info.is_main and cfg.save_frequency and epoch % cfg.save_frequency == 0:
            keep_copy(run_dir / "checkpoints" / "latest.pt", f"epoch_{epoch}.pt")
        if cfg.stop_after_steps is not None and step >= cfg.stop_after_steps:
            stopped_early = True
    progress.close()

    if info.is_main and not stopped_early:
        export_hf(model, tokenizer, run_dir / "hf")
        log.info("finished %d steps; exported %s", step, run_dir / "hf")
    elif stopped_early:
        log.info("stopped after step %d as asked; continue with --resume latest", step)
    if metrics:
        metrics.close()
    barrier()
    return run_dir


def evaluate_during_training(
    model, tokenizer, cfg: TrainConfig, device, metrics: MetricsLog, step: int, epoch: int
) -> dict[str, float]:
    """Periodic eval: retrieval on ``--val-data`` (when it has captions) and zero-shot on
    ``--zeroshot-data`` (default: ``--val-data`` when it has a ``label`` column).

    Logs ``retrieval/<dataset>/...`` and ``zeroshot/<dataset>/...`` to ``metrics.jsonl`` and
    TensorBoard, writes the latest result of each to ``results/<task>_<dataset>.json``, and
    returns the logged values.
    """
    from .data.transforms import EvalTransform
    from .evaluation.datasets import load_eval_dataset
    from .evaluation.run import TASKS, evaluate_dataset, result_record

    preprocess = EvalTransform(model.image_size)
    options = dict(
        classnames=cfg.zeroshot_classnames, templates=cfg.zeroshot_templates,
        csv_img_key=cfg.csv_img_key, csv_caption_key=cfg.csv_caption_key,
        csv_separator=cfg.csv_separator,
    )  # fmt: skip
    jobs = []  # (dataset, tasks): each dataset's images are encoded once for all its tasks
    if cfg.val_data:
        val = load_eval_dataset(cfg.val_data, preprocess, **options)
        tasks = ["retrieval"] if val.captions is not None else []
        if cfg.zeroshot_data is None and val.labels is not None:
            tasks.append("zeroshot")
        jobs.append((val, tasks))
    if cfg.zeroshot_data:
        jobs.append((load_eval_dataset(cfg.zeroshot_data, preprocess, **options), ["zeroshot"]))
    values: dict[str, float] = {}
    for data, tasks in jobs:
        if not tasks:
            log.warning("%s has neither captions nor labels: nothing to evaluate", data.name)
            continue
        for task, scores in evaluate_dataset(model, tokenizer, tasks, data, device=device).items():
            record = {**result_record(task, data.name, cfg.model, scores), "step": step}
            values.update(record["metric_names"])
            log.info("epoch %d %s %s: %s", epoch, task, data.name, json.dumps(scores))
            atomic_write_text(
                metrics.path.parent / "results" / f"{TASKS[task][1]}_{data.name}.json",
                json.dumps(record, indent=2),
            )
    if values:
        metrics.write(step, values, epoch=epoch)
    return values
