"""Worker processes: how many this machine can run, and that none outlives its parent.

Every ``DataLoader`` of the package takes its worker options from :func:`loader_workers`:
the count is checked against :func:`max_workers` before any process starts (a typo such as
``--workers 100000`` would otherwise fork until the OOM killer stops the parent), and each
worker asks the kernel to kill it when its parent dies, so a killed run leaves no orphans.

Examples:
    >>> from torch.utils.data import DataLoader
    >>> from clip_ping.workers import loader_workers
    >>> loader = DataLoader(range(8), batch_size=4, **loader_workers(0))
    >>> [batch.tolist() for batch in loader]
    [[0, 1, 2, 3], [4, 5, 6, 7]]
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path

from .errors import UserError

# Worker processes allowed per usable CPU core. Loading is CPU-bound (decoding, augmenting),
# so more than one per core helps only while workers wait for storage.
WORKERS_PER_CORE = 4
# Memory one loader worker may come to hold: its copy-on-write share of the parent, decoded
# images, prefetched batches.
WORKER_MEMORY_BYTES = 256 << 20
# Always allowed, whatever the machine: the default of --workers.
MIN_WORKERS_CAP = 2
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes of memory free for new processes: ``MemAvailable``, lowered to the room left
    under a cgroup (v2) memory limit; None where neither can be read."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            found.append(max(0, int(limit) - int(used)))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def max_workers() -> tuple[int, str]:
    """The most loader workers one process may start here, and how that number was reached.

    Under torchrun the machine is shared by ``LOCAL_WORLD_SIZE`` processes, each with its own
    workers."""
    cores, local_ranks = usable_cores(), max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    cap = WORKERS_PER_CORE * cores // local_ranks
    reason = f"{WORKERS_PER_CORE} per usable CPU core, {cores} core(s)"
    if local_ranks > 1:
        reason += f" shared by {local_ranks} processes"
    memory = available_memory()
    if memory is not None:
        by_memory = memory // local_ranks // WORKER_MEMORY_BYTES
        reason += (
            f"; {memory / 2**30:.1f} GiB of available memory allows {by_memory} at "
            f"{WORKER_MEMORY_BYTES >> 20} MiB each"
        )
        cap = min(cap, by_memory)
    return max(cap, MIN_WORKERS_CAP), reason


def check_workers(workers: int, flag: str = "--workers") -> int:
    """``workers`` if this machine can run that many loader processes, else a
    :class:`UserError` naming the flag, the value and the maximum."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise UserError(f"{flag} {workers!r}: must be a whole number, 0 or more")
    cap, reason = max_workers()
    if workers > cap:
        raise UserError(
            f"{flag} {workers:,} is more worker processes than this machine can run: at most "
            f"{cap} ({reason}); pass {flag} {cap} or fewer ({min(cap, usable_cores())}, one per "
            "core, is usually enough)"
        )
    return workers


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent exits (Linux; elsewhere a no-op).

    ``parent_pid`` closes the race with a parent that died before the request was made."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return  # not fatal: PyTorch's workers also poll for their parent
    if os.getppid() != parent_pid:
        os._exit(1)


class _DieWithParent:
    """A DataLoader ``worker_init_fn`` (picklable) that ties each worker to its parent."""

    def __init__(self) -> None:
        self.parent_pid = os.getpid()

    def __call__(self, worker_id: int) -> None:
        die_with_parent(self.parent_pid)


def loader_workers(workers: int, flag: str = "--workers") -> dict:
    """``DataLoader`` keyword arguments for ``workers`` processes: the count checked against
    :func:`max_workers`, and workers that die with this process."""
    check_workers(workers, flag)
    if workers == 0:
        return {"num_workers": 0}
    return {"num_workers": workers, "worker_init_fn": _DieWithParent()}
