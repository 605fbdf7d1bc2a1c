"""The training loop: one process or torchrun, CPU or GPU.

    clip-ping train --train-data shapes/train.csv --val-data shapes/val.csv \\
        --model cpu-small-64 --epochs 4 --batch-size 64 --name shapes
    torchrun --nproc_per_node 8 -m clip_ping.cli train --config configs/cc3m-vit-xs.yaml

A run lives in ``logs/<name>/``: ``config.yaml`` (resolved, of the run's first part),
``resumes.jsonl`` (one line per resume), ``run.lock`` (while a run writes the folder),
``out.log``, ``metrics.jsonl``, ``tensorboard/``, ``checkpoints/latest.pt`` (every
``--save-every-steps`` and at the end of each epoch), ``hf/`` (the export for
transformers: a ``CLIPModel``, or the side-by-side towers of a ConvNeXt/MobileViT student)
and ``results/``.

The pieces live beside this file: the step in :mod:`.task`, the run folder (its name, its
lock, its record of resumes) in :mod:`.run_folder`, checkpoints and resume in
:mod:`.checkpoint`, the optimiser, schedule and precision in :mod:`.schedule`, logs in
:mod:`.logger`, periodic evaluation in :mod:`.periodic_eval`. What is left here
reads top to bottom: :func:`setup`, then :func:`train_one_epoch` until the last epoch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..data.bad_samples import BadSampleLog
from ..data.loader import TrainData, build_train_data
from ..data.transforms import TrainTransform
from ..distributed import DistInfo, barrier, cleanup, init_distributed, is_distributed
from ..models import LockedSpec, create_model, export_hf, get_model_spec
from ..tokenizer import Tokenizer, get_tokenizer
from .checkpoint import Checkpointer, Progress, open_resume_checkpoint, restore, seed_everything
from .config import TrainConfig
from .features import NoPixels, locked_spec
from .logger import MetricsLog, log, resume_record, setup_logging
from .model_card import write_model_card
from .periodic_eval import EvalJob, evaluate_during_training, load_eval_sets
from .run_folder import RunFolder, claim_run_folder, record_start
from .schedule import (
    autocast_context,
    cosine_lr,
    create_optimizer,
    create_scaler,
    ramp_warning,
    set_lr,
)
from .task import TrainingTask, create_task, reads_targets, teacher_view_size


@dataclass
class Run:
    """Everything :func:`setup` builds and the loop uses."""

    cfg: TrainConfig
    info: DistInfo
    run_dir: Path
    task: TrainingTask
    tokenizer: Tokenizer
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    data: TrainData
    steps_per_epoch: int
    progress: Progress
    checkpointer: Checkpointer
    bad_samples: BadSampleLog
    metrics: MetricsLog | None  # main process only
    bar: tqdm
    eval_sets: list[EvalJob]  # main process only: the others do not evaluate

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.cfg.epochs

    @property
    def global_batch(self) -> int:
        return self.cfg.batch_size * self.cfg.accum_freq * self.info.world_size

    def save(self) -> None:
        self.checkpointer.save(
            cfg=self.cfg,
            task=self.task,
            tokenizer=self.tokenizer,
            optimizer=self.optimizer,
            scaler=self.scaler,
            progress=self.progress,
            bad_samples=self.bad_samples,
            data=self.data,
        )

    def should_stop(self) -> bool:
        """``--stop-after-steps`` reached (a deliberate interruption, for tests)."""
        stop = self.cfg.stop_after_steps
        return stop is not None and self.progress.step >= stop


def train(cfg: TrainConfig) -> Path:
    """Train a student with ``cfg``; return the run folder."""
    info = init_distributed(cfg.device)
    try:
        autocast_context(cfg.precision, info.device)  # an impossible precision: before any work
        with claim_run_folder(cfg, info.is_main) as folder:  # this run alone writes the folder
            run = setup(cfg, info, folder)
            stopped = False
            while run.progress.epoch < cfg.epochs and not stopped:
                stopped = train_one_epoch(run)
                if not stopped:
                    end_epoch(run)
                    stopped = run.should_stop()
            finish(run, stopped)
            return run.run_dir
    finally:
        cleanup()


def setup(cfg: TrainConfig, info: DistInfo, folder: RunFolder) -> Run:
    """Student, data, task, optimiser, and the state of a resumed run, in ``folder``."""
    setup_logging(folder.path, info.is_main)
    for note in folder.notes if info.is_main else ():
        log.warning(note)
    seed_everything(cfg.seed)
    checkpoint, resume_from, changes = None, folder.resume_from, {}
    if resume_from:
        checkpoint, resume_from, changes = open_resume_checkpoint(
            resume_from, folder.checkpoints, cfg, info.world_size, info.is_main
        )
    model, tokenizer, data, steps_per_epoch = student_and_data(cfg, info)
    # Every evaluation set is opened and checked now, not when the first epoch ends.
    evaluating = (cfg.val_data or cfg.zeroshot_data) and cfg.val_frequency and info.is_main
    eval_sets = load_eval_sets(cfg, model.preprocess()) if evaluating else []
    for warning in cfg.unused_settings():
        log.warning(warning)
    total_steps = steps_per_epoch * cfg.epochs
    if reads_targets(cfg) and (late := ramp_warning(cfg.neighbor_warmup, total_steps)):
        log.warning(late)
    task = create_task(cfg, model, cfg.data_spec(), info.device, total_steps)
    optimizer, scaler = create_optimizer(task, cfg), create_scaler(cfg.precision)
    progress, resumed = Progress(), None
    if checkpoint is not None:
        progress = restore(checkpoint, resume_from, task=task, optimizer=optimizer, scaler=scaler)
        resumed = resume_record(resume_from, progress, changes)
    elif cfg.resume == "latest":
        log.info("no checkpoint in %s yet: starting a new run", folder.checkpoints)
    # Each rank checks its share of the samples (a rank sees num_samples / world of them).
    bad_samples = BadSampleLog(
        data.num_samples // info.world_size,
        cfg.max_bad_share,
        cfg.train_data,
        checkpoint["bad_samples"] if checkpoint else None,
    )
    saved_step = progress.step if checkpoint else None
    if info.is_main:
        record_start(folder, cfg, resumed)
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    log.info(
        "model %s (%.2fM params), %d samples, %d steps/epoch × %d epochs, device %s, world %d",
        *(cfg.model, parameters, data.num_samples, steps_per_epoch, cfg.epochs),
        *(info.device, info.world_size),
    )
    task.distribute(info.world_size, info.device, cfg.torch_compile)
    show = info.is_main and cfg.progress
    bar = tqdm(
        total=total_steps,
        initial=progress.step,
        unit="step",
        dynamic_ncols=True,
        disable=not show,
        desc=folder.path.name,
    )
    # a run that found no checkpoint to resume from starts over: its old lines go too
    metrics_from = 0 if cfg.resume and saved_step is None else saved_step
    return Run(
        cfg=cfg,
        info=info,
        run_dir=folder.path,
        task=task,
        tokenizer=tokenizer,
        optimizer=optimizer,
        scaler=scaler,
        data=data,
        steps_per_epoch=steps_per_epoch,
        progress=progress,
        bad_samples=bad_samples,
        bar=bar,
        eval_sets=eval_sets,
        checkpointer=Checkpointer(folder.path, info.is_main, info.world_size, saved_step),
        metrics=MetricsLog(folder.path, metrics_from) if info.is_main else None,
    )


def student_and_data(cfg: TrainConfig, info: DistInfo) -> tuple:
    """The student (on the device), its tokenizer, this rank's training data and the
    optimiser steps per epoch."""
    spec, tokenizer = get_model_spec(cfg.model), None
    if isinstance(spec, LockedSpec):  # the teachers of the run's banks
        spec = locked_spec(cfg, spec)
    else:
        tokenizer = get_tokenizer(cfg.tokenizer, context_length=spec.context_length)
    model, tokenizer = create_model(cfg.model, tokenizer, seed=cfg.seed, spec=spec)
    model.to(info.device)
    if model.trains_on_bank_features:
        transform = NoPixels()
    else:
        transform = TrainTransform(
            model.image_size, scale=(cfg.aug_scale_min, 1.0), teacher_size=teacher_view_size(cfg)
        )
    data = build_train_data(
        cfg.data_spec(), transform, tokenizer, cfg.seed, info.rank, info.world_size
    )
    steps_per_epoch = data.batches_per_epoch(cfg.batch_size) // cfg.accum_freq
    if steps_per_epoch < 1:
        raise ValueError(
            f"--batch-size {cfg.batch_size} × --accum-freq {cfg.accum_freq} × {info.world_size} "
            f"process(es) needs more than the {data.num_samples} training samples; lower them"
        )
    return model, tokenizer, data, steps_per_epoch


def train_one_epoch(run: Run) -> bool:
    """Train from ``run.progress`` to the end of its epoch; True if stopped early
    (``--stop-after-steps``)."""
    cfg, progress, device = run.cfg, run.progress, run.info.device
    # The loader's workers draw each sample's neighbours for this epoch.
    batches = run.data.loader(
        progress.epoch,
        progress.batch * cfg.accum_freq,
        cfg.batch_size,
        cfg.workers,
        run.task.data_transform(),
    )
    run.task.train()
    window = (time.perf_counter(), 0)  # (start, samples) of the throughput window
    micro: list[dict] = []  # the micro-batches of the step being accumulated
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    for batch in batches:
        micro.append(good_part(run, batch))
        if len(micro) < cfg.accum_freq:
            continue
        loss, terms, out = forward_backward(run, micro)
        nonfinite |= ~torch.isfinite(loss.detach())  # no sync here: read once per step
        # A skipped non-finite step must not leave NaN rows behind in the memory.
        if not cfg.skip_nonfinite or torch.isfinite(loss):
            run.task.remember(torch.cat([b["index"] for b in micro]), out)
        micro = []
        lr = optimizer_step(run, nonfinite)
        window = (window[0], window[1] + run.global_batch)
        last_of_epoch = progress.batch == run.steps_per_epoch
        if progress.step % cfg.log_every_steps == 0 or last_of_epoch:
            log_train_step(run, terms, loss, out, lr, window)
            window = (time.perf_counter(), 0)
        if last_of_epoch:
            return False
        if cfg.save_every_steps and progress.step % cfg.save_every_steps == 0:
            run.save()
        if run.should_stop():
            run.save()
            return True
    return False


def forward_backward(run: Run, micro: list[dict]) -> tuple[torch.Tensor, dict, dict]:
    """Loss terms and gradients of one optimiser step's batch: one forward and backward, or
    (``--accum-freq``) the task's accumulation over its micro-batches."""
    cfg, device, progress = run.cfg, run.info.device, run.progress
    backward = lambda loss: run.scaler.scale(loss).backward()  # noqa: E731
    if len(micro) == 1:
        with autocast_context(cfg.precision, device):
            loss, terms, out = run.task(micro[0], progress.step, device, progress.epoch)
        backward(loss)
        return loss, terms, out
    autocast = lambda: autocast_context(cfg.precision, device)  # noqa: E731
    return run.task.accumulate(
        micro, progress.step, device, backward, autocast, epoch=progress.epoch
    )


