"""The run folder and its checkpoints: atomic saves, exact resume, RNG state.

A checkpoint (``checkpoints/latest.pt``, kept as ``epoch_N.pt`` every ``--save-frequency``
epochs) is one dict of plain tensors and containers::

    format          CHECKPOINT_FORMAT
    student         how to rebuild the student without our registry
                    (models.student_record: its transformers config and tokenizer)
    task            TrainingTask.state_dict(): student weights, neighbour heads, student memory
    optimizer, scaler, rng
    step, epoch, batch, nonfinite_steps, bad_samples     where the run is
    world_size      processes that trained it
    config          the resolved TrainConfig (what --resume checks against)

``--resume latest`` continues mid-epoch exactly: the learning rate is a function of the
step, the data position is (epoch, batch), and a sample's augmentation depends only on
(seed, epoch, index). So a resume must keep the settings that shape the run
(:func:`check_resumable`; ``config.RESUME_MAY_CHANGE`` lists those it may change).

A checkpoint that cannot be *read* (permissions, I/O) stops the run: it may be intact. Only
a checkpoint proven damaged (read whole, but it does not load) is passed over for an older
one, and it is kept aside as ``NAME.damaged``, never overwritten. Continuing from a
checkpoint older than one in the run folder is refused: it would overwrite the newer one.
The run folder itself (its name, lock and record of resumes) is :mod:`.run_folder`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.loader import data_fingerprint, other_data
from ..distributed import share_from_main
from ..io import atomic_torch_save, atomic_write, how_to_fix_write, os_error
from ..models import (
    DamagedCheckpointError,
    first_line,
    load_checkpoint_file,
    load_weights,
    student_record,
)
from .config import RESUME_MAY_CHANGE, RESUME_MAY_GROW, RUN_LOCATION, TrainConfig

log = logging.getLogger("clip_ping")

CHECKPOINT_FORMAT = "clip-ping-checkpoint/2"
# The keys every checkpoint of this format has, and their types.
CHECKPOINT_KEYS = {
    "student": dict,
    "task": dict,
    "optimizer": dict,
    "scaler": dict,
    "rng": dict,
    "step": int,
    "epoch": int,
    "batch": int,
    "nonfinite_steps": int,
    "bad_samples": dict,
    "config": dict,
}
EPOCH_FILE = re.compile(r"epoch_(\d+)\.pt")
SPELLED_OUT = {"tokenizer": "minilm"}  # what None means (tokenizer.DEFAULT_TOKENIZER)


@dataclass
class Progress:
    """Where a run is: optimiser steps done, and the position of the next one."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # optimiser steps already taken in ``epoch``
    nonfinite_steps: int = 0  # steps skipped for a NaN/inf loss (--skip-nonfinite)


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


# --------------------------------------------------------------------------- save


class Checkpointer:
    """Writes ``latest.pt`` atomically (main process only) and remembers the last step
    saved, which the errors name."""

    def __init__(
        self, run_dir: Path, is_main: bool, world_size: int, last_saved_step: int | None = None
    ):
        self.dir, self.is_main, self.world_size = run_dir / "checkpoints", is_main, world_size
        self.last_saved_step, self.data = last_saved_step, None  # data: its fingerprint

    @property
    def latest(self) -> Path:
        return self.dir / "latest.pt"

    def save(
        self,
        *,
        cfg: TrainConfig,
        task,
        tokenizer,
        optimizer,
        scaler,
        progress: Progress,
        bad_samples,
        data,
    ) -> None:
        if not self.is_main:
            return
        self.data = self.data or data_fingerprint(data)  # computed once, at the first save
        state = {
            "format": CHECKPOINT_FORMAT,
            "student": student_record(task.model, tokenizer),
            "task": task.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_state(),
            **asdict(progress),
            "bad_samples": bad_samples.state_dict(),
            "world_size": self.world_size,
            "config": cfg.to_dict(),
            "data": self.data,
        }
        try:
            atomic_torch_save(state, self.latest)
        except OSError as exc:  # disk full, quota, permissions: the previous file is untouched
            fix = how_to_fix_write(exc, self.dir)
            kept = (
                f"from step {self.last_saved_step} is intact"
                if self.last_saved_step
                else "is absent"
            )
            raise os_error(
                exc,
                f"could not write the step-{progress.step} checkpoint {self.latest} "
                f"({exc.strerror or exc}); the previous checkpoint {kept}. "
                f"{fix[:1].upper()}{fix[1:]}, then continue with "
                "--resume latest",
            ) from exc
        self.last_saved_step = progress.step

    def keep_epoch(self, epoch: int) -> None:
        if self.is_main:
            keep_copy(self.latest, f"epoch_{epoch}.pt")


