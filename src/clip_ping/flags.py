"""Typed command-line flags from dataclass fields: ``batch_size: int`` becomes
``--batch-size INT``, with the field's help (``metadata["help"]``), group and default.

The one mechanism behind ``clip-ping train`` (:class:`~clip_ping.training.config.TrainConfig`) and the
data flags every command shares (:class:`~clip_ping.data.loader.DataSpec`). A field declares
its allowed values once: a numeric one as ``metadata["range"]`` (a :class:`Range`), one of a
few names as ``metadata["choices"]`` (a tuple); :func:`check_ranges` checks them all,
whether they came from flags, YAML or Python, and the flags' help lists them. A flag that is
no field checks its range as it is parsed: ``type=typed(int, Range(1))``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from .errors import UserError, short_repr


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric setting; a float must also be finite.

    ``Range(1)``: 1 or more. ``Range(0, 1, max_open=True)``: [0, 1). ``hint`` says what to
    do instead (e.g. how to turn the feature off).
    """

    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    hint: str = ""

    def __str__(self) -> str:
        low, high = (f"{v:g}" if isinstance(v, float) else str(v) for v in (self.min, self.max))
        if self.min is not None and self.max is not None:
            left, right = "(" if self.min_open else "[", ")" if self.max_open else "]"
            return f"in {left}{low}, {high}{right}"
        if self.min is not None:
            return f"{'above' if self.min_open else 'at least'} {low}"
        if self.max is not None:
            return f"{'below' if self.max_open else 'at most'} {high}"
        return "finite"

    def allows(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.min is not None and (value <= self.min if self.min_open else value < self.min):
            return False
        return self.max is None or (value < self.max if self.max_open else value <= self.max)

    def problem(self, value: float) -> str | None:
        """None for an allowed value, else what is wrong and what is allowed."""
        if self.allows(value):
            return None
        number = "a finite number" if isinstance(value, float) else "a whole number"
        hint = f"; {self.hint}" if self.hint else ""
        return f"is out of range: must be {number} {self}{hint}"

    def check(self, flag: str, value: float | None) -> None:
        """Raise a :class:`UserError` naming ``flag``, the value and the range (None passes)."""
        if value is not None and (problem := self.problem(value)):
            raise UserError(f"{flag}={short_repr(value)} {problem}")


# Seeds: below 2**31, so that seed + epoch and numpy's 32-bit seeds stay in range.
SEED_RANGE = Range(0, 2**31 - 1)


def flag_name(field_name: str) -> str:
    """``batch_size`` → ``--batch-size``."""
    return "--" + field_name.replace("_", "-")


def field_type(annotation: Any) -> tuple[type, bool]:
    """(type, optional) of a field annotation such as ``int | None``."""
    hint = annotation
    if isinstance(hint, str):
        hint = eval(hint, {**vars(typing), "types": types})  # annotations are ours
    args = typing.get_args(hint)
    if args:
        non_none = [a for a in args if a is not type(None)]
        return non_none[0], len(non_none) < len(args)
    return hint, False


def typed(kind: type, allowed: Range | None = None, optional: bool = False):
    """argparse ``type=``: ``kind(text)`` within ``allowed``, and ``none`` if ``optional``."""

    def parse(text: str) -> Any:
        if optional and text.lower() in ("none", "null"):
            return None
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expects {kind.__name__}{' or none' if optional else ''}, got {short_repr(text)}"
            ) from None
        if allowed is not None and (problem := allowed.problem(value)):
            raise argparse.ArgumentTypeError(f"{short_repr(value)} {problem}")
        return value

    parse.__name__ = kind.__name__
    return parse


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    only: tuple[str, ...] | None = None,
    required: tuple[str, ...] = (),
    suppress_defaults: bool = True,
) -> None:
    """One typed flag per field of ``cls`` (or of the fields in ``only``), grouped, with
    the field's help and default. With ``suppress_defaults`` an unset flag is absent from
    the namespace, so :func:`build_config` knows what the command line set."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        group_name = f.metadata.get("group", "other")
        group = groups.get(group_name) or parser.add_argument_group(group_name)
        groups[group_name] = group
        flags = [flag_name(f.name), *f.metadata.get("aliases", ())]
        kind, optional = field_type(f.type)
        allowed = f.metadata.get("range")
        if choices := f.metadata.get("choices"):
            allowed = "one of " + ", ".join(choices)
        limits = f"; {allowed}" if allowed else ""
        help_text = f"{f.metadata.get('help', '')} (default: {f.default}{limits})"
        options: dict[str, Any] = dict(
            dest=f.name,
            help=help_text,
            default=argparse.SUPPRESS if suppress_defaults else f.default,
        )
        if f.name in required:
            options.update(required=True, help=f.metadata.get("help", ""))
            del options["default"]
        if kind is bool:
            group.add_argument(*flags, action=argparse.BooleanOptionalAction, **options)
        else:
            # Ranges are checked with the whole config (validate), YAML values alike.
            parse = typed(kind, optional=optional or f.default is None)
            group.add_argument(*flags, type=parse, metavar=kind.__name__.upper(), **options)


def check_ranges(config: Any) -> None:
    """Check every field of the dataclass ``config`` that declares a ``range`` or
    ``choices``; the error names the flag, the value and what is allowed."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if (allowed := f.metadata.get("range")) is not None:
            allowed.check(flag_name(f.name), value)
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise UserError(
                f"{flag_name(f.name)}={short_repr(value)}: choose one of {', '.join(choices)}"
            )


def namespace_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The values in ``args`` of ``cls``'s fields (those the parser defined)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


COUNT = typed(int, Range(1))  # how many of something: 1 or more
