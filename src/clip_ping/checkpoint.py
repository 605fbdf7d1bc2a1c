"""The run folder and its checkpoints: atomic saves, exact resume, RNG state.

A checkpoint (``checkpoints/latest.pt``, kept as ``epoch_N.pt`` every ``--save-frequency``
epochs) is one dict of plain tensors and containers::

    format          CHECKPOINT_FORMAT
    student         how to rebuild the student without our registry
                    (models.student_record: its transformers config and tokenizer)
    task            TrainingTask.state_dict(): student weights, neighbour heads, student memory
    optimizer, scaler, rng
    step, epoch, batch, nonfinite_steps, bad_samples     where the run is
    config          the resolved TrainConfig (what --resume checks against)

``--resume latest`` continues mid-epoch exactly: the learning rate is a function of the
step, the data position is (epoch, batch), and a sample's augmentation depends only on
(seed, epoch, index).
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from .config import TrainConfig
from .io import atomic_torch_save, atomic_write
from .models import load_checkpoint_file, student_record

log = logging.getLogger("clip_ping")

CHECKPOINT_FORMAT = "clip-ping-checkpoint/2"


@dataclass
class Progress:
    """Where a run is: optimiser steps done, and the position of the next one."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # optimiser steps already taken in ``epoch``
    nonfinite_steps: int = 0  # steps skipped for a NaN/inf loss (--skip-nonfinite)


# --------------------------------------------------------------------------- run folder


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


def remove_stale_temporaries(checkpoints: Path) -> None:
    """Delete the temporary files of checkpoint writes that a killed run left behind."""
    for stale in checkpoints.glob(".*.tmp"):
        stale.unlink(missing_ok=True)


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


# --------------------------------------------------------------------------- RNG


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


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


# --------------------------------------------------------------------------- save / resume


class Checkpointer:
    """Writes ``latest.pt`` atomically (main process only) and remembers the last step
    saved, which the errors name."""

    def __init__(self, run_dir: Path, is_main: bool, last_saved_step: int | None = None):
        self.dir, self.is_main = run_dir / "checkpoints", is_main
        self.last_saved_step = last_saved_step

    @property
    def latest(self) -> Path:
        return self.dir / "latest.pt"

    def save(
        self, *, cfg: TrainConfig, task, tokenizer, optimizer, scaler, progress: Progress,
        bad_samples,
    ) -> None:  # fmt: skip
        if not self.is_main:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "student": student_record(task.model, tokenizer),
            "task": task.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_state(),
            **asdict(progress),
            "bad_samples": bad_samples.state_dict(),
            "config": cfg.to_dict(),
        }
        try:
            atomic_torch_save(state, self.latest)
        except OSError as exc:  # disk full, quota, ...: the previous file was not touched
            kept = (
                f"from step {self.last_saved_step} is intact"
                if self.last_saved_step
                else "is absent"
            )
            raise OSError(
                exc.errno,
                f"could not write the step-{progress.step} checkpoint {self.latest} "
                f"({exc.strerror or exc}); the previous checkpoint {kept}. Free space in "
                f"{self.dir}, then continue with --resume latest",
            ) from exc
        self.last_saved_step = progress.step

    def keep_epoch(self, epoch: int) -> None:
        if self.is_main:
            keep_copy(self.latest, f"epoch_{epoch}.pt")


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


def check_resumable(checkpoint: dict, path: Path, cfg: TrainConfig) -> None:
    """Refuse a checkpoint of another format or another student than ``cfg`` trains."""
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"--resume {path} was written by another clip-ping version (format "
            f"{checkpoint.get('format', 'clip-ping-checkpoint/1')}, this one reads "
            f"{CHECKPOINT_FORMAT}); its model still loads with clip_ping.load, but continue "
            "training with the version that wrote it, or start a new run"
        )
    saved = checkpoint["config"]["model"]
    if saved != cfg.model:
        raise ValueError(
            f"--resume {path} holds a '{saved}' model but --model is '{cfg.model}'; resume "
            f"with --model {saved} or start a new run"
        )


def restore(checkpoint: dict, *, task, optimizer, scaler) -> Progress:
    """Load every piece of state from ``checkpoint``; return where the run stopped."""
    task.load_state_dict(checkpoint["task"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    set_rng_state(checkpoint["rng"])
    return Progress(**{k: checkpoint[k] for k in ("step", "epoch", "batch", "nonfinite_steps")})