# --------------------------------------------------------------------------- resume


def open_resume_checkpoint(
    path: Path, checkpoints: Path, cfg: TrainConfig, world_size: int, is_main: bool
) -> tuple[dict, Path, dict[str, dict[str, Any]]]:
    """(checkpoint, its file, the settings this resume changes) for ``--resume path`` into
    the run folder's ``checkpoints``. Rank 0 chooses the file (passing over damaged ones),
    checks it, and that continuing from it overwrites nothing newer; the other ranks then
    load the file it chose."""
    chosen: dict[str, Any] = {}

    def choose() -> Path:
        checkpoint, found = load_resume_checkpoint(path, cfg.resume == "latest")
        chosen["changes"] = check_resumable(checkpoint, found, cfg, world_size)
        check_same_data(checkpoint, found, cfg)
        refuse_overwriting_newer(checkpoints, checkpoint, found)
        chosen["checkpoint"] = checkpoint
        return found

    found = share_from_main(choose, is_main)
    if not is_main:
        chosen["checkpoint"] = load_checkpoint_file(found)
    return chosen["checkpoint"], found, chosen.get("changes", {})


def load_resume_checkpoint(path: Path, latest: bool) -> tuple[dict, Path]:
    """Load the checkpoint to resume from. For ``--resume latest``, a ``latest.pt`` proven
    damaged is passed over for the newest loadable ``epoch_N.pt`` beside it, with a warning;
    each damaged file passed over is renamed ``NAME.damaged`` (kept, never overwritten). A
    file that cannot be read (permissions, I/O) stops the search with its error."""
    try:
        return load_checkpoint_file(path), path
    except DamagedCheckpointError as exc:
        if not latest:
            raise
        damaged = [(path, exc)]
    for older in sorted(epoch_files(path.parent), key=epoch_number, reverse=True):
        try:
            checkpoint = load_checkpoint_file(older)
        except DamagedCheckpointError as exc:
            damaged.append((older, exc))
            continue
        for bad, error in damaged:
            kept = set_aside(bad)
            log.warning("%s; kept as %s, resuming from %s instead", error, kept.name, older)
        return checkpoint, older
    raise damaged[0][1]


def epoch_files(folder: Path) -> list[Path]:
    return [p for p in folder.glob("epoch_*.pt") if EPOCH_FILE.fullmatch(p.name)]


