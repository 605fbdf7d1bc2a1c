"""Crash-safe file writes: write a temporary file, fsync, rename over the target.

A reader (or a resumed run) sees either the previous complete file or the new complete
file, never half of one, whatever moment the process is killed.

Temporaries are created the way a plain ``open()`` or ``mkdir`` creates files (mode
0o666 / 0o777 less the umask), not with ``tempfile``'s private 0o600 / 0o700: on a shared
machine, another user reads a run's outputs as they would any file its owner wrote.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

TEMPORARY_SUFFIX = ".tmp"  # a killed writer's leftovers end so (checkpoint.py removes them)


def how_to_fix_write(exc: OSError, folder: Path) -> str:
    """What to do about a failed write into ``folder``, by its cause (for error messages)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"free space in {folder}"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"make {folder} writable for this user (e.g. chmod u+w {folder})"
    return f"check that {folder} can be written"


WRITE_FAILURES = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS)


@contextmanager
def explained_writes(folder: str | os.PathLike, then: str) -> Iterator[None]:
    """Turn a failed write under the block (disk full, quota, permissions) into one line
    naming ``folder``, the cause and the fix, ending ``then`` (what to do after it). An
    error already explained (made by :func:`os_error`: no ``strerror``) passes unchanged."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in WRITE_FAILURES or exc.strerror is None:
            raise
        fix = how_to_fix_write(exc, Path(folder))
        where = exc.filename or folder
        raise os_error(
            exc, f"could not write {where} ({exc.strerror}); {fix}, then {then}"
        ) from exc


def reserved_memmap(path: str | os.PathLike, dtype=None, shape=None):
    """A writable ``.npy`` memory map of ``path`` (a new one of ``dtype`` and ``shape``, or
    the existing file when they are None) with every byte of the file allocated first.

    A fresh map is a sparse file: writing into it on a full disk kills the process with
    SIGBUS, no error to catch. Allocating up front fails with ``ENOSPC`` instead.
    """
    import numpy as np

    if dtype is None:
        array = np.load(path, mmap_mode="r+")
    else:
        array = np.lib.format.open_memmap(path, "w+", dtype, shape)
    with open(path, "r+b") as file:
        size = os.fstat(file.fileno()).st_size
        try:
            os.posix_fallocate(file.fileno(), 0, size)
        except OSError as exc:
            exc.filename = str(path)
            raise
    return array


def read_json_object(path: str | os.PathLike, fix: str) -> dict:
    """The JSON object in the file ``path``; ``ValueError`` naming the file, what is wrong
    (not JSON, not UTF-8, cut short, a list instead of an object) and ``fix``."""
    import json

    try:
        value = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, not an object; {fix}")
    return value


def load_tensor_file(path: str | os.PathLike, what: str, fix: str) -> dict:
    """The dict ``torch.save`` wrote to ``path`` (plain tensors and containers only);
    ``ValueError`` naming ``what`` the file should be and ``fix`` for anything else (an
    empty file, another format, a pickle of code)."""
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as exc:  # the zip reader, the unpickler, weights_only's refusal
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path} is not {what} ({first}); {fix}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a {type(value).__name__}, not {what}; {fix}")
    return value


def os_error(exc: OSError, message: str) -> OSError:
    """An error of ``exc``'s kind (``PermissionError``, ...) and errno that says ``message``."""
    error = type(exc)(message)
    error.errno = exc.errno
    return error


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems refuse to open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_beside(path: Path, create: Callable[[Path], Any]) -> tuple[Path, Any]:
    """``create(tmp)`` for a fresh hidden name ``.NAME.XXXX.tmp`` beside ``path``."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{TEMPORARY_SUFFIX}")
        try:
            return tmp, create(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then swap it in."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        tmp, fd = _create_beside(path, lambda tmp: os.open(tmp, flags, 0o666))
    except OSError as exc:  # named by the file asked for, not the hidden temporary one
        exc.filename = str(path)
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; fill it, and on leaving the block it
    replaces ``path`` whole (a failed block leaves ``path`` as it was)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging, _ = _create_beside(path, lambda tmp: os.mkdir(tmp, 0o777))
    try:
        yield staging
        _as_plainly_created(staging)
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_dir(path.parent)


def _as_plainly_created(staging: Path) -> None:
    """Give what the writers put in ``staging`` the modes a plain ``open()``/``mkdir``
    gives (the folder's own: 0o777 less the umask). Some write through ``mkstemp``'s
    private 0o600: transformers' sharded ``save_pretrained`` for ``model.safetensors``."""
    folder_mode = stat.S_IMODE(staging.stat().st_mode)
    for root, folders, files in os.walk(staging):
        for name in folders:
            os.chmod(os.path.join(root, name), folder_mode)
        for name in files:
            file = os.path.join(root, name)
            executable = os.stat(file).st_mode & 0o111
            os.chmod(file, folder_mode & (0o777 if executable else 0o666))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


class _KeepsWriteErrors:
    """A file whose ``write`` remembers the ``OSError`` it raised: torch's zip writer turns
    it into a ``RuntimeError`` without its errno (disk full, file too large)."""

    def __init__(self, file: IO[bytes]):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.file.flush()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    def write(f: IO[bytes]) -> None:
        kept = _KeepsWriteErrors(f)
        try:
            torch.save(obj, kept)
        except RuntimeError as exc:  # torch's zip writer reports a failed write (disk full) so
            if kept.error is not None:
                raise kept.error from exc
            raise OSError(f"writing {path} failed ({exc})") from exc

    return atomic_write(path, write)
