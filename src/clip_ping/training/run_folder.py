"""The run folder ``logs/<name>/``: its name, its one writer, and its record of resumes.

One run writes a run folder at a time. :func:`claim_run_folder` creates ``run.lock`` in
it (``O_EXCL``; it holds the writer's pid, host, start and command) for the whole run and
removes it at exit, ``kill`` (SIGTERM) included. A second run on the folder stops at once
with a message naming the holder. A lock left by a process that no longer runs on this
host (SIGKILL, a crash, a reboot) is stale: the next run replaces it and says so. Under
torchrun rank 0 claims the folder; the other ranks use the folder it names.

Without ``--name`` a run is named by its start time, ``2026_11_30-14_05_09``, with ``-1``,
``-2``, ... added when that folder exists (two runs started in the same second get two
folders). ``--name`` must stay inside ``--logs``.

``config.yaml`` records the settings of the run's first part; a resume never rewrites it
but appends one line to ``resumes.jsonl`` (when, from which checkpoint and step, the
settings it changed). :func:`run_settings` folds the two together.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from ..distributed import share_from_main
from ..errors import one_line
from ..io import TEMPORARY_SUFFIX, how_to_fix_write, os_error
from .config import TrainConfig, save_yaml

log = logging.getLogger("clip_ping")

LOCK_FILE = "run.lock"
CONFIG_FILE = "config.yaml"
RESUMES_FILE = "resumes.jsonl"


class RunFolderInUse(FileExistsError):
    """Another run that is still alive holds the run folder's lock."""


@dataclass(frozen=True)
class RunFolder:
    """A claimed run folder, and the checkpoint ``--resume`` names (None: a new run)."""

    path: Path
    resume_from: Path | None
    notes: tuple[str, ...] = ()  # warnings for the run log, which was not open yet

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"


@contextmanager
def claim_run_folder(cfg: TrainConfig, is_main: bool) -> Iterator[RunFolder]:
    """Hold ``cfg``'s run folder for the ``with`` block: name it, lock it, check that it
    can take checkpoints. Rank 0 does the work; every rank gets the folder, or its error."""
    claimed: dict[str, RunLock] = {}

    def claim() -> RunFolder:
        folder, claimed["lock"] = _claim(cfg)
        return folder

    folder = share_from_main(claim, is_main)
    lock = claimed.get("lock")
    try:
        with _exit_on_sigterm(enabled=lock is not None):
            yield folder
    except Exception as exc:  # the error that ends the run: in out.log too, not only stderr
        _log_to_file(folder.path, exc)
        raise
    finally:
        if lock is not None:
            lock.release()