def good_part(run: Run, batch: dict) -> dict:
    """Record the batch's bad samples; under torchrun, cut every rank's batch to the
    smallest good count of any rank (the gathered features need one size per rank)."""
    if batch["bad_samples"]:
        run.bad_samples.record(batch["bad_samples"])
    if is_distributed():
        size = torch.tensor(len(batch["index"]))
        torch.distributed.all_reduce(size, torch.distributed.ReduceOp.MIN)
        keep = int(size)  # cut samples are not trained on this epoch; rare with few bad ones
        if keep < len(batch["index"]):
            batch = {k: v if k == "bad_samples" else v[:keep] for k, v in batch.items()}
    if not len(batch["index"]):
        raise ValueError(
            f"a batch of step {run.progress.step + 1} has no good sample left "
            f"({len(batch['bad_samples'])} bad on this rank); repair the data "
            "(--on-bad-sample error names each bad one)"
        )
    return batch


def optimizer_step(run: Run, nonfinite: torch.Tensor) -> float:
    """Apply the accumulated gradients (or skip a non-finite step); return the lr used."""
    cfg, progress = run.cfg, run.progress
    lr = cosine_lr(progress.step, cfg.lr, cfg.warmup, run.total_steps)
    set_lr(run.optimizer, lr)
    if is_distributed():  # every rank takes the same decision
        torch.distributed.all_reduce(nonfinite, torch.distributed.ReduceOp.MAX)
    if nonfinite.item():
        if not cfg.skip_nonfinite:
            raise FloatingPointError(nonfinite_message(run))
        progress.nonfinite_steps += 1
        log.warning(
            "step %d: non-finite loss, skipped (%d so far)",
            progress.step + 1,
            progress.nonfinite_steps,
        )
        nonfinite.zero_()
    else:
        if cfg.grad_clip_norm is not None:
            run.scaler.unscale_(run.optimizer)
            torch.nn.utils.clip_grad_norm_(run.task.parameters(), cfg.grad_clip_norm)
        run.scaler.step(run.optimizer)
        run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.task.model.clamp_logit_scale()
    progress.step += 1
    progress.batch += 1
    run.bar.update(1)
    return lr


