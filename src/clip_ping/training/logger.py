"""What a run tells its user: ``out.log`` (and stderr), ``metrics.jsonl`` and TensorBoard."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from ..io import atomic_write_text

log = logging.getLogger("clip_ping")


def setup_logging(run_dir: Path, is_main: bool) -> None:
    """INFO to stderr and ``run_dir/out.log`` on the main process, warnings elsewhere."""
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
    """``metrics.jsonl`` (one JSON object per logged step or eval) and TensorBoard.

    Resuming from ``resumed_step`` drops the lines a killed run logged after its last
    checkpoint, so the resumed run's lines are not duplicated, and a last line the kill cut
    in half (with a warning naming the file).
    """

    def __init__(self, run_dir: Path, resumed_step: int | None):
        self.path = run_dir / "metrics.jsonl"
        if resumed_step is not None and self.path.exists():
            records = read_metrics_for_resume(self.path)
            kept = [line for line, record in records if record.get("step", 0) <= resumed_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        from torch.utils.tensorboard import SummaryWriter

        self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))

    @property
    def run_dir(self) -> Path:
        return self.path.parent

    def write(self, step: int, values: dict[str, float], **extra) -> None:
        record = {"step": step, **extra, **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in values.items():
            self.tensorboard.add_scalar(key, value, step)
        self.tensorboard.flush()

    def close(self) -> None:
        self.tensorboard.close()


def read_metrics_for_resume(path: Path) -> list[tuple[str, dict]]:
    """``(line, record)`` of each line of ``metrics.jsonl``. A last line that is not a
    whole JSON object is what a killed writer leaves: it is dropped, with a warning. Any
    other bad line is an error naming the file and the line."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append((line, record))
        elif number == len(lines):
            log.warning(
                "%s: dropped its last line, cut short when the run was stopped "
                "(%d characters: %.60r)",
                path,
                len(line),
                line,
            )
        else:
            raise ValueError(
                f"{path} line {number} is not a JSON object ({line[:60]!r}); repair or delete "
                "that line, then resume again"
            )
    return records


def resume_record(resume_from, progress, changes: dict) -> dict:
    """Log where a resumed run continues (``progress``: its checkpoint's ``Progress``) and
    what changed; the record of it for the run folder's ``resumes.jsonl``."""
    log.info(
        "resumed from %s at step %d (epoch %d, batch %d)",
        *(resume_from, progress.step, progress.epoch, progress.batch),
    )
    for name, change in changes.items():
        flag = name.replace("_", "-")
        log.info("--%s was %s, now %s on this resume", flag, change["was"], change["now"])
    return {
        "from": str(resume_from),
        "step": progress.step,
        "epoch": progress.epoch,
        "batch": progress.batch,
        "changed": changes,
    }
