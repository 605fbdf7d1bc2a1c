"""Errors a user can act on, values shown in them at a bounded length, and how a failed
command reports itself.

``clip-ping`` prints a :class:`UserError` (and the other expected failures,
:data:`USER_ERRORS`) as one line without a traceback (:func:`describe_failure`);
``clip-ping --debug`` shows the traceback of every failure.
"""

from __future__ import annotations

import reprlib
from typing import Any

# Longest repr of a value quoted in an error message: a config value can be megabytes long.
MAX_REPR_CHARS = 80

_repr = reprlib.Repr()
_repr.maxlevel = 2
_repr.maxlist = _repr.maxtuple = _repr.maxset = _repr.maxdict = 4
_repr.maxstring = _repr.maxother = MAX_REPR_CHARS


# Failures a user can act on: printed as one line, without a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, FloatingPointError)


class UserError(ValueError):
    """A bad input or setting, with a message naming the value and the fix.

    A ``ValueError`` so that callers catching the wider type keep working.
    """


def short_repr(value: Any, limit: int = MAX_REPR_CHARS) -> str:
    """``repr(value)`` of at most ``limit`` characters, built without the full repr of a
    large string or nested container (:mod:`reprlib`: a few items, two levels deep)."""
    text = _repr.repr(value)
    if len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line. An error raised in a DataLoader worker carries the
    worker's traceback in its message: its last line is the message."""
    text = str(exc)
    if "\nOriginal Traceback (most recent call last):" in text:
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split())


def describe_failure(exc: Exception, debug: bool = False) -> tuple[str, int]:
    """(one-line message, exit status) of a failed command: 2 for a bad input or setting,
    1 for anything else; an unexpected exception is named as a bug."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        first = str(exc).splitlines()[0] if str(exc) else ""
        return f"out of GPU memory ({first}); lower --batch-size, or use --precision amp_bf16", 1
    if isinstance(exc, MemoryError):
        return "out of memory; lower --batch-size or --workers, or free memory", 1
    if isinstance(exc, USER_ERRORS):
        return one_line(exc), 2
    if isinstance(exc, OSError):  # e.g. disk full while saving: the message says what is intact
        return one_line(exc), 1
    how = "report it with the traceback above" if debug else "rerun with --debug for its traceback"
    return f"internal error: {type(exc).__name__}: {one_line(exc)} (a bug: {how})", 1