def _log_to_file(run_dir: Path, exc: Exception) -> None:
    """Write ``exc`` to ``run_dir/out.log`` if the run opened it (stderr gets it from the
    command line)."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (one_line(exc),), None)
    for handler in log.handlers:
        if getattr(handler, "baseFilename", None) == os.path.abspath(run_dir / "out.log"):
            handler.handle(record)


def _claim(cfg: TrainConfig) -> tuple[RunFolder, RunLock]:
    if cfg.resume == "latest" and not cfg.name:
        raise ValueError("--resume latest needs --name of the run to continue")
    logs = Path(cfg.logs)
    try:
        if cfg.name:
            _check_name(cfg.name, cfg.logs)
            path = logs / cfg.name
            path.mkdir(parents=True, exist_ok=True)
        else:
            path = _new_folder(logs, datetime.now())
    except OSError as exc:
        raise os_error(
            exc,
            f"cannot create the run folder in {logs} ({exc.strerror}); "
            f"{how_to_fix_write(exc, logs)}, or choose another --logs",
        ) from exc
    lock = RunLock(path)
    notes = lock.acquire()
    try:
        resume_from = _resume_source(cfg, path)
        _prepare(path, path / "checkpoints")
    except BaseException:
        lock.release()
        raise
    return RunFolder(path, resume_from, notes), lock


def _check_name(name: str, logs: str) -> None:
    if not name.strip():
        raise ValueError(f"--name {name!r} is blank; name the run, such as --name my-run")
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or ".." in parts:
        plain = "-".join(p for p in parts if p not in ("..", os.sep)) or "my-run"
        raise ValueError(
            f"--name {name!r} leads outside --logs {logs}; name a folder inside it, "
            f"such as --name {plain}"
        )


def _new_folder(logs: Path, now: datetime) -> Path:
    """A folder created for this run alone, named by ``now`` (``-1``, ``-2`` added when
    taken: ``mkdir`` fails for all but one of the runs asking for one name)."""
    stamp = now.strftime("%Y_%m_%d-%H_%M_%S")
    for n in range(10_000):
        path = logs / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"every run folder name {stamp}-N in {logs} is taken; pass --name")


def _resume_source(cfg: TrainConfig, path: Path) -> Path | None:
    if cfg.resume is None:
        if (path / CONFIG_FILE).exists():
            raise ValueError(
                f"run folder {path} already exists; pass --resume latest to continue it "
                "or choose another --name"
            )
        return None
    if cfg.resume == "latest":
        latest = path / "checkpoints" / "latest.pt"
        # exists, not is_file: a latest.pt that cannot be read must stop the run, not be
        # taken for "no checkpoint yet"
        return latest if latest.exists() or latest.is_symlink() else None
    checkpoint = Path(cfg.resume)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"--resume {cfg.resume}: no such checkpoint file")
    return checkpoint


def _prepare(path: Path, checkpoints: Path) -> None:
    """Check now, not after the first epoch, that ``checkpoints`` can be written; remove
    what killed writers of this folder left (the lock says no writer is left)."""
    try:
        checkpoints.mkdir(exist_ok=True)
        probe = checkpoints / f".write-check.{os.getpid()}{TEMPORARY_SUFFIX}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666))
        probe.unlink()
    except OSError as exc:
        raise os_error(
            exc,
            f"cannot write checkpoints into {checkpoints} ({exc.strerror}); "
            f"{how_to_fix_write(exc, checkpoints)}, or choose another --logs or --name",
        ) from exc
    for folder in (path, checkpoints):
        for stale in folder.glob(f".*{TEMPORARY_SUFFIX}"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the lock


class RunLock:
    """``run.lock`` in a run folder, naming the process that writes the folder."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK_FILE
        pid = os.getpid()
        self.owner = {
            "pid": pid,
            "host": socket.gethostname(),
            "process_start": _process_start(pid),
            "since": datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:300],
        }
        self.held = False

    def acquire(self) -> tuple[str, ...]:
        """Take the lock, replacing a stale one (the note returned says so); raise
        :class:`RunFolderInUse` if a live run holds it."""
        notes: tuple[str, ...] = ()
        with _one_at_a_time(self.path.parent):  # a stale lock is replaced by one run only
            try:
                self._create()
            except FileExistsError:
                holder = self._holder()
                if not self._stale(holder):
                    raise RunFolderInUse(self._in_use(holder)) from None
                notes = (
                    f"replaced the stale lock {self.path}: pid {holder['pid']} on "
                    f"{holder['host']} (since {holder.get('since')}) no longer runs",
                )
                self.path.unlink()
                self._create()
        self.held = True
        return notes

    def release(self) -> None:
        """Remove the lock if this process holds it (never one another run took since)."""
        if not self.held or os.getpid() != self.owner["pid"]:
            return  # a forked child (data loader worker) holds nothing
        self.held = False
        if self._holder() == self.owner:
            self.path.unlink(missing_ok=True)

    def _create(self) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except (FileExistsError, FileNotFoundError):
            raise
        except OSError as exc:
            folder = self.path.parent
            raise os_error(
                exc,
                f"cannot write in the run folder {folder} ({exc.strerror}); "
                f"{how_to_fix_write(exc, folder)}, or choose another --logs or --name",
            ) from exc
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(self.owner) + "\n")

    def _holder(self) -> dict[str, Any] | None:
        """The lock's content, or None if it is unreadable, empty or not ours."""
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        valid = (
            isinstance(holder, dict)
            and type(holder.get("pid")) is int
            and 0 < holder["pid"] < 2**31  # a pid os.kill takes, never 0 or -1 (groups)
            and isinstance(holder.get("host"), str)
        )
        return holder if valid else None

    def _stale(self, holder: dict[str, Any] | None) -> bool:
        """Provably dead: a process of this host that no longer runs (or whose pid now
        belongs to a process started later). Another host's process cannot be checked."""
        if holder is None or holder["host"] != self.owner["host"]:
            return False
        return not _running(holder["pid"], holder.get("process_start"))

    def _in_use(self, holder: dict[str, Any] | None) -> str:
        folder = self.path.parent
        if holder is None:
            return (
                f"run folder {folder} is locked by {self.path}, which is empty or damaged. "
                f"If no run is writing to {folder}, delete {self.path}; else pass another --name"
            )
        message = (
            f"run folder {folder} is in use by another run: pid {holder['pid']} on "
            f"{holder['host']}, since {holder.get('since')} ({holder.get('command', '?')}). "
            "Wait for it to end, or pass another --name"
        )
        if holder["host"] != self.owner["host"]:
            message += f". If it no longer runs on {holder['host']}, delete {self.path}"
        return message


def _process_start(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (Linux ``/proc``; None elsewhere)."""
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) of ``pid`` from ``/proc/PID/stat``, or None if unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces
        return fields[0], int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _running(pid: int, start: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    stat = _proc_stat(pid)
    if stat is None:  # no /proc here: the pid exists, so take it for the holder
        return True
    state, started = stat
    return state not in ("Z", "X") and (start is None or started == start)


@contextmanager
def _one_at_a_time(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``folder`` for a few microseconds: checking a lock and
    replacing a stale one is one step. Released by the kernel if the process dies."""
    try:
        import fcntl

        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):  # no flock here: the O_EXCL create still decides
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a filesystem without flock
            pass
        yield
    finally:
        os.close(fd)  # releases the flock


@contextmanager
def _exit_on_sigterm(enabled: bool) -> Iterator[None]:
    """While the lock is held, SIGTERM (``kill``, a scheduler stopping a job) ends the run
    as an exception does, so the lock is released; a handler set by the caller is kept."""
    if (
        not enabled
        or threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# --------------------------------------------------------------------------- the record


def record_start(folder: RunFolder, cfg: TrainConfig, resumed: dict[str, Any] | None) -> None:
    """``config.yaml`` at a run's first start (and for a run that had no checkpoint to
    resume from); one line of ``resumes.jsonl`` for each resume (``resumed``: its
    checkpoint, step and changed settings)."""
    config = folder.path / CONFIG_FILE
    if resumed is None or not config.exists():
        save_yaml(cfg, config)
    if resumed is not None:
        record = {
            "time": datetime.now().isoformat(timespec="seconds"),
            **resumed,
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        with open(folder.path / RESUMES_FILE, "a") as f:
            f.write(json.dumps(record, default=str) + "\n")


def run_settings(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The settings a run ended with: ``config.yaml`` with each resume's changes."""
    run_dir = Path(run_dir)
    settings = yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}
    resumes = run_dir / RESUMES_FILE
    if resumes.is_file():
        for line in resumes.read_text().splitlines():
            try:
                changed = json.loads(line).get("changed", {})
            except (ValueError, AttributeError):
                continue  # a torn line: its resume changed nothing recorded
            settings.update({key: change["now"] for key, change in changed.items()})
    return settings
