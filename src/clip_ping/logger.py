"""What a run tells its user: ``out.log`` (and stderr), ``metrics.jsonl`` and TensorBoard."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from .io import atomic_write_text

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
    checkpoint, so the resumed run's lines are not duplicated.
    """

    def __init__(self, run_dir: Path, resumed_step: int | None):
        self.path = run_dir / "metrics.jsonl"
        if resumed_step is not None and self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resumed_step
            ]
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