def epoch_number(path: Path) -> int:
    return int(EPOCH_FILE.fullmatch(path.name).group(1))  # type: ignore[union-attr]


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint ``NAME.damaged`` (``.damaged-2``, ... if taken)."""
    for n in range(1, 1000):
        target = path.with_name(f"{path.name}.damaged" + (f"-{n}" if n > 1 else ""))
        if not target.exists():
            path.rename(target)
            return target
    raise FileExistsError(f"too many damaged copies of {path}; delete some")


def refuse_overwriting_newer(checkpoints: Path, checkpoint: dict, path: Path) -> None:
    """Continuing from ``checkpoint`` rewrites ``latest.pt`` and ``epoch_N.pt`` in
    ``checkpoints``: refuse if one of them is a later point of the run."""
    newer = [
        f"{p} (end of epoch {epoch_number(p)})"
        for p in epoch_files(checkpoints)
        if epoch_number(p) > checkpoint["epoch"] and not _same_file(p, path)
    ]
    latest = checkpoints / "latest.pt"
    if latest.exists() and not _same_file(latest, path):
        try:
            step = load_checkpoint_file(latest).get("step")
        except DamagedCheckpointError as exc:  # nothing to keep; but never destroy it
            log.warning("%s; kept as %s", exc, set_aside(latest).name)
        else:
            if not isinstance(step, int) or step > checkpoint["step"]:
                newer.insert(0, f"{latest} (step {step})")
    if newer:
        raise ValueError(
            f"--resume {path} is step {checkpoint['step']} of the run, but {newer[0]} in the "
            "run folder is later, and continuing here would overwrite it. Continue from it "
            f"with --resume latest, or continue {path.name} in a new run folder (another "
            "--name)"
        )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_same_data(checkpoint: dict, path: Path, cfg: TrainConfig) -> None:
    """Refuse a resume on training data changed at its path (earlier checkpoints: not checked)."""
    recorded = checkpoint.get("data")
    if isinstance(recorded, dict) and (how := other_data(recorded, cfg.data_spec())):
        raise ValueError(
            f"--resume {cfg.resume} ({path}) would continue on other data: --train-data "
            f"{cfg.train_data} changed since the run started ({how}). Resume with the data "
            "it started with, or start a new run with another --name"
        )


def check_resumable(
    checkpoint: dict, path: Path, cfg: TrainConfig, world_size: int
) -> dict[str, dict[str, Any]]:
    """Refuse a checkpoint of another format, an incomplete one, or one of a run with
    other settings (each named, with its old and new value); return the settings this
    resume changes safely, ``{name: {"was": old, "now": new}}``."""
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"--resume {path} was written by another clip-ping version (format "
            f"{str(checkpoint.get('format', 'clip-ping-checkpoint/1'))[:60]}, this one reads "
            f"{CHECKPOINT_FORMAT}); its model still loads with clip_ping.load, but continue "
            "training with the version that wrote it, or start a new run"
        )
    wrong = [
        key
        for key, kind in CHECKPOINT_KEYS.items()
        if not isinstance(checkpoint.get(key), kind) or isinstance(checkpoint.get(key), bool)
    ]
    if wrong:
        raise DamagedCheckpointError(
            f"--resume {path} lacks {', '.join(wrong)} (or holds another type there); it was "
            "altered: resume from another checkpoint, or start a new run"
        )
    changes, refused = settings_changes(checkpoint["config"], cfg)
    saved_world = checkpoint.get("world_size", world_size)
    if saved_world != world_size:
        refused.append(
            f"the run was trained by {saved_world} process(es), now {world_size} (torchrun "
            "--nproc_per_node × nodes)"
        )
    if refused:
        may = ", ".join("--" + name.replace("_", "-") for name in RESUME_MAY_CHANGE)
        raise ValueError(
            f"--resume {cfg.resume} ({path}) would continue the run with other settings: "
            f"{'; '.join(refused)}; a resumed run must keep them. Pass the earlier values, "
            f"or start a new run with another --name. A resume may change only {may}, and "
            "raise --epochs"
        )
    return changes


def settings_changes(saved: dict, cfg: TrainConfig) -> tuple[dict, list[str]]:
    """(safe changes ``{name: {"was", "now"}}``, refused changes as messages) of ``cfg``
    against the ``saved`` config of a checkpoint (a setting it lacks had its default; a path
    spelled another way that names the same file is the same setting)."""
    may_change = set(RESUME_MAY_CHANGE)
    shards = cfg.data_spec().resolved_type() == "webdataset"
    if shards:  # the worker count decides which samples share a shuffle buffer
        may_change.discard("workers")
    changes, refused = {}, []
    for field in dataclasses.fields(cfg):
        name = field.name
        was, now = saved.get(name, field.default), getattr(cfg, name)
        was, now = (SPELLED_OUT.get(name) if v is None else v for v in (was, now))
        if name in RUN_LOCATION or was == now or _same_path(was, now):
            continue
        if name in may_change or (name in RESUME_MAY_GROW and _grows(was, now)):
            changes[name] = {"was": was, "now": now}
            continue
        message = f"--{name.replace('_', '-')} was {_show(was)}, now {_show(now)}"
        if name in RESUME_MAY_GROW:
            message += " (it may grow, not shrink)"
        elif name == "workers" and shards:
            message += " (with WebDataset shards it decides the order of the samples)"
        refused.append(message)
    return changes, refused


def _same_path(was: Any, now: Any) -> bool:
    """Two spellings of one existing file or folder (relative and absolute, ``./x`` and
    ``x``): the same setting. A relative path is read from the working directory."""
    return isinstance(was, str) and isinstance(now, str) and _same_file(Path(was), Path(now))


def _grows(was: Any, now: Any) -> bool:
    return isinstance(was, int) and isinstance(now, int) and now > was


def _show(value: Any, limit: int = 80) -> str:
    text = "not set" if value is None else str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def restore(checkpoint: dict, path: Path, *, task, optimizer, scaler) -> Progress:
    """Load every piece of state from ``checkpoint``; return where the run stopped."""
    load_weights(task, checkpoint["task"], f"--resume {path}")
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        set_rng_state(checkpoint["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
        raise DamagedCheckpointError(
            f"--resume {path}: its optimiser, scaler or RNG state does not fit this run "
            f"({first_line(exc)}); "
            "it was altered: resume from another checkpoint, or start a new run"
        ) from exc
    return Progress(**{k: checkpoint[k] for k in ("step", "epoch", "batch", "nonfinite_steps")})
