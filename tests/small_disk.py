"""A small filesystem that fills up for real: a tmpfs of a given size mounted on a test's
folder (tests run as root here). Where mounting is refused (no privilege, a container
without ``CAP_SYS_ADMIN``), the test is skipped with that reason; the checkpoint case is also
tried with a file-size limit (``tests/test_faults.py``), which needs no privilege."""

import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_disk(folder: Path, size: str):
    """``folder`` as an empty tmpfs of ``size`` (``"100k"``, ``"2m"``), unmounted on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
    try:
        done = subprocess.run(mount, capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command here to make a small filesystem")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)
