"""Errors a user can act on, and values shown in them at a bounded length.

``clip-ping`` prints a :class:`UserError` (and the other expected failures, see
:func:`clip_ping.cli.main`) as one line without a traceback; ``clip-ping --debug`` shows the
traceback of every failure.
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