def nonfinite_message(run: Run) -> str:
    last = run.checkpointer.last_saved_step
    saved = (
        f"the last good checkpoint is {run.checkpointer.latest} (step {last})"
        if last is not None
        else "no checkpoint was written yet"
    )
    return (
        f"non-finite loss (NaN or inf) at step {run.progress.step + 1}; stopped without "
        f"applying it, and {saved}. Start a new run with a lower --lr, a --grad-clip-norm or "
        "--precision fp32, or continue this one with --resume latest --skip-nonfinite, which "
        "skips such steps (counted as train/nonfinite_steps)"
    )


def log_train_step(run: Run, terms: dict, loss, out: dict, lr: float, window) -> None:
    """``train/*`` metrics of the last step, throughput over the window since last logged."""
    progress = run.progress
    elapsed = time.perf_counter() - window[0]
    values = {f"train/{k}": v.item() for k, v in terms.items()}
    values.update(
        {
            "train/skipped_samples": run.bad_samples.skipped,
            "train/nonfinite_steps": progress.nonfinite_steps,
            "train/loss": loss.item(),
            "train/lr": lr,
            "train/scale": out["logit_scale"].item(),
            "train/samples_per_second": window[1] / max(elapsed, 1e-9),
        }
    )
    run.bar.set_postfix(
        loss=f"{values['train/loss']:.3f}", samples_s=f"{values['train/samples_per_second']:.0f}"
    )
    if run.metrics:
        samples = progress.step * run.global_batch
        run.metrics.write(progress.step, values, epoch=progress.epoch, samples=samples)


def end_epoch(run: Run) -> None:
    """Next epoch's position; evaluate, save, keep ``epoch_N.pt`` as configured."""
    cfg, progress = run.cfg, run.progress
    progress.epoch, progress.batch = progress.epoch + 1, 0
    if run.metrics and run.eval_sets and progress.epoch % cfg.val_frequency == 0:
        evaluate_during_training(
            run.task.model,
            run.tokenizer,
            cfg,
            run.info.device,
            run.metrics,
            progress.step,
            progress.epoch,
            run.eval_sets,
        )
    run.save()
    if cfg.save_frequency and progress.epoch % cfg.save_frequency == 0:
        run.checkpointer.keep_epoch(progress.epoch)


def finish(run: Run, stopped_early: bool) -> None:
    run.bar.close()
    if run.info.is_main and not stopped_early:
        export_hf(run.task.model, run.tokenizer, run.run_dir / "hf")
        write_model_card(run.run_dir)
        log.info("finished %d steps; exported %s", run.progress.step, run.run_dir / "hf")
    elif stopped_early:
        log.info("stopped after step %d as asked; continue with --resume latest", run.progress.step)
    if run.metrics:
        run.metrics.close()
    barrier()
